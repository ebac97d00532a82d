"""The performance gate's pytest side: options, the plan, collect -> judge once -> report.

Pipeline (pytest-benchmark's measure -> store -> compare, with our statistics):

1. *Options* (`--baseline`, `--baseline-record`, `--tolerance`, `--perf-duration`, `--perf-rate`,
   `--inconclusive-blocks`) resolve CLI -> environment -> ini -> default into a frozen
   `PerfSettings`; a bad value is a `pytest.UsageError` naming where it came from.
2. *Plan*: the load shapes follow from the settings alone (`PerfPlan`), so the environment
   fingerprint of this run is known before anything is measured. After collection, when performance
   tests were collected, the baseline is loaded and its recorded load is checked against the plan:
   a broken or mismatched file stops the run with one line naming the file and the problem.
3. *Collect*: the section's tests (verification/performance/) measure through the session-level
   `PerfCollector` (`config.stash[PERF_KEY]`, fixture `etl_perf`), one measurement group at a time
   ("routes", "users", "pool", "ws").
4. *Judge once*: when every group the selected tests need is measured, the whole run is compared
   with the baseline in one `compare()` call (`PerfCollector.judge`). Each test then reports its own
   slice of the verdicts (`PerfCollector.report`): FAIL lines fail it, INCONCLUSIVE skips it
   (fails with `--inconclusive-blocks`), no baseline skips it with the way to record one.
5. *Report and store*: the terminal summary prints the whole comparison (every regression
   together); `--baseline-record` appends the run to the baseline at session end, and refuses to
   when any performance test failed or errored.

Which groups a test reads is declared with ``@pytest.mark.perf_uses("routes", ...)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from etlverify.baseline import (
    Baseline,
    BaselineError,
    Comparison,
    Fingerprint,
    MetricVerdict,
    SpecError,
    ToleranceSpec,
    TriggerResult,
    Verdict,
    baseline_path,
    compare,
    evaluate_triggers,
    load,
    parse_specs,
    record,
)
from etlverify.errors import CheckFailed
from etlverify.measure import ClosedLoad, LoadParameters, MetricResult, OpenLoad, RunResult
from etlverify.pytest_plugin.markers import checklist_ids
from etlverify.pytest_plugin.options import get_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from etlverify.measure import ServerTrace

__all__ = [
    "DEFAULT_BASELINE",
    "GROUPS",
    "PERF_KEY",
    "PerfCollector",
    "PerfPlan",
    "PerfSettings",
    "WsPlan",
    "resolve_perf_settings",
]

#: Where the reviewed baseline of the embedded reference lives (relative to the rootdir).
DEFAULT_BASELINE = "baselines/pytest-embedded.json"
#: The measurement groups, in the order they are measured (a fresh server sees the routes first).
GROUPS = ("routes", "users", "pool", "ws")
#: Route metrics: the key routes of the contract, one open-model load over all four.
ROUTE_METRICS = ("GET /api/health", "GET /api/jobs", "GET /api/jobs/{id}", "POST /api/jobs")
USERS_METRIC = "users: mixed reads"
POOL_METRIC = "pool: POST /api/jobs"
WS_METRIC = "ws: push cancelled"
#: The section's default tolerances: the checklist's "within 10% of baseline" with absolute floors,
#: and no p99, which needs 500 samples per trial window and so could only ever be INCONCLUSIVE at
#: these window sizes (add it with `--tolerance p99:10%,+5ms`).
#: The latency floors are the client-side resolution measured on the reference machine (2 cores,
#: Python client and server on one host): window-to-window sd of p50 ~1-1.5 ms and of p95 2-7 ms,
#: so +1 ms floors made every verdict INCONCLUSIVE by the noise rule. The p95 floor must stay
#: below half the key routes' p95 (~7 ms there) or a +50% degradation (a rollback trigger) would
#: pass the p95 rule: +5 ms did exactly that in a +50% fault run, +3 ms does not.
#: The pool group's p95 (ten users creating jobs, each a SQLite write) is the tail of contended
#: writes: its window-to-window sd was 9 ms (CV 85%) in a quiet-machine baseline, so it gets a
#: +10 ms floor; the pool check's real signals are its errors, p50 and the server's connection
#: timeout and failure counters.
DEFAULT_TOLERANCE = (
    "p50:10%,+2ms; p95:10%,+3ms; throughput:-10%; error_rate:+1pp; p95@pool*:10%,+10ms"
)
WINDOWS = 5
DEFAULT_DURATION_S = 40.0
DEFAULT_RATE_RPS = 100.0
GROUP_OPTION = "etlverify performance"
MARKER = "perf_uses"


class _UsageError(Exception):
    """Internal: a setting's problem, raised as pytest.UsageError by the hooks."""


# -- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerfSettings:
    """The performance options, resolved once; `sources` says where each value came from."""

    baseline: Path | None
    record: bool
    specs: tuple[ToleranceSpec, ...]
    duration_s: float
    rate_rps: float
    inconclusive_blocks: bool
    target_label: str
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        """One header line."""
        base = str(self.baseline) if self.baseline else "none"
        specs = "; ".join(str(s) for s in self.specs)
        return (
            f"performance: baseline {base} ({self.sources.get('baseline', 'default')}), "
            f"tolerance {specs}, duration {self.duration_s:g} s, rate {self.rate_rps:g} rps"
            + (", recording" if self.record else "")
            + (", INCONCLUSIVE blocks" if self.inconclusive_blocks else "")
        )


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _pick(
    name: str, cli: Any, env: Mapping[str, str], ini: Mapping[str, Any]
) -> tuple[Any, str] | None:
    """The first source that has a value: (value, source label) or None."""
    opt, var, key = f"--{name}", f"ETLPLUS_{name.upper().replace('-', '_')}", name.replace("-", "_")
    if cli not in (None, [], False):
        return cli, opt
    if env.get(var) not in (None, ""):
        return env[var], f"env {var}"
    if ini.get(f"etlplus_{key}") not in (None, "", []):
        return ini[f"etlplus_{key}"], f"ini etlplus_{key}"
    return None


def _positive(name: str, picked: tuple[Any, str] | None, default: float, unit: str) -> float:
    if picked is None:
        return default
    raw, source = picked
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise _UsageError(f"{source}: expected {unit} > 0, got {raw!r}")
    return value


def _flag(picked: tuple[Any, str] | None) -> bool:
    if picked is None:
        return False
    raw, source = picked
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _UsageError(f"{source}: expected a boolean (1/0, true/false), got {raw!r}")


def _baseline_file(raw: str, source: str, rootdir: Path, invocation_dir: Path) -> Path:
    """A name (`pytest-embedded`) means baselines/<name>.json under the rootdir; else a path."""
    text = raw.strip()
    if not text:
        raise _UsageError(f"{source}: empty baseline name or path")
    if text.endswith(".json") or "/" in text or os.sep in text:
        path = Path(text).expanduser()
        return path if path.is_absolute() else invocation_dir / path
    try:
        return baseline_path(rootdir / "baselines", text)
    except BaselineError as exc:
        raise _UsageError(f"{source}: {exc}") from None


def resolve_perf_settings(
    cli: Mapping[str, Any],
    env: Mapping[str, str],
    ini: Mapping[str, Any],
    *,
    embedded: bool,
    base_url: str | None,
    rootdir: Path,
    invocation_dir: Path,
) -> PerfSettings:
    """Resolve the performance options (CLI -> env -> ini -> default); `_UsageError` if bad.

    `--baseline-record` comes from the CLI or the environment only: recording a baseline is a
    deliberate act, not something an ini file should switch on for every run.
    """
    sources: dict[str, str] = {}
    picked = _pick("baseline", cli.get("baseline"), env, ini)
    baseline: Path | None
    if picked is not None:
        baseline = _baseline_file(str(picked[0]), picked[1], rootdir, invocation_dir)
        sources["baseline"] = picked[1]
    elif embedded:
        baseline = rootdir / DEFAULT_BASELINE
        sources["baseline"] = "default for the embedded target"
    else:
        baseline = None
        sources["baseline"] = "none: give --baseline for this target"
    record_pick = _pick("baseline-record", cli.get("baseline_record"), env, {})
    recording = _flag(record_pick)
    if recording and baseline is None:
        raise _UsageError(
            f"{record_pick[1] if record_pick else '--baseline-record'}: "
            "needs --baseline NAME_OR_PATH for a target other than the embedded reference"
        )
    tol = _pick("tolerance", cli.get("tolerance"), env, ini)
    if tol is None:
        specs = parse_specs(DEFAULT_TOLERANCE)
        sources["tolerance"] = "default"
    else:
        raw, source = tol
        texts = [raw] if isinstance(raw, str) else list(raw)
        try:
            specs = parse_specs([part for text in texts for part in str(text).split(";")])
        except SpecError as exc:
            raise _UsageError(f"{source}: {exc}") from None
        sources["tolerance"] = source
    duration = _positive(
        "perf-duration",
        _pick("perf-duration", cli.get("perf_duration"), env, ini),
        DEFAULT_DURATION_S,
        "seconds",
    )
    rate = _positive(
        "perf-rate",
        _pick("perf-rate", cli.get("perf_rate"), env, ini),
        DEFAULT_RATE_RPS,
        "requests per second",
    )
    blocks = _flag(_pick("inconclusive-blocks", cli.get("inconclusive_blocks"), env, ini))
    return PerfSettings(
        baseline=baseline,
        record=recording,
        specs=specs,
        duration_s=duration,
        rate_rps=rate,
        inconclusive_blocks=blocks,
        target_label="the embedded reference" if embedded else str(base_url),
        sources=sources,
    )


# -- the plan: load shapes, known before anything runs ------------------------------------------


@dataclass(frozen=True)
class WsPlan:
    """WebSocket push probes: `probes` calls of `measure_ws_push`, one trial window each."""

    probes: int = WINDOWS
    connections: int = 10
    jobs: int = 10
    run_before_cancel_s: float = 0.3
    timeout_s: float = 5.0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (part of the fingerprint)."""
        return {
            "metric": WS_METRIC,
            "probes": self.probes,
            "connections": self.connections,
            "jobs": self.jobs,
            "run_before_cancel_s": self.run_before_cancel_s,
            "timeout_s": self.timeout_s,
        }


@dataclass(frozen=True)
class PerfPlan:
    """Every load of the section, derived from `--perf-duration` and `--perf-rate`.

    Sizes are chosen so that each trial window holds at least 100 samples per metric (what a p95
    verdict needs) while the whole section stays under about a minute on two cores: the route load
    is the long one (all four routes interleaved, so that each window averages over seconds of
    machine noise rather than one route's two seconds); users and pool are short closed loads
    with think time (service times, not saturation, so their throughput is stable).
    """

    routes: OpenLoad
    users: ClosedLoad
    pool: ClosedLoad
    ws: WsPlan
    sample_interval_s: float = 0.5

    @classmethod
    def from_settings(cls, settings: PerfSettings) -> PerfPlan:
        """The plan for these settings."""
        short = max(2.0, round(settings.duration_s / 8.0, 3))
        return cls(
            routes=OpenLoad(
                rate_rps=settings.rate_rps,
                duration_s=settings.duration_s,
                windows=WINDOWS,
                max_concurrency=64,
                timeout_s=5.0,
                # Many client identities keep every one far below the upstream per-minute limits
                # (jobs 30/min) even though all four routes run within the same minute.
                identities=256,
            ),
            users=ClosedLoad(
                users=10,
                duration_s=short,
                windows=WINDOWS,
                think_time_s=0.05,
                random_think=True,
                timeout_s=5.0,
                identities=True,
            ),
            pool=ClosedLoad(
                users=10,
                duration_s=short,
                windows=WINDOWS,
                think_time_s=0.05,
                random_think=True,
                timeout_s=5.0,
                identities=True,
            ),
            ws=WsPlan(),
        )

    def load_parameters(self, group: str) -> LoadParameters | None:
        """The `LoadParameters` a group's run reports (None for the WebSocket probes)."""
        if group == "routes":
            return self.routes.parameters(ROUTE_METRICS)
        if group in ("users", "pool"):
            load_ = self.users if group == "users" else self.pool
            return load_.parameters((USERS_METRIC if group == "users" else POOL_METRIC,))
        return None

    def fingerprint_load(self) -> dict[str, Any]:
        """The `load` part of the environment fingerprint: every group's shape."""
        out: dict[str, Any] = {}
        for group in GROUPS:
            params = self.load_parameters(group)
            out[group] = params.to_json() if params else self.ws.to_json()
        out["sample_interval_s"] = self.sample_interval_s
        return out


def group_of(metric: str) -> str:
    """The measurement group a metric belongs to (by its name)."""
    for prefix, group in (("users:", "users"), ("pool:", "pool"), ("ws:", "ws")):
        if metric.startswith(prefix):
            return group
    return "routes"


def _diff(base: Any, current: Any, where: str) -> list[str]:
    """Leaf differences between two JSON values, as `where: baseline X, this run Y`."""
    if isinstance(base, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(base) | set(current)):
            out += _diff(base.get(key), current.get(key), f"{where}.{key}")
        return out
    if base != current:
        return [f"{where}: baseline {base!r}, this run {current!r}"]
    return []


# -- the collector -------------------------------------------------------------------------------


@dataclass
class GroupResult:
    """What one measurement group produced."""

    name: str
    metrics: dict[str, MetricResult]
    run: RunResult | None = None
    trace: ServerTrace | None = None
    facts: dict[str, Any] = field(default_factory=dict)


PERF_KEY = pytest.StashKey["PerfCollector"]()


class PerfCollector:
    """Session-level collector: measurements in, one comparison out, then recording.

    Registered as a plugin object, so it also sees every test report (to refuse recording after a
    failed performance test) and writes the terminal summary.
    """

    name = "etlverify-performance"

    def __init__(self, config: pytest.Config, settings: PerfSettings) -> None:
        self.config = config
        self.settings = settings
        self.plan = PerfPlan.from_settings(settings)
        self.baseline: Baseline | None = None
        self.groups: dict[str, GroupResult] = {}
        self.environment: Fingerprint | None = None
        self.needed: tuple[str, ...] = ()
        self.comparison: Comparison | None = None
        self.bad_outcomes: dict[str, str] = {}
        self.perf_nodeids: set[str] = set()
        self.record_message: str | None = None

    # collection: which groups are needed, and the baseline ---------------------------------------

    def collected(self, items: Sequence[pytest.Item]) -> None:
        """Note the performance tests and their groups; load and check the baseline."""
        needed: set[str] = set()
        for item in items:
            for mark in item.iter_markers(MARKER):
                unknown = [g for g in mark.args if g not in GROUPS]
                if unknown:
                    raise _UsageError(
                        f"{item.nodeid}: perf_uses({unknown[0]!r}): unknown group "
                        f"(known: {', '.join(GROUPS)})"
                    )
                needed.update(mark.args)
                self.perf_nodeids.add(item.nodeid)
        self.needed = tuple(g for g in GROUPS if g in needed)
        if self.perf_nodeids:
            self.baseline = self._load_baseline()

    def _load_baseline(self) -> Baseline | None:
        path = self.settings.baseline
        if path is None:
            return None
        if not path.exists():
            if self.settings.record or self.settings.sources.get("baseline", "").startswith(
                "default"
            ):
                return None  # nothing recorded yet: tests skip with the way to record one
            raise _UsageError(f"{path}: no such baseline file (record one with --baseline-record)")
        try:
            baseline = load(path)
        except BaselineError as exc:
            raise _UsageError(str(exc)) from None
        problems = _diff(dict(baseline.environment.load), self.plan.fingerprint_load(), "load")
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise _UsageError(
                f"{path}: recorded with another load, {problems[0]}{more}; run with the "
                "baseline's --perf-duration/--perf-rate or record a new baseline"
            )
        return baseline

    # measuring ----------------------------------------------------------------------------------

    def add(self, result: GroupResult) -> None:
        """Store one group's measurements (a group measured twice keeps the first)."""
        self.groups.setdefault(result.name, result)

    def set_environment(
        self, status: Mapping[str, Any] | None, flags: Mapping[str, Any] | None
    ) -> Fingerprint:
        """This run's fingerprint: host, target (status, flags) and the whole plan's load."""
        if self.environment is None:
            base = Fingerprint.collect(status=status, flags=flags)
            self.environment = replace(base, load=self.plan.fingerprint_load())
        return self.environment

    def run_result(self) -> RunResult | None:
        """All measured groups as one run (what is compared and recorded)."""
        if not self.groups:
            return None
        metrics: dict[str, MetricResult] = {}
        for group in self.groups.values():
            metrics.update(group.metrics)
        runs = [g.run for g in self.groups.values() if g.run is not None]
        primary = self.groups.get("routes")
        load_params = self.plan.load_parameters("routes")
        assert load_params is not None
        return RunResult(
            metrics=metrics,
            load=load_params,
            started_at=min((r.started_at for r in runs), default=""),
            duration_s=round(sum(r.duration_s for r in runs), 6),
            late=sum(r.late for r in runs),
            unsent=sum(r.unsent for r in runs),
            longest_outage_s=max((r.longest_outage_s for r in runs), default=0.0),
            # The route load is the long one; its server trace feeds the memory and DB triggers.
            server=primary.trace if primary else None,
        )

    # judging ------------------------------------------------------------------------------------

    def judge(self) -> Comparison | None:
        """Compare the whole run with the baseline, once; None without a baseline."""
        if self.comparison is not None or self.baseline is None:
            return self.comparison
        run = self.run_result()
        if run is None:
            return None
        # Only the groups this run measured: an unselected group is not a missing metric.
        measured = set(self.groups)
        base = replace(
            self.baseline,
            metrics={m: r for m, r in self.baseline.metrics.items() if group_of(m) in measured},
        )
        self.comparison = compare(base, run, self.settings.specs, environment=self.environment)
        return self.comparison

    def triggers(self, groups: Sequence[str] = ("routes",)) -> tuple[TriggerResult, ...] | None:
        """The rollback triggers over the metrics of `groups` only (None without a baseline).

        `compare()` evaluates them over every metric; the short users/pool/WebSocket loads are
        too exposed to a noisy host for a plain +50% point-estimate rule, so the gate decides on
        the long route load (the key routes' response times, which is what the trigger is about).
        """
        run = self.run_result()
        if self.baseline is None or run is None:
            return None
        wanted = set(groups) & set(self.groups)
        base = {m: r for m, r in self.baseline.metrics.items() if group_of(m) in wanted}
        mine = replace(run, metrics={m: r for m, r in run.metrics.items() if group_of(m) in wanted})
        return evaluate_triggers(base, mine)

    def no_baseline_reason(self) -> str:
        """Why there is nothing to compare with."""
        return (
            f"no baseline for {self.settings.target_label}: record one with --baseline-record"
            + (f" (looked for {self.settings.baseline})" if self.settings.baseline else "")
        )

    def report(
        self,
        request: pytest.FixtureRequest,
        *,
        what: str,
        metrics: Callable[[str], bool],
        stats: Callable[[str], bool] | None = None,
        measured: Sequence[str] = (),
    ) -> list[MetricVerdict]:
        """Report this test's slice of the one comparison, then pass, fail or skip.

        `measured` lines (what the test saw) are printed and attached whatever happens. FAIL
        verdicts raise `CheckFailed` naming metric, baseline and current values, tolerance and
        p-value; INCONCLUSIVE ones skip (or fail with `--inconclusive-blocks`); without a
        baseline the test skips with the way to record one.
        """
        node = request.node
        for line in measured:
            print(line)
        comparison = self.judge()
        if comparison is None:
            node.user_properties.append(("performance", json.dumps({"measured": list(measured)})))
            # what was measured goes into the reason too: a skip must still say what it saw
            seen = "; ".join(m.strip() for m in measured[:4])
            pytest.skip(self.no_baseline_reason() + (f"; measured: {seen}" if seen else ""))
        mine = [
            r for r in comparison.results if metrics(r.metric) and (stats is None or stats(r.stat))
        ]
        for verdict in mine:
            print(verdict.line())
        node.user_properties.append(
            (
                "performance",
                json.dumps(
                    {"measured": list(measured), "verdicts": [v.to_json() for v in mine]},
                    sort_keys=True,
                ),
            )
        )
        failed = [v for v in mine if v.verdict is Verdict.FAIL]
        unsure = [v for v in mine if v.verdict is Verdict.INCONCLUSIVE]
        name = comparison.baseline_name or str(self.settings.baseline)
        items = checklist_ids(node) if isinstance(node, pytest.Item) else ()
        if failed or (unsure and self.settings.inconclusive_blocks):
            bad = failed + (unsure if self.settings.inconclusive_blocks else [])
            raise CheckFailed(
                check=node.name,
                what=f"{what}: {len(bad)} of {len(mine)} verdicts against baseline {name!r} "
                + ("FAIL" if failed else "INCONCLUSIVE (--inconclusive-blocks)"),
                expected="every statistic within tolerance of the baseline: "
                + "; ".join(str(s) for s in self.settings.specs),
                got="\n          ".join(v.line() for v in bad),
                items=items,
            )
        if unsure:
            pytest.skip(
                f"INCONCLUSIVE against baseline {name!r}: " + "; ".join(v.line() for v in unsure)
            )
        if not mine:
            pytest.skip(f"baseline {name!r} has none of this test's metrics; record one")
        return mine

    # hooks ----------------------------------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Remember performance tests that failed or errored (no recording from such a run)."""
        if report.nodeid in self.perf_nodeids and report.failed:
            self.bad_outcomes[report.nodeid] = "failed" if report.when == "call" else "error"

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Record the run into the baseline when asked, and only from a clean run."""
        if not self.settings.record or not self.perf_nodeids:
            return
        if hasattr(self.config, "workerinput"):
            return  # the controller (or a single process) records, never an xdist worker
        path = self.settings.baseline
        assert path is not None
        if self.bad_outcomes:
            first = sorted(self.bad_outcomes)[0]
            self.record_message = (
                f"--baseline-record refused: {len(self.bad_outcomes)} performance test(s) failed "
                f"or errored (first: {first}); nothing written to {path}"
            )
        elif not self.groups:
            self.record_message = f"--baseline-record: nothing was measured; {path} unchanged"
        else:
            run = self.run_result()
            assert run is not None
            env = self.environment or self.set_environment(None, None)
            try:
                stored = record(path, run, environment=env, append=True)
            except (BaselineError, OSError) as exc:
                self.record_message = f"--baseline-record failed: {exc}"
            else:
                self.record_message = (
                    f"--baseline-record: appended run {len(stored.runs) - 1} "
                    f"({len(run.metrics)} metrics, groups {', '.join(self.groups)}) to {path}; "
                    f"it now holds {len(stored.runs)} run(s)"
                )
                return
        if session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """The whole comparison, every regression together, and what recording did."""
        if not self.groups and self.record_message is None:
            return
        terminalreporter.section("performance")
        comparison = self.comparison or (self.judge() if self.groups else None)
        if comparison is not None:
            for line in comparison.format().splitlines():
                terminalreporter.line(line)
        elif self.groups:
            terminalreporter.line(self.no_baseline_reason())
        if self.record_message:
            terminalreporter.line(self.record_message)


# -- hooks of this module --------------------------------------------------------------------------


_INI_KEYS = {
    "baseline": "baseline name or path (see --baseline)",
    "tolerance": "tolerance specs, ';'-separated (see --tolerance)",
    "perf_duration": "route load duration in seconds (see --perf-duration)",
    "perf_rate": "route load rate in requests/s (see --perf-rate)",
    "inconclusive_blocks": "true: an INCONCLUSIVE verdict fails (see --inconclusive-blocks)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the performance options and their ini keys."""
    group = parser.getgroup("etlverify-performance", GROUP_OPTION)
    group.addoption(
        "--baseline",
        dest="baseline",
        metavar="NAME_OR_PATH",
        default=None,
        help="baseline to compare with: a name under baselines/ or a .json path (default "
        f"{DEFAULT_BASELINE} for the embedded target) [env ETLPLUS_BASELINE]",
    )
    group.addoption(
        "--baseline-record",
        dest="baseline_record",
        action="store_true",
        default=None,
        help="append this run's measurements to the baseline (refused after a failed "
        "performance test) [env ETLPLUS_BASELINE_RECORD]",
    )
    group.addoption(
        "--tolerance",
        dest="tolerance",
        action="append",
        metavar="SPEC",
        default=None,
        help="tolerance spec, repeatable, e.g. 'p95:10%%,+1ms' (default: "
        f"{DEFAULT_TOLERANCE.replace('%', '%%')}) [env ETLPLUS_TOLERANCE, ';'-separated]",
    )
    group.addoption(
        "--perf-duration",
        dest="perf_duration",
        metavar="S",
        default=None,
        help=f"route load duration in seconds (default {DEFAULT_DURATION_S:g}) "
        "[env ETLPLUS_PERF_DURATION]",
    )
    group.addoption(
        "--perf-rate",
        dest="perf_rate",
        metavar="R",
        default=None,
        help=f"route load arrival rate, requests/s over all routes (default "
        f"{DEFAULT_RATE_RPS:g}) [env ETLPLUS_PERF_RATE]",
    )
    group.addoption(
        "--inconclusive-blocks",
        dest="inconclusive_blocks",
        action="store_true",
        default=None,
        help="fail (not skip) a performance test whose verdict is INCONCLUSIVE "
        "[env ETLPLUS_INCONCLUSIVE_BLOCKS]",
    )
    for key, text in _INI_KEYS.items():
        parser.addini(f"etlplus_{key}", help=text, type="string", default=None)


def _ini(config: pytest.Config, name: str) -> Any:
    try:
        return config.getini(name) or None
    except ValueError:
        return None


def pytest_configure(config: pytest.Config) -> None:
    """Resolve the options (bad value: one-line UsageError), register the marker and collector."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*groups): the performance measurement groups a test reads ({', '.join(GROUPS)})",
    )
    settings = get_settings(config)
    cli = {
        key: config.getoption(key, None)
        for key in (
            "baseline",
            "baseline_record",
            "tolerance",
            "perf_duration",
            "perf_rate",
            "inconclusive_blocks",
        )
    }
    ini = {f"etlplus_{key}": _ini(config, f"etlplus_{key}") for key in _INI_KEYS}
    try:
        perf = resolve_perf_settings(
            cli,
            os.environ,
            ini,
            embedded=settings.embedded,
            base_url=settings.base_url,
            rootdir=config.rootpath,
            invocation_dir=config.invocation_params.dir,
        )
    except _UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    collector = PerfCollector(config, perf)
    config.stash[PERF_KEY] = collector
    config.pluginmanager.register(collector, PerfCollector.name)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Unregister the collector."""
    collector = config.stash.get(PERF_KEY, None)
    if collector is not None and config.pluginmanager.is_registered(collector):
        config.pluginmanager.unregister(collector)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """After selection: measured tests first; note them; a bad baseline stops the run in one line.

    The measurements run before any other check, on a target that no other check has loaded yet
    (no jobs of theirs still running, no subscribers), which is the state the baseline was
    recorded in: otherwise leftovers of the functional checks are measured as a regression.
    """
    collector = config.stash.get(PERF_KEY, None)
    if collector is None:
        return
    items.sort(key=lambda item: item.get_closest_marker("perf_uses") is None)
    try:
        collector.collected(items)
    except _UsageError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    """What a reproduction needs: baseline, tolerances and load."""
    collector = config.stash.get(PERF_KEY, None)
    return [collector.settings.describe()] if collector is not None else []


@pytest.fixture(scope="session")
def etl_perf(request: pytest.FixtureRequest) -> PerfCollector:
    """The run's performance collector: plan, baseline, measured groups, the one comparison."""
    return request.config.stash[PERF_KEY]
