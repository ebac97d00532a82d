"""WebSocket push measurement: latency, throughput, loss, duplicates and order of job updates.

`measure_ws_push` opens N connections to `/ws`, subscribes each to a set of job ids chosen by the
client (so the subscription exists before the jobs do and no transition can be missed), creates the
jobs over REST, lets them start, cancels them, and waits for the pushes.

Which clock measures push latency:
- For a cancel, the causing event is our own REST call, so the latency is *client-side*: from just
  before the `PUT /api/jobs/{id}` is sent to the receipt of the `cancelled` update on each
  connection (`cancel_latency`). It includes the REST round trip up to the server's transition,
  which makes it an upper bound of the push delay, and needs no clock agreement with the server.
- For server-driven transitions (`pending -> running`, completion) nothing of ours causes them, so
  the latency is receipt time minus the message's `data.timestamp`. That compares two clocks and is
  recorded (`server_latency`) only when `same_host=True`.
Loss is counted against the transitions the client *knows* happened: every status seen over REST
(other than the initial `pending`) and every accepted cancel must reach every connection once.

With the run's `TargetHealth` (`health=`) the measurement consults it before every connection
and request (`etlverify.measure.guard`): a handshake that does not complete, a refused connection
or a request without an answer is reported to it, and once the target is known to be down (or its
WebSocket handshakes hang) the measurement stops at once, `stopped` saying why, instead of waiting
out a timeout per connection and per job. Problems are lines for people: what failed and why, never
an exception class name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from etlverify.health import plain_reason
from etlverify.measure.guard import HealthGuard
from etlverify.measure.histogram import LatencyRecorder

if TYPE_CHECKING:
    from collections.abc import Mapping

    from etlverify.health import TargetHealth
    from etlverify.measure.results import MetricResult

__all__ = ["WsPushResult", "measure_ws_push"]

_RANK = {"pending": 0, "scheduled": 0, "running": 1, "completed": 2, "failed": 2, "cancelled": 2}


@dataclass(frozen=True)
class WsPushResult:
    """Outcome of one push measurement; `problems` lists what went wrong, one line each."""

    connections: int
    jobs: int
    expected: int
    received: int
    lost: int
    duplicates: int
    out_of_order: int
    messages: int
    duration_s: float
    messages_per_s: float
    cancel_latency: MetricResult
    server_latency: MetricResult | None
    problems: tuple[str, ...] = ()
    #: why the measurement stopped before its end (the target was known to be down), else ""
    stopped: str = ""

    @property
    def ok(self) -> bool:
        """No loss, duplicate, disorder or problem."""
        return not (self.lost or self.duplicates or self.out_of_order or self.problems)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "connections": self.connections,
            "jobs": self.jobs,
            "expected": self.expected,
            "received": self.received,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "messages": self.messages,
            "duration_s": self.duration_s,
            "messages_per_s": self.messages_per_s,
            "cancel_latency": self.cancel_latency.to_json(),
            "server_latency": None
            if self.server_latency is None
            else self.server_latency.to_json(),
            "problems": list(self.problems),
            "stopped": self.stopped,
        }


class _NoAck(Exception):
    """The handshake completed but no first message came in time."""


def _why(exc: BaseException, timeout_s: float) -> str:
    """Why a WebSocket or HTTP step failed, in words (no exception class name)."""
    if isinstance(exc, _NoAck):
        return f"opened, but no first message within {timeout_s:g} s"
    if isinstance(exc, InvalidStatus):
        return f"the handshake was refused with HTTP {exc.response.status_code}"
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, ConnectionClosed):
        return "the server closed the connection"
    if isinstance(exc, InvalidHandshake):
        return "the handshake was not valid"
    if isinstance(exc, httpx.ConnectError) and "refused" in str(exc).lower():
        return "connection refused"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the connection was dropped or the answer was broken"
    if isinstance(exc, ValueError):
        return "a message was not JSON"
    return plain_reason(exc)


def _parse_ts(value: object) -> float | None:
    """Epoch seconds of an ISO-8601 timestamp (naive means UTC); None when unparsable."""
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


@dataclass
class _Received:
    conn: int
    perf: float
    wall: float
    message: dict[str, Any]


async def _open(
    url: str, headers: Mapping[str, str] | None, timeout_s: float
) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(
        url,
        open_timeout=timeout_s,
        close_timeout=1.0,
        additional_headers=dict(headers or {}),
        proxy=None,
        ping_interval=None,
    )
    try:
        ack = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
    except TimeoutError:
        await ws.close()
        raise _NoAck from None  # the handshake completed: not a handshake hang
    except BaseException:
        await ws.close()
        raise
    return ws, ack if isinstance(ack, dict) else {}


async def _subscribe(ws: ClientConnection, job_ids: list[str], timeout_s: float) -> bool:
    await ws.send(
        json.dumps(
            {
                "type": "subscribe",
                "data": {"jobIds": job_ids, "messageTypes": ["job_status_update"]},
            }
        )
    )
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        msg = json.loads(await asyncio.wait_for(ws.recv(), left))
        data = msg.get("data") if isinstance(msg, dict) else None
        is_ack = isinstance(msg, dict) and msg.get("type") == "connection_ack"
        if is_ack and isinstance(data, dict) and data.get("status") == "subscribed":
            return True
    return False


async def _reader(ws: ClientConnection, conn: int, sink: list[_Received]) -> None:
    with contextlib.suppress(Exception):
        async for raw in ws:
            perf, wall = time.perf_counter(), time.time()
            try:
                msg = json.loads(raw)
            except ValueError:
                msg = {"type": "<unparsable>"}
            sink.append(_Received(conn, perf, wall, msg if isinstance(msg, dict) else {}))


async def measure_ws_push(
    ws_url: str,
    http_base: str,
    *,
    connections: int = 4,
    jobs: int = 3,
    job_type: str = "EXTRACT",
    source_config: str = "rows=100000;batch=100;delay_ms=50",
    target_config: str = "sink=null",
    run_before_cancel_s: float = 0.3,
    timeout_s: float = 5.0,
    same_host: bool = True,
    headers: Mapping[str, str] | None = None,
    job_prefix: str = "wsprobe",
    transport: httpx.AsyncBaseTransport | None = None,
    health: TargetHealth | None = None,
) -> WsPushResult:
    """Measure job-status push delivery over `connections` WebSockets for `jobs` cancelled jobs.

    Bounded in time: every connect, receive, REST call and the final wait use `timeout_s`. Failures
    of the target become `problems` lines, never exceptions. With `health`, it stops at once when
    the target is known to be down or its WebSocket handshakes hang (`stopped` says why).
    """
    guard = HealthGuard(health, "the WebSocket push measurement")
    problems: list[str] = []
    job_ids = [f"{job_prefix}_{secrets.token_hex(4)}_{i}" for i in range(jobs)]
    sockets: list[ClientConnection] = []
    sink: list[_Received] = []
    readers: list[asyncio.Task[None]] = []
    cancel_sent: dict[str, float] = {}
    expected: set[tuple[int, str, str]] = set()
    t0 = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=http_base,
        headers=dict(headers or {}),
        timeout=timeout_s,
        transport=transport,
        trust_env=False,
    ) as http:
        ws_what = f"WebSocket {ws_url}"

        async def rest(
            method: str, path: str, payload: dict[str, Any] | None = None
        ) -> httpx.Response | None:
            """One REST call through the guard; None (and a problem line) without an answer."""
            if guard.should_stop():
                return None
            what = f"{method} {path}"
            started = time.time()
            guard.sent()
            try:
                resp = await http.request(
                    method, path, json=payload, extensions=dict(guard.trace())
                )
            except httpx.HTTPError as exc:
                problems.append(f"{what}: {_why(exc, timeout_s)}")
                await guard.no_answer(what, exc, started)
                return None
            job = ""
            if method == "POST" and resp.status_code in (200, 201):
                with contextlib.suppress(ValueError, AttributeError):
                    job = str(resp.json().get("job_id", ""))
            guard.answered(what, resp.status_code, job)
            return resp

        try:
            for c in range(connections):
                if guard.should_stop(websocket=True):
                    break
                guard.sent()
                guard.connected()
                started = time.time()
                try:
                    ws, ack = await _open(ws_url, headers, timeout_s)
                except Exception as exc:
                    problems.append(f"connection {c}: could not open ({_why(exc, timeout_s)})")
                    if isinstance(exc, TimeoutError):
                        await guard.handshake_failed(ws_what, started)
                    elif isinstance(exc, OSError):
                        await guard.no_answer(ws_what, exc, started)
                    continue
                if ack.get("type") != "connection_ack":
                    problems.append(f"connection {c}: first message is {ack.get('type')!r}")
                try:
                    if not await _subscribe(ws, job_ids, timeout_s):
                        problems.append(f"connection {c}: no 'subscribed' ack")
                except Exception as exc:
                    problems.append(f"connection {c}: subscribe failed ({_why(exc, timeout_s)})")
                sockets.append(ws)
                readers.append(asyncio.create_task(_reader(ws, len(sockets) - 1, sink)))
            body = {
                "type": job_type,
                "source_config": source_config,
                "target_config": target_config,
            }
            created = []
            for job_id in job_ids:
                resp = await rest("POST", "/api/jobs", {**body, "job_id": job_id})
                if resp is None:
                    if guard.should_stop():
                        break
                    continue
                if resp.status_code in (200, 201):
                    created.append(job_id)
                else:
                    problems.append(f"POST /api/jobs {job_id}: HTTP {resp.status_code}")
            if not guard.should_stop(websocket=True):
                await asyncio.sleep(run_before_cancel_s)
            for job_id in created:
                if guard.should_stop():
                    break
                seen: set[str] = set()
                got = await rest("GET", f"/api/jobs/{job_id}")
                if got is not None and got.status_code == 200:
                    with contextlib.suppress(ValueError, AttributeError):
                        seen.add(str(got.json().get("status", "")).lower())
                cancel_sent[job_id] = time.perf_counter()
                resp = await rest("PUT", f"/api/jobs/{job_id}", {"status": "cancelled"})
                if resp is None:
                    continue
                if resp.status_code == 200:
                    seen.add("cancelled")
                elif resp.status_code != 409:
                    problems.append(f"PUT /api/jobs/{job_id}: HTTP {resp.status_code}")
                for status in seen - {"pending", "scheduled", ""}:
                    expected.update((c, job_id, status) for c in range(len(sockets)))
            # Wait until every expected transition arrived, or the timeout.
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and not guard.should_stop(websocket=True):
                got_keys = {
                    (r.conn, str(r.message.get("data", {}).get("jobId")), _status(r.message))
                    for r in sink
                }
                if expected <= got_keys:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # let duplicates that trail the last update arrive
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            for ws in sockets:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 2.0)
    if guard.stopped:
        problems.append(guard.stopped)
    result = _analyse(
        sink, expected, cancel_sent, set(job_ids), len(sockets), t0, same_host, problems
    )
    return replace(result, stopped=guard.stopped) if guard.stopped else result


def _status(message: Mapping[str, Any]) -> str:
    data = message.get("data")
    if message.get("type") != "job_status_update" or not isinstance(data, dict):
        return ""
    return str(data.get("status", "")).lower()


def _analyse(  # noqa: PLR0917 - private helper, called once
    sink: list[_Received],
    expected: set[tuple[int, str, str]],
    cancel_sent: Mapping[str, float],
    job_ids: set[str],
    n_conns: int,
    t0: float,
    same_host: bool,
    problems: list[str],
) -> WsPushResult:
    cancel_rec = LatencyRecorder()
    cancel_rec.touch("ws push cancel")
    server_rec = LatencyRecorder()
    server_rec.touch("ws push server transition")
    counts: Counter[tuple[int, str, str]] = Counter()
    last_rank: dict[tuple[int, str], int] = {}
    out_of_order = 0
    for r in sorted(sink, key=lambda r: r.perf):
        status = _status(r.message)
        data = r.message.get("data")
        job_id = str(data.get("jobId")) if isinstance(data, dict) else ""
        if not status or job_id not in job_ids:
            continue
        key = (r.conn, job_id, status)
        counts[key] += 1
        if counts[key] > 1:
            continue
        rank = _RANK.get(status, 1)
        prev = last_rank.get((r.conn, job_id), -1)
        # A status whose lifecycle rank is lower than one already seen (or a second terminal state)
        # went back in time.
        if rank < prev or (rank == prev == 2):
            out_of_order += 1
        last_rank[(r.conn, job_id)] = max(prev, rank)
        if status == "cancelled" and job_id in cancel_sent:
            cancel_rec.record("ws push cancel", r.perf - cancel_sent[job_id])
        elif same_host and isinstance(data, dict):
            ts = _parse_ts(data.get("timestamp"))
            if ts is not None:
                server_rec.record("ws push server transition", max(0.0, r.wall - ts))
    received = sum(1 for k in expected if counts[k] > 0)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    span = (max(r.perf for r in sink) - t0) if sink else 0.0
    return WsPushResult(
        connections=n_conns,
        jobs=len(job_ids),
        expected=len(expected),
        received=received,
        lost=len(expected) - received,
        duplicates=duplicates,
        out_of_order=out_of_order,
        messages=len(sink),
        duration_s=round(span, 6),
        messages_per_s=round(len(sink) / span, 3) if span > 0 else 0.0,
        cancel_latency=cancel_rec.result("ws push cancel"),
        server_latency=server_rec.result("ws push server transition") if same_host else None,
        problems=tuple(problems),
    )
