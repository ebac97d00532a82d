"""The cohort judge: the same traffic, interleaved, as users inside and outside a flag's cohort.

ETL Plus decides a user's cohort with FNV-1a over the user id (contract section 7), so during a
rollout step both versions of a component run in the same process at the same moment: users whose
bucket is below the percentage get the new component, the others the old one. The judge picks user
ids on both sides (`etlverify.contract.fnv1a_bucket`), sends the same requests as each in turn, in
the same windows, and compares the inside cohort with the outside cohort with the gate's own rules
(`etlverify.baseline.compare`: tolerance, Mann-Whitney over the windows, noise floor, fail
closed). No busy host, time of day or stale baseline can bias that comparison: both sides share
all of them.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from etlverify.baseline.compare import Comparison, Verdict, compare
from etlverify.baseline.store import Baseline, Fingerprint
from etlverify.contract import fnv1a_bucket
from etlverify.measure.histogram import LatencyHistogram
from etlverify.measure.results import LoadParameters, MetricResult, RunResult, WindowStats

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = ["COHORT_SPECS", "CohortJudge", "CohortResult", "cohorts", "judge", "pick_users"]

#: the checklist's 10% with the windows' own noise as the floor; errors by one percentage point
COHORT_SPECS = "p50:10%,+2sd; error_rate:+1pp"
#: what the judge sends as each user (read-only routes every component takes part in)
ROUTES = ("/api/jobs?limit=20",)
MIN_WINDOWS = 5


def pick_users(
    inside: tuple[float, float],
    outside: tuple[float, float],
    count: int = 8,
    prefix: str = "etlv-cohort",
) -> tuple[list[str], list[str]]:
    """`count` user ids bucketed in `inside` ([lo, hi)) and `count` in `outside`."""
    ins: list[str] = []
    outs: list[str] = []
    for i in range(200_000):
        if len(ins) >= count and len(outs) >= count:
            break
        user = f"{prefix}-{i}"
        bucket = fnv1a_bucket(user)
        if inside[0] <= bucket < inside[1] and len(ins) < count:
            ins.append(user)
        elif outside[0] <= bucket < outside[1] and len(outs) < count:
            outs.append(user)
    return ins, outs


def cohorts(
    percent: float, previous: float, others: Sequence[float] = ()
) -> tuple[tuple[float, float], tuple[float, float], str]:
    """Who is compared with whom at a step to `percent` from `previous`, as bucket ranges.

    Every flag uses the same bucket (contract section 7), so cohorts nest: a user with bucket 10
    is inside every flag at 10% or more. `others` are the percentages of the other flags that are
    on; both sides are taken from between the same two of them, so they differ in this flag only
    (a user inside another component's cohort is on neither side).

    Below 100%: the cohort against the users just outside it. At 100% nobody is outside, so the
    users this step admits [previous, ...) are compared with those admitted before [..., previous):
    still the same moments and the same process, the control being users on the new component
    since an earlier step (a regression of the component itself was judged there, against users
    without it). Straight from 0 to 100%: there is no control.
    """
    cut = percent if percent < 100 else previous
    if cut <= 0:
        return (0.0, 100.0), (100.0, 100.0), "nothing (0% -> 100% in one step has no control)"
    lo = max([q for q in others if q < cut] + [0.0])
    hi = min([q for q in others if q > cut] + [100.0])
    same = [q for q in others if q == cut]
    note = f" (flipping together with another flag at {cut:g}%)" if same else ""
    if percent < 100:
        return (lo, cut), (cut, hi), f"the users just outside the cohort [{cut:g}, {hi:g}){note}"
    return (
        (cut, hi),
        (lo, cut),
        f"the users admitted before this step [{lo:g}, {cut:g}), on the new component since "
        f"{cut:g}%{note}",
    )


@dataclass
class CohortResult:
    """One hold's judgement: the comparison, the measured windows of both sides, and why."""

    verdict: str  # PASS, FAIL, INCONCLUSIVE
    reason: str
    comparison: Comparison | None
    inside: dict[str, MetricResult]
    outside: dict[str, MetricResult]
    compared_with: str

    def figures(self) -> list[str]:
        """One line per metric verdict."""
        if self.comparison is None:
            return []
        return [r.line() for r in self.comparison.results]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (windows included, so a resumed rollout can compare at 100%)."""
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "compared_with": self.compared_with,
            "figures": self.figures(),
            "metrics": [r.to_json() for r in self.comparison.results] if self.comparison else [],
            "inside": {k: v.to_json() for k, v in self.inside.items()},
            "outside": {k: v.to_json() for k, v in self.outside.items()},
        }


def _as_baseline(metrics: Mapping[str, MetricResult], name: str) -> Baseline:
    load = LoadParameters(model="cohort", duration_s=0.0, windows=0)
    return Baseline(
        name=name,
        environment=Fingerprint(load=load.to_json()),
        recorded_at="",
        runs=(),
        metrics=dict(metrics),
    )


def judge(
    inside: Mapping[str, MetricResult],
    reference: Mapping[str, MetricResult],
    *,
    compared_with: str,
    outside: Mapping[str, MetricResult] | None = None,
) -> CohortResult:
    """Inside against `reference` (the outside cohort, or an earlier one at 100%)."""
    common = {k: v for k, v in inside.items() if k in reference}
    if not common:
        return CohortResult(
            "INCONCLUSIVE",
            f"nothing to compare: no metric measured on both sides ({compared_with})",
            None,
            dict(inside),
            dict(outside or {}),
            compared_with,
        )
    load = LoadParameters(model="cohort", duration_s=0.0, windows=0)
    run = RunResult(metrics=common, load=load, started_at="", duration_s=0.0)
    comparison = compare(_as_baseline(reference, compared_with), run, COHORT_SPECS)
    fails = comparison.failures()
    unsure = [r for r in comparison.results if r.verdict is Verdict.INCONCLUSIVE]
    if fails:
        verdict, reason = "FAIL", "; ".join(r.line() for r in fails)
    elif unsure:
        verdict, reason = "INCONCLUSIVE", "; ".join(r.line() for r in unsure)
    else:
        verdict, reason = "PASS", f"inside within tolerance of {compared_with}"
    return CohortResult(
        verdict, reason, comparison, dict(inside), dict(outside or {}), compared_with
    )


class CohortJudge:
    """Sends the interleaved traffic for one hold and measures each side per window."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout_s,
            headers=dict(headers or {}),
            trust_env=False,
        )

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    def measure(
        self,
        inside: tuple[float, float],
        outside: tuple[float, float],
        hold_s: float,
        window_s: float,
        rate_rps: float,
        *,
        stop: Callable[[], bool] = lambda: False,
    ) -> tuple[dict[str, MetricResult], dict[str, MetricResult], int]:
        """Hold for `hold_s`: requests at `rate_rps`, alternating inside/outside users and routes.

        Returns (inside metrics, outside metrics, HTTP 429 answers). At least `MIN_WINDOWS`
        windows: a hold shorter than that many windows uses shorter windows.
        """
        windows = max(MIN_WINDOWS, int(hold_s // window_s))
        per = hold_s / windows
        inside_users, outside_users = pick_users(inside, outside)
        # Pairs (inside, outside), each pair's order drawn at random, so that neither side is
        # always the first of two back-to-back requests; both see the same moments.
        rng = random.Random(int(inside[0] * 100 + inside[1]))
        order: list[tuple[str, str]] = []
        for a, b in zip(inside_users, outside_users, strict=False):
            pair = [("inside", a), ("outside", b)]
            rng.shuffle(pair)
            order += pair
        if not order:  # 0% or 100%: one side only
            order = [("inside", u) for u in inside_users] + [("outside", u) for u in outside_users]
        hists: dict[tuple[str, str, int], LatencyHistogram] = {}
        errors: dict[tuple[str, str, int], dict[str, int]] = {}
        limited = 0
        t0 = time.monotonic()
        n = 0
        while not stop():
            now = time.monotonic() - t0
            if now >= hold_s or not order:
                break
            window = min(windows - 1, int(now // per))
            side, user = order[n % len(order)]
            route = ROUTES[(n // len(order)) % len(ROUTES)]
            if n % len(order) == 0 and n:
                rng.shuffle(order)  # a new cycle, a new interleaving
            metric = f"cohort GET {route.split('?')[0]}"
            key = (side, metric, window)
            hists.setdefault(key, LatencyHistogram())
            errors.setdefault(key, {})
            started = time.perf_counter()
            try:
                resp = self.client.get(route, headers={"X-User-Id": user})
                elapsed = time.perf_counter() - started
                if resp.status_code == 200:
                    hists[key].record_s(elapsed)
                else:
                    kind = f"http_{resp.status_code}"
                    errors[key][kind] = errors[key].get(kind, 0) + 1
                    limited += resp.status_code == 429
            except httpx.HTTPError as exc:
                kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "transport"
                errors[key][kind] = errors[key].get(kind, 0) + 1
            n += 1
            next_at = n / rate_rps
            time.sleep(max(0.0, next_at - (time.monotonic() - t0)))
        return (
            self._results(hists, errors, "inside", per),
            self._results(hists, errors, "outside", per),
            limited,
        )

    @staticmethod
    def _results(
        hists: Mapping[tuple[str, str, int], LatencyHistogram],
        errors: Mapping[tuple[str, str, int], Mapping[str, int]],
        side: str,
        per: float,
    ) -> dict[str, MetricResult]:
        by: dict[str, list[WindowStats]] = {}
        for (s, metric, window), hist in sorted(hists.items()):
            if s != side:
                continue
            by.setdefault(metric, []).append(
                WindowStats.from_histogram(
                    hist,
                    index=window,
                    start_s=window * per,
                    duration_s=per,
                    errors=errors.get((s, metric, window)),
                )
            )
        return {m: MetricResult(m, tuple(ws)) for m, ws in by.items()}
