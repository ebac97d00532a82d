"""The gate's recording and distributed merge, with real HDR histograms and no processes.

A worker's `report_to_master` listener drains its histograms into Locust's stats message; the
master's `worker_report` listener merges them. The merged percentiles must be exactly those of one
recorder that saw every sample (bucket counts added, never percentiles averaged).
"""

from __future__ import annotations

import argparse
import re

import msgpack
import numpy as np
import pytest
from locust.event import Events

from etlverify.errors import SettingsError
from etlverify.locust_support import (
    AGGREGATE_METRIC,
    PAYLOAD_KEY,
    EtlGate,
    GateOptions,
    OutageTracker,
    RateLimitLog,
    WindowedRecorder,
    WindowLayout,
)

START = 1_800_000_000.0
LAYOUT = WindowLayout(start_wall=START, warmup_s=2.0, window_s=3.0, windows=4)


def gate_with(layout: WindowLayout) -> EtlGate:
    """A gate in the state `test_start` leaves it in, without a Locust process around it."""
    gate = EtlGate(Events(), out=lambda line: None)
    gate.rec = WindowedRecorder(layout)
    return gate


def feed(gate: EtlGate, seed: int, n: int, median_ms: float) -> list[tuple[float, float]]:
    """`n` lognormal GET samples spread over the measured windows; returns (start, ms) pairs."""
    rng = np.random.default_rng(seed)
    starts = START + LAYOUT.warmup_s + rng.uniform(0, LAYOUT.window_s * LAYOUT.windows, n)
    values = rng.lognormal(np.log(median_ms), 0.5, n)
    for start, ms in zip(starts, values, strict=True):
        gate.on_request(
            request_type="GET", name="/api/jobs", response_time=float(ms), start_time=float(start)
        )
    return list(zip(starts.tolist(), values.tolist(), strict=True))


def wire(data: dict[str, object]) -> dict[str, object]:
    """What the master receives: Locust sends worker reports msgpack-encoded over ZeroMQ."""
    decoded = msgpack.unpackb(msgpack.packb(data), raw=False, strict_map_key=False)
    assert isinstance(decoded, dict)
    return decoded


def test_worker_reports_merge_exactly() -> None:
    workers = [gate_with(LAYOUT), gate_with(LAYOUT)]
    master = gate_with(LAYOUT)
    reference = gate_with(LAYOUT)
    # Two workers with different latency levels, each reporting twice (drain in between).
    for round_ in range(2):
        for i, worker in enumerate(workers):
            samples = feed(worker, seed=10 * round_ + i, n=1500, median_ms=4.0 * (i + 1))
            for start, ms in samples:
                reference.on_request(
                    request_type="GET", name="/api/jobs", response_time=ms, start_time=start
                )
            data: dict[str, object] = {}
            worker.on_report_to_master(client_id=f"w{i}", data=data)
            assert PAYLOAD_KEY in data
            master.on_worker_report(client_id=f"w{i}", data=wire(data))
            assert worker.rec is not None
            assert worker.rec.requests == 0, "a report drains the worker's recorder"

    assert master.rec is not None
    assert reference.rec is not None
    for metric in ("GET /api/jobs", AGGREGATE_METRIC):
        for window in range(LAYOUT.windows):
            got = master.rec.recorder.histogram(metric, window)
            want = reference.rec.recorder.histogram(metric, window)
            assert got.count == want.count > 0
            assert got.percentiles_us([50, 95, 99]) == want.percentiles_us([50, 95, 99])
    assert master.rec.requests == reference.rec.requests == 6000
    assert master.rec.dropped_reports == 0


def test_merged_percentile_is_not_the_average_of_worker_percentiles() -> None:
    fast, slow, master = gate_with(LAYOUT), gate_with(LAYOUT), gate_with(LAYOUT)
    feed(fast, seed=1, n=3000, median_ms=2.0)
    feed(slow, seed=2, n=300, median_ms=40.0)
    p99s = []
    for i, worker in enumerate((fast, slow)):
        assert worker.rec is not None
        p99s.append(worker.rec.recorder.histogram("GET /api/jobs").percentile_us(99))
        data: dict[str, object] = {}
        worker.on_report_to_master(client_id=str(i), data=data)
        master.on_worker_report(client_id=str(i), data=wire(data))
    assert master.rec is not None
    merged = master.rec.recorder.histogram("GET /api/jobs").percentile_us(99)
    # The slow worker's 300 samples are the whole top 9%: the true p99 is deep in its range,
    # far from the mean of a 2 ms-ish and a 100 ms-ish p99.
    assert abs(merged - sum(p99s) / 2) > 0.1 * merged


def test_errors_and_warmup() -> None:
    gate = gate_with(LAYOUT)
    gate.on_request(
        request_type="GET", name="/api/health", response_time=3.0, start_time=START + 1.0
    )
    gate.on_request(
        request_type="POST",
        name="/api/jobs",
        response_time=3.0,
        start_time=START + 3.0,
        exception=RuntimeError("boom"),
        response=type("R", (), {"status_code": 503})(),
    )
    gate.on_request(
        request_type="WS", name="push cancelled", response_time=5.0, start_time=START + 4.0
    )
    assert gate.rec is not None
    results = gate.rec.recorder.results()
    assert "GET /api/health" not in results, "warm-up samples are not measured"
    assert results["POST /api/jobs"].errors == 1
    assert dict(results["POST /api/jobs"].windows[0].error_kinds) == {"http_503": 1}
    assert results["WS push cancelled"].count == 1
    assert results[AGGREGATE_METRIC].errors == 1, "WS samples stay out of the HTTP aggregate"
    assert results[AGGREGATE_METRIC].count == 0
    assert gate.rec.requests == 3
    assert gate.rec.failures == 1


def test_payload_that_does_not_fit_is_dropped() -> None:
    other = gate_with(WindowLayout(START, 2.0, 3.0, windows=5))
    feed(other, seed=3, n=10, median_ms=1.0)
    data: dict[str, object] = {}
    other.on_report_to_master(client_id="w", data=data)
    master = gate_with(LAYOUT)
    master.on_worker_report(client_id="w", data=wire(data))
    master.on_worker_report(client_id="w", data={PAYLOAD_KEY: {"v": 99}})
    assert master.rec is not None
    assert master.rec.dropped_reports == 2
    assert master.rec.recorder.metrics == ()


def test_window_layout() -> None:
    assert LAYOUT.window_of(START + 1.9) is None
    assert LAYOUT.window_of(START + 2.0) == 0
    assert LAYOUT.window_of(START + 5.0) == 1
    assert LAYOUT.window_of(START + 100.0) == 3, "late samples join the last window"
    assert LAYOUT.durations(START + 9.5) == [3.0, 3.0, 1.5, 0.0]
    assert WindowLayout.from_json(LAYOUT.to_json()) == LAYOUT


def test_outage_tracker_merges_and_finds_the_longest_outage() -> None:
    a, b = OutageTracker(), OutageTracker()
    for sec in range(10):
        a.add(START + sec, ok=not 3 <= sec <= 6)
    b.add(START + 5.5, ok=True)  # another worker saw a success in second 5
    assert a.longest_outage_s() == 4.0
    a.merge(wire({"o": b.to_json()})["o"])  # type: ignore[arg-type]
    assert a.longest_outage_s() == 2.0


def namespace(**overrides: object) -> argparse.Namespace:
    """Locust's parsed options, reduced to what `GateOptions` reads."""
    base: dict[str, object] = {
        "etl_baseline": "baselines/x.json",
        "etl_tolerance": None,
        "etl_record": False,
        "etl_windows": "5",
        "etl_warmup": "5",
        "etl_window_seconds": "10",
        "etl_alpha": None,
        "etl_inconclusive_exit": False,
        "etl_summary": "reports/s.json",
        "etl_shape": "constant",
        "etl_embedded_faults": False,
        "etl_inject_latency_ms": None,
        "etl_ws_timeout": "5",
        "etl_response_time_trigger": None,
        "etl_worker_report_timeout": "10",
        "run_time": 60,
        "num_users": 12,
        "spawn_rate": 12,
        "host": None,
        "headless": True,
        "autostart": False,
    }
    base.update(overrides)
    return argparse.Namespace(**base)


def test_options_layout_splits_run_time_after_warmup() -> None:
    opts = GateOptions.from_namespace(namespace(etl_tolerance="p95:10%,+1ms"))
    assert opts.layout(START) == WindowLayout(START, 5.0, 11.0, 5)
    assert opts.specs is not None
    assert str(opts.specs[0]) == "p95:10%,+1ms"
    assert GateOptions.from_namespace(namespace(etl_inject_latency_ms="3")).embedded_faults
    assert opts.triggers.response_time_pct == 50.0
    wide = GateOptions.from_namespace(namespace(etl_response_time_trigger="300%,+20ms"))
    assert (wide.triggers.response_time_pct, wide.triggers.response_time_floor_ms) == (300, 20)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"etl_tolerance": "p95 10%"}, "--etl-tolerance: invalid tolerance spec"),
        ({"etl_windows": "0"}, "--etl-windows: expected an integer >= 1"),
        ({"etl_windows": "abc"}, "--etl-windows: expected an integer, got 'abc'"),
        ({"etl_shape": "spike"}, "--etl-shape: expected one of constant, ramp"),
        ({"etl_alpha": "0"}, "--etl-alpha: expected a number > 0"),
        ({"host": "localhost:8080"}, "--host: expected an http:// or https:// URL"),
        ({"etl_response_time_trigger": "50"}, "--etl-response-time-trigger: expected 'PCT%'"),
        ({"etl_worker_report_timeout": "-1"}, "--etl-worker-report-timeout: expected a number"),
    ],
)
def test_bad_options_name_the_option(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match="^" + message.replace("(", r"\(")):
        GateOptions.from_namespace(namespace(**overrides))


def test_warmup_longer_than_run_time_is_a_usage_error() -> None:
    opts = GateOptions.from_namespace(namespace(run_time=5))
    with pytest.raises(SettingsError, match="--etl-warmup"):
        opts.layout(START)


def test_web_ui_runs_are_not_timed() -> None:
    """Without --headless/--autostart a person ends the run: no "interrupted" check."""
    assert GateOptions.from_namespace(namespace()).timed
    assert GateOptions.from_namespace(namespace(headless=False, autostart=True)).timed
    ui = GateOptions.from_namespace(namespace(headless=False))
    assert not ui.timed
    assert ui.run_time_s == 60
    form = ui.for_test(namespace(headless=False, run_time=30, num_users=3, spawn_rate=1))
    assert (form.run_time_s, form.users, form.spawn_rate) == (30, 3, 1.0)
    assert GateOptions.from_namespace(namespace()).worker_report_timeout_s == 10.0


# --- rate limiting ---------------------------------------------------------------------------


class Answer:
    """What the request listener gets from FastHttpUser: a status code and headers."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.headers = headers or {}


def limited(reset: int, retry: int = 12) -> Answer:
    headers = {
        "X-RateLimit-Limit": "30",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(reset),
        "Retry-After": str(retry),
    }
    return Answer(429, headers)


def options(**overrides: object) -> GateOptions:
    return GateOptions.from_namespace(namespace(**overrides))


def test_429_answers_are_counted_apart_with_the_advertised_limit() -> None:
    gate = gate_with(LAYOUT)
    gate.options = options()
    at = START + 3.0
    for _ in range(90):
        gate.on_request(
            request_type="GET",
            name="/api/health",
            response_time=1.0,
            start_time=at,
            response=Answer(200),
        )
    for i in range(7):
        # a 429 the scenario marked as a failure, and one it let through: both count
        gate.on_request(
            request_type="POST",
            name="/api/jobs",
            response_time=1.0,
            start_time=at,
            response=limited(1_800_000_060 + 60 * (i % 2)),
            exception=RuntimeError("expected 200/201, got 429"),
        )
    gate.on_request(
        request_type="GET",
        name="/api/jobs",
        response_time=1.0,
        start_time=at,
        response=limited(1_800_000_180, retry=40),
    )
    gate.on_request(
        request_type="GET", name="/api/jobs", response_time=1.0, start_time=at, response=Answer(429)
    )
    gate.on_request(
        request_type="GET",
        name="/api/jobs",
        response_time=1.0,
        start_time=at,
        response=Answer(503),
        exception=RuntimeError("boom"),
    )
    assert gate.rec is not None
    log = gate.rec.rate_limits
    assert log.counts == {"POST /api/jobs": 7, "GET /api/jobs": 2}
    assert log.limits == {"POST /api/jobs": 30, "GET /api/jobs": 30}
    assert log.window() == (60, "X-RateLimit-Reset")
    assert log.retry_after_max == 40
    lines, data = gate._rate_limit_report()
    assert lines[0] == (
        "RATE LIMITED: 9.0% of requests were answered 429 (9 of 100; limit 30 per 60 s on "
        "POST /api/jobs, from the target's X-RateLimit-Limit / X-RateLimit-Reset headers; "
        "Retry-After up to 40 s): exempt the load generator or lower the load"
    )
    assert lines[1] == "  429 POST /api/jobs: 7 of 7 requests (100.0%), limit 30 per 60 s"
    assert lines[2] == "  429 GET /api/jobs: 2 of 2 requests (100.0%), limit 30 per 60 s"
    assert data is not None
    assert data["count"] == 9
    assert data["share_pct"] == 9.0


def test_rate_limit_window_falls_back_to_the_contract() -> None:
    log = RateLimitLog()
    log.add("GET /api/jobs", limited(1_800_000_060))
    assert log.window() == (60, "the contract's one-minute window")
    log.add("GET /api/jobs", Answer(429))  # no headers: counted, nothing read
    assert log.total == 2


def test_rate_limits_travel_with_the_worker_reports() -> None:
    worker, master = gate_with(LAYOUT), gate_with(LAYOUT)
    worker.on_request(
        request_type="POST",
        name="/api/jobs",
        response_time=1.0,
        start_time=START + 3.0,
        response=limited(1_800_000_060),
        exception=RuntimeError("429"),
    )
    data: dict[str, object] = {}
    worker.on_report_to_master(client_id="w", data=data)
    master.on_worker_report(client_id="w", data=wire(data))
    assert master.rec is not None
    assert master.rec.rate_limits.counts == {"POST /api/jobs": 1}
    assert master.rec.rate_limits.limits == {"POST /api/jobs": 30}
    assert worker.rec is not None
    assert worker.rec.rate_limits.total == 0, "a report drains the 429 counts too"


# --- distributed: final reports ---------------------------------------------------------------


def test_a_worker_without_its_final_report_is_named() -> None:
    workers = {name: gate_with(LAYOUT) for name in ("host-a_1", "host-b_2")}
    master = gate_with(LAYOUT)
    master.options = options(etl_worker_report_timeout="4")
    for name, worker in workers.items():
        feed(worker, seed=len(name), n=50, median_ms=2.0)
        data: dict[str, object] = {}
        worker.on_report_to_master(client_id=name, data=data)
        assert isinstance(data[PAYLOAD_KEY], dict)
        assert data[PAYLOAD_KEY]["final"] is False
        master.on_worker_report(client_id=name, data=wire(data))
    # host-a stops its users and sends its final report; host-b never does (killed)
    workers["host-a_1"].worker_stopped = True
    data = {}
    workers["host-a_1"].on_report_to_master(client_id="host-a_1", data=data)
    master.on_worker_report(client_id="host-a_1", data=wire(data))
    reasons = master._incomplete_reasons(START + 62.0)
    assert len(reasons) == 1, reasons
    assert re.match(
        r"worker host-b_2 \(host \S+, pid \d+\) sent no final report within 4 s "
        r"\(--etl-worker-report-timeout\): the samples it took after its last report at "
        r"\S+Z \(1 reports received\) are missing$",
        reasons[0],
    ), reasons[0]
    assert master.workers["host-a_1"].final
    assert master.workers["host-a_1"].reports == 2


def test_a_run_stopped_before_its_run_time_is_incomplete() -> None:
    gate = gate_with(LAYOUT)
    gate.options = options(run_time=14)
    assert gate._incomplete_reasons(START + 14.2) == []
    reasons = gate._incomplete_reasons(START + 6.0)
    assert reasons == [
        "the run stopped after 6.0 s of the planned 14 s (interrupted: Ctrl-C, SIGTERM, a stop "
        "from the web UI, or every worker quit)"
    ]
    ui = gate_with(LAYOUT)
    ui.options = options(run_time=14, headless=False)
    assert ui._incomplete_reasons(START + 6.0) == [], "a person ends a web UI run"


def test_identity_block_is_the_pytest_runs_shape() -> None:
    """Built with `etlverify.report.summary.run_identity`: same fields, same fingerprint rule."""
    gate = gate_with(LAYOUT)
    gate.started_wall = START
    gate.host = "http://127.0.0.1:8080"
    gate.embedded = False
    gate.target_status = {"version": "2.3.1", "build": {"commit": "abc123"}}
    block = gate.identity(finished=False)
    assert set(block) == {
        "id",
        "pipeline_run_id",
        "started_at",
        "finished_at",
        "target_url",
        "target_fingerprint",
        "tool",
    }
    assert block["id"] == gate.run_id
    assert block["tool"] == "locust"
    assert block["started_at"] == "2027-01-15T08:00:00Z"
    assert block["finished_at"] is None
    assert block["target_url"] == "http://127.0.0.1:8080"
    assert re.fullmatch(r"[0-9a-f]{16}", block["target_fingerprint"])
    assert gate.identity(finished=True)["finished_at"] is not None
    gate.target_status = {"version": "2.3.2", "build": {"commit": "abc123"}}
    assert gate.identity(finished=False)["target_fingerprint"] != block["target_fingerprint"]
