"""uvicorn's fast HTTP protocol (httptools), with contract-shaped answers to unparseable requests.

llhttp, the parser under httptools, rejects a request it cannot parse (an invented method such as
`FOO`, a broken request line, bad header syntax) before the app sees it, and uvicorn then answers a
plain-text 400. The contract wants every 4xx to carry the JSON error body with a correlation id that
is also in the log. uvicorn's h11 protocol would let such requests reach the app, but at about half
the throughput (measured with wrk on `/api/health`: 2,940-3,915 req/s on h11 against 6,716-8,609 on
httptools, side by side). So we keep httptools and shape its one error answer instead.

With `--enable-faults` the protocol is a subclass that also implements the connection-level hostile
modes of `faults.py` (connection cap, hang after an error, WebSocket handshake hang): a connection
in one of them keeps its socket open, reads and ignores every byte and never writes one. That is the
real hang of a leaking C++ build, not an app-level sleep. Without `--enable-faults` the plain
subclass is used, so the healthy path pays nothing for them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from etlplus_reference.errors import error_body, json_bytes, new_correlation_id
from etlplus_reference.faults import non_json_error_body

if TYPE_CHECKING:
    import asyncio

    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from etlplus_reference.app import Server
    from etlplus_reference.faults import Faults

__all__ = ["contract_protocol"]

#: What an unknown method is told it may use instead (the routes' methods, all of them).
_ALLOW = "GET, POST, PUT, DELETE"


def contract_protocol(server: Server) -> type[HttpToolsProtocol]:
    """An HttpToolsProtocol subclass whose parse-error answer is the contract's JSON error.

    With faults enabled on `server`, the subclass also implements the hostile connection modes.
    """

    class ContractHttpToolsProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            # Called from inside uvicorn's `except httptools.HttpParserError`, so the exception
            # that tells an unknown method from other garbage is the one being handled.
            exc = sys.exc_info()[1]
            cid = new_correlation_id()
            if isinstance(exc, httptools.HttpParserInvalidMethodError):
                status, reason, code = 405, b"Method Not Allowed", "METHOD_NOT_ALLOWED"
                message, extra = "Unknown HTTP method", [b"allow: " + _ALLOW.encode() + b"\r\n"]
                context: dict[str, object] = {"allowed": _ALLOW.split(", ")}
            else:
                status, reason, code = 400, b"Bad Request", "INVALID_INPUT"
                message, extra = "Malformed HTTP request", []
                context = {"field": "request", "detail": str(exc or msg)[:200]}
            body = json_bytes(error_body(code, message, cid, context))
            content_type = b"application/json"
            if server.faults is not None and server.faults.non_json_errors:
                body, content_type = non_json_error_body(status), b"text/html"
            server.counters.total += 1
            server.counters.errors += 1
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
            server.journal.warn(
                "RequestHandler", message, status=status, client=client, correlationId=cid
            )
            head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
            for name, value in self.server_state.default_headers:
                head.append(name + b": " + value + b"\r\n")
            head += [
                b"content-type: " + content_type + b"\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"x-correlation-id: " + cid.encode("ascii") + b"\r\n",
                *extra,
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
            self.transport.write(b"".join(head))
            self.transport.close()

    if server.faults is None:
        return ContractHttpToolsProtocol
    faults: Faults = server.faults

    class HostileHttpToolsProtocol(ContractHttpToolsProtocol):
        # Per connection: `silent` reads and ignores everything (over the connection cap, or a
        # WebSocket handshake left hanging); `poisoned` means an error response went out here.
        silent = False
        poisoned = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if faults.connection_cap is not None and faults.count_connection():
                self.silent = True

        def data_received(self, data: bytes) -> None:
            if self.silent or (self.poisoned and faults.hang_after_error):
                # Never answered, never closed: not even by the keep-alive timer.
                self._unset_keepalive_if_required()
                return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            previous = self.cycle
            super().on_headers_complete()
            cycle = self.cycle
            if faults.hang_after_error and cycle is not None and cycle is not previous:
                self._watch_status(cycle)

        def _watch_status(self, cycle: RequestResponseCycle) -> None:
            send = cycle.send

            async def watching_send(message: Any) -> None:
                if message["type"] == "http.response.start" and message["status"] >= 400:
                    self.poisoned = True
                await send(message)

            cycle.send = watching_send  # type: ignore[method-assign]

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.poisoned and faults.hang_after_error:
                self._unset_keepalive_if_required()

        def handle_websocket_upgrade(self) -> None:
            if faults.ws_handshake_hang and httptools.parse_url(self.url).path == b"/ws":
                self.silent = True  # the request was read; the 101 never comes
                return
            super().handle_websocket_upgrade()

    return HostileHttpToolsProtocol
