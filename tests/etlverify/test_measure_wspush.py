"""WebSocket push measurement against a small in-process ETL-like server (uvicorn, 127.0.0.1)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from etlverify.health import TargetHealth
from etlverify.measure import WsPushResult, measure_ws_push

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.requests import Request


class FakeEtl:
    """Jobs go pending -> running after 20 ms; cancel pushes `cancelled` to subscribers."""

    def __init__(self, *, duplicate: bool = False, drop_on: int | None = None) -> None:
        self.jobs: dict[str, str] = {}
        self.subs: list[tuple[WebSocket, set[str]]] = []
        self.duplicate = duplicate
        self.drop_on = drop_on  # connection index that never gets `cancelled`

    async def push(self, job_id: str, status: str, previous: str) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        msg = {
            "type": "job_status_update",
            "timestamp": now,
            "data": {
                "jobId": job_id,
                "status": status,
                "previousStatus": previous,
                "timestamp": now,
                "progressPercent": 0,
                "currentStep": status,
            },
        }
        for i, (ws, ids) in enumerate(list(self.subs)):
            if job_id not in ids or (status == "cancelled" and i == self.drop_on):
                continue
            await ws.send_json(msg)
            if self.duplicate and status == "cancelled":
                await ws.send_json(msg)

    async def start(self, job_id: str) -> None:
        await asyncio.sleep(0.02)
        if self.jobs.get(job_id) == "pending":
            self.jobs[job_id] = "running"
            await self.push(job_id, "running", "pending")

    async def create(self, request: Request) -> JSONResponse:
        body = await request.json()
        job_id = body["job_id"]
        self.jobs[job_id] = "pending"
        asyncio.get_running_loop().create_task(self.start(job_id))
        return JSONResponse({"job_id": job_id, "status": "pending", "type": "extract"}, 201)

    async def get(self, request: Request) -> JSONResponse:
        job_id = request.path_params["job_id"]
        return JSONResponse({"jobId": job_id, "status": self.jobs[job_id]})

    async def cancel(self, request: Request) -> JSONResponse:
        job_id = request.path_params["job_id"]
        previous = self.jobs[job_id]
        self.jobs[job_id] = "cancelled"
        await self.push(job_id, "cancelled", previous)
        return JSONResponse({"job_id": job_id, "status": "cancelled"})

    async def ws(self, websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"type": "connection_ack", "data": {"status": "connected"}})
        entry: tuple[WebSocket, set[str]] = (websocket, set())
        self.subs.append(entry)
        try:
            while True:
                msg: Any = await websocket.receive_json()
                if msg.get("type") == "subscribe":
                    entry[1].update(msg["data"].get("jobIds", []))
                    await websocket.send_json(
                        {"type": "connection_ack", "data": {"status": "subscribed"}}
                    )
        except WebSocketDisconnect:
            self.subs.remove(entry)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/jobs", self.create, methods=["POST"]),
                Route("/api/jobs/{job_id}", self.get, methods=["GET"]),
                Route("/api/jobs/{job_id}", self.cancel, methods=["PUT"]),
                WebSocketRoute("/ws", self.ws),
            ]
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(fake: FakeEtl) -> Iterator[str]:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(fake.app(), host="127.0.0.1", port=port, log_level="error", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


@pytest.fixture
def fake() -> FakeEtl:
    """The fake server's behaviour; tests may tweak its attributes at any time."""
    return FakeEtl()


@pytest.fixture
def server(fake: FakeEtl) -> Iterator[str]:
    """A uvicorn server for `fake` on a free loopback port, stopped after the test."""
    yield from _serve(fake)


def _measure(host: str, timeout_s: float = 3.0, **kw: Any) -> WsPushResult:
    return asyncio.run(
        measure_ws_push(
            f"ws://{host}/ws",
            f"http://{host}",
            connections=3,
            jobs=2,
            run_before_cancel_s=0.1,
            timeout_s=timeout_s,
            **kw,
        )
    )


def test_push_latency_loss_duplicates_order_on_a_good_server(server: str) -> None:
    result = _measure(server)
    assert result.problems == ()
    assert result.connections == 3
    # Each of 2 jobs was seen running and then cancelled, on each of 3 connections.
    assert result.expected == 12
    assert result.received == 12
    assert (result.lost, result.duplicates, result.out_of_order) == (0, 0, 0)
    assert result.ok
    assert result.cancel_latency.count == 6
    p99 = result.cancel_latency.windows[0].p99_ms
    assert p99 is not None
    assert 0 < p99 < 1000
    assert result.server_latency is not None
    assert result.server_latency.count == 6  # the `running` transitions, server clock
    assert result.messages >= 12
    assert result.messages_per_s > 0
    assert result.to_json()["lost"] == 0


def test_duplicates_and_losses_are_counted(fake: FakeEtl, server: str) -> None:
    # The fake reads these per message, so setting them after start is fine.
    fake.duplicate = True
    fake.drop_on = 1
    # Lost messages never come, so the wait runs to its timeout: keep it short.
    result = _measure(server, timeout_s=1.0, same_host=False)
    assert result.lost == 2  # connection 1 never got either job's `cancelled`
    assert result.duplicates == 4  # connections 0 and 2 got each `cancelled` twice
    assert result.server_latency is None
    assert not result.ok


def test_unreachable_server_is_reported_not_raised() -> None:
    port = _free_port()
    t0 = time.monotonic()
    result = asyncio.run(
        measure_ws_push(
            f"ws://127.0.0.1:{port}/ws",
            f"http://127.0.0.1:{port}",
            connections=2,
            jobs=1,
            run_before_cancel_s=0.0,
            timeout_s=1.0,
        )
    )
    assert time.monotonic() - t0 < 5
    assert result.connections == 0
    assert any("could not open" in p for p in result.problems)
    assert any("POST /api/jobs" in p for p in result.problems)


def _silent_listener() -> tuple[socket.socket, threading.Event]:
    """A loopback port that accepts connections and never answers (a connection cap reached)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            held.append(conn)
        for conn in held:
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return sock, stop


def test_a_target_that_stopped_answering_stops_the_measurement_at_once() -> None:
    """Issue 17 item 2: behind a connection cap every handshake hangs. With the run's health view
    the first hang is probed once, the target is known down, and nothing else is waited for
    (without it: a timeout per connection and per job)."""
    sock, stop = _silent_listener()
    port = sock.getsockname()[1]
    health = TargetHealth(f"http://127.0.0.1:{port}", probe_timeout=0.3)
    try:
        t0 = time.monotonic()
        result = asyncio.run(
            measure_ws_push(
                f"ws://127.0.0.1:{port}/ws",
                f"http://127.0.0.1:{port}",
                connections=10,
                jobs=10,
                run_before_cancel_s=0.0,
                timeout_s=0.5,
                health=health,
            )
        )
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        sock.close()
    assert elapsed < 3.0, elapsed  # one handshake timeout and one probe, not 10 + 10 timeouts
    assert health.down is not None
    assert result.stopped.startswith("the WebSocket push measurement stopped: the target has not")
    assert result.stopped in result.problems
    assert result.problems[0] == "connection 0: could not open (no answer within 0.5 s)"
    assert not any("Error" in p for p in result.problems), result.problems


def test_a_target_known_down_is_not_measured() -> None:
    port = _free_port()
    health = TargetHealth(f"http://127.0.0.1:{port}", probe_timeout=0.3, probe_interval=60)
    assert health.on_no_answer("GET /api/health", "refused", started=time.time()) is not None
    t0 = time.monotonic()
    result = asyncio.run(
        measure_ws_push(
            f"ws://127.0.0.1:{port}/ws",
            f"http://127.0.0.1:{port}",
            connections=3,
            jobs=3,
            timeout_s=2.0,
            health=health,
        )
    )
    assert time.monotonic() - t0 < 0.5
    assert result.connections == 0
    assert "has refused connections since" in result.stopped
