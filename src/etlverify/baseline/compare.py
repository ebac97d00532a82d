"""Where the 10% rule is decided: per-metric verdicts of a run against its baseline.

For every metric and every statistic with a tolerance spec (see `spec.py`; default "within 10% of
baseline" with absolute floors), `compare()` gives PASS, FAIL or INCONCLUSIVE with the numbers.

Statistical design
------------------
*Point estimate.* The baseline value is the statistic of all baseline windows pooled (histograms
merged, over every recorded run); the current value likewise over the run's windows. Pooled
histograms give the most precise percentile; the change (%) and the tolerance are judged on these.

*Significance test: Mann-Whitney U, two-sided, on per-window values.* Each trial window yields one
value of the statistic (its p95, its throughput, ...), so each side is a small sample of window
values and the test asks whether the current windows are systematically shifted against the
baseline windows. It is exact for small samples without ties, assumes no distribution (percentiles
of latency are skewed and heavy-tailed), and is insensitive to a single outlying window. A bootstrap
CI of the ratio was rejected: with ~5 windows per side the bootstrap distribution has only a handful
of distinct values and its intervals are too narrow (anti-conservative). The price of a rank test is
granularity: with n and m windows the smallest two-sided p is 2 / C(n+m, n) (5 vs 5: 0.0079; 3 vs 3:
0.1). A metric whose window counts cannot reach `alpha` is INCONCLUSIVE, never PASS. Pooling the
windows of several recorded runs helps twice: 10 vs 5 windows reach p = 0.0013, and run-to-run
variation (the larger part of real noise) enters the baseline spread, which windows of a single run
understate. Windows of one run are not strictly independent (warm-up, drift); the test treats them
as exchangeable, which is why the noise floor below is also required.

*Rules, in order.*
1. A metric in the baseline but missing from the run, or with no successful sample for a latency
   statistic, is FAIL (fail closed).
2. Too few windows to reach `alpha`, or windows too small for the percentile (fewer than
   `min_tail` samples beyond it), is INCONCLUSIVE.
3. FAIL needs all of: a significant difference (p < alpha), a worsening beyond the tolerance
   (relative, raised to the absolute floor) on the pooled value, and on the median window too. A
   pooled value pushed past the tolerance by a few stalled windows is INCONCLUSIVE: in the gate's
   A/A benchmark on a busy host, windows of one run were correlated (r = 0.78), so such spells made
   Mann-Whitney "significant" in 40-50% of no-change runs and gave 3 false FAILs in 20; requiring
   the median window too, and (when the windows scatter by more than the allowed change) an
   excess over the tolerance beyond twice that scatter, is what keeps a busy host from reading as
   a regression (benchmarks/README.md, "Gate quality").
4. Beyond tolerance but not significant is INCONCLUSIVE (re-run or record more windows).
5. Non-inferiority: within tolerance on the point estimate and the current windows, less the
   allowed change, are significantly better than the baseline windows (one-sided Mann-Whitney with
   that margin, p < alpha): PASS. The data then rule out a regression of the tolerated size,
   however noisy either side is, so a clear improvement is never INCONCLUSIVE. (Until 2026-12-07
   the windows were moved the other way, which asked for an improvement *beyond* the tolerance
   before a noisy run could PASS: a users group 13.7% faster than its baseline was INCONCLUSIVE.)
6. Noise floor: otherwise, if the window-to-window standard deviation of either side is wider than
   the allowed change, a change of the tolerated size could not have been seen, so no PASS:
   INCONCLUSIVE. "Standard deviation" here and in the `sd` floors leaves out stalled windows
   (further than 5 robust sds, 1.4826 x the median absolute deviation, from the median window),
   so that one stalled window neither makes a baseline useless nor widens a floor.
7. Otherwise PASS (within tolerance, improved, or significant but within tolerance).

Results are collected for all metrics first and judged once (`Comparison.verdict` is the worst).
Rollback triggers (`triggers.py`) are reported separately; a fired trigger also makes the verdict
FAIL, and error-level environment differences (another load) make it at least INCONCLUSIVE.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats as sps

from etlverify.baseline.noise import robust_sd, spread, tail_needed
from etlverify.baseline.spec import ToleranceSpec, parse_specs, resolve_spec
from etlverify.baseline.store import Baseline, Fingerprint, Mismatch, compare_fingerprints
from etlverify.baseline.triggers import (
    TriggerConfig,
    TriggerResult,
    evaluate_triggers,
    not_judged,
)
from etlverify.measure.results import (
    LoadParameters,
    MetricResult,
    RunResult,
    is_latency_stat,
    stat_value,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "Comparison",
    "MetricVerdict",
    "Verdict",
    "compare",
    "compare_metrics",
    "judge_metric",
    "judge_paired",
    "min_p_value",
]

DEFAULT_ALPHA = 0.05
#: A window must hold this many samples beyond a percentile for that percentile to mean something.
DEFAULT_MIN_TAIL = 5
TEST_NAME = "Mann-Whitney"


class Verdict(StrEnum):
    """Per-metric and overall outcome; FAIL is worst."""

    PASS = "PASS"
    INCONCLUSIVE = "INCONCLUSIVE"
    FAIL = "FAIL"

    @property
    def rank(self) -> int:
        """Severity order for `worst()`."""
        return ("PASS", "INCONCLUSIVE", "FAIL").index(self.value)


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """The most severe verdict (PASS for none)."""
    return max(verdicts, key=lambda v: v.rank, default=Verdict.PASS)


def _fmt_p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def min_p_value(n: int, m: int) -> float:
    """Smallest two-sided exact Mann-Whitney p-value reachable with n and m observations."""
    if n < 1 or m < 1:
        return 1.0
    return min(1.0, 2.0 / math.comb(n + m, n))


@dataclass(frozen=True)
class MetricVerdict:
    """The verdict on one statistic of one metric, with the numbers that led to it."""

    metric: str
    stat: str
    verdict: Verdict
    reason: str
    baseline: float | None = None
    current: float | None = None
    change_pct: float | None = None
    tolerance: str = ""
    p_value: float | None = None
    test: str | None = None
    baseline_windows: int = 0
    current_windows: int = 0

    @property
    def unit(self) -> str:
        """Unit of `baseline`/`current`."""
        if self.stat == "throughput":
            return "rps"
        if self.stat == "error_rate":
            return "%"
        return "ms"

    def _fmt(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        sep = "" if self.unit == "%" else " "
        number = f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
        return f"{number}{sep}{self.unit}"

    def line(self) -> str:
        """One line for people: ``FAIL p95 GET /api/jobs: 12.4 ms vs baseline 8.1 ms (...)``."""
        details = []
        if self.change_pct is not None:
            details.append(f"{self.change_pct:+.1f}%")
        if self.tolerance:
            details.append(f"tolerance {self.tolerance}")
        if self.p_value is not None:
            details.append(f"{self.test or TEST_NAME} p={_fmt_p(self.p_value)}")
        head = f"{self.verdict.value} {self.stat} {self.metric}: "
        if self.current is None and self.baseline is None:
            return head + self.reason
        body = f"{self._fmt(self.current)} vs baseline {self._fmt(self.baseline)}"
        paren = f" ({', '.join(details)})" if details else ""
        return f"{head}{body}{paren} - {self.reason}"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "metric": self.metric,
            "stat": self.stat,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "baseline": self.baseline,
            "current": self.current,
            "unit": self.unit,
            "change_pct": self.change_pct,
            "tolerance": self.tolerance,
            "p_value": self.p_value,
            "test": self.test,
            "baseline_windows": self.baseline_windows,
            "current_windows": self.current_windows,
        }


@dataclass(frozen=True)
class Comparison:
    """All verdicts of one comparison, the rollback triggers and the environment differences."""

    results: tuple[MetricVerdict, ...]
    triggers: tuple[TriggerResult, ...]
    environment: tuple[Mismatch, ...] = ()
    alpha: float = DEFAULT_ALPHA
    baseline_name: str = ""

    @property
    def rollback(self) -> bool:
        """True when any checklist rollback trigger fired."""
        return any(t.fired for t in self.triggers)

    @property
    def verdict(self) -> Verdict:
        """Worst of: metric verdicts, FAIL for a fired trigger, INCONCLUSIVE for another load."""
        parts = [r.verdict for r in self.results]
        if self.rollback:
            parts.append(Verdict.FAIL)
        if any(m.severity in ("error", "foreign") for m in self.environment):
            parts.append(Verdict.INCONCLUSIVE)
        return worst(parts)

    @property
    def foreign(self) -> tuple[Mismatch, ...]:
        """Why the baseline does not describe this run's machine or target configuration."""
        return tuple(m for m in self.environment if m.severity == "foreign")

    def failures(self) -> tuple[MetricVerdict, ...]:
        """The FAIL results."""
        return tuple(r for r in self.results if r.verdict is Verdict.FAIL)

    def format(self) -> str:
        """Human report: a verdict line, one line per metric, then triggers and environment."""
        counts = {v: sum(1 for r in self.results if r.verdict is v) for v in Verdict}
        name = f" against baseline {self.baseline_name!r}" if self.baseline_name else ""
        lines = [
            f"{self.verdict.value}{name}: {counts[Verdict.PASS]} pass, "
            f"{counts[Verdict.FAIL]} fail, {counts[Verdict.INCONCLUSIVE]} inconclusive"
            + (", ROLLBACK TRIGGERED" if self.rollback else "")
        ]
        order = {Verdict.FAIL: 0, Verdict.INCONCLUSIVE: 1, Verdict.PASS: 2}
        lines += [r.line() for r in sorted(self.results, key=lambda r: order[r.verdict])]
        lines += [t.line() for t in self.triggers]
        lines += [f"environment {m}" for m in self.environment]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "verdict": self.verdict.value,
            "rollback": self.rollback,
            "alpha": self.alpha,
            "baseline": self.baseline_name,
            "results": [r.to_json() for r in self.results],
            "triggers": [t.to_json() for t in self.triggers],
            "environment": [
                {
                    "field": m.field,
                    "baseline": m.baseline,
                    "current": m.current,
                    "severity": m.severity.value,
                }
                for m in self.environment
            ],
        }


def _mann_whitney(current: Sequence[float], baseline: Sequence[float]) -> float:
    if len(set(current) | set(baseline)) == 1:
        return 1.0  # every window identical on both sides: no evidence of any difference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.mannwhitneyu(current, baseline, alternative="two-sided", method="auto")
    p = float(res.pvalue)
    return 1.0 if math.isnan(p) else p


def _non_inferiority(
    current: Sequence[float], baseline: Sequence[float], allowed: float, higher_is_worse: bool
) -> float:
    """One-sided Mann-Whitney p that the current windows, less the `allowed` worsening, are
    better than the baseline's: small p rules out a worsening of `allowed` or more (the textbook
    non-inferiority test with margin `allowed`)."""
    shift = -allowed if higher_is_worse else allowed
    moved = [v + shift for v in current]
    if len(moved) < 2 or len(baseline) < 2:
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.mannwhitneyu(
            moved, baseline, alternative="less" if higher_is_worse else "greater"
        )
    p = float(res.pvalue)
    return 1.0 if math.isnan(p) else p


def _unit(stat: str) -> str:
    return "rps" if stat == "throughput" else "pp" if stat == "error_rate" else "ms"


# the noise rules live in `baseline.noise` (the response-time trigger uses them too)
_robust_sd = robust_sd
_spread = spread
_tail_needed = tail_needed


def judge_metric(
    metric: str,
    stat: str,
    spec: ToleranceSpec,
    baseline: MetricResult,
    current: MetricResult | None,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_tail: int = DEFAULT_MIN_TAIL,
) -> MetricVerdict:
    """Apply the rules (see module docstring) to one statistic of one metric."""
    tol = spec.describe()
    nb = len(baseline.windows)
    if current is None:
        return MetricVerdict(
            metric,
            stat,
            Verdict.FAIL,
            "metric missing from the run (in baseline, fail closed)",
            tolerance=tol,
            baseline_windows=nb,
        )
    nc = len(current.windows)
    base_all, cur_all = baseline.merged, current.merged
    b, c = stat_value(base_all, stat), stat_value(cur_all, stat)
    common: dict[str, Any] = {"tolerance": tol, "baseline_windows": nb, "current_windows": nc}
    if b is None:
        return MetricVerdict(
            metric,
            stat,
            Verdict.INCONCLUSIVE,
            f"baseline has no {stat} value (no samples)",
            current=c,
            **common,
        )
    if c is None or (is_latency_stat(stat) and current.count == 0):
        why = f"no successful sample in the run ({current.errors} errors), fail closed"
        return MetricVerdict(metric, stat, Verdict.FAIL, why, baseline=b, **common)
    change_pct = round(100.0 * (c - b) / b, 3) if b != 0 else None
    numbers: dict[str, Any] = {"baseline": b, "current": c, "change_pct": change_pct, **common}

    def verdict(v: Verdict, reason: str, p: float | None = None) -> MetricVerdict:
        test = f"{TEST_NAME}" if p is not None else None
        return MetricVerdict(metric, stat, v, reason, p_value=p, test=test, **numbers)

    base_vals, cur_vals = baseline.values(stat), current.values(stat)
    # A noise-derived floor (`+2sd`) is the baseline windows' own spread, fixed by the baseline.
    noise_sd = _spread(base_vals) if spec.noise_floor else None
    if noise_sd is not None:
        floor = spec.floor(noise_sd) or 0.0
        numbers["tolerance"] = f"{tol} (floor {floor:.3g} {_unit(stat)})"
    floor_p = min_p_value(len(base_vals), len(cur_vals))
    if floor_p >= alpha:
        return verdict(
            Verdict.INCONCLUSIVE,
            f"{len(cur_vals)} vs {len(base_vals)} windows cannot reach p<{alpha:g} (smallest "
            f"possible p={floor_p:.2g}); record more windows or runs",
        )
    need = _tail_needed(stat, min_tail)
    if need is not None:
        small_b = min(w.count for w in baseline.windows)
        small_c = min(w.count for w in current.windows)
        if min(small_b, small_c) < need:
            side = "baseline" if small_b < small_c else "run"
            return verdict(
                Verdict.INCONCLUSIVE,
                f"too few samples for {stat}: needs {need} per window ({min_tail} beyond the "
                f"percentile), smallest {side} window has {min(small_b, small_c)}",
            )
    p = round(_mann_whitney(cur_vals, base_vals), 6)
    significant = p < alpha
    allowed = spec.allowed_change(b, noise_sd)
    beyond = spec.fails(b, c, noise_sd)
    if beyond and significant:
        # Sustained or spikes? The pooled value can cross the tolerance through a few stalled
        # windows (another process on the host), which also make the windows "significant", as
        # windows of one run move together. FAIL needs the typical window beyond tolerance too.
        typical_b, typical_c = float(np.median(base_vals)), float(np.median(cur_vals))
        if not spec.fails(typical_b, typical_c, noise_sd):
            return verdict(
                Verdict.INCONCLUSIVE,
                f"beyond tolerance only through spike windows: the median window is "
                f"{typical_c:.3g} vs {typical_b:.3g} in the baseline, within tolerance; re-run",
                p,
            )
        # A whole run slowed by a busy host looks like a regression from inside the run; what
        # tells them apart is the windows' scatter. When it is wider than the tolerance, FAIL only
        # if the excess over the tolerance is also beyond twice that scatter.
        noise = max(_spread(base_vals), _spread(cur_vals))
        excess = spec.worsening(typical_b, typical_c) - allowed
        if noise > allowed and excess < 2.0 * noise:
            return verdict(
                Verdict.INCONCLUSIVE,
                f"beyond tolerance, but the windows scatter by {noise:.3g} (more than the allowed "
                f"change {allowed:.3g}) and the excess {excess:.3g} is within twice that: a busy "
                f"host cannot be told from a regression; re-run",
                p,
            )
        return verdict(Verdict.FAIL, "significant change beyond tolerance", p)
    if beyond:
        return verdict(
            Verdict.INCONCLUSIVE,
            f"beyond tolerance but not significant (p>={alpha:g}); re-run or record more windows",
            p,
        )
    p_ni = _non_inferiority(cur_vals, base_vals, allowed, spec.worsening(0.0, 1.0) > 0)
    if p_ni < alpha:
        if significant:
            better = (
                "improved"
                if spec.worsening(b, c) < 0
                else "significant change but within tolerance"
            )
        else:
            better = "within tolerance"
        return verdict(
            Verdict.PASS,
            f"{better}: a worsening beyond the allowed {allowed:.3g} is ruled out "
            f"(one-sided non-inferiority p={p_ni:.2g})",
            p,
        )
    sd_b, sd_c = _spread(base_vals), _spread(cur_vals)
    if max(sd_b, sd_c) > allowed:
        side, sd = ("baseline", sd_b) if sd_b >= sd_c else ("run", sd_c)
        ref = b if side == "baseline" else c
        cv = f" (CV {100.0 * sd / ref:.0f}%)" if ref else ""
        return verdict(
            Verdict.INCONCLUSIVE,
            f"{side} too noisy: window-to-window sd {sd:.3g}{cv} exceeds the allowed change "
            f"{allowed:.3g}, so a change of that size could not be detected",
            p,
        )
    if significant and spec.worsening(b, c) < 0:
        reason = "improved"
    elif significant:
        reason = "significant change but within tolerance"
    else:
        reason = "within tolerance"
    return verdict(Verdict.PASS, reason, p)


PAIRED_TEST_NAME = "Wilcoxon signed-rank"


def _signed_rank(diffs: Sequence[float], alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p of per-window differences (exact for small n; 1.0 when all are 0)."""
    if not any(diffs):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.wilcoxon(diffs, alternative=alternative, zero_method="zsplit")
    p = float(res.pvalue)
    return 1.0 if math.isnan(p) else p


def judge_paired(
    metric: str,
    stat: str,
    spec: ToleranceSpec,
    reference: MetricResult,
    current: MetricResult | None,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_tail: int = DEFAULT_MIN_TAIL,
) -> MetricVerdict:
    """The rules of `judge_metric` for two sides measured in the same windows (a live control
    group, as a rollout's cohorts are): windows are paired by index, and what moves both sides
    of a window alike (a busy host, a burst of other traffic) cancels in their difference.

    So the significance test is Wilcoxon's signed-rank over the per-window worsenings (current
    against reference, signed so that positive is worse, relative to the window's reference
    value and expressed at the pooled one, error rates in percentage points), and every noise
    figure - the `sd` floor, the busy-host rule, the noise rule - is the standard error of their
    mean (robust spread / sqrt(n)), not one side's window-to-window spread. n paired windows
    reach at best p = 2 / 2^n (6: 0.031; 10: 0.002). The non-inferiority rule is the textbook
    one: the worsenings less the allowed change are significantly below zero, i.e. a worsening
    of the allowed size is ruled out.
    """
    tol = spec.describe()
    if current is None:
        return MetricVerdict(
            metric, stat, Verdict.FAIL, "metric missing from the run (fail closed)", tolerance=tol
        )
    ref_by = {w.index: w for w in reference.windows}
    pairs = [(ref_by[w.index], w) for w in current.windows if w.index in ref_by]
    b = stat_value(reference.merged, stat)
    c = stat_value(current.merged, stat)
    common: dict[str, Any] = {
        "tolerance": tol,
        "baseline_windows": len(reference.windows),
        "current_windows": len(current.windows),
    }
    if b is None or c is None or (is_latency_stat(stat) and current.count == 0):
        side = "reference" if b is None else "current"
        return MetricVerdict(
            metric,
            stat,
            Verdict.FAIL if b is not None else Verdict.INCONCLUSIVE,
            f"no {stat} value on the {side} side (no successful sample), fail closed",
            baseline=b,
            current=c,
            **common,
        )
    change_pct = round(100.0 * (c - b) / b, 3) if b != 0 else None
    numbers: dict[str, Any] = {"baseline": b, "current": c, "change_pct": change_pct, **common}

    def verdict(v: Verdict, reason: str, p: float | None = None) -> MetricVerdict:
        test = PAIRED_TEST_NAME if p is not None else None
        return MetricVerdict(metric, stat, v, reason, p_value=p, test=test, **numbers)

    need = _tail_needed(stat, min_tail)
    worse: list[float] = []
    for r, cur in pairs:
        rv, cv = stat_value(r, stat), stat_value(cur, stat)
        if rv is None or cv is None:
            continue
        if need is not None and min(r.count, cur.count) < need:
            continue
        step = spec.worsening(rv, cv)
        # Relative to the window's own reference value, at the pooled one: a slower host scales
        # a change (a 25% slower component costs more in a busy window) as it scales the level.
        worse.append(step / rv * b if stat != "error_rate" and rv > 0 else step)
    n = len(worse)
    if n < 1 or 2.0 / 2**n >= alpha:
        return verdict(
            Verdict.INCONCLUSIVE,
            f"{n} paired windows (with {need or 1}+ samples on both sides) cannot reach "
            f"p<{alpha:g} (smallest possible p={min(1.0, 2.0 / 2**n):.2g}); hold longer",
        )
    # The noise of a paired comparison is how well the mean per-window difference is known:
    # the windows' robust spread over sqrt(n), the standard error. (One window's spread is what
    # an unpaired comparison must allow for, because whole runs move; paired, they cancel, and
    # a floor of twice one window's spread let a +17% cohort on a busy host PASS.)
    noise = _robust_sd(worse) / math.sqrt(n)
    if spec.noise_floor:
        numbers["tolerance"] = f"{tol} (floor {spec.floor(noise) or 0.0:.3g} {_unit(stat)})"
    allowed = spec.allowed_change(b, noise)
    p = round(_signed_rank(worse), 6)
    significant = p < alpha
    typical = float(np.median(worse))
    if spec.fails(b, c, noise) and significant:
        if typical <= allowed:
            return verdict(
                Verdict.INCONCLUSIVE,
                f"beyond tolerance only through a few windows: the median window is "
                f"{typical:+.3g} {_unit(stat)} worse, within the allowed {allowed:.3g}; re-run",
                p,
            )
        if noise > allowed and typical - allowed < 2.0 * noise:
            return verdict(
                Verdict.INCONCLUSIVE,
                f"beyond tolerance, but the mean per-window difference is uncertain by "
                f"{noise:.3g} (standard error; more than the allowed change {allowed:.3g}) and "
                f"the excess is within twice that; hold longer",
                p,
            )
        return verdict(Verdict.FAIL, "significant change beyond tolerance", p)
    if spec.fails(b, c, noise):
        return verdict(
            Verdict.INCONCLUSIVE,
            f"beyond tolerance but not significant (p>={alpha:g}); hold longer",
            p,
        )
    p_ni = _signed_rank([w - allowed for w in worse], alternative="less")
    if p_ni < alpha:
        better = "improved" if significant and typical < 0 else "within tolerance"
        return verdict(
            Verdict.PASS,
            f"{better}: a worsening of the allowed {allowed:.3g} is ruled out "
            f"(one-sided non-inferiority p={p_ni:.2g})",
            p,
        )
    if noise > allowed:
        return verdict(
            Verdict.INCONCLUSIVE,
            f"too noisy: the mean per-window difference has a standard error of {noise:.3g}, "
            f"more than the allowed change {allowed:.3g}, so a change of that size could not be "
            f"detected; hold longer",
            p,
        )
    return verdict(
        Verdict.PASS,
        "significant change but within tolerance" if significant else "within tolerance",
        p,
    )


def _not_comparable(result: MetricVerdict, why: str) -> MetricVerdict:
    """INCONCLUSIVE, keeping the numbers and saying what the verdict would have been."""
    if result.verdict is Verdict.INCONCLUSIVE:
        return result
    return replace(
        result,
        verdict=Verdict.INCONCLUSIVE,
        reason=f"not comparable: {why}; as measured it would be {result.verdict.value} "
        f"({result.reason}); use a baseline recorded on this machine",
    )


def compare(
    baseline: Baseline,
    run: RunResult,
    specs: str | Iterable[str | ToleranceSpec] | None = None,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_tail: int = DEFAULT_MIN_TAIL,
    environment: Fingerprint | None = None,
    triggers: TriggerConfig | None = None,
    allow_foreign: bool = False,
    paired: bool = False,
) -> Comparison:
    """Compare `run` with `baseline` under `specs` (default `DEFAULT_SPECS`); judge once.

    Metrics only in the run are INCONCLUSIVE ("no baseline; record one"). `environment` is the
    run's fingerprint; without it only the load parameters are compared. A baseline recorded on
    other hardware or under another target configuration (FOREIGN fingerprint differences) turns
    every metric verdict into INCONCLUSIVE naming the difference and what the verdict would have
    been: another CPU shifts every route alike, so "PASS improved" there hides a regression.
    `allow_foreign` keeps the verdicts (and still lists the differences). `paired`: the two were
    measured in the same windows (`judge_paired`), not one after the other.
    """
    parsed = parse_specs(specs)
    judge_one = judge_paired if paired else judge_metric
    stats = list(dict.fromkeys(s.stat for s in parsed))
    results: list[MetricVerdict] = []
    for metric in sorted(set(baseline.metrics) | set(run.metrics)):
        base = baseline.metrics.get(metric)
        for stat in stats:
            spec = resolve_spec(parsed, metric, stat)
            if spec is None:
                continue
            if base is None:
                results.append(
                    MetricVerdict(
                        metric,
                        stat,
                        Verdict.INCONCLUSIVE,
                        "not in the baseline; record a baseline that includes it",
                        tolerance=spec.describe(),
                        current_windows=len(run.metrics[metric].windows),
                    )
                )
                continue
            results.append(
                judge_one(
                    metric,
                    stat,
                    spec,
                    base,
                    run.metrics.get(metric),
                    alpha=alpha,
                    min_tail=min_tail,
                )
            )
    env = environment or Fingerprint(load=run.load.to_json())
    base_env = baseline.environment
    if environment is None:
        # Only the load is known about the run: compare that and nothing else.
        base_env = Fingerprint(load=baseline.environment.load)
        env = Fingerprint(load=run.load.to_json())
    mismatches = compare_fingerprints(base_env, env)
    foreign = [m for m in mismatches if m.severity == "foreign"]
    if foreign and not allow_foreign:
        why = "; ".join(m.describe() for m in foreign)
        results = [_not_comparable(r, why) for r in results]
    fired = evaluate_triggers(baseline.metrics, run, triggers)
    other = [m for m in mismatches if m.severity == "error" or (m in foreign and not allow_foreign)]
    if other:
        # another load plan, other hardware or configuration: no relative trigger can be judged
        why = "the baseline is not comparable: " + "; ".join(m.describe() for m in other)
        fired = tuple(not_judged(t, why) for t in fired)
    return Comparison(
        results=tuple(results),
        triggers=fired,
        environment=mismatches,
        alpha=alpha,
        baseline_name=baseline.name,
    )


def compare_metrics(
    reference: Mapping[str, MetricResult],
    current: Mapping[str, MetricResult],
    specs: str | Iterable[str | ToleranceSpec] | None = None,
    *,
    name: str = "reference",
    model: str = "windows",
    paired: bool = False,
) -> Comparison:
    """Judge `current` against `reference` measured alongside it (no stored baseline, so no
    fingerprint): only the metrics on both sides, under the same rules as `compare`. For the
    comparisons made within one process run: a watch's week, a rollout's cohorts."""
    common = {k: v for k, v in current.items() if k in reference}
    load = LoadParameters(model=model, duration_s=0.0, windows=0)
    base = Baseline(
        name=name,
        environment=Fingerprint(load=load.to_json()),
        recorded_at="",
        runs=(),
        metrics={k: reference[k] for k in common},
    )
    run = RunResult(metrics=common, load=load, started_at="", duration_s=0.0)
    return compare(base, run, specs, paired=paired)
