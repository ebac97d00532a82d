"""The WebSocket channel `/ws` (contract section 10): connections, subscriptions and fan-out.

Fan-out is cheap by construction: `publish` serializes a message once and puts the same `str` into
every matching connection's bounded queue (no awaits, so order is the publish order); one sender
task per connection drains its queue. A reader too slow to keep up fills its queue and is closed
with 1013 without anyone else noticing.

WebSocket cohort faults (`faults.py`) are decided at publish, from the flags the job's creator had
at creation: a dropped push is not queued for that connection, a delayed one waits in one heap
ordered by (due time, publish order), behind one timer, and is queued when due, so it holds back
no other job's pushes. Every queued push carries its publish time; `push_delay` (the `/metrics`
histogram) observes publish -> send of every push actually sent.

Pings: ASGI gives an application no access to WebSocket ping frames, so protocol pings are uvicorn's
job; `uvicorn_ws_options` turns `websocket.ping_interval_s`/`ping_misses` into uvicorn's
`ws_ping_interval` / `ws_ping_timeout` (interval * misses).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import os
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocketDisconnect

from etlplus_reference.errors import json_bytes, now_iso
from etlplus_reference.logs import LEVELS

if TYPE_CHECKING:
    from collections.abc import Collection

    from prometheus_client import Histogram
    from starlette.websockets import WebSocket

    from etlplus_reference.faults import Faults
    from etlplus_reference.logs import Logger

__all__ = ["MESSAGE_TYPES", "Connection", "Hub", "Subscription", "uvicorn_ws_options"]

MESSAGE_TYPES = frozenset(
    {
        "job_status_update",
        "job_progress_update",
        "job_log_message",
        "job_metrics_update",
        "system_notification",
        "connection_ack",
        "error_message",
    }
)
_SEND_ERRORS = (WebSocketDisconnect, RuntimeError, OSError)
#: a queued message: (text, publish time on `time.perf_counter`; 0.0 for direct answers such as
#: acks, which are not pushes and stay out of the push-delay histogram)
_Queued = tuple[str, float]


def uvicorn_ws_options(ping_interval_s: float, ping_misses: int) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config` that implement the contract's ping rule."""
    return {"ws_ping_interval": ping_interval_s, "ws_ping_timeout": ping_interval_s * ping_misses}


@dataclass(frozen=True)
class Subscription:
    """What a connection wants; None means everything."""

    job_ids: frozenset[str] | None = None
    types: frozenset[str] | None = None
    levels: frozenset[str] | None = None
    system: bool = True

    def matches(self, mtype: str, job_id: str | None, level: str | None) -> bool:
        """True when a message of this type/job/level goes to this connection."""
        if self.types is not None and mtype not in self.types:
            return False
        if mtype == "system_notification" and not self.system:
            return False
        if self.job_ids is not None and job_id is not None and job_id not in self.job_ids:
            return False
        if self.job_ids is not None and job_id is None and mtype != "system_notification":
            return False
        return not (self.levels is not None and level is not None and level not in self.levels)

    def describe(self) -> dict[str, Any]:
        """JSON form, echoed in the subscribe acknowledgement."""
        return {
            "jobIds": sorted(self.job_ids) if self.job_ids is not None else None,
            "messageTypes": sorted(self.types) if self.types is not None else None,
            "logLevels": sorted(self.levels) if self.levels is not None else None,
            "includeSystemNotifications": self.system,
        }


class SubscribeError(ValueError):
    """A malformed subscribe request."""


def parse_subscription(data: Any) -> Subscription:
    """Validate the `data` of a subscribe message."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SubscribeError("subscribe data must be an object")

    def str_list(key: str, allowed: frozenset[str] | None = None) -> frozenset[str] | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SubscribeError(f"{key} must be a list of strings")
        if allowed is not None:
            unknown = [v for v in value if v not in allowed]
            if unknown:
                raise SubscribeError(f"{key} has unknown values: {', '.join(unknown[:5])}")
        return frozenset(value)

    levels_raw = data.get("logLevels")
    if isinstance(levels_raw, list):
        data = {**data, "logLevels": [v.upper() if isinstance(v, str) else v for v in levels_raw]}
    system = data.get("includeSystemNotifications", True)
    if not isinstance(system, bool):
        raise SubscribeError("includeSystemNotifications must be true or false")
    return Subscription(
        job_ids=str_list("jobIds"),
        types=str_list("messageTypes", MESSAGE_TYPES),
        levels=str_list("logLevels", frozenset(LEVELS)),
        system=system,
    )


class Connection:
    """One accepted WebSocket with its queue and sender task."""

    def __init__(self, ws: WebSocket, max_queue: int) -> None:
        self.id = os.urandom(8).hex()
        self.ws = ws
        self.queue: asyncio.Queue[_Queued] = asyncio.Queue(max_queue)
        self.sub = Subscription()
        self.sender: asyncio.Task[None] | None = None
        self.closing = False


class Hub:
    """All live connections; `publish` is synchronous and never blocks."""

    def __init__(
        self, journal: Logger, faults: Faults | None, max_connections: int, max_queue: int
    ):
        self.journal = journal
        self.faults = faults
        self.max_connections = max_connections
        self.max_queue = max_queue
        self.connections: dict[str, Connection] = {}
        self._reserved = 0
        self.messages_sent = 0
        self.messages_published = 0
        self.messages_dropped = 0
        self.overflow_closes = 0
        self.refused = 0
        self.running = True
        self._closers: set[asyncio.Task[None]] = set()
        #: observes publish -> send of every push sent (`/metrics`), when set
        self.push_delay: Histogram | None = None
        # pushes held back by a WebSocket cohort fault: (due, seq, job id, message, connections)
        self._delayed: list[tuple[float, int, str, _Queued, list[Connection]]] = []
        self._delayed_seq = itertools.count()
        #: the latest due time per job with pushes in `_delayed`: a job's pushes keep their order
        #: when its delay shrinks
        self._job_due: dict[str, float] = {}
        self._delay_timer: asyncio.TimerHandle | None = None

    @property
    def messages_queued(self) -> int:
        """Messages waiting in connection queues right now."""
        return sum(c.queue.qsize() for c in self.connections.values())

    def envelope(
        self,
        mtype: str,
        data: dict[str, Any],
        target_job_id: str | None = None,
        level: str | None = None,
    ) -> str:
        """The serialized contract envelope."""
        msg: dict[str, Any] = {"type": mtype, "timestamp": now_iso(), "data": data}
        if target_job_id is not None:
            msg["targetJobId"] = target_job_id
        if level is not None:
            msg["targetLevel"] = level
        return json_bytes(msg).decode()

    def publish(
        self,
        mtype: str,
        data: dict[str, Any],
        *,
        target_job_id: str | None = None,
        level: str | None = None,
        creator_flags: Collection[str] = (),
    ) -> None:
        """Serialize once and enqueue to every matching connection (in publish order).

        `creator_flags`: for a job's push, the flags its creator had at creation (whose
        WebSocket cohort faults delay or drop it).
        """
        if not self.connections:
            return
        text = self.envelope(mtype, data, target_job_id, level)
        self.messages_published += 1
        item = (text, time.perf_counter())
        delay_s = drop = 0.0
        faults = self.faults
        if creator_flags and target_job_id is not None and faults is not None and faults.active:
            delay_s, drop = faults.ws_cohort(creator_flags)
        # a job with pushes still held waits behind them even when its delay is gone
        hold = delay_s > 0 or (bool(self._job_due) and target_job_id in self._job_due)
        held: list[Connection] = []
        for conn in list(self.connections.values()):
            if conn.closing or not conn.sub.matches(mtype, target_job_id, level):
                continue
            if drop > 0 and random.random() < drop:
                self.messages_dropped += 1
                continue
            if hold:
                held.append(conn)
                continue
            try:
                conn.queue.put_nowait(item)
            except asyncio.QueueFull:
                self._overflow(conn)
        if held and target_job_id is not None:
            self._hold(target_job_id, item, held, delay_s)

    def _hold(self, job_id: str, item: _Queued, conns: list[Connection], delay_s: float) -> None:
        """Queue `item` to `conns` `delay_s` from now (a WebSocket cohort fault), and never
        before the job's pushes held already."""
        loop = asyncio.get_running_loop()
        due = max(loop.time() + delay_s, self._job_due.get(job_id, 0.0))
        self._job_due[job_id] = due
        entry = (due, next(self._delayed_seq), job_id, item, conns)
        heapq.heappush(self._delayed, entry)
        if self._delayed[0] is entry:  # the new head: the timer must fire earlier
            self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._delay_timer is not None:
            self._delay_timer.cancel()
        self._delay_timer = None
        if self._delayed:
            self._delay_timer = loop.call_at(self._delayed[0][0], self._release, loop)

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        """The timer: queue every held push that is due, in order, then wait for the next."""
        self._delay_timer = None
        now = loop.time() + 0.001  # a timer may run a clock tick early
        released: set[str] = set()
        while self._delayed and self._delayed[0][0] <= now:
            _due, _seq, job_id, item, conns = heapq.heappop(self._delayed)
            released.add(job_id)
            for conn in conns:
                if conn.closing or self.connections.get(conn.id) is not conn:
                    continue  # gone while its push was held
                try:
                    conn.queue.put_nowait(item)
                except asyncio.QueueFull:
                    self._overflow(conn)
        for job_id in released:
            if self._job_due.get(job_id, 0.0) <= now:
                del self._job_due[job_id]
        self._arm(loop)

    def system_notification(self, event: str, **fields: Any) -> None:
        """Publish a `system_notification` with `event` and extra fields."""
        self.publish("system_notification", {"event": event, **fields})

    def _overflow(self, conn: Connection) -> None:
        # The reader cannot keep up: drop it alone, with 1013 (try again later).
        conn.closing = True
        self.overflow_closes += 1
        self.connections.pop(conn.id, None)
        if conn.sender is not None:
            conn.sender.cancel()
        self.journal.warn(
            "WebSocket",
            "Queue overflow, closing slow connection",
            connectionId=conn.id,
            max_queue=self.max_queue,
        )
        self._spawn_close(conn, 1013, "queue overflow")

    def _spawn_close(self, conn: Connection, code: int, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self._close(conn, code, reason))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    @staticmethod
    async def _close(conn: Connection, code: int, reason: str, timeout_s: float = 120.0) -> None:
        # The close frame queues behind what the peer has not read yet (uvicorn waits for the
        # transport to drain), so a slow reader sees its messages and then 1013. A peer that
        # never reads is cut off by the ping timeout long before `timeout_s`.
        try:
            await asyncio.wait_for(conn.ws.close(code=code, reason=reason), timeout_s)
        except (*_SEND_ERRORS, TimeoutError):
            pass  # the peer is gone already: nothing left to tell it

    async def _sender(self, conn: Connection) -> None:
        faults = self.faults
        while True:
            text, published = await conn.queue.get()
            if faults is not None and faults.active:
                delay = faults.ws_delay_s
                if delay > 0:
                    await asyncio.sleep(delay)
                if faults.ws_drop():
                    self.messages_dropped += 1
                    continue
            try:
                await conn.ws.send_text(text)
            except _SEND_ERRORS:
                return
            self.messages_sent += 1
            if published and self.push_delay is not None:
                self.push_delay.observe(time.perf_counter() - published)

    def _send_direct(self, conn: Connection, mtype: str, data: dict[str, Any]) -> None:
        try:
            conn.queue.put_nowait((self.envelope(mtype, data), 0.0))
        except asyncio.QueueFull:
            self._overflow(conn)

    def has_room(self) -> bool:
        """Reserve a slot when one is free (call right before accepting)."""
        if len(self.connections) + self._reserved >= self.max_connections or not self.running:
            self.refused += 1
            return False
        self._reserved += 1
        return True

    async def serve(self, ws: WebSocket) -> None:
        """Run one accepted-to-be connection until it ends (a slot must be reserved)."""
        conn = Connection(ws, self.max_queue)
        try:
            await ws.accept()
        except _SEND_ERRORS:
            self._reserved -= 1
            return
        self._reserved -= 1
        self.connections[conn.id] = conn
        conn.sender = asyncio.get_running_loop().create_task(self._sender(conn))
        self._send_direct(conn, "connection_ack", {"status": "connected", "connectionId": conn.id})
        if self.journal.enabled("DEBUG"):
            self.journal.debug("WebSocket", "Connection opened", connectionId=conn.id)
        try:
            await self._receive_loop(conn)
        finally:
            self.connections.pop(conn.id, None)
            if conn.sender is not None:
                conn.sender.cancel()
            if self.journal.enabled("DEBUG"):
                self.journal.debug("WebSocket", "Connection closed", connectionId=conn.id)

    async def _receive_loop(self, conn: Connection) -> None:
        while True:
            try:
                message = await conn.ws.receive()
            except _SEND_ERRORS:
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                self._send_direct(
                    conn, "error_message", {"error": "binary frames are not supported"}
                )
                continue
            self._handle_client_message(conn, text)

    def _handle_client_message(self, conn: Connection, text: str) -> None:
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            self._send_direct(conn, "error_message", {"error": "message is not valid JSON"})
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            self._send_direct(
                conn, "error_message", {"error": "message must be an object with a string 'type'"}
            )
            return
        mtype = msg["type"]
        if mtype in ("subscribe", "unsubscribe"):
            try:
                sub = parse_subscription(msg.get("data") if mtype == "subscribe" else None)
            except SubscribeError as exc:
                self._send_direct(conn, "error_message", {"error": str(exc)})
                return
            conn.sub = sub
            self._send_direct(
                conn,
                "connection_ack",
                {
                    "status": "subscribed",
                    "connectionId": conn.id,
                    "subscription": sub.describe(),
                },
            )
            return
        self._send_direct(conn, "error_message", {"error": f"unknown message type {mtype[:64]!r}"})

    async def close_all(self, code: int = 1001) -> None:
        """Shutdown: stop senders and close every connection."""
        self.running = False
        if self._delay_timer is not None:
            self._delay_timer.cancel()
            self._delay_timer = None
        self._delayed.clear()
        self._job_due.clear()
        conns = list(self.connections.values())
        self.connections.clear()
        for conn in conns:
            conn.closing = True
            if conn.sender is not None:
                conn.sender.cancel()
        await asyncio.gather(
            *(self._close(c, code, "server shutting down", 2.0) for c in conns),
            return_exceptions=True,
        )
        for task in list(self._closers):
            task.cancel()

    def stats(self) -> dict[str, Any]:
        """The websocket block of the health routes."""
        return {
            "running": self.running,
            "connections": len(self.connections),
            "max_connections": self.max_connections,
            "messages_sent": self.messages_sent,
            "messages_queued": self.messages_queued,
            "messages_published": self.messages_published,
            "messages_dropped": self.messages_dropped,
            "overflow_closes": self.overflow_closes,
            "refused": self.refused,
        }
