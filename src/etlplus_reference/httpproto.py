"""uvicorn's fast HTTP protocol (httptools), with contract-shaped answers to unparseable requests.

llhttp, the parser under httptools, rejects a request it cannot parse (an invented method such as
`FOO`, a broken request line, bad header syntax) before the app sees it, and uvicorn then answers a
plain-text 400. The contract wants every 4xx to carry the JSON error body with a correlation id that
is also in the log. uvicorn's h11 protocol would let such requests reach the app, but at about half
the throughput (measured with wrk on `/api/health`: 2,940-3,915 req/s on h11 against 6,716-8,609 on
httptools, side by side). So we keep httptools and shape its one error answer instead.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from etlplus_reference.errors import error_body, json_bytes, new_correlation_id

if TYPE_CHECKING:
    from etlplus_reference.app import Server

__all__ = ["contract_protocol"]

#: What an unknown method is told it may use instead (the routes' methods, all of them).
_ALLOW = "GET, POST, PUT, DELETE"


def contract_protocol(server: Server) -> type[HttpToolsProtocol]:
    """An HttpToolsProtocol subclass whose parse-error answer is the contract's JSON error."""

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
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"x-correlation-id: " + cid.encode("ascii") + b"\r\n",
                *extra,
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
            self.transport.write(b"".join(head))
            self.transport.close()

    return ContractHttpToolsProtocol
