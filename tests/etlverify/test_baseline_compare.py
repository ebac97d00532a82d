"""compare(): the 10% rule with significance, noise floor and fail-closed rules."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from etlverify.baseline import (
    Baseline,
    Fingerprint,
    Verdict,
    compare,
    load,
    min_p_value,
    record,
)
from etlverify.baseline.compare import judge_metric, judge_paired
from etlverify.baseline.spec import parse_spec
from etlverify.measure import LatencyRecorder, LoadParameters, MetricResult, RunResult

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

ROUTE = "GET /api/jobs"
LOAD = LoadParameters(model="open", duration_s=50.0, windows=5, rate_rps=200.0)


def lognormal_run(
    seed: int,
    *,
    scale: float | Sequence[float] = 1.0,
    median_ms: float = 8.0,
    n: int = 2000,
    windows: int = 5,
    errors: int = 0,
    route: str = ROUTE,
) -> RunResult:
    """A synthetic run: `windows` windows of `n` lognormal latencies, window i scaled by
    scale[i]."""
    rng = np.random.default_rng(seed)
    scales = [scale] * windows if isinstance(scale, float | int) else list(scale)
    rec = LatencyRecorder(windows=windows, window_s=10.0)
    for w, s in enumerate(scales):
        for v in rng.lognormal(np.log(median_ms * s), 0.4, n):
            rec.record(route, v / 1000.0, window=w)
        for _ in range(errors):
            rec.record_error(route, "http_503", window=w)
    return RunResult(
        metrics=rec.results(), load=LOAD, started_at="2026-11-29T17:00:00Z", duration_s=50.0
    )


def constant_metric(values_ms: Sequence[float], n: int = 1000, route: str = ROUTE) -> MetricResult:
    """Windows whose every sample is one value: each window's percentiles equal that value."""
    rec = LatencyRecorder(windows=len(values_ms), window_s=10.0)
    for w, v in enumerate(values_ms):
        for _ in range(n):
            rec.record(route, v / 1000.0, window=w)
    return rec.result(route)


def as_baseline(tmp_path: Path, *runs: RunResult) -> Baseline:
    path = tmp_path / "base.json"
    for run in runs:
        record(path, run, environment=Fingerprint(load=run.load.to_json()))
    return load(path)


def by_stat(cmp_results: Sequence[object], stat: str) -> object:
    return next(r for r in cmp_results if r.stat == stat)  # type: ignore[attr-defined]


def test_identical_distributions_pass(tmp_path: Path) -> None:
    base = as_baseline(tmp_path, lognormal_run(1))
    cmp = compare(base, lognormal_run(2))
    assert {r.stat for r in cmp.results} == {"p50", "p95", "p99", "throughput", "error_rate"}
    assert [r.verdict for r in cmp.results] == [Verdict.PASS] * 5, cmp.format()
    assert cmp.verdict is Verdict.PASS
    assert not cmp.rollback


def test_fifty_percent_shift_fails_with_p_value(tmp_path: Path) -> None:
    base = as_baseline(tmp_path, lognormal_run(1))
    cmp = compare(base, lognormal_run(2, scale=1.5), "p95:10%,+1ms")
    (result,) = cmp.results
    assert result.verdict is Verdict.FAIL
    assert result.p_value == pytest.approx(min_p_value(5, 5), rel=1e-3)  # complete separation
    assert result.change_pct == pytest.approx(50, abs=5)
    assert result.test == "Mann-Whitney"
    line = result.line()
    assert line.startswith(f"FAIL p95 {ROUTE}: ")
    assert "vs baseline" in line
    assert "tolerance 10% +1 ms, Mann-Whitney p=0.008)" in line
    assert cmp.verdict is Verdict.FAIL


def test_tiny_absolute_change_under_the_floor_passes(tmp_path: Path) -> None:
    # 0.4 ms -> 0.6 ms p50 is +50%, significant, but under the 1 ms floor.
    base = as_baseline(tmp_path, lognormal_run(1, median_ms=0.4))
    cmp = compare(base, lognormal_run(2, median_ms=0.4, scale=1.5), "p50:10%,+1ms")
    (result,) = cmp.results
    assert result.verdict is Verdict.PASS
    assert result.p_value is not None
    assert result.p_value < 0.05
    assert result.reason.startswith("significant change but within tolerance")


def test_noisy_baseline_is_inconclusive_not_pass(tmp_path: Path) -> None:
    base = as_baseline(tmp_path, lognormal_run(1, scale=[0.7, 1.3, 0.9, 1.25, 0.85]))
    run = lognormal_run(2, scale=[1.2, 0.75, 1.3, 0.9, 0.85])
    cmp = compare(base, run, "p95:10%,+1ms")
    (result,) = cmp.results
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "too noisy" in result.reason
    assert "exceeds the allowed change" in result.reason
    assert cmp.verdict is Verdict.INCONCLUSIVE


def test_missing_metric_fails_closed(tmp_path: Path) -> None:
    base = as_baseline(tmp_path, lognormal_run(1))
    cmp = compare(base, lognormal_run(2, route="GET /api/other"), "p95:10%")
    verdicts = {(r.metric, r.verdict) for r in cmp.results}
    assert (ROUTE, Verdict.FAIL) in verdicts
    assert ("GET /api/other", Verdict.INCONCLUSIVE) in verdicts  # new route: no baseline yet
    failed = cmp.failures()[0]
    assert "missing from the run" in failed.reason
    assert cmp.verdict is Verdict.FAIL


def test_all_errors_is_fail_not_missing_data() -> None:
    base = constant_metric([8, 8, 8, 8, 8])
    rec = LatencyRecorder(windows=5)
    for w in range(5):
        rec.record_error(ROUTE, "connection", window=w)
    result = judge_metric(ROUTE, "p95", parse_spec("p95:10%"), base, rec.result(ROUTE))
    assert result.verdict is Verdict.FAIL
    assert "no successful sample" in result.reason


def test_too_few_windows_is_inconclusive() -> None:
    base, cur = constant_metric([8, 8.1, 8.2]), constant_metric([20, 21, 22])
    result = judge_metric(ROUTE, "p95", parse_spec("p95:10%"), base, cur)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "3 vs 3 windows cannot reach p<0.05" in result.reason
    assert min_p_value(3, 3) == pytest.approx(0.1)
    assert min_p_value(5, 5) == pytest.approx(2 / 252)


def test_too_few_samples_for_a_high_percentile_is_inconclusive() -> None:
    base, cur = constant_metric([8] * 5, n=100), constant_metric([8] * 5, n=100)
    result = judge_metric(ROUTE, "p99", parse_spec("p99:10%"), base, cur)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "needs 500 per window" in result.reason
    # p50 needs only 10 per window: fine with 100.
    assert judge_metric(ROUTE, "p50", parse_spec("p50:10%"), base, cur).verdict is Verdict.PASS


def test_beyond_tolerance_but_not_significant_is_inconclusive() -> None:
    base = constant_metric([10.0, 10.1, 9.9, 10.05, 9.95])
    cur = constant_metric([15.0, 9.8, 15.0, 10.2, 15.0])
    result = judge_metric(ROUTE, "p95", parse_spec("p95:10%,+1ms"), base, cur)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "not significant" in result.reason
    assert result.p_value is not None
    assert result.p_value > 0.05


def test_pooling_runs_lowers_the_reachable_p_value(tmp_path: Path) -> None:
    base = as_baseline(tmp_path, lognormal_run(1), lognormal_run(3))
    cmp = compare(base, lognormal_run(2, scale=1.5), "p95:10%,+1ms")
    (result,) = cmp.results
    assert result.baseline_windows == 10
    assert result.p_value == pytest.approx(min_p_value(10, 5), rel=1e-3)
    assert result.verdict is Verdict.FAIL


def test_throughput_drop_fails_and_rise_passes(tmp_path: Path) -> None:
    base = as_baseline(tmp_path, lognormal_run(1, n=1000))
    dropped = compare(base, lognormal_run(2, n=600), "throughput:-10%")
    assert dropped.results[0].verdict is Verdict.FAIL
    assert dropped.results[0].change_pct == pytest.approx(-40)
    risen = compare(base, lognormal_run(2, n=1500), "throughput:-10%")
    assert risen.results[0].verdict is Verdict.PASS
    assert risen.results[0].reason.startswith("improved")


def test_noisy_baseline_still_passes_a_clear_improvement(tmp_path: Path) -> None:
    """Non-inferiority: a run far better than a noisy baseline is PASS, not INCONCLUSIVE."""
    noisy = [
        lognormal_run(s, scale=k) for s, k in ((1, 1.0), (3, 1.9), (4, 0.7), (5, 1.6), (6, 1.2))
    ]
    base = as_baseline(tmp_path, *noisy)
    cmp = compare(base, lognormal_run(2, scale=0.4), "p50:10%,+0.1ms")
    (result,) = cmp.results
    assert result.verdict is Verdict.PASS, result.line()
    assert "non-inferiority" in result.reason


def test_noisy_baseline_with_a_similar_run_stays_inconclusive(tmp_path: Path) -> None:
    """Without evidence either way, noise gives INCONCLUSIVE, never a silent PASS."""
    noisy = [
        lognormal_run(s, scale=k) for s, k in ((1, 1.0), (3, 1.9), (4, 0.7), (5, 1.6), (6, 1.2))
    ]
    base = as_baseline(tmp_path, *noisy)
    cmp = compare(base, lognormal_run(2, scale=1.25), "p50:10%,+0.1ms")
    (result,) = cmp.results
    assert result.verdict is Verdict.INCONCLUSIVE, result.line()


def test_error_rate_increase_beyond_pp_fails(tmp_path: Path) -> None:
    base = as_baseline(tmp_path, lognormal_run(1, n=1000))
    cmp = compare(base, lognormal_run(2, n=1000, errors=50), "error_rate:+1pp")
    assert cmp.results[0].verdict is Verdict.FAIL
    assert cmp.results[0].current == pytest.approx(100 * 50 / 1050)


def test_scoped_spec_overrides_general_one(tmp_path: Path) -> None:
    base = as_baseline(tmp_path, lognormal_run(1))
    cmp = compare(base, lognormal_run(2, scale=1.3), f"p95:10%,+1ms; p95@{ROUTE}:50%")
    assert cmp.results[0].verdict is Verdict.PASS
    assert cmp.results[0].tolerance == "50%"


def test_another_load_makes_the_comparison_inconclusive(tmp_path: Path) -> None:
    base = as_baseline(tmp_path, lognormal_run(1))
    run = lognormal_run(2)
    other = RunResult(
        metrics=run.metrics,
        load=LoadParameters(model="open", duration_s=50.0, windows=5, rate_rps=400.0),
        started_at=run.started_at,
        duration_s=run.duration_s,
    )
    cmp = compare(base, other, "p95:10%,+1ms")
    assert cmp.results[0].verdict is Verdict.PASS
    assert [m.field for m in cmp.environment] == ["load.rate_rps"]
    assert cmp.verdict is Verdict.INCONCLUSIVE
    assert "environment error: load.rate_rps differs" in cmp.format()


def test_format_has_a_summary_then_one_line_per_result(tmp_path: Path) -> None:
    base = as_baseline(tmp_path, lognormal_run(1))
    cmp = compare(base, lognormal_run(2, scale=1.5))
    lines = cmp.format().splitlines()
    assert lines[0].startswith("FAIL against baseline 'base': ")
    assert lines[1].startswith("FAIL ")  # failures first
    metric_lines = [ln for ln in lines if ln.split(" ", 1)[0] in {"PASS", "FAIL", "INCONCLUSIVE"}]
    assert len(metric_lines) == len(cmp.results) + 1
    assert sum("rollback trigger" in ln for ln in lines) == 5
    assert cmp.to_json()["verdict"] == "FAIL"


def test_spike_windows_alone_do_not_fail(tmp_path: Path) -> None:
    """Stalled windows push the pooled p95 past tolerance; the median window says no
    regression: INCONCLUSIVE (re-run), not FAIL."""
    base = as_baseline(tmp_path, lognormal_run(1), lognormal_run(3))
    # a busy spell: every window a little slower (windows of one run move together), two stalled
    spiky = lognormal_run(2, scale=[1.04, 1.04, 1.04, 6.0, 6.0])
    result = by_stat(compare(base, spiky, "p95:10%,+1ms").results, "p95")
    assert result.verdict is Verdict.INCONCLUSIVE, result.line()  # type: ignore[attr-defined]
    assert "spike windows" in result.reason  # type: ignore[attr-defined]


def test_sustained_shift_still_fails(tmp_path: Path) -> None:
    """Every window 25% slower: the median window is beyond tolerance too, so FAIL."""
    base = as_baseline(tmp_path, lognormal_run(1), lognormal_run(3))
    result = by_stat(compare(base, lognormal_run(2, scale=1.25), "p95:10%,+1ms").results, "p95")
    assert result.verdict is Verdict.FAIL, result.line()  # type: ignore[attr-defined]


# -- machines: a baseline from other hardware never yields a verdict, least of all "improved" ----


def _fp(load: LoadParameters, **kw: object) -> Fingerprint:
    return Fingerprint(load=load.to_json(), cpu_count=2, **kw)  # type: ignore[arg-type]


def test_baseline_from_other_cpu_is_inconclusive_not_improved(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    slow_machine = _fp(LOAD, cpu_model="Slow CPU 1.0GHz")
    record(path, lognormal_run(1, median_ms=8.0), environment=slow_machine)
    base = load(path)
    # This machine is twice as fast: every window is far below the baseline.
    here = _fp(LOAD, cpu_model="Fast CPU 4.0GHz")
    run = lognormal_run(2, median_ms=4.0)
    cmp = compare(base, run, "p50:10%,+1ms", environment=here)
    (p50,) = cmp.results
    assert p50.verdict is Verdict.INCONCLUSIVE
    assert "recorded on another CPU ('Slow CPU 1.0GHz'; this run 'Fast CPU 4.0GHz')" in p50.reason
    assert "as measured it would be PASS (improved" in p50.reason
    assert cmp.verdict is Verdict.INCONCLUSIVE
    assert [m.field for m in cmp.foreign] == ["cpu_model"]
    # the numbers stay, for people to read
    assert p50.change_pct is not None
    assert p50.change_pct < -40
    # explicitly allowed: judged as measured, the difference still listed
    allowed = compare(base, run, "p50:10%,+1ms", environment=here, allow_foreign=True)
    assert allowed.results[0].verdict is Verdict.PASS
    assert "improved" in allowed.results[0].reason
    assert "not comparable" in allowed.format()


def test_baseline_without_cpu_model_cannot_vouch_for_its_hardware(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    record(path, lognormal_run(1), environment=_fp(LOAD))  # no cpu_model: an old file
    cmp = compare(load(path), lognormal_run(2), environment=_fp(LOAD, cpu_model="AMD EPYC"))
    assert all(r.verdict is Verdict.INCONCLUSIVE for r in cmp.results), cmp.format()
    assert "does not record its cpu_model" in cmp.results[0].reason


def test_other_target_configuration_is_inconclusive(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    record(path, lognormal_run(1), environment=_fp(LOAD, cpu_model="X", target_config="a"))
    here = _fp(LOAD, cpu_model="X", target_config="b")
    cmp = compare(load(path), lognormal_run(2), environment=here)
    assert all(r.verdict is Verdict.INCONCLUSIVE for r in cmp.results)
    assert "under another target configuration" in cmp.results[0].reason
    same = _fp(LOAD, cpu_model="X", target_config="a")
    assert compare(load(path), lognormal_run(2), environment=same).verdict is Verdict.PASS


# -- noise-derived floors --------------------------------------------------------------------


def test_noise_floor_catches_25_percent_that_a_fixed_2ms_floor_hides() -> None:
    """A 5 ms route whose windows scatter by ~0.1 ms, slowed by 25% (1.25 ms): a +2 ms floor
    passes it; a floor of 2 sd of the baseline windows fails it."""
    base = constant_metric([4.9, 5.0, 5.1, 5.0, 4.95, 5.05, 5.0, 4.9, 5.1, 5.0])
    slowed = constant_metric([6.2, 6.25, 6.3, 6.2, 6.3])
    fixed = judge_metric(ROUTE, "p50", parse_spec("p50:10%,+2ms"), base, slowed)
    assert fixed.verdict is Verdict.PASS, fixed.line()
    noise = judge_metric(ROUTE, "p50", parse_spec("p50:10%,+2sd"), base, slowed)
    assert noise.verdict is Verdict.FAIL, noise.line()
    assert "(floor 0.141 ms)" in noise.tolerance  # 2 sd of the windows; 10% (0.5 ms) governs
    unchanged = constant_metric([5.0, 5.05, 4.95, 5.1, 4.9])
    same = judge_metric(ROUTE, "p50", parse_spec("p50:10%,+2sd"), base, unchanged)
    assert same.verdict is Verdict.PASS, same.line()


def test_noise_floor_widens_with_a_noisy_baseline() -> None:
    """Windows that scatter by ~1 ms: 2 sd (~2 ms) is the allowance, not 10% (0.5 ms)."""
    base = constant_metric([4.0, 6.0, 5.0, 3.8, 6.2, 5.0, 4.5, 5.5, 4.2, 5.8])
    bit_slower = constant_metric([5.6, 5.7, 5.8, 5.6, 5.7])
    verdict = judge_metric(ROUTE, "p50", parse_spec("p50:10%,+2sd"), base, bit_slower)
    assert verdict.verdict is not Verdict.FAIL, verdict.line()


#: A CI run's recording: ten 6 ms windows, one of which caught a 1.3 s pause of the host.
STALLED_BASELINE = [5.9, 6.0, 5.8, 6.1, 5.95, 1300.0, 6.05, 5.9, 6.0, 5.85]


def test_one_stalled_baseline_window_does_not_make_the_baseline_useless() -> None:
    """With a plain sd (390 ms) every later run was INCONCLUSIVE "baseline too noisy" and the
    +50% run was "busy host" INCONCLUSIVE; the stall is left out of the spread now."""
    base = constant_metric(STALLED_BASELINE, n=50)
    unchanged = constant_metric([5.2, 5.3, 5.25, 5.2, 5.3], n=50)
    same = judge_metric(ROUTE, "p50", parse_spec("p50:50%,+3ms"), base, unchanged)
    assert same.verdict is Verdict.PASS, same.line()
    slowed = constant_metric([9.1, 9.2, 9.0, 9.3, 9.1], n=50)  # +3.1 ms (~+52%)
    slow = judge_metric(ROUTE, "p50", parse_spec("p50:10%,+2ms"), base, slowed)
    assert slow.verdict is Verdict.FAIL, slow.line()


def test_one_stalled_baseline_window_does_not_widen_a_noise_floor() -> None:
    """+2sd over a baseline with a stalled window: a 20% slowdown still fails (a plain sd made
    the floor 780 ms, and any regression passed)."""
    base = constant_metric(STALLED_BASELINE, n=50)
    slowed = constant_metric([7.2, 7.3, 7.2, 7.25, 7.3], n=50)
    verdict = judge_metric(ROUTE, "p50", parse_spec("p50:10%,+2sd"), base, slowed)
    assert verdict.verdict is Verdict.FAIL, verdict.line()


# -- paired windows (a live control group) ---------------------------------------------------

#: a host that got busy halfway: both sides' windows jump from ~2 ms to ~3.5 ms together
BUSY_HALFWAY = [2.0, 2.05, 1.95, 2.02, 1.98, 3.5, 3.6, 3.4, 3.55, 3.45]


def test_paired_windows_see_25_percent_through_a_busy_host() -> None:
    """Unpaired, the level's scatter (a busy host) hides +25%; paired, it cancels."""
    reference = constant_metric(BUSY_HALFWAY, n=60)
    slowed = constant_metric([v * 1.25 for v in BUSY_HALFWAY], n=60)
    spec = parse_spec("p50:10%,+2sd")
    unpaired = judge_metric(ROUTE, "p50", spec, reference, slowed)
    assert unpaired.verdict is not Verdict.FAIL, unpaired.line()
    paired = judge_paired(ROUTE, "p50", spec, reference, slowed)
    assert paired.verdict is Verdict.FAIL, paired.line()
    assert "Wilcoxon signed-rank p=" in paired.line()


def test_paired_windows_pass_no_change_through_a_busy_host() -> None:
    reference = constant_metric(BUSY_HALFWAY, n=60)
    jitter = [1.01, 0.99, 1.0, 1.02, 0.98, 1.01, 0.99, 1.0, 1.02, 0.98]
    same = constant_metric([v * j for v, j in zip(BUSY_HALFWAY, jitter, strict=True)], n=60)
    verdict = judge_paired(ROUTE, "p50", parse_spec("p50:10%,+2sd"), reference, same)
    assert verdict.verdict is Verdict.PASS, verdict.line()
    assert "non-inferiority" in verdict.reason


def test_paired_windows_too_few_to_decide() -> None:
    reference = constant_metric(BUSY_HALFWAY[:5], n=60)
    slowed = constant_metric([v * 1.5 for v in BUSY_HALFWAY[:5]], n=60)
    verdict = judge_paired(ROUTE, "p50", parse_spec("p50:10%"), reference, slowed)
    assert verdict.verdict is Verdict.INCONCLUSIVE, verdict.line()
    assert "5 paired windows" in verdict.reason


def test_paired_windows_noisy_difference_is_inconclusive() -> None:
    """When the difference itself scatters by more than the allowance: no PASS, no FAIL."""
    reference = constant_metric([2.0] * 10, n=60)
    noisy = constant_metric([2.0, 3.0, 1.2, 2.9, 1.1, 2.2, 3.1, 1.0, 2.8, 1.3], n=60)
    verdict = judge_paired(ROUTE, "p50", parse_spec("p50:10%"), reference, noisy)
    assert verdict.verdict is Verdict.INCONCLUSIVE, verdict.line()


def test_paired_windows_see_an_added_half_millisecond_that_unpaired_passes() -> None:
    """A cohort fault adds 0.5 ms (+25% quiet, +14% busy): paired FAIL; unpaired, the busy
    half's scatter made it a PASS (the judge the rollout had before)."""
    reference = constant_metric(BUSY_HALFWAY, n=60)
    slowed = constant_metric([v + 0.5 for v in BUSY_HALFWAY], n=60)
    spec = parse_spec("p50:10%,+2sd")
    assert judge_metric(ROUTE, "p50", spec, reference, slowed).verdict is Verdict.PASS
    paired = judge_paired(ROUTE, "p50", spec, reference, slowed)
    assert paired.verdict is Verdict.FAIL, paired.line()


def test_paired_windows_fail_a_cohort_whose_change_the_busy_windows_dilute() -> None:
    """+25% in the quiet windows, +10% in the busy ones (pooled ~+17%): FAIL. With one window's
    spread as the noise (not the standard error of the mean difference) the floor was wide
    enough to PASS it."""
    reference = constant_metric(BUSY_HALFWAY, n=60)
    slowed = constant_metric([v * (1.25 if v < 3 else 1.10) for v in BUSY_HALFWAY], n=60)
    verdict = judge_paired(ROUTE, "p50", parse_spec("p50:10%,+2sd"), reference, slowed)
    assert verdict.verdict is Verdict.FAIL, verdict.line()


def test_a_baseline_that_is_not_comparable_judges_no_relative_trigger(tmp_path: Path) -> None:
    """Issue 16: another CPU (or another load plan) makes the response-time and error-rate
    triggers NOT JUDGED with the reason, whatever the numbers say; absolute ones still count."""
    path = tmp_path / "other.json"
    record(path, lognormal_run(1, median_ms=2.0), environment=_fp(LOAD, cpu_model="Fast CPU"))
    here = _fp(LOAD, cpu_model="Slow CPU")
    cmp = compare(load(path), lognormal_run(2, median_ms=8.0), environment=here)  # +300%
    by = {t.name: t for t in cmp.triggers}
    rt = by["response_time_degradation"]
    assert rt.state.value == "UNKNOWN", rt.reason
    assert rt.reason.startswith("not judged: the baseline is not comparable: ")
    assert "as measured: FIRED" in rt.reason
    assert by["error_rate_increase"].reason.startswith("not judged")
    assert not cmp.rollback
    assert by["unavailability"].state.value == "CLEAR"  # absolute: judged
    # allowed explicitly: judged as measured
    allowed = compare(load(path), lognormal_run(2, median_ms=8.0), environment=here,
                      allow_foreign=True)  # fmt: skip
    assert {t.name: t for t in allowed.triggers}["response_time_degradation"].fired
