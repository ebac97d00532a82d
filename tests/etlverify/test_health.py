"""The health view of a target and the client's fail-fast, keep-alive and pacing behaviour, against
small real servers on loopback (a silent one, a refusing port, one that hangs a reused connection
after an error, one that rate-limits)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from etlverify.client import EtlClient
from etlverify.errors import TargetError
from etlverify.health import (
    EventKind,
    TargetBlocked,
    TargetHealth,
    log_error_lines,
    plain_reason,
)
from etlverify.report.causes import FailureFact, diagnose

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


class _Server:
    """A raw TCP server on 127.0.0.1; `handle(conn, number)` serves one accepted connection."""

    def __init__(self, handle: Callable[[socket.socket, int], None]) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.handle = handle
        self.accepted = 0
        self.open: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self.open.append(conn)
            threading.Thread(target=self.handle, args=(conn, self.accepted), daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for conn in self.open:
            with contextlib.suppress(OSError):
                conn.close()
        self.sock.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    conn.settimeout(5)
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return b""
        data += chunk
    return data


def _answer(status: int, body: bytes = b"{}", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{extra}\r\n"
    ).encode() + body


@pytest.fixture
def server_factory() -> Iterator[Callable[[Callable[[socket.socket, int], None]], _Server]]:
    servers: list[_Server] = []

    def make(handle: Callable[[socket.socket, int], None]) -> _Server:
        servers.append(_Server(handle))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def _closed_port_url() -> str:
    """A loopback URL nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _silent(conn: socket.socket, number: int) -> None:
    """Accept, read, never answer (a target that stopped answering)."""
    with contextlib.suppress(OSError):
        while conn.recv(4096):
            pass


def test_a_silent_target_is_waited_on_once_then_blocked_at_once(server_factory: Callable) -> None:
    server = server_factory(_silent)
    health = TargetHealth(server.url, probe_timeout=0.5, probe_interval=60)
    client = EtlClient(server.url, timeout=1.0, health=health)
    with pytest.raises(TargetError) as first:
        client.get("/api/health")
    assert first.value.kind == "timeout"
    down = health.down
    assert down is not None
    assert down.kind is EventKind.NOT_ANSWERING
    started = time.perf_counter()
    with pytest.raises(TargetBlocked) as blocked:
        client.get("/api/jobs")
    assert time.perf_counter() - started < 0.2
    text = str(blocked.value)
    assert text.startswith("blocked: GET /api/jobs not sent: the target has not answered since")
    assert "after 1 requests over 1 connections" in text
    client.close()


def test_a_refusing_port_is_gone(server_factory: Callable) -> None:
    url = _closed_port_url()
    health = TargetHealth(url, probe_timeout=0.5)
    with EtlClient(url, timeout=1.0, health=health) as client, pytest.raises(TargetError):
        client.get("/api/health")
    assert health.down is not None
    assert health.down.kind is EventKind.GONE
    assert health.state().startswith("gone since")


def test_a_recovered_target_is_used_again(server_factory: Callable) -> None:
    answering = threading.Event()

    def handle(conn: socket.socket, number: int) -> None:
        with contextlib.suppress(OSError):
            while _read_request(conn):
                if not answering.is_set():
                    _silent(conn, number)
                    return
                conn.sendall(_answer(200))

    server = server_factory(handle)
    health = TargetHealth(server.url, probe_timeout=0.5, probe_interval=0.2)
    client = EtlClient(server.url, timeout=1.0, health=health)
    with pytest.raises(TargetError):
        client.get("/api/health")
    assert health.down is not None
    answering.set()
    time.sleep(0.3)
    assert client.get("/api/health").status_code == 200
    assert health.down is None
    assert [e.kind for e in health.events] == [EventKind.NOT_ANSWERING, EventKind.RECOVERED]
    client.close()


def test_a_hang_on_a_reused_connection_after_an_error_switches_to_fresh_connections(
    server_factory: Callable,
) -> None:
    def handle(conn: socket.socket, number: int) -> None:
        errored = False
        with contextlib.suppress(OSError):
            while request := _read_request(conn):
                if errored:
                    _silent(conn, number)
                    return
                if b"/missing" in request:
                    errored = True
                    conn.sendall(_answer(404, b'{"status": "error"}'))
                else:
                    conn.sendall(_answer(200))

    server = server_factory(handle)
    health = TargetHealth(server.url, probe_timeout=0.5)
    client = EtlClient(server.url, timeout=1.0, health=health)
    assert client.get("/missing").status_code == 404
    with pytest.raises(TargetError) as hung:
        client.get("/api/health")
    assert "reused after an HTTP 404 answer" in str(hung.value)
    assert health.fresh_connections
    assert health.events[-1].kind is EventKind.KEEPALIVE_HANG
    assert health.down is None
    # from now on every request has its own connection: an error no longer poisons the next one
    assert client.get("/missing").status_code == 404
    assert client.get("/api/health").status_code == 200
    client.close()


def test_a_429_is_waited_out_and_counted(server_factory: Callable) -> None:
    def handle(conn: socket.socket, number: int) -> None:
        with contextlib.suppress(OSError):
            while _read_request(conn):
                if number == 1:
                    limit = "X-RateLimit-Limit: 2\r\nRetry-After: 1\r\n"
                    conn.sendall(_answer(429, b'{"code": "RATE_LIMIT_EXCEEDED"}', limit))
                else:
                    conn.sendall(_answer(200))
                conn.close()
                return

    server = server_factory(handle)
    client = EtlClient(server.url, timeout=2.0, health=TargetHealth(server.url))
    started = time.perf_counter()
    assert client.get("/api/jobs").status_code == 200
    assert 0.9 < time.perf_counter() - started < 3
    pacing = client.pacing["/api/jobs"]
    assert (pacing.waits, pacing.limit, pacing.refused) == (1, "2", 0)
    assert pacing.line().startswith("/api/jobs: limit 2 per window; paced 1 time(s)")
    client.close()


def test_without_pacing_a_429_is_returned(server_factory: Callable) -> None:
    def handle(conn: socket.socket, number: int) -> None:
        with contextlib.suppress(OSError):
            if _read_request(conn):
                conn.sendall(_answer(429, b"{}", "Retry-After: 1\r\n"))

    server = server_factory(handle)
    client = EtlClient(server.url, timeout=2.0, health=TargetHealth(server.url), pace=False)
    assert client.get("/api/jobs").status_code == 429
    client.close()


def test_planned_downtime_blocks_nothing(server_factory: Callable) -> None:
    url = _closed_port_url()
    health = TargetHealth(url, probe_timeout=0.5)
    client = EtlClient(url, timeout=1.0, health=health)
    with health.planned("restart"), pytest.raises(TargetError):
        client.get("/api/health")
    client.close()
    assert health.down is None
    assert health.events == []


# -- the target's last moments (issue 17 item 4) ------------------------------------------------


class _GoneHealth(TargetHealth):
    """A health view whose probe finds the target gone (no network needed)."""

    def probe(self) -> str | None:
        return "connection refused"


def _exits_after_first_job() -> httpx.MockTransport:
    """Answers until a job is created and one more request, then refuses connections."""
    state = {"job": False, "after": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if state["job"]:
            state["after"] += 1
            if state["after"] > 1:
                raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if request.method == "POST" and request.url.path == "/api/jobs":
            state["job"] = True
            return httpx.Response(201, json={"job_id": "job_1a2b", "status": "pending"})
        return httpx.Response(200, json={"status": "ok"})

    return httpx.MockTransport(handler)


def test_a_target_that_goes_away_names_its_last_moments_and_log(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "etlplus.log").write_text(
        "[2026-12-07 22:58:01.100] [INFO] [Jobs] job job_1a2b created\n"
        "[2026-12-07 22:58:01.101] [ERROR] [Db] slow commit\n"
        "[2026-12-07 22:58:01.102] [FATAL] [Faults] Hostile exit armed: exiting with status 70 "
        "in 1 s (first job job_1a2b)\n",
        encoding="utf-8",
    )
    health = _GoneHealth("http://target.test")
    health.log_reader = lambda: log_error_lines(tmp_path)
    client = EtlClient(
        "http://target.test", timeout=1.0, health=health, transport=_exits_after_first_job()
    )
    client.get("/api/health")
    client.post("/api/jobs", json={"type": "EXTRACT"})
    client.get("/api/jobs/job_1a2b")
    with pytest.raises(TargetError) as failed:
        client.get("/api/jobs/job_1a2b/status")
    assert "ConnectError" not in str(failed.value)
    down = health.down
    assert down is not None
    assert down.kind is EventKind.GONE
    assert re.fullmatch(
        r"the target went away about \d+\.\d s after POST /api/jobs created job_1a2b \(the first "
        r"job of the run\); its last answer: GET /api/jobs/job_1a2b 200, \d+\.\d s before; the "
        r"requests answered just before: GET /api/health 200; the first failure after it: GET "
        r"/api/jobs/job_1a2b/status: connection refused",
        down.moments,
    ), down.moments
    assert [a.what for a in down.last_requests] == [
        "GET /api/health",
        "POST /api/jobs",
        "GET /api/jobs/job_1a2b",
    ]
    assert len(down.log) == 2
    assert down.log[-1].endswith(
        "[FATAL] [Faults] Hostile exit armed: exiting with status 70 in 1 s (first job job_1a2b)"
    )
    data = down.to_json()
    assert data["last_requests"][1] == {
        "at_epoch": data["last_requests"][1]["at_epoch"],
        "request": "POST /api/jobs",
        "status": 201,
        "job_id": "job_1a2b",
    }
    # the finding that leads the report says it
    fact = FailureFact("t.py::test_status", "test_status", "transport", "x", down.at, event=data)
    sentence = diagnose([fact])[0].sentence
    assert sentence.startswith("the target stopped accepting connections at ")
    assert "Last moments: the target went away about" in sentence
    assert "The last ERROR/FATAL lines of its log: [2026-12-07 22:58:01.101] [ERROR]" in sentence
    client.close()


def test_log_error_lines_reads_json_logs_and_the_configured_file(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(
        json.dumps({"logging": {"log_file": "var/server.log"}}), encoding="utf-8"
    )
    (tmp_path / "var").mkdir()
    lines = [
        {"timestamp": "t1", "level": "INFO", "component": "A", "message": "fine"},
        {"timestamp": "t2", "level": "FATAL", "component": "B", "message": "gone"},
    ]
    (tmp_path / "var" / "server.log").write_text(
        "\n".join(json.dumps(x) for x in lines) + "\nnot json\n", encoding="utf-8"
    )
    assert log_error_lines(tmp_path) == ["[t2] [FATAL] [B] gone"]
    assert log_error_lines(tmp_path / "missing") == []


def test_plain_reasons_never_name_an_exception_class() -> None:
    assert plain_reason(ConnectionRefusedError(111, "Connection refused")) == "connection refused"
    assert plain_reason(ConnectionResetError(104, "reset")) == "the connection was reset"
    assert plain_reason(OSError(113, "No route to host")) == "No route to host"
    assert plain_reason(OSError()) == "the connection failed"
