"""Fault injection of the reference target (`serve --enable-faults`, route `/api/_faults`).

Not a contract section: the reference's own switch that lets the suite prove it notices a target
that breaks the contract. Off by default; with it on, each fault must really break what it names.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import httpx
import pytest
from contract_support import (
    HTTP_TIMEOUT,
    TERMINAL,
    Api,
    LogReader,
    TargetFactory,
    assert_error,
    drain,
    file_sha256,
    is_status,
    poll_until,
    recv_until,
    start_target,
    ws_connect,
)

from etlplus_reference.root import default_flags, write_json_atomic

if TYPE_CHECKING:
    from collections.abc import Iterator

    from etlverify.embedded import EmbeddedTarget

pytestmark = pytest.mark.timeout(60)

FAULTS = "/api/_faults"


@pytest.fixture(scope="module")
def faulty() -> Iterator[EmbeddedTarget]:
    """A reference server started with --enable-faults."""
    target = start_target(enable_faults=True)
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture
def fapi(faulty: EmbeddedTarget) -> Iterator[Api]:
    """A client of the faulty server; every fault is cleared before and after the test."""
    with Api(faulty) as client:
        assert client.request("DELETE", FAULTS).status_code == 200
        yield client
        assert client.request("DELETE", FAULTS).status_code == 200


def _set(api: Api, **settings: object) -> dict[str, object]:
    r = api.post(FAULTS, json=settings)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_faults_off_by_default(api: Api, reference: EmbeddedTarget, method: str) -> None:
    """Without --enable-faults, /api/_faults is an unknown route (404) and nothing is injected."""
    kw = {"json": {"crash": True, "errors": {"fraction": 1.0}}} if method == "POST" else {}
    assert_error(api.request(method, FAULTS, **kw), 404, "NOT_FOUND")
    time.sleep(0.3)
    assert reference.process is not None
    assert reference.process.poll() is None, "the server exited"
    assert api.get("/api/jobs").status_code == 200


def test_faults_snapshot(fapi: Api) -> None:
    """With --enable-faults, GET /api/_faults shows the settings, all off."""
    body = fapi.get_json(FAULTS)
    assert body["active"] is False, body
    for key in (
        "latency",
        "errors",
        "websocket",
        "database_failures",
        "crash",
        "ignore_flag_changes",
        "ignore_config_changes",
    ):
        assert key in body, (key, body)
    assert body["crash"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"latency": {"ms": -1}}, "latency.ms"),
        ({"errors": {"fraction": 2}}, "errors.fraction"),
        ({"errors": {"status": 418}}, "errors.status"),
        ({"latency": {"nope": 1}}, "latency.nope"),
        ({"crash": "yes"}, "crash"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_fault_settings_are_400(fapi: Api, body: dict[str, object], field: str) -> None:
    """A bad fault setting is a 400 naming the field, and changes nothing."""
    r = fapi.post(FAULTS, json=body)
    assert_error(r, 400, {"INVALID_INPUT", "INVALID_RANGE"}, field=field)
    assert fapi.get_json(FAULTS)["active"] is False


def test_latency(fapi: Api) -> None:
    """latency.ms delays API routes (not health) until cleared."""
    _set(fapi, latency={"ms": 300})
    t0 = time.perf_counter()
    assert fapi.get("/api/jobs").status_code == 200
    assert time.perf_counter() - t0 >= 0.3
    t0 = time.perf_counter()
    assert fapi.get("/api/health").status_code == 200
    assert time.perf_counter() - t0 < 0.3
    fapi.request("DELETE", FAULTS)
    t0 = time.perf_counter()
    assert fapi.get("/api/jobs").status_code == 200
    assert time.perf_counter() - t0 < 0.3


@pytest.mark.parametrize(
    ("status", "code"),
    [(500, "INTERNAL_ERROR"), (503, "COMPONENT_UNAVAILABLE"), (404, "NOT_FOUND")],
)
def test_error_injection(fapi: Api, faulty: EmbeddedTarget, status: int, code: str) -> None:
    """errors.fraction 1 turns every API answer into a contract error of errors.status, logged."""
    before = fapi.get_json("/api/health/metrics")["metrics"]["requests"]["errors"]
    _set(fapi, errors={"fraction": 1.0, "status": status})
    bodies = [assert_error(fapi.get("/api/jobs"), status, code) for _ in range(3)]
    assert fapi.get("/api/health").status_code == 200, "health is not under the default prefix"
    after = fapi.get_json("/api/health/metrics")["metrics"]["requests"]["errors"]
    assert after - before >= 3, (before, after)
    log = LogReader(faulty)
    for body in bodies:
        log.wait_for(rf"correlationId={body['correlationId']}\b", timeout=3, since_mark=False)


def test_error_injection_route_prefix(fapi: Api) -> None:
    """errors.route_prefix limits the injected errors to one prefix."""
    _set(fapi, errors={"fraction": 1.0, "status": 500, "route_prefix": "/api/monitor"})
    assert_error(fapi.get("/api/monitor/status"), 500, "INTERNAL_ERROR")
    assert fapi.get("/api/jobs").status_code == 200


def test_database_failures(fapi: Api) -> None:
    """database_failures 1: job creation 503 DATABASE_ERROR, ready 503 not_ready, failures count."""
    before = fapi.get_json("/api/health/metrics")["metrics"]["database"]["connection_failures"]
    _set(fapi, database_failures=1.0)
    body = {"type": "EXTRACT", "source_config": "rows=10", "target_config": "t"}
    assert_error(fapi.post("/api/jobs", json=body), 503, "DATABASE_ERROR")
    ready = fapi.get("/api/health/ready")
    assert ready.status_code == 503, ready.text
    assert ready.json()["status"] == "not_ready", ready.json()
    health = fapi.get("/api/health")
    assert health.status_code == 200
    assert health.json()["status"] in ("healthy", "degraded")
    after = fapi.get_json("/api/health/metrics")["metrics"]["database"]["connection_failures"]
    assert after > before, (before, after)
    fapi.request("DELETE", FAULTS)
    assert fapi.get("/api/health/ready").status_code == 200
    assert fapi.post("/api/jobs", json=body).status_code in (200, 201)


def test_websocket_drops(fapi: Api, faulty: EmbeddedTarget) -> None:
    """websocket.drop_fraction 1 loses every push; cleared, pushes arrive again."""
    with ws_connect(faulty) as ws:
        ws.send('{"type": "subscribe", "data": {"messageTypes": ["job_status_update"]}}')
        assert recv_until(ws, lambda m: m["type"] == "connection_ack", timeout=5)
        _set(fapi, websocket={"drop_fraction": 1.0})
        lost = fapi.create_job()
        fapi.wait_status(lost, TERMINAL)
        assert drain(ws, 0.5) == [], "pushes arrived while drop_fraction is 1"
        fapi.request("DELETE", FAULTS)
        seen = fapi.create_job()
        recv_until(ws, is_status(seen, *TERMINAL), timeout=20)


def test_ignore_flag_changes(fapi: Api, faulty: EmbeddedTarget) -> None:
    """ignore_flag_changes: a changed flags file is not applied until the fault is cleared."""
    path = faulty.root / "config" / "feature_flags.json"
    before = fapi.get_json("/api/flags")["sha256"]
    _set(fapi, ignore_flag_changes=True)
    data = default_flags()
    data["flags"]["new_logger_system"] = True
    try:
        write_json_atomic(path, data)
        time.sleep(1.5)  # three reload intervals
        assert fapi.get_json("/api/flags")["sha256"] == before
        fapi.request("DELETE", FAULTS)
        sha = file_sha256(path)
        poll_until(lambda: fapi.get_json("/api/flags")["sha256"] == sha, timeout=5)
    finally:
        write_json_atomic(path, default_flags())
        sha = file_sha256(path)
        poll_until(lambda: fapi.get_json("/api/flags")["sha256"] == sha, timeout=5)


def test_ignore_config_changes(fapi: Api, faulty: EmbeddedTarget) -> None:
    """ignore_config_changes: a changed config file is not applied until the fault is cleared."""
    path = faulty.root / "config" / "config.json"
    original = path.read_bytes()
    before = fapi.get_json("/api/health/status")["config"]["sha256"]
    _set(fapi, ignore_config_changes=True)
    try:
        path.write_bytes(original.replace(b'"INFO"', b'"DEBUG"'))
        assert file_sha256(path) != before
        time.sleep(1.5)
        assert fapi.get_json("/api/health/status")["config"]["sha256"] == before
    finally:
        fapi.request("DELETE", FAULTS)
        path.write_bytes(original)


def test_memory_growth(fapi: Api) -> None:
    """memory_growth_mb_per_s grows the process; clearing the faults releases it."""
    used = fapi.get_json("/api/health/live")["memory"]["used_bytes"]
    _set(fapi, memory_growth_mb_per_s=40)
    poll_until(
        lambda: fapi.get_json("/api/health/live")["memory"]["used_bytes"] > used + 30 * 2**20,
        timeout=5,
        interval=0.2,
        what="memory growth",
    )


def test_crash_ends_the_process(make_target: TargetFactory) -> None:
    """crash: the process exits (non-zero) right after answering; the port stops answering."""
    target = make_target(enable_faults=True)
    job_id = f"before_crash_{uuid.uuid4().hex[:6]}"
    with Api(target) as api:
        api.wait_status(api.create_job(job_id=job_id), TERMINAL)
        r = api.post(FAULTS, json={"crash": True})
        assert r.status_code == 200, r.text
    assert target.process is not None
    poll_until(lambda: target.process.poll() is not None, timeout=5, what="process exit")  # type: ignore[union-attr]
    assert target.process.returncode != 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{target.base_url}/api/health", timeout=HTTP_TIMEOUT)
    log = LogReader(target).text()
    assert "[FATAL]" in log, "the crash left no FATAL line"
