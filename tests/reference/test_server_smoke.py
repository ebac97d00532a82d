"""Smoke test of the reference server core: a real uvicorn on a free port, HTTP and WebSocket."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn
from websockets.sync.client import connect

from etlplus_reference.app import create_app
from etlplus_reference.config import ConfigError, load_config
from etlplus_reference.flags import fnv1a_bucket
from etlplus_reference.root import init_root, write_json_atomic

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class _Running:
    def __init__(self, root: Path, base: str, ws: str) -> None:
        self.root = root
        self.base = base
        self.ws = ws


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Running]:
    """A reference server on 127.0.0.1 and a kernel-chosen port, stopped after the module."""
    root = tmp_path_factory.mktemp("deploy")
    dep = init_root(root, force=True)
    cfg = json.loads(dep.config_file.read_text())
    cfg["rate_limits"]["enabled"] = False  # the smoke test polls more than 30 times a minute
    write_json_atomic(dep.config_file, cfg)
    app = create_app(root)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound before uvicorn starts: no race for the port
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_level="warning", ws="websockets-sansio")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("reference server did not start")
        time.sleep(0.02)
    try:
        yield _Running(root, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws")
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.mark.parametrize(
    ("user", "bucket"),
    [("user1", 64.51), ("user2", 46.62), ("alice", 63.25), ("bob", 54.58), ("", 56.03)],
)
def test_fnv_bucket_known_values(user: str, bucket: float) -> None:
    assert fnv1a_bucket(user) == bucket


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    dep = init_root(tmp_path / "d")
    cfg = json.loads(dep.config_file.read_text())
    cfg["logging"]["level"] = "LOUD"
    write_json_atomic(dep.config_file, cfg)
    with pytest.raises(ConfigError) as info:
        load_config(dep.config_file)
    assert str(info.value) == (
        "config/config.json: logging.level must be one of DEBUG, INFO, WARN, ERROR, FATAL, "
        "got 'LOUD'"
    )


def test_health_routes(server: _Running) -> None:
    with httpx.Client(base_url=server.base, timeout=5) as client:
        r = client.get("/api/health")
        assert r.status_code == 200
        assert r.json()["status"] == "healthy"
        assert 8 <= len(r.headers["x-correlation-id"]) <= 32
        ready = client.get("/api/health/ready").json()
        assert ready["status"] == "ready"
        metrics = client.get("/api/health/metrics").json()["metrics"]
        assert metrics["database"]["connection_failures"] == 0
        assert metrics["requests"]["total"] >= 2
        status = client.get("/api/health/status").json()
        assert len(status["config"]["sha256"]) == 64


def test_unknown_route_error_body_and_log(server: _Running) -> None:
    with httpx.Client(base_url=server.base, timeout=5) as client:
        r = client.get("/api/no/such/route", headers={"X-Correlation-ID": "abcdef0123456789"})
    assert r.status_code == 404
    body = r.json()
    assert body["status"] == "error"
    assert body["code"] == "NOT_FOUND"
    assert body["correlationId"] == "abcdef0123456789"
    assert r.headers["x-correlation-id"] == "abcdef0123456789"
    assert set(body) == {"status", "code", "message", "correlationId", "timestamp", "context"}
    log = (server.root / "logs" / "etlplus.log").read_text()
    assert "correlationId=abcdef0123456789" in log


def test_job_runs_to_completion_with_websocket_pushes(server: _Running) -> None:
    statuses: list[tuple[str, str]] = []
    with connect(server.ws, open_timeout=5) as ws, httpx.Client(base_url=server.base) as client:
        ack = json.loads(ws.recv(timeout=5))
        assert ack["type"] == "connection_ack"
        assert ack["data"]["status"] == "connected"
        ws.send(json.dumps({"type": "subscribe", "data": {"jobIds": ["smoke_1"]}}))
        assert json.loads(ws.recv(timeout=5))["data"]["status"] == "subscribed"
        r = client.post(
            "/api/jobs",
            json={
                "type": "full_etl",
                "source_config": "rows=300;batch=100;delay_ms=5;fail_every=10",
                "target_config": "db://smoke",
                "job_id": "smoke_1",
            },
        )
        assert r.status_code == 201
        assert r.json() == {"job_id": "smoke_1", "status": "pending", "type": "full_etl"}
        progress = 0
        while not statuses or statuses[-1][0] not in ("completed", "failed", "cancelled"):
            msg: dict[str, Any] = json.loads(ws.recv(timeout=5))
            assert msg["targetJobId"] == "smoke_1"
            if msg["type"] == "job_status_update":
                statuses.append((msg["data"]["previousStatus"], msg["data"]["status"])[::-1])
            elif msg["type"] == "job_progress_update":
                assert msg["data"]["progressPercent"] >= progress
                progress = msg["data"]["progressPercent"]
        job = client.get("/api/jobs/smoke_1").json()
    assert statuses == [("running", "pending"), ("completed", "running")]
    assert job["status"] == "completed"
    assert job["progressPercent"] == 100
    assert job["recordsProcessed"] == 300
    assert job["recordsFailed"] == 30
    assert job["completedAt"].endswith("Z")


def test_log_rotation_keeps_whole_lines(tmp_path: Path) -> None:
    from etlplus_reference.logs import Logger

    journal = Logger(tmp_path / "etlplus.log", max_file_size=300, max_backup_files=2)
    for i in range(40):
        journal.info("Test", f"line {i:03d}", k="v w")
    journal.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["etlplus.log", "etlplus.log.1", "etlplus.log.2"]
    numbers = []
    for name in ("etlplus.log.2", "etlplus.log.1", "etlplus.log"):
        data = (tmp_path / name).read_text()
        assert len(data.encode()) <= 300
        assert data.endswith("\n")
        for line in data.splitlines():
            assert line.startswith("[")
            assert '| k="v w"' in line
            numbers.append(int(line.split("line ")[1][:3]))
    assert numbers == list(range(numbers[0], 40))  # newest lines, in order, none lost or split
