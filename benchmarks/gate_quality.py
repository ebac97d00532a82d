"""Gate-quality benchmark: how often the performance gate FAILs with and without a real change.

The gate (`etlverify.baseline.compare`) judges a run against a recorded baseline and says PASS,
FAIL or INCONCLUSIVE per metric and statistic. This script measures, on this machine and against
the embedded reference ETL Plus target (started here with fault injection, on 127.0.0.1, stopped
by PID at the end):

* the false-alarm rate of A/A runs (nothing changed between baseline and run), and
* the detection rate for an injected latency increase of +10% (exactly the default tolerance),
  +25% and +50%,

plus the INCONCLUSIVE rate of every condition.

Design
------
*A known service time.* `GET /api/jobs` of an empty reference answers in about a millisecond, where
the default specs' absolute floor (1 ms) and not the 10% decides, and "+10%" of a sub-millisecond
time is below timer resolution. So the route is given a base service time with the fault switch,
for the baseline and for EVERY run: `{"latency": {"ms": 20, "jitter_ms": 2, "fraction": 1.0,
"route_prefix": "/api/jobs"}}` (20 ms + uniform 0-2 ms). A "+X%" run adds X% of the *baseline's
measured pooled p50* (client side, about 24 ms) to the injected `ms`, e.g. +25%: 20 -> ~26 ms.
The change is an additive shift, so p95 moves by the same milliseconds, which is a smaller
percentage of the larger p95: the p50 statistic is where "+X%" is exactly X%.

*Load.* Open model (`run_open`) at 100 req/s, 6 trial windows of 1.5 s (150 requests each: p95
needs >= 100 per window), so one run takes ~9 s. The baseline is 3 such runs recorded into a
temporary baseline file with `store.record(append=True)` (18 windows against a run's 6).

*Specs.* The default specs without p99: `p50:10%,+1ms; p95:10%,+1ms; throughput:-10%;
error_rate:+1pp`. p99 needs 500 samples per window (5 beyond the percentile), which would need
~5 s windows and ~30 s runs; with 150-sample windows it is INCONCLUSIVE by design in every run,
which would hide every PASS. A run counts as FAIL / PASS / INCONCLUSIVE by the comparison's
overall verdict (one route is measured, so that is the route's verdict; rollback triggers count).

*Interleaving.* Conditions run in rotation (A/A, +10, +25, +50; each round starts one condition
later) so drift on this shared machine hits every condition alike.

*What-if variants.* Every run is also judged with `judge_metric` under other parameters (alpha,
fewer baseline runs, other spec sets) so that a recommendation can be backed by measured rates.
Raw runs are saved (`reports/benchmarks/gate_quality_runs.json`) and can be re-judged without
measuring again with `--reanalyze`.

    python benchmarks/gate_quality.py [--runs 20] [--quick] [--busy] [--reanalyze FILE]

*The bad day (`--busy`).* CI runners and laptops are shared. With `--busy` the conditions are
A/A quiet, A/A busy, +25% quiet, +25% busy and +10% (quiet), interleaved as above; the baseline is
recorded quiet. In a busy run, CPU busy loops (1 in odd rounds, 2 in even ones, separate processes)
start half-way through the measurement and run until it is settled. Every run is measured with the
host sampled alongside (`etlverify.measure.host`, the target's process left out) and settled with
the gate's own rule (`etlverify.baseline.contention.settle`): a relative FAIL on a contended host
is measured again, at most twice, then INCONCLUSIVE naming the contention. Goals: A/A (quiet and
busy) at most 1 FAIL in 20, +25% quiet at least 19 FAIL, +25% busy at most 1 PASS.

Results: a table on stdout and JSON in reports/benchmarks/gate_quality.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from scipy import stats as sps

from etlverify.baseline import DEFAULT_SPECS, Verdict, compare, load, parse_specs, record
from etlverify.baseline.compare import judge_metric, worst
from etlverify.baseline.spec import ToleranceSpec, resolve_spec
from etlverify.embedded import SUITE_CONFIG_OVERRIDES, EmbeddedTarget, deep_merge
from etlverify.measure import MetricResult, OpenLoad, RequestSpec, RunResult, run_open, stat_value

if TYPE_CHECKING:
    from etlverify.baseline.store import Baseline

#: The module (the package re-exports the function `compare` under the same name).
compare_module: Any = importlib.import_module("etlverify.baseline.compare")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUT = REPO / "reports" / "benchmarks" / "gate_quality.json"
DEFAULT_RAW = REPO / "reports" / "benchmarks" / "gate_quality_runs.json"

ROUTE = "/api/jobs"
METRIC = f"GET {ROUTE}"
BASE_MS = 20.0
JITTER_MS = 2.0
RATE_RPS = 100.0
WINDOWS = 6
WINDOW_S = 1.5
BASELINE_RUNS = 3
#: (label, injected change in % of the baseline's measured p50)
CONDITIONS: tuple[tuple[str, float], ...] = (
    ("A/A", 0.0),
    ("+10%", 10.0),
    ("+25%", 25.0),
    ("+50%", 50.0),
)
#: `--busy`: (label, change %) and which of them run with CPU busy loops (see the docstring)
BUSY_CONDITIONS: tuple[tuple[str, float], ...] = (
    ("A/A", 0.0),
    ("A/A busy", 0.0),
    ("+25%", 25.0),
    ("+25% busy", 25.0),
    ("+10%", 10.0),
)
BUSY_LABELS = frozenset({"A/A busy", "+25% busy"})
#: The default specs, less p99 (see the module docstring).
SPECS: tuple[ToleranceSpec, ...] = tuple(s for s in DEFAULT_SPECS if s.stat != "p99")
#: Baseline runs that fail `baseline_problem` are re-measured, at most this many times in all.
MAX_BASELINE_REJECTS = 4
#: Slack on top of a run's own hard deadline (duration + timeout + 1 s) before it is abandoned.
RUN_SLACK_S = 10.0

#: Overrides on top of the suite's: no rate limiting (a 429 is not what is measured), WARN logs.
BENCH_OVERRIDES: dict[str, Any] = deep_merge(
    SUITE_CONFIG_OVERRIDES,
    {"rate_limits": {"enabled": False}, "logging": {"level": "WARN"}},
)


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived: stop measuring, write what there is, stop the server."""


def _on_signal(signum: int, _frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _load() -> OpenLoad:
    return OpenLoad(
        rate_rps=RATE_RPS,
        duration_s=WINDOWS * WINDOW_S,
        windows=WINDOWS,
        max_concurrency=64,
        timeout_s=5.0,
    )


# --- measuring --------------------------------------------------------------------------------


def set_latency(base_url: str, ms: float) -> dict[str, Any]:
    """Set the injected latency of `ROUTE` to `ms` + uniform(0, JITTER_MS); return the state."""
    body = {"latency": {"ms": ms, "jitter_ms": JITTER_MS, "fraction": 1.0, "route_prefix": ROUTE}}
    resp = httpx.post(f"{base_url}/api/_faults", json=body, timeout=5.0)
    resp.raise_for_status()
    state: dict[str, Any] = resp.json()
    if abs(float(state["latency"]["ms"]) - ms) > 1e-9 or not state.get("active"):
        raise RuntimeError(f"fault switch did not take latency.ms={ms}: {state}")
    return state


def measure_once(base_url: str, injected_ms: float) -> RunResult:
    """One open-model run of `GET /api/jobs` with `injected_ms` of service time, time-bounded."""
    set_latency(base_url, injected_ms)
    load = _load()

    async def main() -> RunResult:
        async with httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(load.timeout_s),
            limits=httpx.Limits(max_connections=load.max_concurrency + 2),
        ) as client:
            budget = load.duration_s + load.timeout_s + RUN_SLACK_S
            return await asyncio.wait_for(
                run_open(client, [RequestSpec("GET", ROUTE)], load), budget
            )

    return asyncio.run(main())


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


class BusyLoops:
    """`n` CPU busy loops in their own processes, from `start()` until `stop()` (bounded)."""

    def __init__(self, n: int, limit_s: float = 120.0) -> None:
        import multiprocessing

        self.ctx = multiprocessing.get_context("spawn")
        self.n = n
        self.limit_s = limit_s
        self.procs: list[Any] = []

    def start(self) -> None:
        for _ in range(self.n):
            proc = self.ctx.Process(target=_spin, args=(self.limit_s,), daemon=True)
            proc.start()
            self.procs.append(proc)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
            proc.join(5)
        self.procs.clear()


def measure_sampled(
    base_url: str, injected_ms: float, target_pid: int | None, busy: BusyLoops | None
) -> tuple[RunResult, list[Any]]:
    """`measure_once` with the host sampled alongside every window (the target left out); with
    `busy`, its loops start half-way through the run (and keep running until stopped)."""
    import threading

    from etlverify.measure.host import HostSampler

    timer = None
    if busy is not None and not busy.procs:
        timer = threading.Timer(WINDOWS * WINDOW_S / 2, busy.start)
        timer.start()
    with HostSampler(interval_s=0.25, exclude=lambda: [target_pid] if target_pid else []) as host:
        started = time.monotonic()
        run = measure_once(base_url, injected_ms)
    if timer is not None:
        timer.join()
    metric = run.metrics.get(METRIC)
    windows = [
        host.window(started + w.start_s, started + w.start_s + w.duration_s)
        for w in (metric.windows if metric is not None else ())
    ]
    return run, windows


def measure_busy(
    base_url: str,
    target_pid: int | None,
    baseline: Baseline,
    label: str,
    pct: float,
    *,
    round_: int,
) -> RunRecord:
    """One run of a `--busy` condition, settled with the gate's rule (re-measured at most twice
    while a relative FAIL meets a contended host)."""
    from etlverify.baseline.contention import settle
    from etlverify.measure.host import describe_contention

    b50 = stat_value(baseline.metrics[METRIC].merged, "p50") or 0.0
    injected = round(BASE_MS + pct / 100.0 * b50, 3)
    loops = (1 if round_ % 2 == 0 else 2) if label in BUSY_LABELS else 0
    busy = BusyLoops(loops) if loops else None
    try:
        settled = settle(
            lambda: measure_sampled(base_url, injected, target_pid, busy),
            lambda run: relative_fail(baseline, run),
        )
    finally:
        if busy is not None:
            busy.stop()
    return RunRecord(
        label,
        pct,
        injected,
        0,
        settled.measurement,
        busy_loops=loops,
        remeasured=settled.remeasured,
        contention=describe_contention(list(settled.host)),
        excuse=settled.excuse,
    )


def relative_fail(baseline: Baseline, run: RunResult) -> bool:
    """A FAIL the 10% rule or the response-time trigger gave (errors are never excused)."""
    comparison = compare(baseline, run, SPECS)
    return any(
        r.verdict is Verdict.FAIL and r.stat != "error_rate" for r in comparison.results
    ) or any(t.fired and t.name == "response_time_degradation" for t in comparison.triggers)


def baseline_problem(run: RunResult) -> str | None:
    """Why a run is not fit to be a baseline run (None: fit).

    A baseline run taken during a stall of this shared machine (seen once: a run with p50 3.5 s)
    makes every later comparison INCONCLUSIVE, which measures the stall and not the gate. A run is
    refused if it had errors or unsent requests, if its p50 is more than twice the injected
    service time, or if its windows' p50s scatter more than 10% of its p50 (the gate's own noise
    floor for the default p50 spec).
    """
    metric = run.metrics.get(METRIC)
    if metric is None or metric.count == 0:
        return "no successful sample"
    if metric.errors or run.unsent:
        return f"{metric.errors} errors, {run.unsent} unsent"
    p50 = stat_value(metric.merged, "p50") or 0.0
    if p50 > 2 * (BASE_MS + JITTER_MS):
        return f"p50 {p50:.1f} ms > twice the service time"
    vals = metric.values("p50")
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    if sd > 0.1 * p50:
        return f"window p50 sd {sd:.2f} ms > 10% of p50 {p50:.2f} ms"
    return None


# --- judging ----------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One judged run."""

    condition: str
    change_pct: float
    injected_ms: float
    order: int
    run: RunResult
    verdict: str = ""
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    wall_s: float = 0.0
    #: --busy: busy loops running, re-measures, the host's contention and the excuse (if any)
    busy_loops: int = 0
    remeasured: int = 0
    contention: str | None = None
    excuse: str | None = None

    def summary(self) -> dict[str, Any]:
        """JSON row (without the histograms)."""
        metric = self.run.metrics.get(METRIC)
        windows = (
            []
            if metric is None
            else [
                {"p50_ms": w.p50_ms, "p95_ms": w.p95_ms, "count": w.count, "errors": w.errors}
                for w in metric.windows
            ]
        )
        return {
            "order": self.order,
            "condition": self.condition,
            "injected_ms": self.injected_ms,
            "verdict": self.verdict,
            "stats": self.stats,
            "late": self.run.late,
            "unsent": self.run.unsent,
            "wall_s": round(self.wall_s, 2),
            "busy_loops": self.busy_loops,
            "remeasured": self.remeasured,
            "contention": self.contention,
            "excuse": self.excuse,
            "started_at": self.run.started_at,
            "windows": windows,
        }


def judge(baseline: Baseline, rec: RunRecord) -> None:
    """Judge `rec` with the real gate (`compare`) and fill in its verdicts."""
    comparison = compare(baseline, rec.run, SPECS)
    rec.verdict = comparison.verdict.value
    rec.stats = {
        r.stat: {
            "verdict": r.verdict.value,
            "baseline": r.baseline,
            "current": r.current,
            "change_pct": r.change_pct,
            "p_value": r.p_value,
            "reason": r.reason,
        }
        for r in comparison.results
        if r.metric == METRIC
    }
    fired = [t.name for t in comparison.triggers if t.fired]
    if fired:
        rec.stats["triggers"] = {"verdict": "FAIL", "reason": ", ".join(fired)}
    if rec.excuse and rec.verdict == "FAIL":
        # the gate's rule: relative FAILs that stayed on a contended host are not a verdict
        absolute = any(
            info.get("verdict") == "FAIL"
            for stat, info in rec.stats.items()
            if stat == "error_rate"
        )
        if not absolute:
            rec.verdict = "INCONCLUSIVE"
            rec.stats["host"] = {"verdict": "INCONCLUSIVE", "reason": rec.excuse}


def _only_runs(metric: MetricResult, runs: set[int]) -> MetricResult:
    return MetricResult(metric.name, tuple(w for w in metric.windows if w.run in runs))


Judge = Callable[[MetricResult, MetricResult], Verdict]


def judge_with(
    specs: tuple[ToleranceSpec, ...],
    *,
    alpha: float = 0.05,
    baseline_runs: set[int] | None = None,
    spread: Callable[[Sequence[float]], float] | None = None,
    noise_first: bool = False,
) -> Judge:
    """A what-if judge: `judge_metric` over `specs`' statistics, worst verdict (no triggers).

    `spread` replaces, for this judge only, the window-spread function of the noise-floor rule
    (`compare._spread`, the sample standard deviation); `noise_first` applies the noise floor
    (rule 5) before FAIL too, so that a run whose windows scatter more than the allowed change is
    INCONCLUSIVE rather than FAIL. Prototypes only: compare.py is not edited.
    """

    def run(base: MetricResult, cur: MetricResult) -> Verdict:
        if baseline_runs is not None:
            base = _only_runs(base, baseline_runs)
        verdicts = []
        original = compare_module._spread
        if spread is not None:
            compare_module._spread = spread
        try:
            for stat in dict.fromkeys(s.stat for s in specs):
                spec = resolve_spec(specs, METRIC, stat)
                if spec is None:
                    continue
                v = judge_metric(METRIC, stat, spec, base, cur, alpha=alpha)
                verdict = v.verdict
                if noise_first and verdict is Verdict.FAIL and v.p_value is not None:
                    assert v.baseline is not None
                    noise = max(
                        compare_module._spread(base.values(stat)),
                        compare_module._spread(cur.values(stat)),
                    )
                    if noise > spec.allowed_change(v.baseline):
                        verdict = Verdict.INCONCLUSIVE
                verdicts.append(verdict)
        finally:
            compare_module._spread = original
        return worst(verdicts)

    return run


def robust_sd(values: Sequence[float]) -> float:
    """Standard deviation estimated from the median absolute deviation (1.4826 x MAD): one
    outlying window (a CPU-contention spike) does not blow it up, unlike the sample sd."""
    if len(values) < 2:
        return 0.0
    med = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - med) for v in values)


def standard_error(values: Sequence[float]) -> float:
    """Sample sd / sqrt(n): the uncertainty of the side's mean window value, which is what
    shrinks with more windows (the sd itself does not)."""
    if len(values) < 2:
        return 0.0
    return statistics.stdev(values) / math.sqrt(len(values))


def judge_equivalence(margin_pct: float = 10.0, alpha: float = 0.05) -> Judge:
    """Prototype of a one-sided rule on p50: FAIL when the run's windows are significantly worse
    than baseline x (1 + margin) (Mann-Whitney "greater" against the shifted baseline), PASS when
    they are significantly better than it, else INCONCLUSIVE. Shows how a test *against the
    tolerance* (instead of against zero) would behave at the boundary."""

    def run(base: MetricResult, cur: MetricResult) -> Verdict:
        b = stat_value(base.merged, "p50")
        if b is None or cur.count == 0:
            return Verdict.FAIL
        shifted = [v + b * margin_pct / 100.0 for v in base.values("p50")]
        vals = cur.values("p50")
        if not vals or not shifted:
            return Verdict.INCONCLUSIVE
        worse = sps.mannwhitneyu(vals, shifted, alternative="greater").pvalue
        better = sps.mannwhitneyu(vals, shifted, alternative="less").pvalue
        if worse < alpha:
            return Verdict.FAIL
        if better < alpha:
            return Verdict.PASS
        return Verdict.INCONCLUSIVE

    return run


def median_trigger(base: MetricResult, cur: MetricResult, pct: float = 50.0) -> bool:
    """Prototype of the response-time rollback trigger (p95 > +50% and > +1 ms, Mann-Whitney
    p < 0.05, as `triggers.py`) on the *median of the window p95s* instead of the pooled p95, so
    that one or two spike windows cannot carry a whole run over the limit."""
    b_vals, c_vals = base.values("p95"), cur.values("p95")
    if not b_vals or not c_vals:
        return False
    b, c = statistics.median(b_vals), statistics.median(c_vals)
    if b <= 0 or not (100.0 * (c - b) / b > pct and c - b > 1.0):
        return False
    return bool(sps.mannwhitneyu(c_vals, b_vals, alternative="two-sided").pvalue < 0.05)


def overall_variants() -> dict[str, tuple[str, Callable[[MetricResult, RunRecord], Verdict]]]:
    """What-if *overall* verdicts: a what-if metric judge plus a rollback-trigger rule."""
    nf = judge_with(SPECS, noise_first=True)

    def with_gate_triggers(base: MetricResult, rec: RunRecord) -> Verdict:
        cur = rec.run.metrics[METRIC]
        fired = Verdict.FAIL if "triggers" in rec.stats else Verdict.PASS
        return worst([nf(base, cur), fired])

    def with_median_trigger(base: MetricResult, rec: RunRecord) -> Verdict:
        cur = rec.run.metrics[METRIC]
        fired = Verdict.FAIL if median_trigger(base, cur) else Verdict.PASS
        return worst([nf(base, cur), fired])

    return {
        "nf+triggers": (
            "noise_first plus the gate's rollback triggers as they are",
            with_gate_triggers,
        ),
        "nf+median_trig": (
            "noise_first plus the p95 trigger on the median window p95",
            with_median_trigger,
        ),
    }


def variants() -> dict[str, tuple[str, Judge]]:
    """The what-if judges every run is also put through."""
    return {
        "gate": (
            "as the gate: default specs less p99, alpha 0.05, 3 baseline runs (no triggers)",
            judge_with(SPECS),
        ),
        "1_baseline_run": (
            "same, baseline of run 0 only (6 vs 6 windows)",
            judge_with(SPECS, baseline_runs={0}),
        ),
        "alpha_0.01": ("same, alpha 0.01", judge_with(SPECS, alpha=0.01)),
        "noise_first": (
            "noise floor (window sd > allowed change) checked before FAIL, not only before PASS",
            judge_with(SPECS, noise_first=True),
        ),
        "noise_first_mad": (
            "noise floor before FAIL, on 1.4826 x MAD instead of sd",
            judge_with(SPECS, noise_first=True, spread=robust_sd),
        ),
        "p50_only": ("p50:10%,+1ms only", judge_with(parse_specs("p50:10%,+1ms"))),
        "p95_only": ("p95:10%,+1ms only", judge_with(parse_specs("p95:10%,+1ms"))),
        "no_floor": (
            "p50:10%; p95:10% (no absolute floor)",
            judge_with(parse_specs("p50:10%; p95:10%")),
        ),
        "robust_spread": (
            "noise floor on 1.4826 x MAD of the windows instead of their sd",
            judge_with(SPECS, spread=robust_sd),
        ),
        "se_spread": (
            "noise floor on sd/sqrt(n) (standard error) instead of sd",
            judge_with(SPECS, spread=standard_error),
        ),
        "p95_25pct": (
            "default specs less p99, but p95:25%,+1ms",
            judge_with(parse_specs("p50:10%,+1ms; p95:25%,+1ms; throughput:-10%; error_rate:+1pp")),
        ),
        "p50_vs_tolerance": (
            "prototype: p50 one-sided Mann-Whitney against baseline+10%",
            judge_equivalence(),
        ),
    }


# --- statistics of the rates ------------------------------------------------------------------


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (round(max(0.0, centre - half), 3), round(min(1.0, centre + half), 3))


def max_pass_at_boundary(n: int, alpha: float = 0.05) -> int:
    """Most PASSes out of n that a gate that is a fair coin at the boundary shows with
    probability >= 1 - alpha (one-sided binomial(n, 0.5) limit): more is a pass-leaning gate."""
    k = 0
    while k <= n and sps.binom.sf(k, n, 0.5) > alpha:  # P(X > k)
        k += 1
    return k


def summarise(records: list[RunRecord], baseline: Baseline) -> dict[str, Any]:
    """Per-condition counts, rates, intervals, achieved shift and what-if rates."""
    base_metric = baseline.metrics[METRIC]
    b50 = stat_value(base_metric.merged, "p50") or float("nan")
    b95 = stat_value(base_metric.merged, "p95") or float("nan")
    judges = variants()
    out: dict[str, Any] = {}
    for label, _ in CONDITIONS:
        recs = [r for r in records if r.condition == label]
        n = len(recs)
        counts = Counter(r.verdict for r in recs)
        per_stat: dict[str, Counter[str]] = {}
        reasons: Counter[str] = Counter()
        for r in recs:
            for stat, info in r.stats.items():
                per_stat.setdefault(stat, Counter())[info["verdict"]] += 1
                if info["verdict"] != "PASS":
                    reasons[f"{info['verdict']} {stat}: {_short(info['reason'])}"] += 1
        achieved50 = [r.stats["p50"]["change_pct"] for r in recs if "p50" in r.stats]
        achieved95 = [r.stats["p95"]["change_pct"] for r in recs if "p95" in r.stats]
        what_if: dict[str, dict[str, int]] = {}
        for name, (_, fn) in judges.items():
            c: Counter[str] = Counter()
            for r in recs:
                cur = r.run.metrics.get(METRIC)
                c[fn(base_metric, cur).value if cur is not None else "FAIL"] += 1
            what_if[name] = {v.value: c[v.value] for v in Verdict}
        for name, (_, overall) in overall_variants().items():
            c = Counter(
                overall(base_metric, r).value if METRIC in r.run.metrics else "FAIL" for r in recs
            )
            what_if[name] = {v.value: c[v.value] for v in Verdict}
        out[label] = {
            "runs": n,
            "FAIL": counts["FAIL"],
            "PASS": counts["PASS"],
            "INCONCLUSIVE": counts["INCONCLUSIVE"],
            "fail_rate": round(counts["FAIL"] / n, 3) if n else None,
            "pass_rate": round(counts["PASS"] / n, 3) if n else None,
            "inconclusive_rate": round(counts["INCONCLUSIVE"] / n, 3) if n else None,
            "fail_rate_ci95": wilson(counts["FAIL"], n),
            "pass_rate_ci95": wilson(counts["PASS"], n),
            "per_stat": {k: dict(v) for k, v in per_stat.items()},
            "non_pass_reasons": dict(reasons.most_common()),
            "p50_change_pct_median": _median(achieved50),
            "p50_change_pct_min_max": [min(achieved50), max(achieved50)] if achieved50 else None,
            "p95_change_pct_median": _median(achieved95),
            "significant_rate": {
                stat: round(
                    sum(1 for r in recs if (r.stats.get(stat, {}).get("p_value") or 1.0) < 0.05)
                    / n,
                    3,
                )
                for stat in ("p50", "p95")
            }
            if n
            else {},
            "what_if": what_if,
        }
    out["_baseline"] = {"p50_ms": b50, "p95_ms": b95}
    out["_noise"] = noise_components(records, baseline)
    return out


def noise_components(records: list[RunRecord], baseline: Baseline) -> dict[str, Any]:
    """Within-run vs between-run spread of the window values, over the no-change runs.

    Uses the baseline's runs and the A/A runs (all at the base latency). `within_sd_ms` is the
    median over runs of the window-to-window sd; `between_sd_ms` is the sd of the runs' median
    window values (a robust run level); `icc` is between-run variance / (between + mean within
    variance), both from the per-run medians. A large `icc` means windows of one run move
    together, so they are not independent samples and a rank test over windows overstates the
    evidence against "no change".
    """
    base = baseline.metrics[METRIC]
    groups: list[MetricResult] = [_only_runs(base, {i}) for i in range(len(baseline.runs))]
    groups += [
        r.run.metrics[METRIC] for r in records if r.condition == "A/A" and METRIC in r.run.metrics
    ]
    out: dict[str, Any] = {"runs": len(groups)}
    for stat in ("p50", "p95"):
        per_run = [g.values(stat) for g in groups if len(g.values(stat)) > 1]
        if len(per_run) < 2:
            continue
        within = [statistics.stdev(v) for v in per_run]
        levels = [statistics.median(v) for v in per_run]
        between = statistics.stdev(levels)
        within_var = statistics.median(w * w for w in within)
        out[stat] = {
            "within_sd_ms": round(statistics.median(within), 3),
            "between_sd_ms": round(between, 3),
            "icc": round(between**2 / (between**2 + within_var), 3),
            "run_levels_ms": [round(x, 2) for x in levels],
        }
    return out


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def _short(reason: str) -> str:
    """A reason without its numbers, so that equal reasons count together."""
    return reason.split(":", maxsplit=1)[0].split(" (", maxsplit=1)[0][:70]


def busy_goals(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The bad day's goals (issue 16), scaled to the runs made."""
    out = []
    for label in ("A/A", "A/A busy"):
        n = summary[label]["runs"]
        allowed = max(1, math.floor(n / 20))
        out.append(
            {
                "goal": f"{label}: at most {allowed} false FAIL in {n} runs",
                "value": summary[label]["FAIL"],
                "met": summary[label]["FAIL"] <= allowed if n else None,
            }
        )
    n = summary["+25%"]["runs"]
    need = math.ceil(0.95 * n)
    out.append(
        {
            "goal": f"+25% quiet: at least {need} of {n} runs FAIL",
            "value": summary["+25%"]["FAIL"],
            "met": summary["+25%"]["FAIL"] >= need if n else None,
        }
    )
    n = summary["+25% busy"]["runs"]
    allowed = max(1, math.floor(n / 20))
    out.append(
        {
            "goal": f"+25% busy: at most {allowed} PASS in {n} runs (FAIL or INCONCLUSIVE else)",
            "value": summary["+25% busy"]["PASS"],
            "met": summary["+25% busy"]["PASS"] <= allowed if n else None,
        }
    )
    return out


def goals(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The benchmark goals, scaled to the number of runs actually made."""
    if "A/A busy" in summary:
        return busy_goals(summary)
    aa, p10, p25, p50 = (summary[c[0]] for c in CONDITIONS)
    out = []
    n = aa["runs"]
    allowed = max(1, math.floor(n / 20))
    out.append(
        {
            "goal": f"A/A: at most {allowed} false FAIL in {n} runs (1 in 20)",
            "value": aa["FAIL"],
            "met": aa["FAIL"] <= allowed if n else None,
        }
    )
    n = p25["runs"]
    need = math.ceil(0.95 * n)
    out.append(
        {
            "goal": f"+25%: at least {need} of {n} runs FAIL (19 of 20)",
            "value": p25["FAIL"],
            "met": p25["FAIL"] >= need if n else None,
        }
    )
    n = p10["runs"]
    limit = max_pass_at_boundary(n)
    out.append(
        {
            "goal": (
                f"+10% (= tolerance): PASS at most {limit} of {n} (a gate that is a fair coin at "
                "the boundary exceeds this with p < 0.05)"
            ),
            "value": p10["PASS"],
            "met": p10["PASS"] <= limit if n else None,
        }
    )
    n = p50["runs"]
    need = math.ceil(0.95 * n)
    out.append(
        {
            "goal": f"+50%: at least {need} of {n} runs FAIL (not an issue goal; a sanity check)",
            "value": p50["FAIL"],
            "met": p50["FAIL"] >= need if n else None,
        }
    )
    return out


# --- output -------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    """The tables for people."""
    s = report["summary"]
    base = s["_baseline"]
    print(
        f"\nbaseline: {report['settings']['baseline_runs']} runs, pooled p50 "
        f"{base['p50_ms']:.2f} ms, p95 {base['p95_ms']:.2f} ms "
        f"(injected {BASE_MS:g} ms + U(0,{JITTER_MS:g}) ms)"
    )
    print(
        f"\n{'condition':<10}{'inject ms':>10}{'runs':>6}{'FAIL':>6}{'PASS':>6}{'INC':>6}"
        f"{'FAIL rate (95% CI)':>24}{'INC rate':>10}{'p50 chg%':>10}{'p95 chg%':>10}"
    )
    for label, _ in CONDITIONS:
        c = s[label]
        lo, hi = c["fail_rate_ci95"]
        inj = report["settings"]["injected_ms"][label]
        fr = "-" if c["fail_rate"] is None else f"{c['fail_rate']:.2f} ({lo:.2f}-{hi:.2f})"
        ir = "-" if c["inconclusive_rate"] is None else f"{c['inconclusive_rate']:.2f}"
        print(
            f"{label:<10}{inj:>10.2f}{c['runs']:>6}{c['FAIL']:>6}{c['PASS']:>6}"
            f"{c['INCONCLUSIVE']:>6}{fr:>24}{ir:>10}{_num(c['p50_change_pct_median']):>10}"
            f"{_num(c['p95_change_pct_median']):>10}"
        )
    print("\nper statistic (FAIL/PASS/INCONCLUSIVE):")
    for label, _ in CONDITIONS:
        parts = [
            f"{stat} {v.get('FAIL', 0)}/{v.get('PASS', 0)}/{v.get('INCONCLUSIVE', 0)}"
            for stat, v in s[label]["per_stat"].items()
        ]
        print(f"  {label:<6} " + "; ".join(parts))
    print("\nnon-PASS reasons:")
    for label, _ in CONDITIONS:
        for reason, k in s[label]["non_pass_reasons"].items():
            print(f"  {label:<6} {k:>3} x {reason}")
    print("\nMann-Whitney p < 0.05 (share of runs), per statistic:")
    for label, _ in CONDITIONS:
        sig = s[label].get("significant_rate", {})
        print(f"  {label:<6} " + "; ".join(f"{k} {v:.2f}" for k, v in sig.items()))
    noise = s.get("_noise", {})
    print(f"\nnoise of the no-change runs ({noise.get('runs', 0)} runs: baseline + A/A):")
    for stat in ("p50", "p95"):
        if stat in noise:
            nz = noise[stat]
            print(
                f"  {stat}: within-run window sd {nz['within_sd_ms']:.2f} ms (median), "
                f"between-run sd {nz['between_sd_ms']:.2f} ms, ICC {nz['icc']:.2f}"
            )
    print("\nwhat-if judges (FAIL/PASS/INCONCLUSIVE per condition):")
    print(f"  {'variant':<18}" + "".join(f"{c[0]:>14}" for c in CONDITIONS))
    descriptions = {k: v[0] for k, v in variants().items()}
    descriptions |= {k: v[0] for k, v in overall_variants().items()}
    for name, desc in descriptions.items():
        row = "".join(
            f"{'{FAIL}/{PASS}/{INCONCLUSIVE}'.format(**s[c[0]]['what_if'][name]):>14}"
            for c in CONDITIONS
        )
        print(f"  {name:<18}{row}   {desc}")
    print("\ngoals:")
    for g in report["goals"]:
        mark = {True: "MET", False: "NOT MET", None: "n/a"}[g["met"]]
        print(f"  [{mark}] {g['goal']}: {g['value']}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def write_raw(
    path: Path,
    baseline_file: Path,
    records: list[RunRecord],
    settings: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    """Save the baseline and every run (with histograms) for `--reanalyze`."""
    data = {
        "settings": settings,
        "meta": meta,
        "baseline": json.loads(baseline_file.read_text(encoding="utf-8")),
        "runs": [
            {
                "condition": r.condition,
                "change_pct": r.change_pct,
                "injected_ms": r.injected_ms,
                "order": r.order,
                "wall_s": r.wall_s,
                "run": r.run.to_json(),
            }
            for r in records
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")


def build_report(
    records: list[RunRecord], baseline: Baseline, settings: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    """The JSON report."""
    summary = summarise(records, baseline)
    return {
        "benchmark": "gate_quality",
        **extra,
        "settings": settings,
        "summary": summary,
        "goals": goals(summary),
        "variants": {
            **{k: v[0] for k, v in variants().items()},
            **{k: v[0] for k, v in overall_variants().items()},
        },
        "baseline_runs": [
            {
                "index": i,
                "p50_ms": stat_value(_only_runs(baseline.metrics[METRIC], {i}).merged, "p50"),
                "p95_ms": stat_value(_only_runs(baseline.metrics[METRIC], {i}).merged, "p95"),
            }
            for i in range(len(baseline.runs))
        ],
        "runs": [r.summary() for r in records],
    }


# --- main ---------------------------------------------------------------------------------------


def reanalyze(raw_path: Path, out: Path) -> int:
    """Judge saved runs again (after changing the what-if variants) without measuring."""
    data = json.loads(raw_path.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="gate-quality-") as tmp:
        bfile = Path(tmp) / "gate_quality.json"
        bfile.write_text(json.dumps(data["baseline"]), encoding="utf-8")
        baseline = load(bfile)
    records = []
    for row in data["runs"]:
        rec = RunRecord(
            row["condition"],
            row["change_pct"],
            row["injected_ms"],
            row["order"],
            RunResult.from_json(row["run"]),
            wall_s=row.get("wall_s", 0.0),
        )
        judge(baseline, rec)
        records.append(rec)
    meta = {**data.get("meta", {}), "reanalyzed_at": _now_iso(), "raw": str(raw_path)}
    report = build_report(records, baseline, data["settings"], meta)
    print_report(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Measure, judge, print and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per condition (default 20)")
    parser.add_argument("--quick", action="store_true", help="4 runs per condition (a smoke)")
    parser.add_argument(
        "--busy",
        action="store_true",
        help="the bad day: A/A and +25%% quiet and busy (CPU busy loops from mid-run), and +10%%",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=40.0,
        help="overall deadline; runs left then are skipped (default 40)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--raw", type=Path, default=DEFAULT_RAW, help="where to save the runs with histograms"
    )
    parser.add_argument(
        "--reanalyze",
        type=Path,
        metavar="RAW",
        help="judge the runs saved in RAW again instead of measuring",
    )
    args = parser.parse_args(argv)
    global CONDITIONS  # noqa: PLW0603 - the conditions of this invocation, read everywhere below
    if args.busy:
        CONDITIONS = BUSY_CONDITIONS
        if args.out == DEFAULT_OUT:
            args.out = DEFAULT_OUT.with_name("gate_quality_busy.json")
        if args.raw == DEFAULT_RAW:
            args.raw = DEFAULT_RAW.with_name("gate_quality_busy_runs.json")
    if args.reanalyze:
        return reanalyze(args.reanalyze, args.out)
    runs = 4 if args.quick else args.runs
    if runs < 1:
        parser.error("--runs must be >= 1")
    signal.signal(signal.SIGTERM, _on_signal)
    t0 = time.monotonic()
    deadline = t0 + args.max_minutes * 60
    started = _now_iso()
    load_avg_start = os.getloadavg()
    target = EmbeddedTarget(enable_faults=True, config_overrides=BENCH_OVERRIDES)
    records: list[RunRecord] = []
    rejected: list[dict[str, Any]] = []
    incomplete = ""
    tmp = tempfile.TemporaryDirectory(prefix="gate-quality-")
    bfile = Path(tmp.name) / "gate_quality.json"
    try:
        target.start()
        pid = target.process.pid if target.process else None
        print(
            f"reference target pid {pid} at {target.base_url}; {runs} runs x "
            f"{len(CONDITIONS)} conditions, {WINDOWS} x {WINDOW_S:g} s windows at "
            f"{RATE_RPS:g} req/s",
            flush=True,
        )
        measure_once(target.base_url, BASE_MS)  # warm-up, discarded
        accepted = 0
        for attempt in range(BASELINE_RUNS + MAX_BASELINE_REJECTS):
            if accepted == BASELINE_RUNS:
                break
            run = measure_once(target.base_url, BASE_MS)
            problem = baseline_problem(run)
            w = run.metrics[METRIC].merged
            print(
                f"baseline attempt {attempt}: p50 {w.p50_ms:.2f} ms p95 {w.p95_ms:.2f} ms "
                f"errors {w.errors} late {run.late}"
                + (f" - REJECTED: {problem}" if problem else ""),
                flush=True,
            )
            if problem:
                rejected.append({"attempt": attempt, "problem": problem})
                continue
            record(bfile, run, append=True, name="gate_quality")
            accepted += 1
        if accepted < BASELINE_RUNS:
            raise RuntimeError(
                f"only {accepted} of {BASELINE_RUNS} baseline runs were quiet enough: {rejected}"
            )
        baseline = load(bfile)
        b50 = stat_value(baseline.metrics[METRIC].merged, "p50")
        if b50 is None:
            raise RuntimeError("baseline has no p50")
        injected = {label: round(BASE_MS + pct / 100.0 * b50, 3) for label, pct in CONDITIONS}
        print(
            f"baseline pooled p50 {b50:.2f} ms -> injected ms per condition {injected}", flush=True
        )
        order = 0
        for r in range(runs):
            rotation = CONDITIONS[r % len(CONDITIONS) :] + CONDITIONS[: r % len(CONDITIONS)]
            for label, pct in rotation:
                if time.monotonic() > deadline:
                    incomplete = f"overall deadline of {args.max_minutes:g} min reached"
                    break
                t = time.monotonic()
                if args.busy:
                    rec = measure_busy(target.base_url, pid, baseline, label, pct, round_=r)
                    rec.order = order
                    rec.injected_ms = injected[label] if not rec.injected_ms else rec.injected_ms
                else:
                    run = measure_once(target.base_url, injected[label])
                    rec = RunRecord(label, pct, injected[label], order, run)
                rec.wall_s = time.monotonic() - t
                judge(baseline, rec)
                records.append(rec)
                order += 1
                s50 = rec.stats.get("p50", {})
                s95 = rec.stats.get("p95", {})
                host = (
                    f" {rec.contention or 'host: quiet'}, re-measured {rec.remeasured}"
                    if args.busy
                    else ""
                )
                print(
                    f"[{order:3d}] round {r + 1:2d} {label:<9} {rec.verdict:<12}{host} p50 "
                    f"{_num(s50.get('change_pct'))}% {s50.get('verdict', '-'):<12} p95 "
                    f"{_num(s95.get('change_pct'))}% {s95.get('verdict', '-'):<12} "
                    f"({rec.wall_s:.1f} s, {(time.monotonic() - t0) / 60:.1f} min)",
                    flush=True,
                )
            if incomplete:
                break
        set_latency(target.base_url, BASE_MS)
    except (Interrupted, KeyboardInterrupt) as exc:
        incomplete = f"interrupted ({exc or 'KeyboardInterrupt'})"
    finally:
        target.stop()
    if not bfile.exists():
        tmp.cleanup()
        print(f"no baseline recorded: {incomplete or 'failed'}", file=sys.stderr)
        return 2
    baseline = load(bfile)
    b50 = stat_value(baseline.metrics[METRIC].merged, "p50") or 0.0
    settings = {
        "route": METRIC,
        "base_latency_ms": BASE_MS,
        "jitter_ms": JITTER_MS,
        "rate_rps": RATE_RPS,
        "windows": WINDOWS,
        "window_s": WINDOW_S,
        "baseline_runs": BASELINE_RUNS,
        "runs_per_condition": runs,
        "specs": "; ".join(str(s) for s in SPECS),
        "alpha": 0.05,
        "injected_ms": {label: round(BASE_MS + pct / 100.0 * b50, 3) for label, pct in CONDITIONS},
        "interleaving": "rotation: round r starts with condition r mod 4",
        "baseline_rejected": rejected,
    }
    extra = {
        "started_at": started,
        "finished_at": _now_iso(),
        "wall_minutes": round((time.monotonic() - t0) / 60, 2),
        "incomplete": incomplete or None,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_start": load_avg_start,
            "loadavg_end": os.getloadavg(),
        },
        "command": " ".join(["python", "benchmarks/gate_quality.py", *(argv or sys.argv[1:])]),
        "raw": str(args.raw),
    }
    write_raw(args.raw, bfile, records, settings, extra)
    tmp.cleanup()
    report = build_report(records, baseline, settings, extra)
    print_report(report)
    if incomplete:
        print(f"\nINCOMPLETE: {incomplete}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out} and {args.raw}")
    return 0 if not incomplete else 3


if __name__ == "__main__":
    raise SystemExit(main())
