"""The cohort judge: the same traffic, interleaved, as users inside and outside a flag's cohort.

ETL Plus decides a user's cohort with FNV-1a over the user id (contract section 7), so during a
rollout step both versions of a component run in the same process at the same moment: users whose
bucket is below the percentage get the new component, the others the old one. The judge picks user
ids on both sides (`etlverify.contract.fnv1a_bucket`), sends the same requests as each in turn, in
the same windows, and compares the inside cohort with the outside cohort with the gate's own rules
(`etlverify.baseline.compare`: tolerance, significance over the windows, noise floor, fail
closed), in their paired form (`judge_paired`): each window's inside value against the outside
value of the same window, Wilcoxon signed-rank over those differences, and the noise being how
much the difference (not the level) moves from window to window. No busy host, time of day or
stale baseline can bias that comparison: both sides share all of them, window by window.

What is sent depends on the component (`rollout/traffic.py`): the routes it lives on, and for the
WebSocket manager the status pushes of jobs each side's users create (`rollout/pushes.py`). Every
route is a metric, so a verdict names the route (or `cohort ws push`) with both sides' figures.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import httpx

from etlverify.baseline.compare import (
    Comparison,
    MetricVerdict,
    Verdict,
    compare,
    compare_metrics,
)
from etlverify.baseline.store import Baseline, BaselineError, Fingerprint, record
from etlverify.contract import FLAG_BY_COMPONENT, fnv1a_bucket
from etlverify.durations import utc
from etlverify.measure.histogram import LatencyHistogram
from etlverify.measure.results import LoadParameters, MetricResult, RunResult, WindowStats
from etlverify.rollout.pushes import PushProbe
from etlverify.rollout.traffic import JOB_SOURCE, UNKNOWN_JOB, Route, all_routes, routes_for

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "COHORT_SPECS",
    "CohortJudge",
    "CohortResult",
    "against_stored",
    "cohort_line",
    "cohorts",
    "judge",
    "judge_load",
    "pick_users",
    "stored_name",
]

#: the checklist's 10% with the windows' own noise as the floor; errors by one percentage point
COHORT_SPECS = "p50:10%,+2sd; error_rate:+1pp"
#: what the judge sends, every component's traffic (`rollout/traffic.py`): the load fingerprint
ROUTES = all_routes()
#: paired windows: 6 is the fewest whose signed-rank test can reach p < 0.05 (2 / 2^6 = 0.031)
MIN_WINDOWS = 6


def judge_load(window_s: float, rate_rps: float) -> LoadParameters:
    """The judge's traffic as a baseline's load fingerprint. `duration_s` is the window: holds
    differ from step to step, but what one window measures does not."""
    return LoadParameters(
        model="cohort", duration_s=window_s, windows=0, rate_rps=rate_rps, routes=ROUTES
    )


def stored_name(component: str, metric: str) -> str:
    """A metric's name in a stored baseline: `websocket: cohort ws push`. Each component's
    traffic is recorded on its own, so the same route under two mixes is two metrics."""
    return f"{component}: {metric}"


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


def cohort_line(result: MetricVerdict) -> str:
    """`FAIL p50 cohort ws push: inside 6.1 ms vs outside 4.02 ms (+52.0%, ...) - ...`: the
    comparison's line with the sides named (the reference is the outside cohort, or at 100% the
    users admitted before: the step's `compared_with` says which)."""
    line = result.line()
    head = f"{result.verdict.value} {result.stat} {result.metric}: "
    if not line.startswith(head) or " vs baseline " not in line:
        return line
    return head + "inside " + line[len(head) :].replace(" vs baseline ", " vs outside ", 1)


@dataclass
class CohortResult:
    """One hold's judgement: the comparison, the measured windows of both sides, and why."""

    verdict: str  # PASS, FAIL, INCONCLUSIVE
    reason: str
    comparison: Comparison | None
    inside: dict[str, MetricResult]
    outside: dict[str, MetricResult]
    compared_with: str
    #: each side against the stored baseline, when one was given ("inside", "outside")
    stored: dict[str, Comparison] = field(default_factory=dict)

    def stored_line(self) -> str | None:
        """`stored baseline 'perf': inside FAIL (p50 +31%), outside PASS`, or None."""
        if not self.stored:
            return None
        parts = []
        for side, cmp in self.stored.items():
            worst = cmp.failures() or [r for r in cmp.results if r.verdict is Verdict.INCONCLUSIVE]
            detail = ""
            if worst and worst[0].change_pct is not None:
                detail = f" ({worst[0].stat} {worst[0].change_pct:+.1f}%)"
            parts.append(f"{side} {cmp.verdict.value}{detail}")
        name = next(iter(self.stored.values())).baseline_name
        return f"stored baseline '{name}': " + ", ".join(parts)

    def figures(self) -> list[str]:
        """One line per metric verdict (`cohort_line`)."""
        if self.comparison is None:
            return []
        return [cohort_line(r) for r in self.comparison.results]

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
            "stored_baseline": {
                side: {"verdict": cmp.verdict.value, "figures": [r.line() for r in cmp.results]}
                for side, cmp in self.stored.items()
            },
        }


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
    comparison = compare_metrics(
        reference, common, COHORT_SPECS, name=compared_with, model="cohort", paired=True
    )
    fails = comparison.failures()
    unsure = [r for r in comparison.results if r.verdict is Verdict.INCONCLUSIVE]
    if fails:
        verdict, reason = "FAIL", "; ".join(cohort_line(r) for r in fails)
    elif unsure:
        verdict, reason = "INCONCLUSIVE", "; ".join(cohort_line(r) for r in unsure)
    else:
        verdict, reason = "PASS", f"inside within tolerance of {compared_with}"
    return CohortResult(
        verdict, reason, comparison, dict(inside), dict(outside or {}), compared_with
    )


def against_stored(
    baseline: Baseline,
    sides: Mapping[str, Mapping[str, MetricResult]],
    load: LoadParameters,
    environment: Fingerprint | None = None,
    component: str | None = None,
) -> dict[str, Comparison]:
    """Each side's windows against a stored baseline (the same rules and specs as the cohort
    comparison; the baseline's windows give the noise floor). It sees what the control cannot:
    both sides slower than before. It cannot say which component: that is the cohort's job.

    With `component`, only that component's part of the baseline is compared (the metrics
    `record_baseline` stored as `stored_name(component, ...)`); a metric of the step that the
    baseline lacks is INCONCLUSIVE ("not in the baseline"), never a verdict."""
    if component is not None:
        prefix = stored_name(component, "")
        mine = {k: v for k, v in baseline.metrics.items() if k.startswith(prefix)}
        baseline = replace(baseline, metrics=mine)
    out: dict[str, Comparison] = {}
    for side, metrics in sides.items():
        if not metrics:
            continue
        named = {}
        for key, metric in metrics.items():
            stored_key = key if component is None else stored_name(component, key)
            named[stored_key] = replace(metric, name=stored_key)
        run = RunResult(metrics=named, load=load, started_at="", duration_s=0.0)
        out[side] = compare(baseline, run, COHORT_SPECS, environment=environment)
    return out


@dataclass(frozen=True)
class _Answer:
    """One judge request: its time when answered as expected, else the error's kind."""

    seconds: float | None
    error: str
    status: int | None
    job_id: str | None = None


class CohortJudge:
    """Sends the interleaved traffic for one hold and measures each side per window."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 5.0,
        push_timeout_s: float = 2.0,
        job_source: str = JOB_SOURCE,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.push_timeout_s = push_timeout_s
        self.job_source = job_source
        #: why the last hold's WebSocket side could not connect or subscribe (one line each)
        self.problems: list[str] = []
        self.client = httpx.Client(
            base_url=self.base_url,
            timeout=timeout_s,
            headers=self.headers,
            trust_env=False,
        )

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    def fingerprint(self, load: LoadParameters) -> Fingerprint:
        """This host and the target (`/api/health/status`, `/api/flags`) as a baseline sees them."""
        bodies: dict[str, dict[str, Any]] = {}
        for key, route in (("status", "/api/health/status"), ("flags", "/api/flags")):
            try:
                body = self.client.get(route).json()
            except (httpx.HTTPError, ValueError):
                body = None
            bodies[key] = body if isinstance(body, dict) else {}
        return Fingerprint.collect(load=load, status=bodies["status"], flags=bodies["flags"])

    def record_baseline(
        self, path: str | os.PathLike[str], hold_s: float, window_s: float, rate_rps: float
    ) -> Baseline:
        """Measure the judge's traffic as every user alike (whatever the flags are now, typically
        before the rollout) and append it to the baseline at `path`: each component's traffic in
        turn, for `hold_s` shared among them but at least `MIN_WINDOWS` windows each, stored
        under `stored_name(component, metric)`."""
        load = judge_load(window_s, rate_rps)
        each = max(hold_s / len(FLAG_BY_COMPONENT), MIN_WINDOWS * window_s)
        metrics: dict[str, MetricResult] = {}
        for component in FLAG_BY_COMPONENT:
            got, _, limited = self.measure(
                (0.0, 100.0), (100.0, 100.0), each, window_s, rate_rps, component=component
            )
            if limited:
                raise BaselineError(
                    f"{path}: not recorded: the target answered 429 to {limited} of the judge's "
                    f"requests ({component}'s traffic; exempt the judge or lower --rate)"
                )
            errors = sum(m.errors for m in got.values())
            if not got or errors:
                kinds: dict[str, int] = {}
                for m in got.values():
                    for w in m.windows:
                        for kind, k in w.error_kinds.items():
                            kinds[kind] = kinds.get(kind, 0) + k
                what = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
                raise BaselineError(
                    f"{path}: not recorded: {errors} of the judge's requests failed "
                    f"({component}'s traffic" + (f": {what}" if what else "") + "); a baseline "
                    "is recorded from a healthy target"
                )
            for name, metric in got.items():
                key = stored_name(component, name)
                metrics[key] = replace(metric, name=key)
        run = RunResult(
            metrics=metrics,
            load=load,
            started_at=utc(time.time()),
            duration_s=float(each * len(FLAG_BY_COMPONENT)),
        )
        return record(path, run, environment=self.fingerprint(load), name="rollout")

    def measure(
        self,
        inside: tuple[float, float],
        outside: tuple[float, float],
        hold_s: float,
        window_s: float,
        rate_rps: float,
        *,
        stop: Callable[[], bool] = lambda: False,
        component: str | None = None,
    ) -> tuple[dict[str, MetricResult], dict[str, MetricResult], int]:
        """Hold for `hold_s`: `component`'s traffic (`rollout/traffic.py`) at `rate_rps`,
        alternating inside/outside users, and the routes cycle by cycle.

        Returns (inside metrics, outside metrics, HTTP 429 answers). At least `MIN_WINDOWS`
        windows: a hold shorter than that many windows uses shorter windows. A push metric's
        windows are complete once the pushes still due after the hold have arrived or timed out
        (`push_timeout_s` at most).
        """
        routes = routes_for(component)
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
        self.problems = []
        probe: PushProbe | None = None
        if any(r.push for r in routes) and order:
            users = dict(reversed(order))  # a user of each side (its first one)
            probe = PushProbe(
                self.base_url,
                users,
                headers=self.headers,
                timeout_s=self.push_timeout_s,
                # a window's jobs (a second's at least): a side asks for the next ones while
                # half of them are left, a second or more before it runs out
                chunk=int(rate_rps * max(per, 1.0)) + 8,
                job_source=self.job_source,
            )
            self.problems = probe.open()
        last_job: dict[str, str] = {}  # side -> the id of the last job it created
        limited = 0
        t0 = time.monotonic()
        n = 0
        try:
            while not stop():
                now = time.monotonic() - t0
                if now >= hold_s or not order:
                    break
                window = min(windows - 1, int(now // per))
                side, user = order[n % len(order)]
                route = routes[(n // len(order)) % len(routes)]
                if n % len(order) == 0 and n:
                    rng.shuffle(order)  # a new cycle, a new interleaving
                key = (side, route.metric, window)
                hists.setdefault(key, LatencyHistogram())
                errs = errors.setdefault(key, {})
                if probe is not None and route.push:
                    kind, status = probe.create(self.client, side, user, window)
                    if kind:
                        errs[kind] = errs.get(kind, 0) + 1
                        limited += status == 429
                else:
                    answer = self._send(route, user, last_job.get(side))
                    if answer.job_id:
                        last_job[side] = answer.job_id
                    if answer.seconds is not None:
                        hists[key].record_s(answer.seconds)
                    else:
                        errs[answer.error] = errs.get(answer.error, 0) + 1
                        limited += answer.status == 429
                n += 1
                next_at = n / rate_rps
                time.sleep(max(0.0, next_at - (time.monotonic() - t0)))
        finally:
            if probe is not None:
                try:
                    metric = next(r.metric for r in routes if r.push)
                    for (side, window), (hist, kinds) in probe.finish(self.client).items():
                        key = (side, metric, window)
                        hists.setdefault(key, LatencyHistogram()).add(hist)
                        errs = errors.setdefault(key, {})
                        for kind, k in kinds.items():
                            errs[kind] = errs.get(kind, 0) + k
                finally:
                    probe.close()
        return (
            self._results(hists, errors, "inside", per),
            self._results(hists, errors, "outside", per),
            limited,
        )

    def _send(self, route: Route, user: str, job: str | None) -> _Answer:
        """One request of `route` as `user` (`job`: the side's last job, for `{job}`). An answer
        with another status than the route expects is an error, and so is an expected error
        answer without the contract's error body (`code`, `correlationId`)."""
        path = route.path.replace("{job}", job or UNKNOWN_JOB)
        body: dict[str, Any] | None = None
        if route.body == "job":
            body = {
                "type": "EXTRACT",
                "source_config": self.job_source,
                "target_config": "sink=null",
            }
        elif route.body == "invalid":
            body = {"type": "EXTRACT", "target_config": "sink=null"}  # no source_config: 400
        started = time.perf_counter()
        try:
            resp = self.client.request(route.method, path, json=body, headers={"X-User-Id": user})
        except httpx.HTTPError as exc:
            kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "transport"
            return _Answer(None, kind, None)
        elapsed = time.perf_counter() - started
        if resp.status_code not in route.expect:
            return _Answer(None, f"http_{resp.status_code}", resp.status_code)
        try:
            data = resp.json()
        except ValueError:
            data = None
        if route.expects_error and not (
            isinstance(data, dict)
            and all(isinstance(data.get(k), str) and data[k] for k in ("code", "correlationId"))
        ):
            return _Answer(None, "bad_error_body", resp.status_code)
        job_id = data.get("job_id") if route.body == "job" and isinstance(data, dict) else None
        return _Answer(elapsed, "", resp.status_code, str(job_id) if job_id else None)

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
