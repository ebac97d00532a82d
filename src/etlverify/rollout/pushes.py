"""The WebSocket manager judged where it lives: the status pushes of jobs a cohort's users create.

Each side (inside, outside) has one `/ws` connection, opened as one of that side's users
(`X-User-Id`), subscribed to `job_status_update` of exactly the job ids its side creates: the
judge names its jobs (`job_id`), so a side subscribes to the next ids before it creates those jobs
and no transition can be missed; the subscription rolls on (every id of a job still expecting a
push, plus the next ones) as the hold goes. Nothing of the other side reaches a connection, so a
push delayed for one side cannot hold up the other's behind it in the same queue.

What is measured per job, in the window its `POST /api/jobs` was sent in (`measure/wspush.py` has
the same two clocks and the same rule for loss):

- *latency*: from just before the `POST /api/jobs` is sent to the receipt of the job's first status
  push. The server's `running` transition has no cause the client can see but the POST, so this is
  the client-side bound of the push delay (it includes the POST's way to the transition), needs no
  clock agreement with the server, and is the same bound on both sides;
- *loss*: every transition the client knows happened must be pushed within `timeout_s` of the
  POST. It knows from the pushes themselves (a terminal push names its `previousStatus`) or, for a
  job without a terminal push in time, from `GET /api/jobs/{id}`. A job with a push missing (or
  late), or whose status cannot be read, is an error of kind `lost`; a job that never left
  `pending` within the timeout is one of kind `no_transition`. So the metric's error rate is the
  share of jobs whose pushes did not all arrive, and its p50 the typical first-push latency.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from etlverify.contract import TERMINAL_STATUSES
from etlverify.measure.histogram import LatencyHistogram

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["PushProbe", "ws_url"]

#: statuses that are not transitions (a job starts in them; nothing is pushed for them)
_INITIAL = frozenset({"pending", "scheduled", ""})
#: the most job ids one subscribe names (the next ones; those still expecting pushes come on top)
_MAX_CHUNK = 1024
#: a subscribe not acknowledged within this long is taken to be in place
_ASSUME_AFTER_S = 0.5


def ws_url(base_url: str) -> str:
    """`http://host:port` -> `ws://host:port/ws`."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + "/ws"
    return "ws://" + base.removeprefix("http://") + "/ws"


@dataclass
class _Job:
    job_id: str
    window: int
    sent: float  # perf_counter just before the POST


@dataclass
class _Push:
    at: float  # perf_counter at receipt
    status: str
    previous: str


@dataclass
class _Side:
    """One side's connection, its rolling subscription and what it received."""

    name: str
    user: str
    prefix: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    ws: ClientConnection | None = None
    reader: threading.Thread | None = None
    closed: str | None = None  # why the connection ended, once it did
    ready: deque[str] = field(default_factory=deque)  # subscribed, not used yet
    waiting: list[str] = field(default_factory=list)  # ids of the subscribe not acknowledged yet
    waiting_since: float = 0.0  # when that subscribe was sent (perf_counter)
    sent_subscribes: int = 0
    acked_subscribes: int = 0
    counter: int = 0
    jobs: dict[str, _Job] = field(default_factory=dict)
    pushes: dict[str, list[_Push]] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)  # jobs whose terminal push arrived
    reopened_in: int = -1  # the window of the last reconnection


class PushProbe:
    """One `/ws` connection per side; creates the side's jobs and times their pushes."""

    def __init__(
        self,
        base_url: str,
        users: Mapping[str, str],
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 2.0,
        chunk: int = 64,
        job_source: str,
    ) -> None:
        self.url = ws_url(base_url)
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.chunk = max(8, min(_MAX_CHUNK, chunk))
        self.job_source = job_source
        run = secrets.token_hex(3)
        # job ids: ^[A-Za-z0-9_-]{1,64}$, and never containing "fail" (contract section 4)
        self.sides = {
            name: _Side(name, user, f"etlvws_{run}_{name[0]}") for name, user in users.items()
        }

    # -- connections -----------------------------------------------------------------------

    def open(self) -> list[str]:
        """Connect and subscribe every side; one line per side that could not (its jobs then
        count as lost: users of that side get no pushes either)."""
        problems = []
        for side in self.sides.values():
            why = self._connect(side)
            if why:
                problems.append(f"{side.name}: {why}")
        return problems

    def _connect(self, side: _Side) -> str | None:
        ws: ClientConnection | None = None
        try:
            ws = connect(
                self.url,
                open_timeout=self.timeout_s,
                close_timeout=1.0,
                additional_headers={**self.headers, "X-User-Id": side.user},
                proxy=None,
                ping_interval=None,
                max_queue=1024,
            )
            ws.__enter__()  # marks the connection as managed (websockets >= 17); close() ends it
            first = json.loads(ws.recv(timeout=self.timeout_s))
        except (OSError, TimeoutError, WebSocketException, ValueError) as exc:
            if ws is not None:
                with contextlib.suppress(Exception):
                    ws.close()
            side.closed = f"cannot connect to {self.url}: {type(exc).__name__}"
            return side.closed
        if not isinstance(first, dict) or first.get("type") != "connection_ack":
            with contextlib.suppress(Exception):
                ws.close()
            side.closed = "the first message was not connection_ack"
            return side.closed
        with side.lock:
            side.ws, side.closed = ws, None
            side.ready.clear()
            side.waiting = []
            side.sent_subscribes = side.acked_subscribes = 0
        side.reader = threading.Thread(
            target=self._read, args=(side, ws), name=f"judge-ws-{side.name}", daemon=True
        )
        side.reader.start()
        self._subscribe(side)
        deadline = time.monotonic() + _ASSUME_AFTER_S
        while time.monotonic() < deadline:
            with side.lock:
                if side.ready or side.closed:
                    break
            time.sleep(0.005)
        with side.lock:
            if side.ready:
                return None
            if side.closed:
                return side.closed
        self._assume_subscribed(side)
        return f"no 'subscribed' acknowledgement within {_ASSUME_AFTER_S:g} s (assumed subscribed)"

    def _assume_subscribed(self, side: _Side) -> None:
        """A subscribe unacknowledged for `_ASSUME_AFTER_S` is taken to be in place: a server
        reads a subscribe as it arrives, and one that loses or delays its answers may well
        deliver pushes (a push it loses is counted as lost)."""
        with side.lock:
            if side.waiting and time.perf_counter() - side.waiting_since >= _ASSUME_AFTER_S:
                side.ready.extend(side.waiting)
                side.waiting = []
                side.acked_subscribes = side.sent_subscribes

    def _read(self, side: _Side, ws: ClientConnection) -> None:
        """The reader thread: timestamps every message as it arrives."""
        why = "closed"
        try:
            while True:
                raw = ws.recv()
                at = time.perf_counter()
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(msg, dict):
                    self._on_message(side, at, msg)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            why = f"the server closed the connection (code {code})" if code else "connection lost"
        except (OSError, RuntimeError, WebSocketException) as exc:
            why = f"connection lost ({type(exc).__name__})"
        with side.lock:
            if side.ws is ws:
                side.closed = why

    @staticmethod
    def _on_message(side: _Side, at: float, msg: Mapping[str, Any]) -> None:
        data = msg.get("data")
        if not isinstance(data, dict):
            return
        kind = msg.get("type")
        with side.lock:
            if kind == "connection_ack" and data.get("status") == "subscribed":
                side.acked_subscribes += 1
                # answered in order: the latest subscribe's answer is the one that counts up to
                # the subscribes sent; a server that echoes the subscription says so directly
                echo = data.get("subscription")
                named = echo.get("jobIds") if isinstance(echo, dict) else None
                listed = isinstance(named, list) and set(side.waiting) <= set(named)
                if side.waiting and (side.acked_subscribes >= side.sent_subscribes or listed):
                    side.ready.extend(side.waiting)
                    side.waiting = []
                    side.acked_subscribes = side.sent_subscribes
            elif kind == "job_status_update":
                job_id = str(data.get("jobId", ""))
                if not job_id.startswith(side.prefix):
                    return  # not this side's (a subscription names this side's jobs only)
                status = str(data.get("status", "")).lower()
                previous = str(data.get("previousStatus", "")).lower()
                side.pushes.setdefault(job_id, []).append(_Push(at, status, previous))
                if status in TERMINAL_STATUSES:
                    side.finished.add(job_id)

    def _subscribe(self, side: _Side) -> None:
        """Subscribe to the next `chunk` ids plus every id still expecting a push (called with
        fewer than half a chunk ready and no subscribe waiting for its acknowledgement)."""
        now = time.perf_counter()
        with side.lock:
            ws = side.ws
            if ws is None or side.closed or side.waiting:
                return
            new = [f"{side.prefix}_{side.counter + i}" for i in range(self.chunk)]
            side.counter += self.chunk
            live = [
                j.job_id
                for j in side.jobs.values()
                if j.job_id not in side.finished and now - j.sent <= self.timeout_s
            ]
            side.waiting = new
            side.waiting_since = now
            side.sent_subscribes += 1
            ids = live + list(side.ready) + new
        message = {
            "type": "subscribe",
            "data": {"jobIds": ids, "messageTypes": ["job_status_update"]},
        }
        try:
            ws.send(json.dumps(message))
        except (OSError, WebSocketException) as exc:
            with side.lock:
                side.closed = f"connection lost ({type(exc).__name__})"

    def _next_id(self, side: _Side, window: int) -> tuple[str | None, str]:
        """A subscribed job id for the side's next job, or (None, why not)."""
        if side.closed and side.reopened_in != window:
            side.reopened_in = window  # at most one reconnection a window
            old = side.ws
            if old is not None:
                with contextlib.suppress(Exception):
                    old.close()
            self._connect(side)
        self._assume_subscribed(side)
        with side.lock:
            if side.closed:
                return None, "ws_closed"
            low = len(side.ready) < self.chunk // 2 and not side.waiting
        if low:
            self._subscribe(side)
        with side.lock:
            if side.ready:
                return side.ready.popleft(), ""
        return None, "not_subscribed"

    def close(self) -> None:
        """Close every connection and stop the readers."""
        for side in self.sides.values():
            with side.lock:
                ws, side.ws = side.ws, None
            if ws is not None:
                with contextlib.suppress(Exception):
                    ws.close()
            if side.reader is not None:
                side.reader.join(timeout=2.0)

    # -- jobs ------------------------------------------------------------------------------

    def create(
        self, client: httpx.Client, side_name: str, user: str, window: int
    ) -> tuple[str, int | None]:
        """Create one job as `user` (of that side). ("", status) when it was created (its
        pushes are judged by `finish`), else (error kind, HTTP status or None)."""
        side = self.sides[side_name]
        job_id, why = self._next_id(side, window)
        if job_id is None:
            return why, None
        body = {
            "type": "EXTRACT",
            "source_config": self.job_source,
            "target_config": "sink=null",
            "job_id": job_id,
        }
        sent = time.perf_counter()
        try:
            resp = client.post("/api/jobs", json=body, headers={"X-User-Id": user})
        except httpx.HTTPError as exc:
            return ("timeout" if isinstance(exc, httpx.TimeoutException) else "transport"), None
        if resp.status_code not in (200, 201):
            return f"http_{resp.status_code}", resp.status_code
        with side.lock:
            side.jobs[job_id] = _Job(job_id, window, sent)
        return "", resp.status_code

    def finish(
        self, client: httpx.Client
    ) -> dict[tuple[str, int], tuple[LatencyHistogram, dict[str, int]]]:
        """Wait (at most `timeout_s` after the last job) for the pushes still due, then judge
        every job: (side, window) -> (first-push latencies, errors by kind)."""
        last = max((j.sent for s in self.sides.values() for j in s.jobs.values()), default=0.0)
        while time.perf_counter() < last + self.timeout_s and self._due():
            time.sleep(0.02)
        out: dict[tuple[str, int], tuple[LatencyHistogram, dict[str, int]]] = {}
        for side in self.sides.values():
            with side.lock:
                jobs = list(side.jobs.values())
                pushes = {k: list(v) for k, v in side.pushes.items()}
            for job in jobs:
                hist, errors = out.setdefault((side.name, job.window), (LatencyHistogram(), {}))
                kind, latency = self._judge_job(client, side, job, pushes.get(job.job_id, []))
                if kind:
                    errors[kind] = errors.get(kind, 0) + 1
                elif latency is not None:
                    hist.record_s(latency)
        return out

    def _due(self) -> bool:
        """True while a job of either side has not had its terminal push."""
        for side in self.sides.values():
            with side.lock:
                if any(j not in side.finished for j in side.jobs):
                    return True
        return False

    def _judge_job(
        self, client: httpx.Client, side: _Side, job: _Job, pushes: list[_Push]
    ) -> tuple[str, float | None]:
        """(error kind or "", first-push latency) of one job."""
        in_time = [p for p in pushes if p.at - job.sent <= self.timeout_s]
        seen = {p.status for p in in_time}
        if seen & TERMINAL_STATUSES:
            expected = seen | {p.previous for p in in_time if p.status in TERMINAL_STATUSES}
        else:
            status = self._status(client, side, job.job_id)
            if status is None:
                return "lost", None  # its status cannot be read: fail closed
            expected = set(seen)
            if status in ("completed", "failed"):
                expected |= {"running", status}
            elif status in ("running", "cancelled"):
                expected.add(status)
        expected -= _INITIAL
        if expected - seen:
            return "lost", None
        if not in_time:
            return "no_transition", None
        return "", min(p.at for p in in_time) - job.sent

    def _status(self, client: httpx.Client, side: _Side, job_id: str) -> str | None:
        try:
            resp = client.get(f"/api/jobs/{job_id}", headers={"X-User-Id": side.user})
            body = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        if not isinstance(body, dict):
            return None
        return str(body.get("status", "")).lower() or None
