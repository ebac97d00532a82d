"""LatencyHistogram / LatencyRecorder: recording, percentiles, merge and encode round trips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from etlverify.measure import LatencyHistogram, LatencyRecorder, MetricResult, WindowStats
from etlverify.measure.histogram import HIGHEST_US
from etlverify.measure.results import merge_windows, stat_value


def _lognormal_us(seed: int, n: int = 20_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.lognormal(mean=np.log(5_000), sigma=0.6, size=n)  # ~5 ms median


def test_percentiles_match_numpy_within_hdr_precision() -> None:
    values = _lognormal_us(1)
    hist = LatencyHistogram()
    for v in values:
        hist.record_us(float(v))
    assert hist.count == len(values)
    ordered = np.sort(np.round(values))
    for q in (50, 90, 95, 99, 99.9):
        # Rank conventions differ by one sample between HDR and numpy; in a sparse tail that is
        # more than the bucket width, so accept the order statistics either side of the rank.
        rank = int(np.ceil(q / 100 * len(values)))
        low, high = ordered[rank - 2], ordered[min(rank, len(values) - 1)]
        got = hist.percentile_us(q)
        # 3 significant digits: within 0.1% (one bucket) of an exact order statistic.
        assert low * (1 - 2e-3) - 2 <= got <= high * (1 + 2e-3) + 2, q
        expected = float(np.percentile(ordered, q, method="inverted_cdf"))
        assert got == pytest.approx(expected, rel=5e-3), q
    assert hist.max_us == pytest.approx(values.max(), rel=1e-3)
    assert hist.mean_us == pytest.approx(values.mean(), rel=1e-3)


def test_encode_decode_round_trip_preserves_distribution() -> None:
    hist = LatencyHistogram()
    for v in _lognormal_us(2, 5_000):
        hist.record_us(float(v))
    encoded = hist.encode()
    assert isinstance(encoded, str)
    assert json.loads(json.dumps(encoded)) == encoded  # plain JSON string
    back = LatencyHistogram.decode(encoded)
    assert back.count == hist.count
    for q in (50, 95, 99):
        assert back.percentile_us(q) == hist.percentile_us(q)
    assert back.encode() == encoded


def test_empty_histogram_round_trip_and_nan_stats() -> None:
    hist = LatencyHistogram()
    back = LatencyHistogram.decode(hist.encode())
    assert back.count == 0
    assert math.isnan(back.percentile_us(95))
    assert math.isnan(back.max_us)


def test_decode_rejects_garbage_with_value_error() -> None:
    with pytest.raises(ValueError, match="not an encoded HDR histogram"):
        LatencyHistogram.decode("definitely not a histogram")


def test_merge_equals_recording_everything_in_one() -> None:
    a_vals, b_vals = _lognormal_us(3, 3000), _lognormal_us(4, 4000) * 2
    a, b, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for v in a_vals:
        a.record_us(float(v))
        both.record_us(float(v))
    for v in b_vals:
        b.record_us(float(v))
        both.record_us(float(v))
    merged = LatencyHistogram.decode(a.encode())
    merged.add(LatencyHistogram.decode(b.encode()))
    assert merged.count == both.count
    for q in (50, 90, 99):
        assert merged.percentile_us(q) == both.percentile_us(q)


def test_values_over_60s_are_clamped_not_dropped() -> None:
    hist = LatencyHistogram()
    hist.record_s(120.0)
    assert hist.count == 1
    assert hist.clamped == 1
    assert hist.max_us >= HIGHEST_US


def test_recorder_windows_errors_and_throughput() -> None:
    rec = LatencyRecorder(windows=2, window_s=0.5)
    assert rec.window_of(0.1) == 0
    assert rec.window_of(0.7) == 1
    assert rec.window_of(5.0) == 1  # clamped to the last window
    for _ in range(10):
        rec.record("GET /a", 0.002, window=0)
    for _ in range(5):
        rec.record("GET /a", 0.004, window=1, late=True)
    rec.record_error("GET /a", "timeout", window=1)
    rec.record_error("GET /a", "http_503", window=1)
    res = rec.result("GET /a")
    w0, w1 = res.windows
    assert (w0.count, w0.errors, w1.count, w1.errors, w1.late) == (10, 0, 5, 2, 5)
    assert w0.throughput_rps == pytest.approx(20.0)
    assert w1.error_rate_pct == pytest.approx(100 * 2 / 7)
    assert dict(w1.error_kinds) == {"http_503": 1, "timeout": 1}
    assert w0.p50_ms == pytest.approx(2.0, rel=1e-3)
    merged = res.merged
    assert merged.count == 15
    assert merged.duration_s == pytest.approx(1.0)
    assert stat_value(merged, "throughput") == pytest.approx(15.0)


def test_recorder_add_merges_parallel_workers() -> None:
    a, b = LatencyRecorder(windows=3, window_s=1), LatencyRecorder(windows=3, window_s=1)
    a.record("x", 0.001, window=0)
    b.record("x", 0.003, window=0)
    b.record_error("y", "connection", window=2)
    a.add(b)
    assert a.metrics == ("x", "y")
    assert a.histogram("x", 0).count == 2
    assert a.errors("y") == 1
    assert a.durations == [1, 1, 1]  # same wall-clock windows: durations do not add
    with pytest.raises(ValueError, match="cannot merge"):
        a.add(LatencyRecorder(windows=2))


def test_window_stats_and_metric_result_json_round_trip() -> None:
    rec = LatencyRecorder(windows=3, window_s=2.0)
    for i, v in enumerate(_lognormal_us(5, 900)):
        rec.record("GET /api/jobs", float(v) / 1e6, window=i % 3)
    rec.record_error("GET /api/jobs", "timeout", window=2)
    res = rec.result("GET /api/jobs")
    text = json.dumps(res.to_json(), sort_keys=True)
    back = MetricResult.from_json("GET /api/jobs", json.loads(text))
    assert back == res
    assert WindowStats.from_json(res.windows[0].to_json()) == res.windows[0]
    rebuilt = LatencyRecorder.from_results({"GET /api/jobs": back})
    assert rebuilt.result("GET /api/jobs") == res


def test_recorder_encode_decode_round_trip() -> None:
    rec = LatencyRecorder(windows=2, window_s=0.5)
    for i, v in enumerate(_lognormal_us(6, 400)):
        rec.record("GET /a", float(v) / 1e6, window=i % 2, late=i % 7 == 0)
    rec.record_error("GET /b", "connection", window=1)
    encoded = rec.encode()
    assert isinstance(encoded, str)
    back = LatencyRecorder.decode(encoded)
    assert back.results() == rec.results()
    back.add(rec)
    assert back.histogram("GET /a").count == 800
    with pytest.raises(ValueError, match="not an encoded LatencyRecorder"):
        LatencyRecorder.decode("Zm9v")


def test_stat_value_for_unstored_percentile_reads_histogram() -> None:
    rec = LatencyRecorder()
    for v in range(1, 1001):
        rec.record("m", v / 1e6)
    win = rec.stats("m", 0)
    assert stat_value(win, "p99.9") == pytest.approx(0.999, rel=2e-3)
    assert stat_value(win, "min") == pytest.approx(0.001)
    assert merge_windows([win, win]).count == 2000
