"""A synchronous WebSocket session on the target's `/ws` (contract section 10).

Everything is bounded: opening, closing and every receive have a timeout, and every way the server
can misbehave (refusing the handshake, going silent, sending something that is not a JSON object,
closing the connection) becomes a `TargetError` whose message says what happened.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from etlverify.errors import TargetError
from etlverify.health import TargetHealth, health_for

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = ["Message", "WsSession"]

Message = dict[str, Any]

#: snake_case keyword -> the protocol's subscribe field
_SUBSCRIBE_FIELDS = {
    "job_ids": "jobIds",
    "message_types": "messageTypes",
    "log_levels": "logLevels",
    "include_system": "includeSystemNotifications",
}


class WsSession:
    """One WebSocket connection. Connects in the constructor.

    Messages read while waiting for something else (e.g. the subscribe acknowledgement) are kept and
    handed out first by `recv_json`/`collect`, so none is lost.
    """

    def __init__(
        self,
        url: str,
        *,
        open_timeout: float = 10.0,
        close_timeout: float = 5.0,
        recv_timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        max_size: int = 16 * 2**20,
        health: TargetHealth | None = None,
    ) -> None:
        self.url = url
        self.recv_timeout = recv_timeout
        self.acks: list[Message] = []
        self._pending: deque[Message] = deque()
        self._closed = False
        self.health = health if health is not None else health_for(_base_url(url))
        what = f"WebSocket {url}"
        # blocked at once while HTTP is down or handshakes are known not to complete
        self.health.before_request(what, websocket=True)
        self.health.on_connection()
        started = time.time()
        try:
            opened = connect(
                url,
                open_timeout=open_timeout,
                close_timeout=close_timeout,
                additional_headers=dict(headers or {}),
                max_size=max_size,
                # the suite reads on demand; without a cap a slow test would buffer without bound
                max_queue=1024,
            )
            # __enter__ marks the connection as managed (websockets >= 17 warns otherwise); on
            # older versions it returns the connection itself. close() below ends it.
            self._conn: ClientConnection = opened.__enter__()
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise TargetError(
                f"WebSocket {url}: handshake refused with HTTP {status}\n"
                f"Reproduce with: {_curl_handshake(url, open_timeout)}"
            ) from None
        except TimeoutError:
            self.health.on_ws_handshake_failed(what, started=started)
            raise TargetError(
                f"WebSocket {url}: handshake did not complete within {open_timeout:g} s\n"
                f"Reproduce with: {_curl_handshake(url, open_timeout)}",
                kind="ws-handshake",
            ) from None
        except InvalidHandshake as exc:
            raise TargetError(f"WebSocket {url}: invalid handshake: {exc}") from None
        except OSError as exc:
            refused = isinstance(exc, ConnectionRefusedError)
            reason = "connection refused" if refused else str(exc)
            self.health.on_no_answer(what, "refused" if refused else "dropped", started=started)
            kind = "refused" if refused else "dropped"
            raise TargetError(f"WebSocket {url}: cannot connect: {reason}", kind=kind) from None

    # -- receiving ----------------------------------------------------------------------------

    def _recv_raw(self, timeout: float) -> str | bytes:
        try:
            return self._conn.recv(timeout=max(timeout, 0.0))
        except TimeoutError:
            raise TargetError(f"WebSocket {self.url}: no message within {timeout:g} s") from None
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            reason = exc.rcvd.reason if exc.rcvd is not None else ""
            raise TargetError(
                f"WebSocket {self.url}: connection closed by the server "
                f"(code {code}{', ' + reason if reason else ''})"
            ) from None

    def recv_json(self, timeout: float | None = None) -> Message:
        """The next message as a JSON object; `TargetError` on timeout, close or invalid JSON."""
        if self._pending:
            return self._pending.popleft()
        raw = self._recv_raw(self.recv_timeout if timeout is None else timeout)
        try:
            message = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            text = raw if isinstance(raw, str) else raw[:200].decode("utf-8", "replace")
            raise TargetError(
                f"WebSocket {self.url}: the server sent invalid JSON: {text[:200]!r}"
            ) from None
        if not isinstance(message, dict):
            raise TargetError(
                f"WebSocket {self.url}: expected a JSON object, got {type(message).__name__}: "
                f"{str(message)[:200]}"
            )
        return message

    def collect(
        self, until: Callable[[Message], bool] | None = None, timeout: float = 5.0
    ) -> list[Message]:
        """Messages received until `until(message)` is true (that message included).

        With `until=None` it collects for `timeout` seconds and returns what came. With a predicate
        that never matched in time, `TargetError` lists what did arrive.
        """
        deadline = time.monotonic() + timeout
        got: list[Message] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not self._pending:
                if until is None:
                    return got
                kinds = ", ".join(str(m.get("type")) for m in got[-10:]) or "none"
                raise TargetError(
                    f"WebSocket {self.url}: the awaited message did not arrive within "
                    f"{timeout:g} s ({len(got)} messages received, last types: {kinds})"
                )
            try:
                message = self.recv_json(remaining)
            except TargetError:
                if until is None and time.monotonic() >= deadline:
                    return got
                if time.monotonic() < deadline:
                    raise
                continue
            got.append(message)
            if until is not None and until(message):
                return got

    # -- sending ----------------------------------------------------------------------------

    def send_raw(self, text: str) -> None:
        """Send `text` as one text frame (for malformed-message checks)."""
        try:
            self._conn.send(text)
        except ConnectionClosed:
            raise TargetError(f"WebSocket {self.url}: connection closed before send") from None

    def send_json(self, message: Mapping[str, Any]) -> None:
        """Send a JSON message."""
        self.send_raw(json.dumps(message))

    def subscribe(
        self,
        job_ids: Sequence[str] | None = None,
        message_types: Sequence[str] | None = None,
        log_levels: Sequence[str] | None = None,
        include_system: bool | None = None,
        *,
        timeout: float | None = None,
    ) -> Message:
        """Send a subscribe message and return the server's ``connection_ack`` (status subscribed).

        Connection acks read on the way are kept in `acks`, not handed out again; other messages
        are kept for `recv_json`/`collect`.
        """
        data: dict[str, Any] = {}
        if job_ids is not None:
            data["jobIds"] = list(job_ids)
        if message_types is not None:
            data["messageTypes"] = list(message_types)
        if log_levels is not None:
            data["logLevels"] = list(log_levels)
        if include_system is not None:
            data["includeSystemNotifications"] = include_system
        return self.subscribe_data(data, timeout=timeout)

    def subscribe_data(self, data: Mapping[str, Any], *, timeout: float | None = None) -> Message:
        """Subscribe with protocol field names (``jobIds`` ...) or their snake_case keywords."""
        body = {_SUBSCRIBE_FIELDS.get(k, k): v for k, v in data.items()}
        self.send_json({"type": "subscribe", "data": body})
        limit = self.recv_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        held: list[Message] = []
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TargetError(
                        f"WebSocket {self.url}: no subscribe acknowledgement within {limit:g} s"
                    )
                # read straight from the socket: pending messages predate the subscribe
                raw_message = self._read_socket(remaining)
                if raw_message.get("type") == "connection_ack":
                    self.acks.append(raw_message)
                    data_part = raw_message.get("data")
                    if isinstance(data_part, dict) and data_part.get("status") == "subscribed":
                        return raw_message
                    continue
                if raw_message.get("type") == "error_message":
                    raise TargetError(
                        f"WebSocket {self.url}: subscribe rejected: {json.dumps(raw_message)[:300]}"
                    )
                held.append(raw_message)
        finally:
            self._pending.extend(held)

    def _read_socket(self, timeout: float) -> Message:
        pending, self._pending = self._pending, deque()
        try:
            return self.recv_json(timeout)
        finally:
            pending.extend(self._pending)
            self._pending = pending

    def close(self) -> None:
        """Close the connection (bounded by the close timeout); safe to call twice."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._conn.close()

    def __enter__(self) -> WsSession:
        return self

    def __repr__(self) -> str:
        return f"WsSession({self.url!r})"

    def __exit__(self, *exc: object) -> None:
        self.close()


def _curl_handshake(url: str, timeout: float) -> str:
    return (
        f"curl -sS -i -N -m {timeout:g} -H 'Connection: Upgrade' -H 'Upgrade: websocket' "
        "-H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' "
        f"{_http_url(url)}"
    )


def _base_url(ws_url: str) -> str:
    """``http://host:port`` (plus any path prefix before ``/ws``) for a WebSocket URL."""
    http = _http_url(ws_url)
    return http[: -len("/ws")] if http.endswith("/ws") else http.rsplit("/", 1)[0]


def _http_url(ws_url: str) -> str:
    if ws_url.startswith("wss://"):
        return "https://" + ws_url[len("wss://") :]
    if ws_url.startswith("ws://"):
        return "http://" + ws_url[len("ws://") :]
    return ws_url
