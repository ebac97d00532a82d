"""Fault injection of the reference target (`serve --enable-faults`, route `/api/_faults`).

Not a contract section: the reference's own switch that lets the suite prove it notices a target
that breaks the contract. Off by default; with it on, each fault must really break what it names.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from contract_support import (
    HTTP_TIMEOUT,
    QUICK_PROFILE,
    REFERENCE_OVERRIDES,
    TERMINAL,
    Api,
    LogReader,
    TargetFactory,
    assert_error,
    assert_iso,
    drain,
    file_sha256,
    is_status,
    parse_iso,
    poll_until,
    recv_json,
    recv_until,
    start_target,
    ws_connect,
)

from etlplus_reference.root import default_flags, write_json_atomic
from etlverify.contract import fnv1a_bucket
from etlverify.embedded import EmbeddedTarget, free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

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


def test_sub_millisecond_latency_is_not_rounded_away(fapi: Api) -> None:
    """uvloop's timers round a 0.45 ms sleep to 0: the latency fault sleeps precisely, so +50% of
    a 1 ms route is there on a fast host too (a CI run missed such an injected regression).
    Minimums over many requests: noise only ever adds time."""

    def fastest(n: int = 60) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fapi.get("/api/jobs?limit=1")
            times.append(time.perf_counter() - t0)
        return min(times)

    base = fastest()
    _set(fapi, latency={"ms": 0.45})
    try:
        slowed = fastest()
    finally:
        fapi.request("DELETE", FAULTS)
    assert slowed - base >= 0.0003, f"fastest {base * 1000:.3f} ms -> {slowed * 1000:.3f} ms"


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


# --- delayed faults (`after_s`), for `etlverify watch`: a healthy start, then the regression ----

_HEALTH_500 = {"errors": {"fraction": 1.0, "status": 500, "route_prefix": "/api/health"}}


def _schedule(api: Api, after_s: float, **patch: object) -> dict[str, Any]:
    r = api.post(FAULTS, json={"after_s": after_s, **patch})
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


def test_scheduled_fault_starts_after_its_delay(fapi: Api) -> None:
    """A patch with after_s 1 is validated at once (202, listed under `scheduled`), changes nothing
    for a second, then is merged: /api/health starts answering 500 about 1 s after the POST."""
    t0 = time.monotonic()
    body = _schedule(fapi, 1.0, **_HEALTH_500)
    entry = body["scheduled"]
    assert entry["after_s"] == 1.0, entry
    assert entry["patch"] == _HEALTH_500, entry
    assert_iso(entry["at"])
    assert 0 < entry["due_in_s"] <= 1.0, entry
    assert body["faults"]["active"] is False, body["faults"]
    assert body["faults"]["errors"]["fraction"] == 0.0, body["faults"]
    pending = fapi.get_json(FAULTS)
    assert [e["id"] for e in pending["scheduled"]] == [entry["id"]], pending["scheduled"]
    assert pending["scheduled"][0]["patch"] == _HEALTH_500
    health = fapi.get("/api/health/live")
    early = time.monotonic() - t0
    assert health.status_code == 200, f"fault active {early:.3f} s after a 1 s schedule"
    poll_until(
        lambda: fapi.get("/api/health/live").status_code == 500,
        timeout=4,
        interval=0.02,
        what="the scheduled error fault",
    )
    started = time.monotonic() - t0
    assert 0.95 <= started <= 1.5, f"the fault started {started:.3f} s after the POST, not ~1 s"
    now = fapi.get_json(FAULTS)
    assert now["scheduled"] == [], now["scheduled"]
    assert now["active"] is True
    assert now["errors"] == {**_HEALTH_500["errors"]}, now["errors"]


def test_reset_cancels_scheduled_faults(fapi: Api) -> None:
    """DELETE /api/_faults cancels a pending patch: it is gone from GET and never applied."""
    _schedule(fapi, 1.0, **_HEALTH_500)
    assert len(fapi.get_json(FAULTS)["scheduled"]) == 1
    cleared = fapi.request("DELETE", FAULTS)
    assert cleared.status_code == 200
    assert cleared.json()["scheduled"] == [], cleared.json()
    time.sleep(1.3)
    assert fapi.get("/api/health/live").status_code == 200, "a cancelled fault was applied"
    after = fapi.get_json(FAULTS)
    assert after["active"] is False, after
    assert after["scheduled"] == [], after


def test_scheduled_faults_apply_in_time_order(fapi: Api) -> None:
    """Patches merge in the order they fall due, not the order they were posted."""
    later = _schedule(fapi, 1.0, errors={"fraction": 1.0, "status": 503})["scheduled"]
    sooner = _schedule(fapi, 0.5, errors={"fraction": 1.0, "status": 500})["scheduled"]
    listed = [e["id"] for e in fapi.get_json(FAULTS)["scheduled"]]
    assert listed == [sooner["id"], later["id"]], listed
    assert fapi.get("/api/jobs").status_code == 200
    poll_until(lambda: fapi.get("/api/jobs").status_code == 500, timeout=3, what="first patch")
    poll_until(lambda: fapi.get("/api/jobs").status_code == 503, timeout=3, what="second patch")
    assert fapi.get_json(FAULTS)["errors"]["status"] == 503


@pytest.mark.parametrize("after_s", [0, -1, "x", 1e9, None, True, 604_800.5])
def test_bad_after_s_is_400(fapi: Api, after_s: object) -> None:
    """after_s must be a number of seconds, 0 < after_s <= 604800: else 400 naming `after_s`,
    and nothing is scheduled."""
    r = fapi.post(FAULTS, json={"after_s": after_s, **_HEALTH_500})
    assert_error(r, 400, {"INVALID_INPUT", "INVALID_RANGE"}, field="after_s")
    assert fapi.get_json(FAULTS)["scheduled"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"after_s": 5, "errors": {"fraction": 2}}, "errors.fraction"),
        ({"after_s": 5, "bogus": 1}, "bogus"),
        ({"after_s": 5}, "body"),
    ],
)
def test_bad_scheduled_patch_is_400_now(fapi: Api, body: dict[str, object], field: str) -> None:
    """The patch of a scheduled POST is validated when posted, not when it falls due."""
    assert_error(fapi.post(FAULTS, json=body), 400, {"INVALID_INPUT", "INVALID_RANGE"}, field=field)
    assert fapi.get_json(FAULTS)["scheduled"] == []


def test_memory_limit_sets_memory_percent(fapi: Api) -> None:
    """memory_limit_mb: /api/health/metrics reports that limit and RSS over it, so a memory trigger
    (> 95%) can be reached without filling the host; cleared, the real limit is back."""
    before = fapi.get_json("/api/health/metrics")["metrics"]
    real_limit = before["memory_limit_bytes"]
    rss_mb = before["memory_usage"] / 2**20
    _set(fapi, memory_limit_mb=rss_mb)
    during = fapi.get_json("/api/health/metrics")["metrics"]
    assert during["memory_limit_bytes"] == int(rss_mb * 2**20), during
    assert during["memory_percent"] >= 95, during
    fapi.request("DELETE", FAULTS)
    after = fapi.get_json("/api/health/metrics")["metrics"]
    assert after["memory_limit_bytes"] == real_limit, after
    assert after["memory_percent"] < 95, after


def _db_failures(api: Api) -> int:
    count: int = api.get_json("/api/health/metrics")["metrics"]["database"]["connection_failures"]
    return count


def test_database_failures_per_min_count_without_traffic(fapi: Api) -> None:
    """database_failures_per_min: the pool fails that often with no job traffic at all, each
    failure counted in /api/health/metrics `database.connection_failures`; cleared, it stops."""
    before = _db_failures(fapi)
    _set(fapi, database_failures_per_min=600)  # 10 a second, the first at once
    poll_until(
        lambda: _db_failures(fapi) - before >= 10, timeout=4, interval=0.2, what="10 failures"
    )
    fapi.request("DELETE", FAULTS)
    time.sleep(1.05)  # one sampler tick: anything still due has run
    settled = _db_failures(fapi)
    time.sleep(1.05)
    assert _db_failures(fapi) == settled, "failures kept counting after the fault was cleared"


def test_cli_fault_after_delays_the_hostile_modes(tmp_path: Path) -> None:
    """`serve --enable-faults --hostile query-string-400 --fault-after 1`: the mode is pending
    (listed under `scheduled`) at the start and on about a second after the start."""
    target = EmbeddedTarget(
        port=free_port(), enable_faults=True, config_overrides=REFERENCE_OVERRIDES
    )
    target.init()
    cmd = [*_serve_cmd(target.root), "--host", "127.0.0.1", "--port", str(target.port)]
    cmd += ["--enable-faults", "--hostile", "query-string-400", "--fault-after", "1"]
    target.root.joinpath("logs").mkdir(parents=True, exist_ok=True)
    try:
        with target.server_log.open("ab") as out:
            target.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        with Api(target) as api:
            pending = poll_until(
                lambda: _get_or_none(api, FAULTS), timeout=20, interval=0.05, what="the server"
            )
            assert pending["hostile"]["query_string_400"] is False, pending
            assert len(pending["scheduled"]) == 1, pending
            assert pending["scheduled"][0]["patch"]["hostile"] == {"query_string_400": True}
            poll_until(
                lambda: api.get("/api/health", params={"x": "1"}).status_code == 400,
                timeout=5,
                what="query-string-400 after --fault-after 1",
            )
            assert api.get_json(FAULTS)["scheduled"] == []
    finally:
        target.stop()
    usage = subprocess.run(
        [*_serve_cmd(tmp_path), "--enable-faults", "--fault-after", "5"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert usage.returncode == 2, usage
    assert "--fault-after needs --hostile" in usage.stderr, usage.stderr
    assert "Traceback" not in usage.stderr


def _serve_cmd(root: Path) -> list[str]:
    return [sys.executable, "-m", "etlplus_reference", "serve", "--root", str(root)]


def _get_or_none(api: Api, path: str) -> dict[str, Any] | None:
    try:
        r = api.get(path)
    except httpx.TransportError:
        return None
    return r.json() if r.status_code == 200 else None


# --- cohort faults (`etlverify rollout`): one component bad for exactly its flag cohort ----------

_RH_FLAG = "new_request_handler"


def _cohort_users(percentage: float) -> tuple[str, str]:
    """A user id inside a `percentage` cohort (bucket below it) and one outside it."""
    inside = outside = None
    for i in range(1000):
        uid = f"cohort-user-{i}"
        bucket = fnv1a_bucket(uid)
        if inside is None and bucket < percentage:
            inside = uid
        if outside is None and bucket >= percentage:
            outside = uid
        if inside is not None and outside is not None:
            return inside, outside
    raise AssertionError(f"no user ids on both sides of {percentage}%")


def _set_flags(api: Api, target: EmbeddedTarget, percentages: dict[str, float]) -> None:
    """Enable each named flag at its percentage (all others off) and wait for the reload."""
    path = target.root / "config" / "feature_flags.json"
    data = default_flags()
    for name, pct in percentages.items():
        data["flags"][name] = True
        data["rollout_percentages"][name] = pct
    write_json_atomic(path, data)
    sha = file_sha256(path)
    poll_until(lambda: api.get_json("/api/flags")["sha256"] == sha, timeout=5, what="flag reload")


@pytest.fixture
def cohort_flags(fapi: Api, faulty: EmbeddedTarget) -> Iterator[Callable[[dict[str, float]], None]]:
    """Set flags for a test; the safe defaults (everything off) are back afterwards."""
    try:
        yield lambda percentages: _set_flags(fapi, faulty, percentages)
    finally:
        _set_flags(fapi, faulty, {})


def _timed_get(api: Api, path: str, user: str | None) -> tuple[float, httpx.Response]:
    headers = {"X-User-Id": user} if user is not None else {}
    t0 = time.perf_counter()
    r = api.get(path, headers=headers)
    return time.perf_counter() - t0, r


def test_cohort_latency_only_inside_the_cohort(
    fapi: Api, cohort_flags: Callable[[dict[str, float]], None]
) -> None:
    """new_request_handler at 50%: a request_handler cohort latency of 200 ms delays exactly the
    users inside the cohort; outside users, requests without X-User-Id and health are untouched."""
    cohort_flags({_RH_FLAG: 50})
    inside, outside = _cohort_users(50)
    body = _set(fapi, cohorts={"request_handler": {"latency_ms": 200}})
    assert body["active"] is True, body
    assert body["cohorts"] == {
        "request_handler": {
            "latency_ms": 200.0,
            "errors": {"fraction": 0.0, "status": 500},
            "ws_delay_ms": 0.0,
            "ws_drop": 0.0,
        }
    }, body["cohorts"]
    for _ in range(3):
        took, r = _timed_get(fapi, "/api/jobs", inside)
        assert r.status_code == 200, r.text
        assert _RH_FLAG in r.headers["x-feature-flags"].split(","), r.headers
        assert took >= 0.18, f"inside the cohort: {took * 1000:.1f} ms, expected >= 180 ms"
    for user in (outside, None):
        times = []
        for _ in range(3):
            took, r = _timed_get(fapi, "/api/jobs", user)
            assert r.status_code == 200, r.text
            times.append(took)
        assert min(times) < 0.1, f"user {user}: {[round(t * 1000, 1) for t in times]} ms"
    took, r = _timed_get(fapi, "/api/health", inside)
    assert r.status_code == 200
    assert took < 0.18, f"/api/health was delayed: {took * 1000:.1f} ms"
    fapi.request("DELETE", FAULTS)
    assert fapi.get_json(FAULTS)["cohorts"] == {}
    took, _ = _timed_get(fapi, "/api/jobs", inside)
    assert took < 0.18, f"still delayed after DELETE: {took * 1000:.1f} ms"


def test_cohort_latencies_add_up(
    fapi: Api, cohort_flags: Callable[[dict[str, float]], None]
) -> None:
    """A user inside two cohorts gets both latencies; one inside neither gets none."""
    cohort_flags({_RH_FLAG: 50, "new_logger_system": 50})
    inside, outside = _cohort_users(50)
    _set(fapi, cohorts={"request_handler": {"latency_ms": 120}, "logger": {"latency_ms": 120}})
    took, r = _timed_get(fapi, "/api/jobs", inside)
    assert r.status_code == 200
    assert took >= 0.23, f"inside both cohorts: {took * 1000:.1f} ms, expected >= 240 ms"
    _set(fapi, cohorts={"logger": None})  # null removes one component's cohort fault
    assert list(fapi.get_json(FAULTS)["cohorts"]) == ["request_handler"]
    times = [_timed_get(fapi, "/api/jobs", outside)[0] for _ in range(3)]
    assert min(times) < 0.1, f"outside both: {[round(t * 1000, 1) for t in times]} ms"


def test_cohort_errors_only_inside_the_cohort(
    fapi: Api, cohort_flags: Callable[[dict[str, float]], None]
) -> None:
    """An errors cohort fault with fraction 1: inside users get the contract's 503 JSON error
    (naming the cohort), outside users and requests without X-User-Id get 200."""
    cohort_flags({_RH_FLAG: 50})
    inside, outside = _cohort_users(50)
    _set(fapi, cohorts={"request_handler": {"errors": {"fraction": 1.0, "status": 503}}})
    for _ in range(3):
        r = fapi.get("/api/jobs", headers={"X-User-Id": inside})
        body = assert_error(r, 503, "COMPONENT_UNAVAILABLE")
        assert body["context"]["cohort"] == "request_handler", body
        assert fapi.get("/api/jobs", headers={"X-User-Id": outside}).status_code == 200
        assert fapi.get("/api/jobs").status_code == 200
    assert fapi.get("/api/health", headers={"X-User-Id": inside}).status_code == 200
    assert fapi.get(FAULTS, headers={"X-User-Id": inside}).status_code == 200


def test_cohort_faults_follow_the_flag(
    fapi: Api, cohort_flags: Callable[[dict[str, float]], None]
) -> None:
    """At 0% (or with the flag off) nobody is inside: the cohort fault touches no one; raised to
    50%, the same fault reaches the users now inside, at once."""
    inside, outside = _cohort_users(50)
    _set(
        fapi,
        cohorts={
            "request_handler": {"latency_ms": 200, "errors": {"fraction": 1.0, "status": 500}}
        },
    )
    for percentages in ({_RH_FLAG: 0.0}, {}):
        cohort_flags(percentages)
        for user in (inside, outside):
            took, r = _timed_get(fapi, "/api/jobs", user)
            assert r.status_code == 200, (percentages, user, r.text)
            assert took < 0.18, (percentages, user, took)
    cohort_flags({_RH_FLAG: 50})
    assert_error(fapi.get("/api/jobs", headers={"X-User-Id": inside}), 500, "INTERNAL_ERROR")
    assert fapi.get("/api/jobs", headers={"X-User-Id": outside}).status_code == 200


def test_scheduled_cohort_fault(
    fapi: Api, cohort_flags: Callable[[dict[str, float]], None]
) -> None:
    """after_s works for cohort faults: validated at once, merged when due."""
    cohort_flags({_RH_FLAG: 50})
    inside, outside = _cohort_users(50)
    patch = {"request_handler": {"errors": {"fraction": 1.0, "status": 503}}}
    entry = _schedule(fapi, 0.5, cohorts=patch)["scheduled"]
    assert entry["patch"] == {"cohorts": patch}, entry
    assert fapi.get("/api/jobs", headers={"X-User-Id": inside}).status_code == 200
    poll_until(
        lambda: fapi.get("/api/jobs", headers={"X-User-Id": inside}).status_code == 503,
        timeout=3,
        what="the scheduled cohort fault",
    )
    assert fapi.get("/api/jobs", headers={"X-User-Id": outside}).status_code == 200
    assert fapi.get_json(FAULTS)["cohorts"]["request_handler"]["errors"]["status"] == 503


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cohorts": []}, "cohorts"),
        ({"cohorts": {"bogus": {"latency_ms": 1}}}, "cohorts.bogus"),
        ({"cohorts": {"new_request_handler": {"latency_ms": 1}}}, "cohorts.new_request_handler"),
        ({"cohorts": {"logger": 5}}, "cohorts.logger"),
        ({"cohorts": {"logger": {"latency_ms": -1}}}, "cohorts.logger.latency_ms"),
        ({"cohorts": {"logger": {"latency_ms": 60_001}}}, "cohorts.logger.latency_ms"),
        ({"cohorts": {"logger": {"latency_ms": "9"}}}, "cohorts.logger.latency_ms"),
        ({"cohorts": {"types": {"errors": {"fraction": 1.5}}}}, "cohorts.types.errors.fraction"),
        ({"cohorts": {"types": {"errors": {"fraction": -0.1}}}}, "cohorts.types.errors.fraction"),
        ({"cohorts": {"types": {"errors": {"status": 418}}}}, "cohorts.types.errors.status"),
        ({"cohorts": {"types": {"errors": {"status": 200}}}}, "cohorts.types.errors.status"),
        ({"cohorts": {"types": {"errors": 1}}}, "cohorts.types.errors"),
        ({"cohorts": {"types": {"errors": {"nope": 1}}}}, "cohorts.types.errors.nope"),
        ({"cohorts": {"websocket": {"nope": 1}}}, "cohorts.websocket.nope"),
        ({"cohorts": {"websocket": {"ws_delay_ms": -1}}}, "cohorts.websocket.ws_delay_ms"),
        ({"cohorts": {"websocket": {"ws_delay_ms": 60_001}}}, "cohorts.websocket.ws_delay_ms"),
        ({"cohorts": {"websocket": {"ws_delay_ms": "40"}}}, "cohorts.websocket.ws_delay_ms"),
        ({"cohorts": {"websocket": {"ws_drop": 1.5}}}, "cohorts.websocket.ws_drop"),
        ({"cohorts": {"websocket": {"ws_drop": -0.1}}}, "cohorts.websocket.ws_drop"),
        ({"cohorts": {"websocket": {"ws_drop": True}}}, "cohorts.websocket.ws_drop"),
        ({"cohorts": {"logger": {"ws_drop": None}}}, "cohorts.logger.ws_drop"),
        ({"after_s": 5, "cohorts": {"bogus": {}}}, "cohorts.bogus"),
    ],
)
def test_invalid_cohort_faults_are_400(fapi: Api, body: dict[str, object], field: str) -> None:
    """A bad cohort fault is a 400 naming the field (never 5xx), and changes nothing."""
    r = fapi.post(FAULTS, json=body)
    assert_error(r, 400, {"INVALID_INPUT", "INVALID_RANGE"}, field=field)
    now = fapi.get_json(FAULTS)
    assert now["active"] is False, now
    assert now["cohorts"] == {}, now
    assert now["scheduled"] == [], now


# --- WebSocket cohort faults: the pushes of jobs created by a user inside a cohort ------------

_WS_FLAG = "new_websocket_manager"
#: a job with a few pushes over about half a second
_WS_JOB = "rows=100;batch=20;delay_ms=100"


def _create_as(api: Api, user: str | None, source_config: str = _WS_JOB) -> str:
    """POST a job with `user` as its X-User-Id (none when None); its id."""
    headers = {"X-User-Id": user} if user is not None else {}
    body = {"type": "EXTRACT", "source_config": source_config, "target_config": "sink=memory"}
    r = api.post("/api/jobs", json=body, headers=headers)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["job_id"])


def _lags(msgs: list[dict[str, Any]], job_id: str) -> list[tuple[float, str]]:
    """(seconds from each push's server timestamp to its arrival, type) for `job_id`'s pushes,
    from messages stamped on arrival by `_collect`."""
    return [
        (m["_arrived"] - parse_iso(m["data"]["timestamp"]).timestamp(), m["type"])
        for m in msgs
        if m["data"].get("jobId") == job_id
    ]


def _collect(ws: Any, job_ids: set[str], timeout: float) -> list[dict[str, Any]]:
    """Messages until every job in `job_ids` has pushed a terminal status; each is stamped with
    its arrival time (`_arrived`, epoch seconds)."""
    out: list[dict[str, Any]] = []
    waiting = set(job_ids)
    deadline = time.monotonic() + timeout
    while waiting:
        left = deadline - time.monotonic()
        assert left > 0, f"no terminal push of {sorted(waiting)} within {timeout} s"
        try:
            msg = recv_json(ws, left)
        except TimeoutError:
            continue
        msg["_arrived"] = time.time()
        out.append(msg)
        data = msg.get("data") or {}
        if msg.get("type") == "job_status_update" and data.get("status") in TERMINAL:
            waiting.discard(data.get("jobId"))
    return out


@pytest.fixture
def job_ws(faulty: EmbeddedTarget) -> Iterator[Any]:
    """A WebSocket subscribed to job status and progress pushes."""
    with ws_connect(faulty) as ws:
        ws.send(
            '{"type": "subscribe", "data": {"messageTypes": '
            '["job_status_update", "job_progress_update"]}}'
        )
        recv_until(ws, lambda m: m["type"] == "connection_ack", timeout=5)
        yield ws


def test_ws_cohort_delay_only_for_jobs_of_inside_users(
    fapi: Api, cohort_flags: Callable[[dict[str, float]], None], job_ws: Any
) -> None:
    """new_websocket_manager at 50% and a websocket cohort ws_delay_ms of 400: every push of a
    job created by an inside user arrives about 400 ms late, in order; the pushes of jobs created
    at the same time by an outside user or without X-User-Id, on the same connection, are not
    held back. The job keeps its creator (createdBy)."""
    cohort_flags({_WS_FLAG: 50})
    inside, outside = _cohort_users(50)
    body = _set(fapi, cohorts={"websocket": {"ws_delay_ms": 400}})
    assert body["cohorts"] == {
        "websocket": {
            "latency_ms": 0.0,
            "errors": {"fraction": 0.0, "status": 500},
            "ws_delay_ms": 400.0,
            "ws_drop": 0.0,
        }
    }, body["cohorts"]
    late = _create_as(fapi, inside)
    prompt = _create_as(fapi, outside)
    anonymous = _create_as(fapi, None)
    msgs = _collect(job_ws, {late, prompt, anonymous}, timeout=20)

    late_lags = _lags(msgs, late)
    assert len(late_lags) >= 3, late_lags
    assert min(lag for lag, _ in late_lags) >= 0.38, f"inside user's job: {late_lags}"
    assert max(lag for lag, _ in late_lags) < 2.0, f"inside user's job: {late_lags}"
    statuses = [
        m["data"]["status"]
        for m in msgs
        if m["type"] == "job_status_update" and m["data"]["jobId"] == late
    ]
    assert statuses == ["running", "completed"], statuses
    for job_id in (prompt, anonymous):
        lags = sorted(lag for lag, _ in _lags(msgs, job_id))
        assert lags, f"no pushes of {job_id}"
        assert lags[len(lags) // 2] < 0.3, f"job {job_id} was held back: {lags}"
    assert fapi.job(late)["createdBy"] == inside
    assert fapi.job(prompt)["createdBy"] == outside
    assert "createdBy" not in fapi.job(anonymous)


def test_ws_cohort_drop_loses_every_push_of_inside_jobs(
    fapi: Api, cohort_flags: Callable[[dict[str, float]], None], job_ws: Any
) -> None:
    """ws_drop 1.0: no push of a job created by an inside user arrives; the jobs of an outside
    user and without X-User-Id push as usual; the dropped pushes are really lost (the job still
    completes)."""
    cohort_flags({_WS_FLAG: 50})
    inside, outside = _cohort_users(50)
    _set(fapi, cohorts={"websocket": {"ws_drop": 1.0}})
    lost = _create_as(fapi, inside, QUICK_PROFILE)
    fapi.wait_status(lost, TERMINAL)
    seen = {_create_as(fapi, outside, QUICK_PROFILE), _create_as(fapi, None, QUICK_PROFILE)}
    msgs = _collect(job_ws, seen, timeout=20)
    assert not [m for m in msgs if m["data"].get("jobId") == lost], "a dropped push arrived"
    assert fapi.job(lost)["status"] == "completed"


def test_ws_cohort_is_decided_at_job_creation(
    fapi: Api, cohort_flags: Callable[[dict[str, float]], None], job_ws: Any
) -> None:
    """A job created while its user is outside the cohort stays outside when the flag then
    admits the user; a job the user creates afterwards is inside."""
    inside, _ = _cohort_users(50)
    cohort_flags({_WS_FLAG: 0})
    _set(fapi, cohorts={"websocket": {"ws_delay_ms": 400}})
    before = _create_as(fapi, inside, "rows=150;batch=5;delay_ms=100")  # 3 s of pushes
    cohort_flags({_WS_FLAG: 50})
    flag_on = time.time()
    after = _create_as(fapi, inside)
    msgs = _collect(job_ws, {before, after}, timeout=30)
    later = sorted(lag for lag, _ in _lags([m for m in msgs if m["_arrived"] > flag_on], before))
    assert later, "no push of the earlier job after the flag change"
    assert later[len(later) // 2] < 0.3, f"the job created outside was held back: {later}"
    assert min(lag for lag, _ in _lags(msgs, after)) >= 0.38, _lags(msgs, after)
