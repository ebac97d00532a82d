"""The gate's recording and distributed merge, with real HDR histograms and no processes.

A worker's `report_to_master` listener drains its histograms into Locust's stats message; the
master's `worker_report` listener merges them. The merged percentiles must be exactly those of one
recorder that saw every sample (bucket counts added, never percentiles averaged).
"""

from __future__ import annotations

import argparse

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
        "run_time": 60,
        "num_users": 12,
        "spawn_rate": 12,
        "host": None,
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
    ],
)
def test_bad_options_name_the_option(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match="^" + message.replace("(", r"\(")):
        GateOptions.from_namespace(namespace(**overrides))


def test_warmup_longer_than_run_time_is_a_usage_error() -> None:
    opts = GateOptions.from_namespace(namespace(run_time=5))
    with pytest.raises(SettingsError, match="--etl-warmup"):
        opts.layout(START)
