"""The suite catches what it claims: the real verification checks against a misbehaving reference.

One reference target with fault switches (`--enable-faults`) is started for the module. Each test
sets one fault through `POST /api/_faults`, runs a small subset of the real `verification/` suite
against it in a subprocess (`--base-url`, reports in a temporary folder), and reads every check's
outcome from the JUnit XML. It asserts that the checks meant to notice the fault FAIL, with the
specifics a person needs (expected/got, the status code, the checklist item it blocks, a curl line
for HTTP failures, no Python traceback), and that a control set of checks the fault does not touch
still PASS. The first test runs the union of all subsets with no fault: everything passes, so every
failure below is the fault's doing. Checks that switch faults themselves (`etl_faults`: the
rollback `*_is_detected` and monitoring `test_fault_raises_alert` checks) are never selected: they
clear the switches at teardown, which would end the fault under test mid-run.

HTTP latency is caught here only when it exceeds the request timeout; a moderate slowdown is judged
by the performance section against a recorded baseline, which `test_performance_gate.py` proves
(+50% latency on /api/jobs fails the gate) and this module does not repeat.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
from fault_support import (
    DropFirstTransition,
    SuiteRun,
    clear_faults,
    loaded_sha256,
    run_suite,
    set_faults,
    settle,
)

from etlverify.embedded import SUITE_CONFIG_OVERRIDES, EmbeddedTarget

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.slow

#: short waits: a fault run should fail in seconds, not in the default 15 s / 10 s
FAST = ("--reload-timeout", "3", "--request-timeout", "3")

# -- the checks, by file ---------------------------------------------------------------------------
JOBS = "verification/post_deploy/test_post_jobs.py"
WS = "verification/post_deploy/test_post_websocket.py"
ERRORS = "verification/post_deploy/test_post_errors.py"
CONFIG_RELOAD = "verification/post_deploy/test_post_config_reload.py"
SUCCESS = "verification/post_deploy/test_post_success.py"
BINARY = "verification/deploy/test_phase1_binary.py"
FLAGS = "verification/deploy/test_phase1_flags.py"
CONFIG = "verification/deploy/test_phase1_config.py"
TRIGGERS = "verification/rollback/test_rollback_triggers.py"
PROCEDURES = "verification/rollback/test_rollback_procedures.py"
LOGGER = "verification/component/test_logger.py"
WS_MANAGER = "verification/component/test_websocket_manager.py"

JOB_CREATE = f"{JOBS}::test_every_job_type_runs_to_completion"
JOB_FAILING = f"{JOBS}::test_failing_job_reports_its_error"
JOB_CANCEL_UNKNOWN = f"{JOBS}::test_cancel_of_unknown_job_is_404"
UNKNOWN_JOB_404 = f"{ERRORS}::test_unknown_job_is_404_naming_the_job"
WS_COMPLETED = f"{WS}::test_pushes_every_transition_of_a_completed_job"
WS_CANCELLED = f"{WS}::test_pushes_cancellation"
WS_FAILED = f"{WS}::test_pushes_failure_with_error_message"
HEALTH = {
    route: f"{BINARY}::test_health_endpoint_answers[{route}]"
    for route in (
        "/api/health",
        "/api/health/live",
        "/api/health/metrics",
        "/api/health/ready",
        "/api/health/status",
    )
}
BINARY_STARTED = f"{BINARY}::test_binary_started"
FLAGS_LOADED = f"{FLAGS}::test_flags_loaded"
FLAGS_READ_ONLY = [
    FLAGS_LOADED,
    f"{FLAGS}::test_all_features_start_disabled",
    *(f"{FLAGS}::test_flag_user_endpoint_buckets[{u}]" for u in ("alice", "bob", "user1", "user2")),
    f"{FLAGS}::test_flag_bucket_matches_fnv1a_for_other_users",
]
LOGGER_ROLLOUT = f"{LOGGER}::test_logger_flag_at_25_percent_follows_fnv1a"
DISABLE_ALL_FLAGS = f"{PROCEDURES}::test_disable_all_feature_flags"
CONFIG_LOADED = f"{CONFIG}::test_config_is_loaded"
CONFIG_INVALID = f"{CONFIG}::test_invalid_config_is_rejected[not-json]"
CONFIG_OLDER = f"{CONFIG}::test_older_shorter_config_still_loads"
LEVEL_RELOAD = f"{CONFIG_RELOAD}::test_logging_level_change_applies_without_restart"
INVALID_RELOAD = f"{CONFIG_RELOAD}::test_invalid_config_is_rejected_and_service_stays_healthy"
ERROR_RATE = f"{TRIGGERS}::test_error_rate_is_not_rising"
AVAILABLE = f"{TRIGGERS}::test_service_is_available"
DB_TRIGGER = f"{TRIGGERS}::test_database_connection_failures_are_rare"
MONITOR_QUIET = f"{SUCCESS}::test_monitoring_alerts_are_informational"
PUSH_LATENCY = f"{WS_MANAGER}::test_push_latency_of_job_transitions"

# -- the subset each fault runs: (checks that must catch it, controls that must still pass) --------
ERRORS_CATCH = [JOB_CREATE, JOB_FAILING, JOB_CANCEL_UNKNOWN, UNKNOWN_JOB_404, ERROR_RATE]
ERRORS_CONTROL = [*HEALTH.values(), BINARY_STARTED, *FLAGS_READ_ONLY, AVAILABLE]
WS_DROP_CATCH = [WS_COMPLETED, WS_CANCELLED, WS_FAILED]
WS_DROP_CONTROL = [JOB_CREATE, JOB_FAILING, JOB_CANCEL_UNKNOWN]
FLAGS_CATCH = [LOGGER_ROLLOUT, DISABLE_ALL_FLAGS]
FLAGS_CONTROL = FLAGS_READ_ONLY
CONFIG_CATCH = [LEVEL_RELOAD, INVALID_RELOAD, CONFIG_OLDER, CONFIG_INVALID]
CONFIG_CONTROL = [CONFIG_LOADED, FLAGS_LOADED]
DB_CATCH = [HEALTH["/api/health/ready"], JOB_CREATE, DB_TRIGGER, MONITOR_QUIET]
DB_CONTROL = [
    HEALTH["/api/health"],
    HEALTH["/api/health/live"],
    HEALTH["/api/health/status"],
    FLAGS_LOADED,
    AVAILABLE,
]
LATENCY_CATCH = [HEALTH["/api/health/ready"]]
LATENCY_CONTROL = [h for r, h in HEALTH.items() if r != "/api/health/ready"] + [BINARY_STARTED]
WS_LATENCY_CATCH = [PUSH_LATENCY]
WS_LATENCY_CONTROL = [JOB_CANCEL_UNKNOWN, HEALTH["/api/health"]]


def _union(*groups: list[str]) -> list[str]:
    return list(dict.fromkeys(n for g in groups for n in g))


ALL_CHECKS = _union(
    ERRORS_CATCH,
    ERRORS_CONTROL,
    WS_DROP_CATCH,
    WS_DROP_CONTROL,
    FLAGS_CATCH,
    FLAGS_CONTROL,
    CONFIG_CATCH,
    CONFIG_CONTROL,
    DB_CATCH,
    DB_CONTROL,
    LATENCY_CATCH,
    LATENCY_CONTROL,
    WS_LATENCY_CATCH,
    WS_LATENCY_CONTROL,
)


@pytest.fixture(scope="module")
def target() -> Iterator[EmbeddedTarget]:
    """One reference with fault switches on a free 127.0.0.1 port, for the whole module."""
    server = EmbeddedTarget(enable_faults=True, config_overrides=SUITE_CONFIG_OVERRIDES)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def faulty(target: EmbeddedTarget) -> Iterator[EmbeddedTarget]:
    """The module's target with no fault set before the test, and none left after it."""
    clear_faults(target)
    settle(target)
    try:
        yield target
    finally:
        clear_faults(target)
        settle(target)


def _run(target: EmbeddedTarget, tmp_path: Path, checks: list[str], *extra: str) -> SuiteRun:
    return run_suite(target, checks, tmp_path / "inner", extra=extra or FAST)


def _blocks(item: str) -> str:
    return f"blocks checklist: {item}"


def test_clean_target_passes_every_selected_check(faulty: EmbeddedTarget, tmp_path: Path) -> None:
    """Control: with no fault, every check used below passes, so a failure under a fault is the
    fault's doing, not the target's or the suite's."""
    run = _run(faulty, tmp_path, ALL_CHECKS)
    run.assert_passed(ALL_CHECKS)
    assert run.returncode == 0, run.describe()
    assert "PROMOTE (exit code 0)" in run.output, run.describe()


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_on_job_routes_fails_the_job_checks(
    faulty: EmbeddedTarget, tmp_path: Path, status: int
) -> None:
    """5xx injection on /api/jobs: the job lifecycle, error-handling and error-rate checks fail
    naming the status, the request and its curl; health, flags and availability still pass."""
    set_faults(faulty, errors={"fraction": 1.0, "status": status, "route_prefix": "/api/jobs"})
    run = _run(faulty, tmp_path, ERRORS_CATCH + ERRORS_CONTROL)
    got = f"got:      HTTP {status}"
    for nodeid in (JOB_CREATE, JOB_FAILING):
        run.assert_failed(
            nodeid,
            f"POST /api/jobs answered HTTP {status}",
            "expected: HTTP 200 or 201",
            got,
            _blocks("post.1_functional_testing.job_types_create"),
            "Injected fault",
            f"Reproduce with: curl -sS -i -m 3 -X POST {faulty.base_url}/api/jobs",
        )
    run.assert_failed(
        JOB_CANCEL_UNKNOWN,
        f"PUT /api/jobs/etlv_no_such_job_0000 answered HTTP {status}",
        "expected: HTTP 404",
        got,
        f"Reproduce with: curl -sS -i -m 3 -X PUT {faulty.base_url}/api/jobs/etlv_no_such_job_0000",
    )
    run.assert_failed(
        UNKNOWN_JOB_404,
        f"answered HTTP {status}",
        "expected: HTTP 404",
        got,
        _blocks("post.1_functional_testing.validate_error_handling"),
        "Reproduce with: curl",
    )
    trigger = run.assert_failed(
        ERROR_RATE, "error rate trigger", _blocks("rollback.critical_rollback.error_rate_increases")
    )
    assert re.search(r"got:\s+\d+ 5xx of \d+; window error rate", trigger.text), trigger.text
    run.assert_passed(ERRORS_CONTROL)
    assert run.returncode == 1, run.describe()
    assert "DO NOT PROMOTE" in run.output, run.describe()


def test_all_websocket_pushes_lost_fails_the_realtime_checks(
    faulty: EmbeddedTarget, tmp_path: Path
) -> None:
    """WebSocket drops (every push lost): the real-time update checks fail naming the WebSocket
    that stayed silent; the REST job lifecycle checks, which do not use it, pass."""
    set_faults(faulty, websocket={"drop_fraction": 1.0})
    run = _run(faulty, tmp_path, WS_DROP_CATCH + WS_DROP_CONTROL)
    for nodeid in WS_DROP_CATCH:
        run.assert_failed(nodeid, f"WebSocket {faulty.ws_url}", "no message within 3 s")
    run.assert_passed(WS_DROP_CONTROL)
    assert run.returncode == 1, run.describe()


def test_one_lost_transition_is_named(faulty: EmbeddedTarget, tmp_path: Path) -> None:
    """WebSocket drops (one push lost): when only the `pending -> running` push of a job goes
    missing, the real-time check fails saying that transition was lost; the REST check passes."""
    dropper = DropFirstTransition(faulty, "etlv_ws_done_", subscribers=2)
    dropper.arm()
    try:
        run = _run(faulty, tmp_path, [WS_COMPLETED, JOB_CANCEL_UNKNOWN])
    finally:
        dropper.stop()
    assert dropper.error is None, dropper.error
    run.assert_failed(
        WS_COMPLETED,
        _blocks("post.1_functional_testing.websocket_real_time"),
        "expected: pending -> running -> completed, each transition once, in order",
        "got:      chain completed;",
        "first push is running -> completed: earlier transitions lost",
        "no running transition was pushed",
    )
    run.assert_passed([JOB_CANCEL_UNKNOWN])
    assert any("drops off after 2 dropped" in e for e in dropper.events), dropper.events


def test_ignored_flag_file_fails_the_rollout_checks(faulty: EmbeddedTarget, tmp_path: Path) -> None:
    """A flag file the server ignores: the component rollout and flag rollback checks fail on the
    hot-reload timeout, naming the file's sha256 and the one still served; the read-only flag
    checks pass."""
    served = loaded_sha256(faulty)["feature_flags"]
    set_faults(faulty, ignore_flag_changes=True)
    run = _run(faulty, tmp_path, FLAGS_CATCH + FLAGS_CONTROL)
    items = {
        LOGGER_ROLLOUT: "deploy.phase2.2_1_logger_testing.enable_logger_feature",
        DISABLE_ALL_FLAGS: "rollback.rollback_procedures.immediate_actions.disable_feature_flags",
    }
    for nodeid, item in items.items():
        check = run.assert_failed(
            nodeid,
            "the server did not reload feature_flags.json within 3 s",
            _blocks(item),
            f"got:      sha256 {served}",
        )
        wanted = re.search(r"expected: sha256 ([0-9a-f]{64})", check.text)
        assert wanted is not None, check.text
        assert wanted[1] != served, check.text
    run.assert_passed(FLAGS_CONTROL)
    assert run.returncode == 1, run.describe()


def test_ignored_config_changes_fail_the_hot_reload_checks(
    faulty: EmbeddedTarget, tmp_path: Path
) -> None:
    """Config changes ignored: the hot-reload and config-validation checks fail (reload timeout
    naming both sha256s, or no rejection logged); the loaded-config and flags checks pass."""
    served = loaded_sha256(faulty)["config"]
    set_faults(faulty, ignore_config_changes=True)
    run = _run(faulty, tmp_path, CONFIG_CATCH + CONFIG_CONTROL)
    for nodeid, item in (
        (LEVEL_RELOAD, "post.1_functional_testing.configuration_hot_reloading"),
        (
            CONFIG_OLDER,
            "deploy.phase1.1_2_configuration_deployment.backward_compatibility_existing",
        ),
    ):
        run.assert_failed(
            nodeid,
            "the server did not reload config.json within 3 s",
            _blocks(item),
            f"got:      sha256 {served}",
        )
    run.assert_failed(
        INVALID_RELOAD,
        "rejection of an invalid config.json is logged",
        "expected: an ERROR line about the invalid configuration",
        _blocks("post.1_functional_testing.configuration_hot_reloading"),
    )
    run.assert_failed(
        CONFIG_INVALID,
        "the rejected config is logged as an ERROR",
        _blocks("deploy.phase1.1_2_configuration_deployment.configuration_validation"),
    )
    run.assert_passed(CONFIG_CONTROL)
    assert run.returncode == 1, run.describe()


def test_database_failures_fail_readiness_jobs_and_the_db_trigger(
    faulty: EmbeddedTarget, tmp_path: Path
) -> None:
    """Database failures: readiness answers 503, job creation fails, the >10/min connection
    failure trigger fires and `monitor check` raises CRITICAL; liveness, status and flags pass."""
    set_faults(faulty, database_failures=1.0)
    run = _run(faulty, tmp_path, DB_CATCH + DB_CONTROL)
    run.assert_failed(
        HEALTH["/api/health/ready"],
        "GET /api/health/ready answered HTTP 503",
        "expected: HTTP 200",
        "DATABASE_ERROR",
        _blocks("deploy.phase1.1_1_binary_deployment.basic_functionality_health"),
        f"Reproduce with: curl -sS -i -m 3 {faulty.base_url}/api/health/ready",
    )
    run.assert_failed(
        JOB_CREATE,
        "POST /api/jobs answered HTTP 503",
        "DATABASE_ERROR",
        "Reproduce with: curl",
    )
    trigger = run.assert_failed(
        DB_TRIGGER,
        "database connection failure trigger",
        "expected: <= 10/min",
        _blocks("rollback.critical_rollback.database_connection_failures"),
    )
    assert re.search(r"got:\s+\d+ connection failures in [\d.]+ s = [\d.]+/min", trigger.text)
    run.assert_failed(
        MONITOR_QUIET,
        "`monitor check` on the deployed target",
        "[CRITICAL] [service] not ready",
        "[database]",
        _blocks("success.deployment_success.monitoring_alerts_informational"),
    )
    run.assert_passed(DB_CONTROL)
    assert run.returncode == 1, run.describe()


def test_latency_beyond_the_request_timeout_fails_the_health_check(
    faulty: EmbeddedTarget, tmp_path: Path
) -> None:
    """Latency (3 s on /api/health/ready, request timeout 1 s): the readiness check fails naming
    the route, the timeout and a curl line; the other health routes pass."""
    set_faults(faulty, latency={"ms": 3000, "fraction": 1.0, "route_prefix": "/api/health/ready"})
    run = _run(faulty, tmp_path, LATENCY_CATCH + LATENCY_CONTROL, "--request-timeout", "1")
    run.assert_failed(
        HEALTH["/api/health/ready"],
        "GET /api/health/ready: no response within 1 s",
        f"Reproduce with: curl -sS -i -m 1 {faulty.base_url}/api/health/ready",
    )
    run.assert_passed(LATENCY_CONTROL)
    assert run.returncode == 1, run.describe()


def test_websocket_push_delay_fails_the_push_latency_check(
    faulty: EmbeddedTarget, tmp_path: Path
) -> None:
    """Latency on WebSocket pushes (each delayed 1.1 s): the WebSocket manager's push latency check
    fails with the measured p50/p95 against its 1 s limit; REST and health checks pass."""
    set_faults(faulty, websocket={"delay_ms": 1100})
    run = _run(faulty, tmp_path, WS_LATENCY_CATCH + WS_LATENCY_CONTROL)
    check = run.assert_failed(
        PUSH_LATENCY,
        "a cancelled job's status push arrives promptly",
        "expected: p95 under 1 s",
        _blocks("deploy.phase3.3_2_websocket_manager.monitor_websocket_performance"),
    )
    p95 = re.search(r"got:\s+p50 \d+ ms, p95 (\d+) ms over 8 jobs", check.text)
    assert p95 is not None, check.text
    assert int(p95[1]) >= 1000, check.text
    run.assert_passed(WS_LATENCY_CONTROL)
    assert run.returncode == 1, run.describe()
