"""A measurement's link to the target's health view: stop at once when the target is known down.

The loads (`load.run_open`, `load.run_closed`) and the WebSocket push measurement (`wspush`) send
through their own asyncio clients, not through `EtlClient`, so they report to the run's
`etlverify.health.TargetHealth` here: every request and connection is counted (the health
events say "after N requests over M connections"), every answer is noted (the target's last
moments), and a request that gets no answer is handed to the health view, which probes a fresh
connection once to tell a dead target from a slow route. Once the target is down (not answering,
gone, or, for WebSocket work, its handshakes never complete) the measurement stops: no budget is
waited out against a target known to be down. `stopped` then says why, in one line.

The health view's probe is blocking (`http.client`, 1.5 s); it runs in a worker thread, one at a
time per measurement, so the event loop keeps its schedule and a burst of timeouts costs one probe.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from collections.abc import Mapping

    from etlverify.health import Event, TargetHealth

__all__ = ["HealthGuard", "failure_kind"]


def failure_kind(exc: BaseException) -> str:
    """``timeout``, ``refused`` or ``dropped``: how a request or connection got no answer."""
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, httpx.ConnectError) and "refused" in str(exc).lower():
        return "refused"
    return "dropped"


class HealthGuard:
    """One measurement's view of the target's health (a no-op without a `TargetHealth`)."""

    def __init__(self, health: TargetHealth | None, what: str = "the measurement") -> None:
        self.health = health
        self.what = what
        #: why the measurement stopped early ("" while it runs or when it ran to its end)
        self.stopped = ""
        self._lock: asyncio.Lock | None = None

    # -- state ------------------------------------------------------------------------------------

    def down(self, *, websocket: bool = False) -> Event | None:
        """The event since which the target is down (for WebSocket work also: handshakes hang)."""
        if self.health is None:
            return None
        event = self.health.down
        if event is None and websocket:
            event = self.health.ws_down
        return event

    def should_stop(self, *, websocket: bool = False) -> bool:
        """True (and `stopped` set) once the target is known down."""
        if self.stopped:
            return True
        event = self.down(websocket=websocket)
        if event is None or self.health is None:
            return False
        self.stopped = f"{self.what} stopped: {self.health.down_text(event)}; nothing more was sent"
        return True

    # -- what the measurement reports --------------------------------------------------------------

    def sent(self) -> None:
        """A request is about to be sent."""
        if self.health is not None:
            self.health.note_request()

    def connected(self) -> None:
        """A new connection was opened (a WebSocket, or one of the HTTP client's)."""
        if self.health is not None:
            self.health.on_connection()

    def answered(self, what: str, status: int, job: str = "") -> None:
        """The target answered `what` with `status` (and created `job`)."""
        if self.health is not None:
            self.health.note_answered(what, status, job)

    async def no_answer(self, what: str, exc: BaseException, started: float) -> None:
        """`what` got no answer (`exc`): let the health view probe, once at a time."""
        if self.health is None or self.health.down is not None:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.health.down is None:
                await asyncio.to_thread(
                    self.health.on_no_answer, what, failure_kind(exc), started=started
                )

    async def handshake_failed(self, what: str, started: float) -> None:
        """A WebSocket handshake did not complete in time: HTTP down too, or only WebSocket?"""
        if self.health is None or self.down(websocket=True) is not None:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.down(websocket=True) is None:
                await asyncio.to_thread(self.health.on_ws_handshake_failed, what, started=started)

    def trace(self) -> Mapping[str, Any]:
        """httpx request extensions that count the client's new connections (empty without a
        health view)."""
        if self.health is None:
            return {}

        async def trace(name: str, info: Mapping[str, Any]) -> None:
            if name == "connection.connect_tcp.started":
                self.connected()

        return {"trace": trace}
