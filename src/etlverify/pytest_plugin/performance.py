"""The performance gate's pytest side: options, the plan, collect -> judge once -> report.

Pipeline (pytest-benchmark's measure -> store -> compare, with our statistics):

1. *Options* (`--baseline`, `--baseline-record`, `--tolerance`, `--perf-duration`, `--perf-rate`,
   `--inconclusive-blocks`) resolve CLI -> environment -> ini -> default into a frozen
   `PerfSettings`; a bad value is a `pytest.UsageError` naming where it came from.
2. *Plan*: the load shapes follow from the settings alone (`PerfPlan`), so the environment
   fingerprint of this run is known before anything is measured. After collection, when performance
   tests were collected, the baseline is loaded and its recorded load is checked against the plan:
   a broken or mismatched file stops the run with one line naming the file and the problem. The
   embedded target's default (and `--baseline machine`) is this machine's baseline, kept in a
   per-user cache (`etlverify.baseline.machine`); see baselines/README.md.
3. *Collect*: the section's tests (verification/performance/) measure through the session-level
   `PerfCollector` (`config.stash[PERF_KEY]`, fixture `etl_perf`), one measurement group at a time
   ("routes", "users", "pool", "ws"), each measured by the first test that reads it
   (`PerfCollector.group`), in plan order, with a progress line on the terminal and its time
   attached to that test. A group the machine baseline holds fewer than `MACHINE_RUNS` (3) runs
   of (first use) is measured once and that measurement is added to the cache as a run of this
   machine's baseline; its checks are INCONCLUSIVE for this run, and from the run after the
   third on they are judged against the three (whole runs vary more than one run's windows).
   Such a run says so once (`PerfCollector.first_use_line`: "recording this machine's baseline,
   run 1 of 3 (...; judged from run 4 on)"), not once per statistic; the per-metric verdicts are
   in summary.json, and `etlverify baseline record` records the missing runs at once. A request
   a measurement needs that the target refuses with an HTTP answer (the probe job's POST
   /api/jobs answered 400) blocks the whole section: every check fails with one `SectionBlocked`
   naming the answer, which the verdict leads with, not a lost connection per check.
4. *Judge*: the measured groups are compared with the baseline in one `compare()` call
   (`PerfCollector.judge`, again when a group was added: a metric's verdict depends only on its own
   windows). Each test reports its own slice of the verdicts (`PerfCollector.report`): FAIL lines
   fail it, INCONCLUSIVE skips it (fails with `--inconclusive-blocks`), no baseline skips it with
   the way to record one. A group the target rate-limited (429) is INCONCLUSIVE with the limit
   from the target's headers, never PASS and never an error-rate FAIL.
5. *Report and store*: the terminal summary prints the whole comparison (every regression
   together) and each group's measuring time; `--baseline-record` appends the run to the baseline
   at session end, and refuses to when any performance test failed or errored or the target
   rate-limited the load.

Which groups a test reads is declared with ``@pytest.mark.perf_uses("routes", ...)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from etlverify import __version__
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
from etlverify.baseline.contention import REMEASURE_LIMIT, settle
from etlverify.baseline.machine import MACHINE_RUNS, cache_dir, machine_baseline_path
from etlverify.baseline.machine import recorded_runs as baseline_runs
from etlverify.baseline.triggers import TriggerState, not_judged
from etlverify.embedded import describe_overrides, overrides_digest
from etlverify.errors import CheckFailed, TargetError
from etlverify.health import TargetBlocked
from etlverify.measure import ClosedLoad, LoadParameters, MetricResult, OpenLoad, RunResult
from etlverify.measure.host import HostSampler, HostWindow, describe_contention
from etlverify.pytest_plugin.markers import checklist_ids
from etlverify.pytest_plugin.options import get_settings
from etlverify.pytest_plugin.targethealth import SectionBlocked
from etlverify.report.causes import SECTION_BLOCKED, http_answer, refusal_text
from etlverify.report.perfdata import FIRST_USE_MARK

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
#: The section's default tolerances: the checklist's "within 10% of baseline" with floors derived
#: from the baseline's own measured noise (`sd`: multiples of the window-to-window standard
#: deviation of that statistic in the baseline; see baselines/README.md), and no p99, which needs
#: 500 samples per trial window and so could only ever be INCONCLUSIVE at these window sizes (add
#: it with `--tolerance p99:10%,+3sd`).
#: The fixed floors used before (`p50:+2ms; p95:+3ms`, the client-side resolution of the machine
#: the shipped baseline was recorded on) hid a 25% slowdown of every key route on this 2-core
#: machine: p50 ~5 ms there, so +25% is 1.25 ms, below a 2 ms floor, while the route windows'
#: p50 scatter by ~0.1-0.15 ms. A floor of a few sd keeps machine noise from failing a run and
#: lets the 10% rule decide wherever the machine is quiet enough to resolve it.
DEFAULT_TOLERANCE = "p50:10%,+2sd; p95:10%,+3sd; throughput:-10%,-2sd; error_rate:+1pp"
#: `--baseline machine`: the machine baseline (recorded on first use into the per-user cache).
MACHINE = "machine"
#: Progress phase of a group measured for a machine baseline that lacks it.
FIRST_USE_PHASE = "measuring (first use: recording this machine's baseline)"
#: The verdict reason of a first-use group's metrics (INCONCLUSIVE), one per metric in
#: summary.json; people read it once, as `PerfCollector.first_use_line`.
FIRST_USE_REASON = (
    "first use ({k} of {n} runs): this measurement was recorded into this machine's baseline "
    "({path}); there is no earlier baseline to compare it with until {n} runs are recorded (one "
    "run cannot show how much whole runs vary on this machine)"
)
#: ... and at the last of the first-use runs, when the baseline is complete with this one.
FIRST_USE_COMPLETE_REASON = (
    "first use ({k} of {n} runs): this measurement was recorded into this machine's baseline "
    "({path}), which is now complete: judging starts with the next run"
)
#: (A first-use run is said once, as `PerfCollector.first_use_line`, which starts with
#: `FIRST_USE_MARK`: the sign-off folds the per-metric and per-item findings into that line.)
#: The report header's line about this machine's baseline: this, the file, ": K of 3 runs ...".
MACHINE_STATE_PREFIX = "performance: this machine's baseline "
#: A first-use measurement with more than this share of requests sent late (the open-model
#: sender could not keep to its schedule: an overloaded host) is not recorded as the baseline.
MAX_CALIBRATION_LATE = 0.05
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
    #: the baseline is this machine's (recorded on first use into the per-user cache)
    machine: bool = False
    #: judge against a baseline from other hardware or another target configuration anyway
    allow_foreign: bool = False
    embedded: bool = False

    def describe(self) -> str:
        """One header line."""
        base = (
            f"this machine's ({cache_dir()}, recorded on first use)"
            if self.machine
            else str(self.baseline)
            if self.baseline
            else "none"
        )
        specs = "; ".join(str(s) for s in self.specs)
        return (
            f"performance: baseline {base} ({self.sources.get('baseline', 'default')}), "
            f"tolerance {specs}, duration {self.duration_s:g} s, rate {self.rate_rps:g} rps"
            + (", recording" if self.record else "")
            + (", INCONCLUSIVE blocks" if self.inconclusive_blocks else "")
            + (", foreign baselines judged" if self.allow_foreign else "")
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
    default_rate_rps: float = DEFAULT_RATE_RPS,
) -> PerfSettings:
    """Resolve the performance options (CLI -> env -> ini -> default); `_UsageError` if bad.

    `--baseline-record` comes from the CLI or the environment only: recording a baseline is a
    deliberate act, not something an ini file should switch on for every run.
    """
    sources: dict[str, str] = {}
    picked = _pick("baseline", cli.get("baseline"), env, ini)
    baseline: Path | None
    machine = False
    if picked is not None and str(picked[0]).strip().lower() == MACHINE:
        baseline, machine = None, True
        sources["baseline"] = picked[1]
    elif picked is not None:
        baseline = _baseline_file(str(picked[0]), picked[1], rootdir, invocation_dir)
        sources["baseline"] = picked[1]
    elif embedded:
        # The committed baselines/pytest-embedded.json was recorded on other hardware: this
        # machine's own baseline (first use records it) is the only one that can judge it.
        baseline, machine = None, True
        sources["baseline"] = "default for the embedded target: this machine's baseline"
    else:
        baseline = None
        sources["baseline"] = "none: give --baseline for this target"
    record_pick = _pick("baseline-record", cli.get("baseline_record"), env, {})
    recording = _flag(record_pick)
    if recording and baseline is None and not machine:
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
        default_rate_rps,
        "requests per second",
    )
    blocks = _flag(_pick("inconclusive-blocks", cli.get("inconclusive_blocks"), env, ini))
    foreign = _flag(_pick("baseline-foreign", cli.get("baseline_foreign"), env, {}))
    return PerfSettings(
        baseline=baseline,
        record=recording,
        specs=specs,
        duration_s=duration,
        rate_rps=rate,
        inconclusive_blocks=blocks,
        target_label="the embedded reference" if embedded else str(base_url),
        sources=sources,
        machine=machine,
        allow_foreign=foreign,
        embedded=embedded,
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


def _group_runs(baseline: Baseline, group: str) -> int:
    """How many recorded runs `baseline` holds of measurement group `group`."""
    return baseline_runs(baseline, lambda metric: group_of(metric) == group)


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


def _utc_stamp(iso: str) -> str:
    """`2026-12-07T06:40:11Z` -> `2026-12-07 06:40 UTC` (as given when it does not parse)."""
    try:
        when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def rate_limit_summary(group: GroupResult) -> tuple[int, int]:
    """(429 answers, attempts) over the group's metrics."""
    limited = attempts = 0
    for metric in group.metrics.values():
        limited += int(metric.merged.error_kinds.get("http_429", 0))
        attempts += metric.count + metric.errors
    return limited, attempts


def rate_limit_message(group: GroupResult) -> str | None:
    """The operator's sentence when the target rate-limited the load, else None.

    A rate-limited measurement is not a performance verdict: the 429s measure the target's limiter,
    not the service, and they would read as an error-rate regression.
    """
    limited, attempts = rate_limit_summary(group)
    if not limited:
        return None
    info = group.facts.get("rate_limit") or {}
    limit, window = info.get("limit"), info.get("window_s")
    route = f" on {info['route']}" if info.get("route") else ""
    if limit is not None:
        source = f"limit {limit} per {window:g} s" if window else f"limit {limit}"
        how = f"{source}{route} from the target's headers"
    else:
        how = "the target sent no X-RateLimit-Limit header"
    pct = 100.0 * limited / attempts if attempts else 100.0
    return (
        f"{pct:.1f}% of requests were rate limited (429, {how}): exempt the load generator or "
        f"lower the load; {limited} of {attempts} requests of the {group.name!r} measurement, "
        "so this is not a performance verdict"
    )


class PerfCollector:
    """Session-level collector: measurements in, one comparison out, then recording.

    Registered as a plugin object, so it also sees every test report (to refuse recording after a
    failed performance test) and writes the terminal summary.

    Groups are measured lazily, by the first test that reads one (`group()`), in plan order, so
    each check's time is its own; with a machine baseline that lacks a group (first use), that
    group's measurement is recorded into the cache and judged from the next run on.
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
        self._judged: frozenset[str] = frozenset()
        self.bad_outcomes: dict[str, str] = {}
        self.perf_nodeids: set[str] = set()
        self.record_message: str | None = None
        self.measurer: Callable[[str, str, Callable[[float], None]], GroupResult] | None = None
        #: seconds spent measuring each group
        self.timings: dict[str, float] = {}
        #: groups whose measurement became this machine's baseline in this run (first use), and
        #: why a first-use measurement could not be recorded
        self.calibrated: list[str] = []
        self.calibration_problems: dict[str, str] = {}
        #: groups whose measurement raised (a hung or broken target): later tests fail at once
        self.measure_errors: dict[str, str] = {}
        #: the health event behind such an error (the target was down): later tests are tied to it
        self.measure_events: dict[str, TargetBlocked] = {}
        #: a request the section needs was refused (`_refused`): every later test fails with it
        self.section_block: dict[str, Any] | None = None
        self.target_config = self._target_config()
        if settings.machine:
            path = machine_baseline_path(self.target_config, self.plan.fingerprint_load())
            # the report and the sign-off read settings.baseline: the cache file it resolved to
            self.settings = replace(settings, baseline=path)
        self.baseline_path: Path | None = self.settings.baseline
        self._progress_shown: dict[str, int] = {}
        #: the host during each group's windows (`etlverify.measure.host`): measure the measurer
        self.host: dict[str, list[HostWindow]] = {}
        #: makes the sampler of one measurement (a test replaces it to build a busy host)
        self.host_sampler: Callable[[], HostSampler] = lambda: HostSampler(exclude=_our_children)
        #: how often a group was measured again because a relative FAIL met a contended host
        self.remeasured: dict[str, int] = {}
        #: groups whose relative FAILs stayed on a contended host: INCONCLUSIVE, with this reason
        self.host_excused: dict[str, str] = {}

    def _target_config(self) -> dict[str, Any]:
        """What the target is configured with, as far as the suite knows (machine baseline key)."""
        if self.settings.embedded:
            return {
                "target": "embedded reference",
                "version": __version__,
                "overrides": overrides_digest(),
            }
        return {"target": self.settings.target_label}

    @property
    def target_config_id(self) -> str | None:
        """The fingerprint's `target_config`: known for the embedded target only."""
        if not self.settings.embedded:
            return None
        return f"embedded reference {__version__}, suite overrides {overrides_digest()}"

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
        path = self.baseline_path
        if path is None:
            return None
        if not path.exists():
            if (
                self.settings.record
                or self.settings.machine
                or self.settings.sources.get("baseline", "").startswith("default")
            ):
                return None  # nothing recorded yet: first use calibrates, or tests skip
            raise _UsageError(f"{path}: no such baseline file (record one with --baseline-record)")
        try:
            baseline = load(path)
        except BaselineError as exc:
            if self.settings.machine:
                return None  # a broken cache entry is recorded again
            raise _UsageError(str(exc)) from None
        problems = _diff(dict(baseline.environment.load), self.plan.fingerprint_load(), "load")
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise _UsageError(
                f"{path}: recorded with another load, {problems[0]}{more}; run with the "
                "baseline's --perf-duration/--perf-rate or record a new baseline"
            )
        return baseline

    def baseline_note(self) -> str:
        """Where the baseline comes from, for the report and the terminal."""
        if self.baseline is None:
            return self.no_baseline_reason()
        first = self.baseline.runs[0].recorded_at if self.baseline.runs else ""
        when = _utc_stamp(self.baseline.recorded_at if self.calibrated else first)
        if self.settings.machine:
            k = self.first_use_run()
            how = (
                f"first use: {', '.join(self.calibrated)} recorded from this run "
                f"({k} of {MACHINE_RUNS} runs), "
                + (
                    "the baseline is now complete: judging starts with the next run"
                    if k >= MACHINE_RUNS
                    else f"judged once {MACHINE_RUNS} are recorded"
                )
                if self.calibrated
                else "cached"
            )
            return f"baseline recorded on this machine on {when} ({how}; {self.baseline_path})"
        runs = baseline_runs(self.baseline)
        return f"baseline {self.baseline_path} (recorded {when}, {runs} run(s))"

    # measuring ----------------------------------------------------------------------------------

    def add(self, result: GroupResult) -> None:
        """Store one group's measurements (a group measured twice keeps the first)."""
        self.groups.setdefault(result.name, result)

    def _needs_calibration(self, group: str) -> bool:
        if not self.settings.machine or self.settings.record:
            return False
        if group in self.calibration_problems:
            return False
        return self.recorded_runs(group) < MACHINE_RUNS

    def young_groups(self) -> dict[str, str]:
        """Groups recorded with ``--baseline-record`` into a baseline holding fewer than
        `MACHINE_RUNS` runs of them -> why they are not judged yet (the file's first uses)."""
        if not self.settings.record or self.baseline is None or self.settings.machine:
            return {}
        out: dict[str, str] = {}
        for group in self.groups:
            held = self.recorded_runs(group)
            if 0 < held < MACHINE_RUNS:
                out[group] = (
                    f"recording the baseline: it holds {held} of the {MACHINE_RUNS} runs it needs "
                    f"before it judges (one run cannot show how much whole runs vary); this run "
                    f"is recorded as run {held + 1}"
                )
        return out

    def recorded_runs(self, group: str) -> int:
        """How many recorded runs the baseline holds of `group`."""
        if self.baseline is None:
            return 0
        return _group_runs(self.baseline, group)

    def first_use_run(self) -> int:
        """Which of the `MACHINE_RUNS` first-use runs this one is (its groups' fewest runs)."""
        return min((self.recorded_runs(g) for g in self.calibrated), default=1)

    def first_use_reason(self) -> str:
        """Why this run's first-use groups are INCONCLUSIVE (with how many runs are recorded)."""
        k = self.first_use_run()
        reason = FIRST_USE_COMPLETE_REASON if k >= MACHINE_RUNS else FIRST_USE_REASON
        return reason.format(path=self.baseline_path, k=k, n=MACHINE_RUNS)

    def machine_state(self) -> str:
        """One header line: this machine's baseline file and how many runs it holds
        (``etlverify baseline record`` reads it from a ``--collect-only`` run)."""
        path = self.baseline_path
        if path is None or not path.exists():
            return (
                f"{MACHINE_STATE_PREFIX}{path}: 0 of {MACHINE_RUNS} runs recorded, "
                f"judged from run {MACHINE_RUNS + 1} on"
            )
        try:
            baseline = load(path)
        except BaselineError:
            return f"{MACHINE_STATE_PREFIX}{path}: unreadable, recorded again on the next run"
        counts = {g: _group_runs(baseline, g) for g in GROUPS}
        k = min(counts.values())
        state = f"{k} of {MACHINE_RUNS} runs recorded"
        if len(set(counts.values())) > 1:
            state += " (" + ", ".join(f"{g} {n}" for g, n in counts.items()) + ")"
        later = "complete" if k >= MACHINE_RUNS else f"judged from run {MACHINE_RUNS + 1} on"
        return f"{MACHINE_STATE_PREFIX}{path}: {state}, {later}"

    def record_command(self) -> str:
        """The command that records the rest of this machine's baseline now (the load is part
        of the baseline's key: a run with another load records another baseline)."""
        where = "" if self.settings.embedded else f" --base-url {self.settings.target_label}"
        load = ""
        if (self.settings.duration_s, self.settings.rate_rps) != (
            DEFAULT_DURATION_S,
            DEFAULT_RATE_RPS,
        ):
            load = (
                f" -- --perf-duration {self.settings.duration_s:g} "
                f"--perf-rate {self.settings.rate_rps:g}"
            )
        return f"etlverify baseline record{where}{load}"

    def first_use_line(self, *, counts: bool = True) -> str:
        """The one line a first-use run says (not once per metric): which run of the
        `MACHINE_RUNS` this is, what was measured, when judging starts, how to record the rest.

        `counts=False` leaves out what was measured (a test's skip reason, written before the
        later groups are measured).
        """
        k, n = self.first_use_run(), MACHINE_RUNS
        mine = [g for g in self.groups if g in self.calibrated]
        which = "" if len(mine) == len(self.groups) else f" ({', '.join(mine)})"
        measured = ""
        if counts:
            metrics = [m for g in mine for m in self.groups[g].metrics]
            comparison = self.judge()
            stats = [
                r
                for r in (comparison.results if comparison is not None else ())
                if group_of(r.metric) in mine
            ]
            measured = f"{len(metrics)} metrics" + (
                f", {len(stats)} statistics measured" if stats else " measured"
            )
        head = f"performance: {FIRST_USE_MARK}{which}, run {min(k, n)} of {n}"
        if k >= n:
            return (
                head
                + (f" ({measured})" if measured else "")
                + ": the baseline is now complete; judging starts with the next run"
            )
        rest = f"run {k + 1}" if k + 1 == n else f"runs {k + 1}-{n}"
        return (
            head
            + f" ({measured + '; ' if measured else ''}judged from run {n + 1} on); "
            + f"to record {rest} now: {self.record_command()}"
        )

    def first_use_json(self) -> dict[str, Any] | None:
        """The first-use facts of this run for summary.json (None when nothing was recorded)."""
        if not self.calibrated and not self.calibration_problems:
            return None
        k = (
            self.first_use_run()
            if self.calibrated
            else min(self.recorded_runs(g) for g in self.calibration_problems)
        )
        return {
            "run": k,
            "of": MACHINE_RUNS,
            "complete": k >= MACHINE_RUNS,
            "groups": list(self.calibrated),
            "metrics": sum(len(self.groups[g].metrics) for g in self.calibrated),
            "not_recorded": dict(self.calibration_problems),
            "path": str(self.baseline_path),
            "line": self.first_use_line() if self.calibrated else "",
        }

    def group(self, request: pytest.FixtureRequest | None, name: str) -> GroupResult:
        """The measurements of group `name`, measured now if needed (with every needed group
        before it in plan order, so the target sees the plan's order whatever the test order).

        The measuring time is attached to the test (`user_properties` "perf_measure_s") and
        printed; a group the target rate-limited ends the test here (INCONCLUSIVE: skipped, or
        failed with --inconclusive-blocks), naming the limit.
        """
        spent: dict[str, float] = {}
        if name not in self.groups:
            for g in GROUPS[: GROUPS.index(name) + 1]:
                if self.section_block is not None:
                    raise SectionBlocked(self._blocked_message(), self.section_block)
                if g in self.measure_errors:
                    # measured once and it broke: say so at once, do not wait for it again
                    message = (
                        f"performance: the {g!r} measurement failed earlier in this run: "
                        f"{self.measure_errors[g]}"
                    )
                    if g in self.measure_events:
                        raise TargetBlocked(message, self.measure_events[g].event)
                    raise TargetError(message)
                if g not in self.groups and (g in self.needed or g == name):
                    try:
                        spent[g] = self._measure(g)
                        spent[g] += self._remeasure_if_contended(g)
                    except Exception as exc:
                        text = str(exc).strip()
                        self.measure_errors[g] = (
                            text.splitlines()[0][:300] if text else "it ended without a message"
                        )
                        if isinstance(exc, TargetBlocked):
                            self.measure_events[g] = exc
                        self._refused(exc, g, request)
                        raise
        result = self.groups[name]
        if request is not None and spent:
            request.node.user_properties.append(("perf_measure_s", spent))
            for g, seconds in spent.items():
                first = g in self.calibrated
                print(
                    f"measured {g} in {seconds:.1f} s"
                    + (" (first use: recorded as this machine's baseline)" if first else "")
                )
        if request is not None:
            self.check_rate_limit(request, result)
        return result

    def _refused(
        self, exc: BaseException, group: str, request: pytest.FixtureRequest | None
    ) -> None:
        """A measurement that could not start because the target refused a request it needs
        (the probe job's POST /api/jobs answered 400): the whole section cannot run, which is
        one finding, not a lost connection per check. Raises `SectionBlocked`; else returns."""
        if not isinstance(exc, TargetError) or exc.kind:
            return
        answer = http_answer(str(exc))
        if answer is None:
            return
        now = time.time()
        self.section_block = {
            "kind": SECTION_BLOCKED,
            "section": "performance",
            "group": group,
            **answer,
            "check": request.node.name if request is not None else "",
            "at_epoch": round(now, 3),
            "at": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        raise SectionBlocked(self._blocked_message(), self.section_block) from None

    def _blocked_message(self) -> str:
        block = self.section_block or {}
        first = f" (first met in {block['check']})" if block.get("check") else ""
        return (
            f"performance: {refusal_text(block)}; the {block.get('group', 'routes')!r} "
            f"measurement needs it, so no check of the performance section can run{first}"
        )

    def _measure(self, group: str) -> float:
        if self.measurer is None:
            raise RuntimeError("performance: no measurer (use the perf_run fixture)")
        t0 = time.monotonic()
        first_use = self._needs_calibration(group)
        phase = FIRST_USE_PHASE if first_use else "measuring"
        with self.host_sampler() as host:
            started = time.monotonic()
            result = self.measurer(group, phase, self._ticker(group, phase))
        self.host[group] = _host_windows(host, started, result)
        contention = describe_contention(self.host[group])
        result.facts["host"] = [w.to_json() for w in self.host[group]]
        result.facts["host_contention"] = contention
        self.add(result)
        if first_use:
            self._record_first_use(group, result)
        self._progress_done(group, time.monotonic() - t0)
        self.timings[group] = round(time.monotonic() - t0, 3)
        return self.timings[group]

    def host_json(self) -> dict[str, Any] | None:
        """The host during each measured group, for summary.json and the report (None when
        nothing was sampled): windows, the contention line, re-measures, the excuse."""
        if not self.host:
            return None
        return {
            "groups": {
                group: {
                    "windows": [w.to_json() for w in windows],
                    "contention": describe_contention(windows),
                    "remeasured": self.remeasured.get(group, 0),
                    "excused": self.host_excused.get(group),
                }
                for group, windows in self.host.items()
            },
            "lines": [
                f"{group}: {describe_contention(windows)}" + _again(self.remeasured.get(group, 0))
                for group, windows in self.host.items()
                if describe_contention(windows)
            ],
        }

    def _relative_fails(self, group: str) -> list[MetricVerdict]:
        """This group's relative FAILs (the 10% rule on latency or throughput) against the
        baseline; errors are absolute and never excused by a busy host."""
        if self.baseline is None or group in self.calibrated or group in self.young_groups():
            return []
        run = self._run_of({group: self.groups[group]})
        base_metrics = {m: r for m, r in self.baseline.metrics.items() if group_of(m) == group}
        if run is None or not base_metrics:
            return []
        mine = replace(run, metrics={m: r for m, r in run.metrics.items() if m in base_metrics})
        comparison = compare(
            replace(self.baseline, metrics=base_metrics),
            mine,
            self.settings.specs,
            environment=self.environment,
            allow_foreign=self.settings.allow_foreign,
        )
        return [
            r
            for r in comparison.results
            if r.verdict is Verdict.FAIL and r.stat not in ABSOLUTE_STATS
        ]

    def _remeasure_if_contended(self, group: str) -> float:
        """A relative FAIL measured on a contended host is measured again, bounded: this group
        only (`etlverify.baseline.contention.settle`, the one rule). Still failing on a still
        contended host, its relative verdicts become INCONCLUSIVE naming the contention
        (`host_excused`); failing on a quiet host, it fails. Returns the extra seconds spent."""
        spent = 0.0

        def again() -> tuple[GroupResult, list[HostWindow]]:
            nonlocal spent
            del self.groups[group]
            spent += self._measure(group)
            return self.groups[group], self.host.get(group, [])

        def announce(k: int, contention: str) -> None:
            print(
                f"{group}: a relative FAIL on a contended host ({contention}): "
                f"measuring {group!r} again ({k} of {REMEASURE_LIMIT})"
            )

        settled = settle(
            again,
            lambda _m: bool(self._relative_fails(group)),
            first=(self.groups[group], self.host.get(group, [])),
            on_remeasure=announce,
        )
        self.remeasured[group] = settled.remeasured
        if settled.excuse is None:
            self.host_excused.pop(group, None)
        else:
            self.host_excused[group] = settled.excuse
        return spent

    def _record_first_use(self, group: str, result: GroupResult) -> None:
        """First use of a machine baseline: record this measurement of `group` into the cache.

        Not recorded (and said why) when the measurement had errors or 429s, or when the host was
        too busy for the load generator to keep to its schedule. Measuring twice in one run (a
        calibration, then the judged measurement) was tried and rejected: the second measurement
        meets a target that has just served the first one (thousands more jobs, a warmer or more
        fragmented process) and on this machine read 16-40% slower on every route, a false FAIL
        on a healthy target in 2 of 2 first-use runs.
        """
        assert self.baseline_path is not None
        limited = rate_limit_message(result)
        errors = sum(m.errors for m in result.metrics.values())
        attempts = sum(m.count + m.errors for m in result.metrics.values())
        late = result.run.late if result.run is not None else 0
        if limited or errors:
            self.calibration_problems[group] = (
                limited or f"{errors} errors during the first-use measurement"
            )
            return
        if attempts and late / attempts > MAX_CALIBRATION_LATE:
            # The load generator could not keep to its own schedule: the host was overloaded
            # (other processes), and a baseline measured then would make every later run look
            # "improved". Not recorded; the next run tries again.
            self.calibration_problems[group] = (
                f"the load generator sent {100.0 * late / attempts:.0f}% of its requests late: "
                "the host was overloaded, so this machine's baseline was not recorded (it is "
                "recorded on the next run on a quieter host)"
            )
            return
        run = self._run_of({group: result})
        if run is None:
            return
        env = self.environment or self.set_environment(None, None)
        try:
            self.baseline = record(self.baseline_path, run, environment=env, append=True)
        except (BaselineError, OSError) as exc:
            self.calibration_problems[group] = f"could not write {self.baseline_path}: {exc}"
            return
        self.calibrated.append(group)

    # progress -----------------------------------------------------------------------------------

    def _ticker(self, group: str, phase: str) -> Callable[[float], None]:
        self._progress_shown[group] = -1
        return lambda elapsed: self.progress(group, phase, elapsed)

    def _shape(self, group: str) -> tuple[str, float | None, int]:
        """(what is measured, planned seconds or None, windows) of a group."""
        plan = self.plan
        if group == "routes":
            load_ = plan.routes
            what = (
                f"{len(ROUTE_METRICS)} key routes, open load {load_.rate_rps:g} rps, "
                f"{load_.duration_s:g} s"
            )
            return what, load_.duration_s, load_.windows
        if group in ("users", "pool"):
            shape = plan.users if group == "users" else plan.pool
            kind = "mixed reads" if group == "users" else "job creation"
            return f"{shape.users} users, {kind}, {shape.duration_s:g} s", shape.duration_s, 5
        return f"WebSocket pushes, {plan.ws.probes} probes", None, plan.ws.probes

    def progress(self, group: str, phase: str, elapsed: float) -> None:
        """One progress line (rewritten in place on a terminal; a few plain lines otherwise)."""
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is None:
            return
        what, duration, windows = self._shape(group)
        if duration:
            per = duration / windows
            window = min(windows, int(elapsed // per) + 1)
            left = f", {max(0.0, duration - elapsed):.0f} s left"
            where = f"window {window} of {windows}{left}"
        else:
            window, where = 0, f"{elapsed:.0f} s so far"
        text = f"performance: {phase} {group} ({what}): {where}"
        tty = bool(getattr(tr, "isatty", False))
        shown = self._progress_shown.get(group, -1)
        if not tty and window == shown:
            return  # plain output: one line per window (or one per group), not one a second
        self._progress_shown[group] = window
        self._write(tr, text, rewrite=tty)

    def _progress_done(self, group: str, seconds: float) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is None:
            return
        text = f"performance: measured {group} in {seconds:.1f} s" + (
            f" (first use, not recorded: {self.calibration_problems[group]})"
            if group in self.calibration_problems
            else " (first use: recorded as this machine's baseline)"
            if group in self.calibrated
            else ""
        )
        self._write(tr, text, rewrite=bool(getattr(tr, "isatty", False)), final=True)

    def _write(self, tr: Any, text: str, *, rewrite: bool, final: bool = False) -> None:
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        ctx = (
            capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
        )
        with ctx:
            if rewrite:
                tr.rewrite(text, erase=True)
                if final:
                    tr.write("\n")
            else:
                tr.ensure_newline()
                tr.write_line(text)
            tr.flush() if hasattr(tr, "flush") else None
        # pytest prints the test file's path again before the next result character
        tr.currentfspath = None

    def set_environment(
        self, status: Mapping[str, Any] | None, flags: Mapping[str, Any] | None
    ) -> Fingerprint:
        """This run's fingerprint: host, target (status, flags) and the whole plan's load."""
        if self.environment is None:
            base = Fingerprint.collect(
                status=status, flags=flags, target_config=self.target_config_id
            )
            self.environment = replace(base, load=self.plan.fingerprint_load())
        return self.environment

    def _run_of(self, groups: Mapping[str, GroupResult]) -> RunResult | None:
        if not groups:
            return None
        metrics: dict[str, MetricResult] = {}
        for group in groups.values():
            metrics.update(group.metrics)
        runs = [g.run for g in groups.values() if g.run is not None]
        primary = groups.get("routes")
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

    def run_result(self) -> RunResult | None:
        """All measured groups as one run (what is compared and recorded)."""
        return self._run_of(self.groups)

    # judging ------------------------------------------------------------------------------------

    def judge(self) -> Comparison | None:
        """Compare the measured groups with the baseline; None without a baseline.

        Judged again when a group was added since (a metric's verdict depends only on its own
        windows, so a slice already reported never changes); the last comparison is the run's.
        """
        measured = frozenset(self.groups)
        if self.comparison is not None and measured == self._judged:
            return self.comparison
        if self.baseline is None:
            return None
        run = self.run_result()
        if run is None:
            return None
        # Only the groups this run measured: an unselected group is not a missing metric.
        base = replace(
            self.baseline,
            metrics={m: r for m, r in self.baseline.metrics.items() if group_of(m) in measured},
        )
        comparison = compare(
            base,
            run,
            self.settings.specs,
            environment=self.environment,
            allow_foreign=self.settings.allow_foreign,
        )
        if self.calibrated:
            # A first-use group is its own baseline: comparing it with itself cannot fail.
            why = self.first_use_reason()
            comparison = replace(
                comparison,
                results=tuple(
                    replace(
                        r,
                        verdict=Verdict.INCONCLUSIVE,
                        reason=why,
                        baseline=None,
                        change_pct=None,
                        p_value=None,
                        test=None,
                        tolerance="",
                    )
                    if group_of(r.metric) in self.calibrated
                    else r
                    for r in comparison.results
                ),
            )
        young = self.young_groups()
        if young:
            # --baseline-record into a baseline that does not hold MACHINE_RUNS runs yet: judged
            # against one or two runs, a busy moment would refuse the very runs that teach the
            # baseline how much runs vary (the machine baseline's first use, for a file)
            comparison = replace(
                comparison,
                results=tuple(
                    replace(r, verdict=Verdict.INCONCLUSIVE, reason=young[g])
                    if (g := group_of(r.metric)) in young and r.verdict is not Verdict.PASS
                    else r
                    for r in comparison.results
                ),
                triggers=tuple(
                    not_judged(t, next(iter(young.values()))) for t in comparison.triggers
                ),
            )
        if self.host_excused:
            comparison = replace(
                comparison,
                results=tuple(
                    replace(r, verdict=Verdict.INCONCLUSIVE, reason=self.host_excused[g])
                    if (g := group_of(r.metric)) in self.host_excused
                    and r.verdict is Verdict.FAIL
                    and r.stat not in ABSOLUTE_STATS
                    else r
                    for r in comparison.results
                ),
                triggers=tuple(_excuse_trigger(t, self.host_excused) for t in comparison.triggers),
            )
        self.comparison = comparison
        self._judged = measured
        return self.comparison

    def format_comparison(self, comparison: Comparison) -> list[str]:
        """`Comparison.format()`, with the first-use statistics said once (`first_use_line`)
        instead of one line each: their verdicts are in summary.json."""
        lines = comparison.format().splitlines()
        if not self.calibrated:
            return lines
        first_use = {r.line() for r in comparison.results if group_of(r.metric) in self.calibrated}
        kept = [line for line in lines[1:] if line not in first_use]
        return [lines[0], self.first_use_line(), *kept]

    def triggers(self, groups: Sequence[str] = ("routes",)) -> tuple[TriggerResult, ...] | None:
        """The rollback triggers over the metrics of `groups` only (None without a baseline).

        `compare()` evaluates them over every metric; the short users/pool/WebSocket loads are
        too exposed to a noisy host for a plain +50% point-estimate rule, so the gate decides on
        the long route load (the key routes' response times, which is what the trigger is about).
        """
        run = self.run_result()
        if self.baseline is None or run is None:
            return None
        wanted = set(groups) & set(self.groups) - set(self.calibrated) - set(self.young_groups())
        if not wanted:
            return None  # a first-use group compared with itself cannot trigger
        base = {m: r for m, r in self.baseline.metrics.items() if group_of(m) in wanted}
        mine = replace(run, metrics={m: r for m, r in run.metrics.items() if group_of(m) in wanted})
        excused = {g: why for g, why in self.host_excused.items() if g in wanted}
        return tuple(_excuse_trigger(t, excused) for t in evaluate_triggers(base, mine))

    def foreign_reason(self) -> str | None:
        """Why the baseline cannot judge this run (other hardware or target configuration), or
        None; always None with --baseline-foreign."""
        comparison = self.judge()
        if comparison is None or self.settings.allow_foreign or not comparison.foreign:
            return None
        return "not comparable: " + "; ".join(m.describe() for m in comparison.foreign)

    def no_baseline_reason(self) -> str:
        """Why there is nothing (earlier) to compare with."""
        if self.settings.record:
            return (
                f"no baseline yet for {self.settings.target_label}: this run is being recorded "
                f"into {self.baseline_path} (--baseline-record); runs after it are compared with it"
            )
        if self.calibrated:
            return "INCONCLUSIVE: " + self.first_use_line(counts=False).removeprefix(
                "performance: "
            )
        if self.calibration_problems:
            group, why = next(iter(self.calibration_problems.items()))
            return (
                f"no machine baseline for {self.settings.target_label}: the first-use measurement "
                f"of {group!r} was not recorded ({why})"
            )
        return (
            f"no baseline for {self.settings.target_label}: record one with --baseline-record"
            + (f" (looked for {self.baseline_path})" if self.baseline_path else "")
        )

    def check_rate_limit(self, request: pytest.FixtureRequest, group: GroupResult) -> None:
        """A group the target rate-limited is INCONCLUSIVE (skip, or fail with --inconclusive-
        blocks): not PASS, and not a plain error-rate FAIL."""
        message = rate_limit_message(group)
        if message is None:
            return
        node = request.node
        node.user_properties.append(
            ("performance", json.dumps({"measured": [message], "rate_limited": message}))
        )
        print(f"RATE LIMITED {group.name}: {message}")
        if self.settings.inconclusive_blocks:
            items = checklist_ids(node) if isinstance(node, pytest.Item) else ()
            raise CheckFailed(
                check=node.name,
                what=f"the {group.name!r} measurement was rate limited by the target "
                "(INCONCLUSIVE, --inconclusive-blocks)",
                expected="no 429 answers to the load generator",
                got=message,
                items=items,
            )
        pytest.skip(f"INCONCLUSIVE: {message}")

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
        note = self.baseline_note()
        print(note)
        mine = [
            r for r in comparison.results if metrics(r.metric) and (stats is None or stats(r.stat))
        ]
        first_use = [v for v in mine if group_of(v.metric) in self.calibrated]
        for verdict in mine:
            if verdict not in first_use:
                print(verdict.line())
        if first_use:
            print(self.first_use_line(counts=False))  # once, not once per statistic
        node.user_properties.append(
            (
                "performance",
                json.dumps(
                    {
                        "measured": [*measured, note],
                        "baseline": note,
                        "verdicts": [v.to_json() for v in mine],
                    },
                    sort_keys=True,
                ),
            )
        )
        failed = [v for v in mine if v.verdict is Verdict.FAIL]
        unsure = [v for v in mine if v.verdict is Verdict.INCONCLUSIVE]
        name = comparison.baseline_name or str(self.baseline_path)
        items = checklist_ids(node) if isinstance(node, pytest.Item) else ()
        if failed or (unsure and self.settings.inconclusive_blocks):
            bad = failed + (unsure if self.settings.inconclusive_blocks else [])
            got = [v.line() for v in bad if v not in first_use]
            if any(v in first_use for v in bad):
                got.append(self.first_use_line(counts=False))
            raise CheckFailed(
                check=node.name,
                what=f"{what}: {len(bad)} of {len(mine)} verdicts against baseline {name!r} "
                + ("FAIL" if failed else "INCONCLUSIVE (--inconclusive-blocks)"),
                expected="every statistic within tolerance of the baseline: "
                + "; ".join(str(s) for s in self.settings.specs),
                got="\n          ".join(got),
                items=items,
            )
        if unsure:
            lines = [v.line() for v in unsure if v not in first_use]
            reason = f"INCONCLUSIVE against baseline {name!r}: " + "; ".join(lines)
            if first_use:
                # said once; the item's reason starts with FIRST_USE_MARK (the sign-off folds it)
                seen = ", ".join(f"{v.stat} {v.metric} {v._fmt(v.current)}" for v in first_use[:4])
                said = (
                    self.first_use_line(counts=False).removeprefix("performance: ")
                    + f"; measured: {seen}{', ...' if len(first_use) > 4 else ''}"
                )
                reason = f"INCONCLUSIVE: {said}" + (f"; {reason}" if lines else "")
            pytest.skip(reason)
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
        path = self.baseline_path
        assert path is not None
        limited = [m for m in (rate_limit_message(g) for g in self.groups.values()) if m]
        if limited:
            self.record_message = (
                f"--baseline-record refused: {limited[0]}; nothing written to {path}"
            )
        elif self.host_excused:
            group, why = next(iter(self.host_excused.items()))
            self.record_message = (
                f"--baseline-record refused: the {group!r} measurement failed on a busy host "
                f"({why}): a slowdown that may be the host's is not baseline material; nothing "
                f"written to {path}"
            )
        elif self.bad_outcomes:
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
        if self.timings:
            terminalreporter.line(
                "measuring time: "
                + ", ".join(
                    f"{g} {s:.1f} s" + (" (first use, recorded)" if g in self.calibrated else "")
                    for g, s in self.timings.items()
                )
            )
        for group in self.groups.values():
            message = rate_limit_message(group)
            if message:
                terminalreporter.line(f"RATE LIMITED {group.name}: {message}")
        comparison = self.judge() if self.groups else self.comparison
        if comparison is not None:
            terminalreporter.line(self.baseline_note())
            for line in self.format_comparison(comparison):
                terminalreporter.line(line)
        elif self.groups and not self.settings.record:
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


#: stats whose FAIL a busy host never excuses: errors are the target's, however busy the host
ABSOLUTE_STATS = ("error_rate",)
#: the relative trigger a busy host can move like the 10% rule (errors are never the host's)
BUSY_EXCUSED_TRIGGERS = ("response_time_degradation",)


def _again(times: int) -> str:
    return f" (measured {times + 1} times)" if times else ""


def _our_children() -> list[int]:
    """The pids this run started (an embedded target, its helpers): their CPU is the
    measurement's, not "other processes"."""
    import psutil

    try:
        return [c.pid for c in psutil.Process().children()]
    except psutil.Error:
        return []


def _host_windows(host: HostSampler, started: float, result: GroupResult) -> list[HostWindow]:
    """The host during each trial window of `result` (the windows of its first metric that has
    any; their start is relative to the load's start, taken as the measurement's start)."""
    for metric in result.metrics.values():
        if metric.windows:
            return [
                host.window(started + w.start_s, started + w.start_s + w.duration_s)
                for w in metric.windows
            ]
    return []


def _excuse_trigger(trigger: TriggerResult, excused: Mapping[str, str]) -> TriggerResult:
    """A relative trigger FIRED on a group whose measurement stayed contended: UNKNOWN, with
    the contention; absolute triggers (errors, outage, memory, database) stand."""
    if not excused or trigger.name not in BUSY_EXCUSED_TRIGGERS or not trigger.fired:
        return trigger
    why = next(iter(excused.values()))
    return replace(
        trigger, state=TriggerState.UNKNOWN, reason=f"not judged: {why} ({trigger.reason})"
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the performance options and their ini keys."""
    group = parser.getgroup("etlverify-performance", GROUP_OPTION)
    group.addoption(
        "--baseline",
        dest="baseline",
        metavar="NAME_OR_PATH",
        default=None,
        help="baseline to compare with: a name under baselines/, a .json path, or 'machine' "
        "(this machine's baseline, recorded on first use into $ETLPLUS_BASELINE_CACHE or "
        "$XDG_CACHE_HOME/etlverify/baselines; the default for the embedded target) "
        "[env ETLPLUS_BASELINE]",
    )
    group.addoption(
        "--baseline-foreign",
        dest="baseline_foreign",
        action="store_true",
        default=None,
        help="judge against a baseline recorded on other hardware or under another target "
        "configuration anyway (default: such verdicts are INCONCLUSIVE) "
        "[env ETLPLUS_BASELINE_FOREIGN]",
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
        help=f"route load arrival rate, requests/s over all routes (default: the --profile's, "
        f"{DEFAULT_RATE_RPS:g} for staging) [env ETLPLUS_PERF_RATE]",
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
            "baseline_foreign",
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
            default_rate_rps=settings.load_profile.perf_rate_rps,
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

    def order(item: pytest.Item) -> tuple[bool, int]:
        # performance tests first, grouped by the first group they read in plan order, so each
        # group is measured by (and its time charged to) the first test that reads it
        mark = item.get_closest_marker(MARKER)
        if mark is None:
            return (True, 0)
        known = [GROUPS.index(g) for g in mark.args if g in GROUPS]
        return (False, min(known, default=0))

    items.sort(key=order)
    try:
        collector.collected(items)
    except _UsageError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    """What a reproduction needs: baseline, tolerances and load."""
    collector = config.stash.get(PERF_KEY, None)
    if collector is None:
        return []
    lines = [collector.settings.describe()]
    if collector.settings.machine:
        lines.append(collector.machine_state())
    if collector.settings.embedded:
        lines += describe_overrides()
    return lines


@pytest.fixture(scope="session")
def etl_perf(request: pytest.FixtureRequest) -> PerfCollector:
    """The run's performance collector: plan, baseline, measured groups, the one comparison."""
    return request.config.stash[PERF_KEY]
