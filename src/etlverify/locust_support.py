"""The Locust side of the performance gate: options, HDR recording, distributed merge, verdict.

This is the only module of etlverify that imports locust (ARCHITECTURE.md). A locustfile calls
`install(events)` once; everything else happens in event listeners, the locust way:

- ``init_command_line_parser`` adds the ``--etl-*`` options (also ``etl-*`` keys in locust.conf and
  ``LOCUST_ETL_*`` environment variables, with locust's usual precedence CLI > env > config file).
- ``init`` validates them, loads the baseline, and on the master/local runner resolves the
  target: with no ``--host`` it starts the embedded reference (`EmbeddedTarget`, raised rate
  limits) and sets the host, which locust hands to workers in every spawn message.
- ``request`` files every request (and every WebSocket push that the scenario reports as a
  ``WS`` request) into an HDR histogram per metric (``"GET /api/jobs"``, ``"WS push cancelled"``)
  and per trial window, besides Locust's own statistics.
- Distributed mode: each worker drains its histograms into ``report_to_master`` (encoded HDR V2
  strings, the same JSON that baselines store), and the master merges them in ``worker_report`` by
  adding histograms bucket by bucket. Percentiles are computed once, from the merged histograms,
  never averaged. Local and distributed runs end in the same `judge()`.
- ``quitting`` (master/local) compares the run with the baseline (`etlverify.baseline.compare`),
  prints the verdict and the rollback triggers, writes ``reports/locust_summary.json``, optionally
  records the run into the baseline, stops the embedded target, and sets
  ``environment.process_exit_code``.
- The baseline is a reviewed file (``--etl-baseline FILE``, ``--etl-record FILE``) or this
  machine's (``--etl-baseline machine``, locust.conf's default): a cache file of
  `etlverify.baseline.machine` keyed by host, target configuration and load plan, which the first
  `MACHINE_RUNS` runs record into (INCOMPLETE, exit 0) and which judges from the next run on. A
  baseline that is not comparable (another load plan, other hardware, another target
  configuration) judges no relative check and no relative rollback trigger; the absolute
  triggers always count.
- A run is judged only on complete evidence. Before anything else a headless or ``--autostart``
  master/local process replaces the summary it will write with an INCOMPLETE "running" one (a run
  killed on the way leaves no stale verdict behind); the web UI does so when a test starts, so
  that closing it without a test leaves an earlier summary alone. The master holds Locust's
  ``quit`` until every worker's final
  report (sent after its users stopped) has arrived, at most ``--etl-worker-report-timeout``
  seconds; a worker whose final report is missing, a run stopped before its ``--run-time``, or a
  run the target rate-limited (HTTP 429) gets no baseline verdict.

Exit codes (`EXIT_*`, docs/locust.md)::

    0  PASS (or INCONCLUSIVE without --etl-inconclusive-exit: a warning line is printed; so is a
       baseline that is not comparable), a run recorded with --etl-record, or a run recorded
       into this machine's baseline (verdict INCOMPLETE: not a pass, not a failure)
    1  FAIL: a metric beyond tolerance and significant, or a rollback trigger fired (a relative
       one only against a comparable baseline); or --etl-record refused because the run had
       failed requests / checks
    2  usage or configuration error: a bad --etl-* option, a missing or broken baseline file
    3  target unreachable: --host does not answer /api/health, or the embedded target cannot start
    4  INCOMPLETE: the run was interrupted (stopped before --run-time), a worker's final report is
       missing, no test was started, or a run for this machine's baseline had failed requests
       (not recorded); also INCONCLUSIVE with --etl-inconclusive-exit
    5  RATE LIMITED: the target answered 429 to the load generator; the measurements are the
       rate limiter's, not the service's (exempt the load generator or lower the load)

Errors of kind 2 and 3 are one line on stderr (which option or file, what is wrong), no traceback.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import itertools
import json
import logging
import math
import os
import re
import socket
import sys
import time
import uuid
import weakref
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import gevent
import httpx
from locust import LoadTestShape
from locust.rpc import Message
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner
from locust.stats import StatsCSVFileWriter
from websockets.sync.client import connect as ws_connect

from etlverify import __version__
from etlverify.baseline import (
    Baseline,
    BaselineError,
    Comparison,
    Fingerprint,
    MetricVerdict,
    Mismatch,
    Severity,
    ToleranceSpec,
    TriggerConfig,
    TriggerResult,
    TriggerState,
    Verdict,
    compare,
    evaluate_triggers,
    load,
    parse_specs,
    record,
    resolve_spec,
)
from etlverify.baseline.compare import DEFAULT_ALPHA
from etlverify.baseline.machine import MACHINE_RUNS, machine_baseline_path
from etlverify.embedded import (
    SUITE_CONFIG_OVERRIDES,
    EmbeddedTarget,
    EmbeddedTargetError,
    overrides_digest,
)
from etlverify.errors import EtlVerifyError, SettingsError
from etlverify.measure import (
    LatencyRecorder,
    LoadParameters,
    MetricResult,
    RunResult,
    ServerSample,
    ServerTrace,
    identity_address,
)
from etlverify.measure.sampler import METRICS_PATH, parse_metrics
from etlverify.report.summary import run_identity, target_facts

if TYPE_CHECKING:
    from argparse import Namespace
    from collections.abc import Callable, Mapping, Sequence

    from locust.env import Environment
    from locust.event import Events
    from locust.runners import Runner
    from websockets.sync.client import ClientConnection


def _keep_trio_out() -> None:
    """Under gevent's monkey-patching (``select.epoll`` removed) an installed `trio` fails to
    import with AttributeError, which httpcore (imported by httpx's first client) does not catch:
    every httpx call of a Locust process would fail. trio cannot run under gevent anyway, so it is
    marked absent (httpcore then treats it as not installed)."""
    import select

    if "trio" not in sys.modules and not hasattr(select, "epoll"):
        sys.modules["trio"] = None  # type: ignore[assignment]


# before any httpx client is created (httpx imports httpcore lazily)
_keep_trio_out()

__all__ = [
    "AGGREGATE_METRIC",
    "EXIT_FAIL",
    "EXIT_INCOMPLETE",
    "EXIT_INCONCLUSIVE",
    "EXIT_PASS",
    "EXIT_RATE_LIMITED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "SUMMARY_SCHEMA_VERSION",
    "EtlGate",
    "GateOptions",
    "OutageTracker",
    "PushChannel",
    "PushTimeout",
    "RampShape",
    "RateLimitLog",
    "WindowLayout",
    "WindowedRecorder",
    "add_options",
    "auth_headers",
    "fire_ws",
    "install",
    "next_identity",
]

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INCONCLUSIVE = 4
#: The same code: an INCOMPLETE run (interrupted, a worker's final data missing) is never a pass.
EXIT_INCOMPLETE = 4
EXIT_RATE_LIMITED = 5

SUMMARY_SCHEMA_VERSION = 1
#: Every HTTP sample is also filed under this metric, like Locust's "Aggregated" row: it is the
#: only metric with enough samples per window for whole-scenario throughput and tail statistics.
AGGREGATE_METRIC = "HTTP Aggregated"
#: Key of our payload inside Locust's worker -> master stats message.
PAYLOAD_KEY = "etlverify"
PAYLOAD_VERSION = 1

#: `--etl-baseline machine`: this machine's baseline, recorded on first use into the per-user
#: cache of `etlverify.baseline.machine` (the same cache as the pytest side's `--baseline machine`).
MACHINE = "machine"
DEFAULT_BASELINE = MACHINE
#: The rollback triggers that compare with the baseline; the others are absolute limits, judged in
#: every run whatever the baseline.
RELATIVE_TRIGGERS = ("error_rate_increase", "response_time_degradation")
DEFAULT_SUMMARY = "reports/locust_summary.json"
SHAPES = ("constant", "ramp")
PROBE_TIMEOUT_S = 5.0
SAMPLER_INTERVAL_S = 2.0
DEFAULT_WORKER_REPORT_TIMEOUT_S = 10.0
#: A run that ends this much before its --run-time was interrupted (Ctrl-C, SIGTERM, a UI stop).
INTERRUPT_SLACK_S = 1.0
#: Contract section 6: fixed one-minute windows (used when the headers do not show the window).
CONTRACT_RATE_WINDOW_S = 60
OPTION_GROUP = "etlverify performance gate (docs/locust.md)"


# --- options ---------------------------------------------------------------------------------


def add_options(parser: Any) -> None:
    """Add the ``--etl-*`` options to Locust's (configargparse) parser, in a group of their own.

    Values are kept as strings and validated by `GateOptions.from_namespace`, so that every bad
    value gives the same one-line error (exit 2) instead of argparse's usage dump. They are hidden
    from the web UI: the gate is configured like a CI job, not per run in a browser.

    `locust -f loadtests/etl.py --help` cannot list them: Locust answers ``--help`` before it
    imports the locustfile, so no locustfile's ``init_command_line_parser`` listener has run
    (locust#2917). ``--etl-help`` (and ``python loadtests/etl.py --help``) print Locust's whole
    help with this group in it.
    """
    group = parser.add_argument_group(
        OPTION_GROUP,
        "Also etl-* keys in locust.conf and LOCUST_ETL_* environment variables.",
    )

    def opt(name: str, help_text: str, **kwargs: Any) -> None:
        env = "LOCUST_" + name.lstrip("-").upper().replace("-", "_")
        # argparse %-formats help texts: the tolerance examples' '%' must be doubled.
        text = help_text.replace("%", "%%")
        if kwargs.get("action") is None:
            kwargs.setdefault("metavar", _METAVARS.get(name, "VALUE"))
        action = group.add_argument(name, env_var=env, help=text, **kwargs)
        # What LocustArgumentParser.add_argument(include_in_web_ui=False) sets; a group's
        # add_argument does not know the keyword.
        action.include_in_web_ui = False

    group.add_argument(
        "--etl-help",
        action=_HelpAction,
        help="show this help, with the --etl-* options, and exit",
    )
    opt(
        "--etl-baseline",
        f"baseline file, or '{MACHINE}': this machine's baseline, recorded by the first "
        f"{MACHINE_RUNS} runs into $ETLPLUS_BASELINE_CACHE (else ~/.cache/etlverify/baselines) "
        f"and judging from run {MACHINE_RUNS + 1} on (default {DEFAULT_BASELINE})",
        default=DEFAULT_BASELINE,
    )
    opt(
        "--etl-tolerance",
        "tolerance specs, ';'-separated, e.g. 'p95:10%,+1ms' (default: the library's "
        "'p50:10%,+1ms; p95:10%,+1ms; p99:10%,+2ms; throughput:-10%; error_rate:+1pp')",
        default=None,
    )
    opt(
        "--etl-record",
        "append this run to the baseline: to FILE (a .json path; it becomes the baseline) or, "
        "without FILE, to --etl-baseline; refused if the run had errors",
        nargs="?",
        const=True,
        default=None,
    )
    opt("--etl-windows", "trial windows per run (default 5)", default="5")
    opt("--etl-warmup", "seconds at the start not measured (default 5)", default="5")
    opt(
        "--etl-window-seconds",
        "window length when there is no --run-time (default 10)",
        default="10",
    )
    opt("--etl-alpha", f"significance level (default {DEFAULT_ALPHA:g})", default=None)
    opt(
        "--etl-inconclusive-exit",
        f"exit {EXIT_INCONCLUSIVE} on an INCONCLUSIVE verdict (default: exit 0 with a warning)",
        **_flag(),
    )
    opt("--etl-summary", f"summary JSON (default {DEFAULT_SUMMARY})", default=DEFAULT_SUMMARY)
    opt("--etl-shape", "load shape: constant (default) or ramp (staged)", default="constant")
    opt(
        "--etl-embedded-faults",
        "start the embedded target with --enable-faults (tests only)",
        **_flag(),
    )
    opt(
        "--etl-inject-latency-ms",
        "after start, set the target's latency fault to N ms on every non-health /api/ route",
        default=None,
    )
    opt("--etl-ws-timeout", "seconds to wait for a WebSocket push (default 5)", default="5")
    opt(
        "--etl-worker-report-timeout",
        "distributed runs: seconds the master waits at the end for every worker's final report "
        f"(default {DEFAULT_WORKER_REPORT_TIMEOUT_S:g}); a worker that misses it makes the run "
        "INCOMPLETE",
        default=str(DEFAULT_WORKER_REPORT_TIMEOUT_S),
    )
    opt(
        "--etl-response-time-trigger",
        "the checklist's response-time rollback trigger as 'PCT%[,+FLOOR ms]' on p95 "
        "(default '50%,+1ms'; raise it only for tests on a noisy machine)",
        default=None,
    )


_METAVARS = {
    "--etl-baseline": "FILE",
    "--etl-record": "FILE",
    "--etl-tolerance": "SPECS",
    "--etl-windows": "N",
    "--etl-warmup": "SECONDS",
    "--etl-window-seconds": "SECONDS",
    "--etl-alpha": "ALPHA",
    "--etl-summary": "FILE",
    "--etl-shape": "SHAPE",
    "--etl-inject-latency-ms": "MS",
    "--etl-ws-timeout": "SECONDS",
    "--etl-worker-report-timeout": "SECONDS",
    "--etl-response-time-trigger": "SPEC",
}


def _flag() -> dict[str, Any]:
    return {"action": "store_true", "default": False}


class _HelpAction(argparse.Action):
    """``--etl-help``: Locust's full help, including the locustfile's options, then exit 0."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.print_help()
        parser.exit()


@dataclass(frozen=True)
class GateOptions:
    """The validated ``--etl-*`` options plus the Locust options the gate depends on."""

    #: the baseline file; None for this machine's baseline (`--etl-baseline machine`), whose
    #: cache file depends on the load plan and is resolved when the run is judged
    baseline: Path | None
    specs: tuple[ToleranceSpec, ...] | None
    tolerance_text: str | None
    record: bool
    windows: int
    warmup_s: float
    window_s: float
    alpha: float
    inconclusive_exit: bool
    summary: Path
    shape: str
    embedded_faults: bool
    inject_latency_ms: float | None
    ws_timeout_s: float
    triggers: TriggerConfig
    run_time_s: float | None
    users: int
    spawn_rate: float
    host: str | None
    worker_report_timeout_s: float = DEFAULT_WORKER_REPORT_TIMEOUT_S
    #: The run ends by itself (--headless or --autostart with --run-time): ending earlier is an
    #: interruption. A run started from the web UI is ended by a person: not checked.
    timed: bool = True

    @property
    def machine(self) -> bool:
        """The baseline is this machine's (`--etl-baseline machine`)."""
        return self.baseline is None

    @property
    def baseline_label(self) -> str:
        """The baseline as given: a path, or 'machine'."""
        return MACHINE if self.baseline is None else str(self.baseline)

    @classmethod
    def from_namespace(cls, ns: Namespace) -> GateOptions:
        """Validate; SettingsError with one line naming the option on any bad value."""
        get = ns.__dict__.get
        tolerance = get("etl_tolerance")
        specs: tuple[ToleranceSpec, ...] | None = None
        if tolerance is not None and str(tolerance).strip():
            try:
                specs = parse_specs(str(tolerance))
            except ValueError as exc:
                raise SettingsError(f"--etl-tolerance: {exc}") from None
        else:
            tolerance = None
        shape = str(get("etl_shape") or "constant").strip().lower()
        if shape not in SHAPES:
            raise SettingsError(f"--etl-shape: expected one of {', '.join(SHAPES)}, got {shape!r}")
        inject = get("etl_inject_latency_ms")
        run_time = get("run_time")
        host = get("host") or None
        if host is not None and not str(host).startswith(("http://", "https://")):
            raise SettingsError(f"--host: expected an http:// or https:// URL, got {host!r}")
        alpha = _number("--etl-alpha", get("etl_alpha"), DEFAULT_ALPHA, 0.0, 0.5, open_lo=True)
        record, record_to = _record_option(get("etl_record"))
        baseline_text = record_to or str(get("etl_baseline") or DEFAULT_BASELINE).strip()
        if not baseline_text:
            raise SettingsError(f"--etl-baseline: expected a file or '{MACHINE}', got ''")
        return cls(
            baseline=None if baseline_text.lower() == MACHINE else Path(baseline_text),
            specs=specs,
            tolerance_text=None if tolerance is None else str(tolerance),
            record=record,
            windows=int(_number("--etl-windows", get("etl_windows"), 5, 1, 1000, integer=True)),
            warmup_s=_number("--etl-warmup", get("etl_warmup"), 5.0, 0.0, 3600.0),
            window_s=_number(
                "--etl-window-seconds", get("etl_window_seconds"), 10.0, 0.1, 86400.0, open_lo=True
            ),
            alpha=alpha,
            inconclusive_exit=bool(get("etl_inconclusive_exit")),
            summary=Path(str(get("etl_summary") or DEFAULT_SUMMARY)),
            shape=shape,
            embedded_faults=bool(get("etl_embedded_faults")) or inject is not None,
            inject_latency_ms=None
            if inject is None
            else _number("--etl-inject-latency-ms", inject, 0.0, 0.0, 600_000.0),
            ws_timeout_s=_number(
                "--etl-ws-timeout", get("etl_ws_timeout"), 5.0, 0.1, 600.0, open_lo=True
            ),
            triggers=_trigger_config(get("etl_response_time_trigger")),
            run_time_s=float(run_time) if run_time else None,
            users=int(get("num_users") or 1),
            spawn_rate=float(get("spawn_rate") or 1.0),
            host=None if host is None else str(host).rstrip("/"),
            worker_report_timeout_s=_number(
                "--etl-worker-report-timeout",
                get("etl_worker_report_timeout"),
                DEFAULT_WORKER_REPORT_TIMEOUT_S,
                0.0,
                3600.0,
            ),
            timed=bool(run_time) and bool(get("headless") or get("autostart")),
        )

    def for_test(self, ns: Namespace | None) -> GateOptions:
        """The options at a test's start: the web UI's form rewrites users, spawn rate and run
        time in the parsed options before it starts a test."""
        if ns is None:
            return self
        get = ns.__dict__.get
        run_time = get("run_time")
        return replace(
            self,
            run_time_s=float(run_time) if run_time else None,
            users=int(get("num_users") or self.users),
            spawn_rate=float(get("spawn_rate") or self.spawn_rate),
        )

    def layout(self, start_wall: float) -> WindowLayout:
        """The trial-window layout of a run starting now: the run time after the warm-up, split
        into `windows` equal windows (or windows of --etl-window-seconds without a run time)."""
        window_s = self.window_s
        if self.run_time_s is not None:
            if self.run_time_s <= self.warmup_s:
                raise SettingsError(
                    f"--etl-warmup: {self.warmup_s:g} s leaves nothing of --run-time "
                    f"{self.run_time_s:g} s to measure"
                )
            window_s = (self.run_time_s - self.warmup_s) / self.windows
        return WindowLayout(start_wall, self.warmup_s, window_s, self.windows)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def _record_option(raw: object) -> tuple[bool, str | None]:
    """`--etl-record [FILE]` -> (record?, FILE or None).

    Without FILE (or as a boolean from locust.conf / ``LOCUST_ETL_RECORD``) the run is appended to
    --etl-baseline; with FILE, that file is the baseline. FILE must end in .json, so that a user
    class name after a bare ``--etl-record`` is not taken for a file.
    """
    if raw is None or raw is False:
        return False, None
    if raw is True:
        return True, None
    text = str(raw).strip()
    if text.lower() in _TRUE:
        return True, None
    if text.lower() in _FALSE:
        return False, None
    if text.lower() == MACHINE:
        return True, MACHINE
    if not text.lower().endswith(".json"):
        raise SettingsError(
            f"--etl-record: expected a baseline file ending in .json (or no value: record into "
            f"--etl-baseline), got {text!r}"
        )
    return True, text


_TRIGGER_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*(?:,\s*\+?\s*(\d+(?:\.\d+)?)\s*ms)?\s*$")


def _trigger_config(raw: object) -> TriggerConfig:
    """`--etl-response-time-trigger`: '50%,+1ms' -> TriggerConfig (checklist defaults otherwise)."""
    default = TriggerConfig()
    if raw is None or not str(raw).strip():
        return default
    match = _TRIGGER_RE.match(str(raw))
    if not match:
        raise SettingsError(
            f"--etl-response-time-trigger: expected 'PCT%' or 'PCT%,+FLOORms' "
            f"(e.g. '50%,+1ms'), got {raw!r}"
        )
    floor = match.group(2)
    return replace(
        default,
        response_time_pct=float(match.group(1)),
        response_time_floor_ms=default.response_time_floor_ms if floor is None else float(floor),
    )


def _number(
    option: str,
    raw: object,
    default: float,
    lo: float,
    hi: float,
    *,
    integer: bool = False,
    open_lo: bool = False,
) -> float:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    kind = "an integer" if integer else "a number"
    try:
        value = int(str(raw)) if integer else float(str(raw))
    except ValueError:
        raise SettingsError(f"{option}: expected {kind}, got {raw!r}") from None
    low_ok = value > lo if open_lo else value >= lo
    if not (low_ok and value <= hi and math.isfinite(value)):
        bound = f"> {lo:g}" if open_lo else f">= {lo:g}"
        raise SettingsError(f"{option}: expected {kind} {bound} and <= {hi:g}, got {raw!r}")
    return float(value)


# --- windows, outages, recording ---------------------------------------------------------------


@dataclass(frozen=True)
class WindowLayout:
    """When the measured windows are, in wall-clock seconds (shared by master and workers).

    Wall-clock rather than monotonic time because the master computes the layout and every worker
    files its own samples by it; on one host (or NTP-synced hosts) the clocks agree far better
    than the window length.
    """

    start_wall: float
    warmup_s: float
    window_s: float
    windows: int

    def window_of(self, wall_ts: float) -> int | None:
        """Window index of a request sent at `wall_ts`; None during the warm-up (not measured)."""
        offset = wall_ts - self.start_wall - self.warmup_s
        if offset < 0:
            return None
        # Late samples (a run longer than planned) join the last window rather than vanish.
        return min(int(offset / self.window_s + 1e-9), self.windows - 1)

    def durations(self, end_wall: float) -> list[float]:
        """Observed length of each window for a run that ended at `end_wall`."""
        out = []
        for i in range(self.windows):
            begin = self.start_wall + self.warmup_s + i * self.window_s
            end = end_wall if i == self.windows - 1 else begin + self.window_s
            out.append(max(0.0, min(end, end_wall) - begin))
        return out

    def to_json(self) -> dict[str, float | int]:
        """Plain form (sent to workers inside Locust's spawn message)."""
        return {
            "start_wall": self.start_wall,
            "warmup_s": self.warmup_s,
            "window_s": self.window_s,
            "windows": self.windows,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WindowLayout:
        """Inverse of `to_json()`."""
        return cls(
            float(data["start_wall"]),
            float(data["warmup_s"]),
            float(data["window_s"]),
            int(data["windows"]),
        )


class OutageTracker:
    """Attempts and successes per wall-clock second; mergeable by addition.

    The checklist's "unavailable > 5 minutes" trigger needs the longest stretch with attempts and
    no success. Per-second counts (rather than every request) keep the worker reports small.
    """

    def __init__(self) -> None:
        self.seconds: dict[int, list[int]] = {}

    def add(self, wall_ts: float, ok: bool) -> None:
        """Count one attempt at `wall_ts`."""
        slot = self.seconds.setdefault(int(wall_ts), [0, 0])
        slot[0] += 1
        slot[1] += int(ok)

    def merge(self, other: Mapping[str, list[int]] | Mapping[int, list[int]]) -> None:
        """Add another tracker's `to_json()`."""
        for sec, (attempts, ok) in other.items():
            slot = self.seconds.setdefault(int(sec), [0, 0])
            slot[0] += int(attempts)
            slot[1] += int(ok)

    def to_json(self) -> dict[str, list[int]]:
        """Plain form with string keys (msgpack and JSON friendly)."""
        return {str(k): list(v) for k, v in self.seconds.items()}

    def longest_outage_s(self) -> float:
        """Longest run of consecutive seconds with attempts and no success."""
        longest = current = 0
        previous: int | None = None
        for sec in sorted(self.seconds):
            attempts, ok = self.seconds[sec]
            down = attempts > 0 and ok == 0
            if down and previous is not None and sec == previous + 1 and current:
                current += 1
            else:
                current = 1 if down else 0
            longest = max(longest, current)
            previous = sec
        return float(longest)


def _int_header(headers: Any, name: str) -> int | None:
    """An integer header of a Locust response (FastHttpUser or HttpUser), None when absent."""
    try:
        raw = headers.get(name)
    except (AttributeError, TypeError):
        return None
    if raw is None:
        return None
    try:
        return int(float(str(raw).strip()))
    except ValueError:
        return None


class RateLimitLog:
    """The 429 answers of a run, per metric, and the limit the target advertised with them.

    Filled only for 429 answers (the request listener checks the status code and nothing else on
    every other request), mergeable like the histograms: workers ship it to the master.
    """

    #: distinct X-RateLimit-Reset values kept (enough to see the window length)
    MAX_RESETS = 16

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.limits: dict[str, int] = {}
        self.resets: set[int] = set()
        self.retry_after_max: int | None = None

    @property
    def total(self) -> int:
        """429 answers over all metrics."""
        return sum(self.counts.values())

    def add(self, metric: str, response: object) -> None:
        """Count one 429 answer to `metric` and read the target's rate-limit headers."""
        self.counts[metric] = self.counts.get(metric, 0) + 1
        headers = getattr(response, "headers", None)
        if headers is None:
            return
        limit = _int_header(headers, "X-RateLimit-Limit")
        if limit is not None:
            self.limits[metric] = limit
        reset = _int_header(headers, "X-RateLimit-Reset")
        if reset is not None and len(self.resets) < self.MAX_RESETS:
            self.resets.add(reset)
        retry = _int_header(headers, "Retry-After")
        if retry is not None:
            self.retry_after_max = max(retry, self.retry_after_max or 0)

    def merge(self, data: Mapping[str, Any]) -> None:
        """Add another log's `to_json()`."""
        for metric, count in dict(data.get("counts", {})).items():
            self.counts[str(metric)] = self.counts.get(str(metric), 0) + int(count)
        for metric, limit in dict(data.get("limits", {})).items():
            self.limits[str(metric)] = int(limit)
        for reset in list(data.get("resets", [])):
            if len(self.resets) < self.MAX_RESETS:
                self.resets.add(int(reset))
        retry = data.get("retry_after_max")
        if retry is not None:
            self.retry_after_max = max(int(retry), self.retry_after_max or 0)

    def to_json(self) -> dict[str, Any]:
        """Plain form (msgpack and JSON friendly)."""
        return {
            "counts": dict(self.counts),
            "limits": dict(self.limits),
            "resets": sorted(self.resets),
            "retry_after_max": self.retry_after_max,
        }

    def window(self) -> tuple[int, str]:
        """(window length in s, where it comes from): the spacing of the X-RateLimit-Reset values
        seen (window ends), else the contract's one-minute window."""
        ends = sorted(self.resets)
        steps = [b - a for a, b in itertools.pairwise(ends) if b > a]
        if steps:
            return math.gcd(*steps), "X-RateLimit-Reset"
        return CONTRACT_RATE_WINDOW_S, "the contract's one-minute window"


class WindowedRecorder:
    """A `LatencyRecorder` filed by a `WindowLayout`, plus an `OutageTracker`.

    Workers `drain()` it into each report to the master; the master (or the local runner) `merge()`s
    the payloads. Both sides go through the encoded-histogram JSON of `MetricResult`, so the merged
    histograms are exact (bucket counts added), whatever the number of workers.
    """

    def __init__(self, layout: WindowLayout) -> None:
        self.layout = layout
        self.recorder = LatencyRecorder(windows=layout.windows, window_s=layout.window_s)
        self.outages = OutageTracker()
        self.rate_limits = RateLimitLog()
        self.requests = 0
        self.failures = 0
        self.dropped_reports = 0

    def on_request(
        self, metric: str, response_time_ms: float, start_wall: float, error: str | None
    ) -> None:
        """File one sample (or one error of kind `error`)."""
        self.requests += 1
        self.outages.add(start_wall, error is None)
        if error is not None:
            self.failures += 1
        window = self.layout.window_of(start_wall)
        if window is None:
            return
        if error is None:
            self.recorder.record(metric, max(response_time_ms, 0.0) / 1000.0, window=window)
        else:
            self.recorder.record_error(metric, error, window=window)

    def drain(self) -> dict[str, Any]:
        """Everything recorded since the last drain, as a payload; the recorder starts afresh."""
        payload = self.payload()
        self.recorder = LatencyRecorder(windows=self.layout.windows, window_s=self.layout.window_s)
        self.outages = OutageTracker()
        self.rate_limits = RateLimitLog()
        self.requests = self.failures = 0
        return payload

    def payload(self) -> dict[str, Any]:
        """The current contents in report form (no state change)."""
        return {
            "v": PAYLOAD_VERSION,
            "windows": self.layout.windows,
            "metrics": {name: res.to_json() for name, res in self.recorder.results().items()},
            "outages": self.outages.to_json(),
            "rate_limited": self.rate_limits.to_json(),
            "requests": self.requests,
            "failures": self.failures,
        }

    def merge(self, payload: Mapping[str, Any]) -> None:
        """Add a worker's payload; a payload that does not fit is counted in `dropped_reports`.

        Merging decodes each window's histogram and adds it (`LatencyRecorder.add`), which is what
        makes the merged percentiles exact; averaging the workers' percentiles would not be.
        """
        try:
            if payload.get("v") != PAYLOAD_VERSION or payload.get("windows") != self.layout.windows:
                raise ValueError("payload version or window count differs")
            metrics = {
                name: MetricResult.from_json(name, body)
                for name, body in dict(payload.get("metrics", {})).items()
            }
            other = LatencyRecorder.from_results(metrics) if metrics else None
            if other is not None:
                other.durations = list(self.recorder.durations)
                self.recorder.add(other)
            self.outages.merge(dict(payload.get("outages", {})))
            self.rate_limits.merge(dict(payload.get("rate_limited", {})))
            self.requests += int(payload.get("requests", 0))
            self.failures += int(payload.get("failures", 0))
        except (KeyError, TypeError, ValueError):
            self.dropped_reports += 1


# --- per-user identity, auth, WebSocket helpers ----------------------------------------------

_identity_counter = itertools.count()


def next_identity(environment: Environment) -> str:
    """A client address of its own for each virtual user, unique across workers.

    The contract rate-limits per client; the reference trusts `X-Forwarded-For` from loopback.
    Worker index times 2^16 keeps the addresses of different workers apart.
    """
    runner = environment.runner
    worker = max(int(getattr(runner, "worker_index", 0) or 0), 0)
    return identity_address(worker * 65536 + next(_identity_counter))


def auth_headers() -> dict[str, str]:
    """``Authorization`` from ``ETLPLUS_TOKEN`` when the target needs one (never logged)."""
    token = os.environ.get("ETLPLUS_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


class PushTimeout(EtlVerifyError):
    """No matching WebSocket message arrived in time."""


class PushChannel:
    """One WebSocket to ``/ws`` with the subscription protocol of contract section 10.

    Uses the `websockets` sync client: under Locust's gevent monkey-patching its socket reads and
    its background reader thread become cooperative greenlets (checked: a 1 s `recv` timeout lets
    other greenlets run throughout), so no extra dependency is needed.
    """

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None, timeout_s: float):
        self.timeout_s = timeout_s
        self._stack = contextlib.ExitStack()
        # Entering the context manager is the form every supported websockets version accepts.
        self.ws: ClientConnection = self._stack.enter_context(
            ws_connect(
                url,
                open_timeout=timeout_s,
                close_timeout=2.0,
                additional_headers=dict(headers or {}),
            )
        )
        self.wait_for(lambda m: m.get("type") == "connection_ack")

    def subscribe(self, job_ids: list[str], types: list[str] | None = None) -> None:
        """Replace the subscription and wait for its acknowledgement."""
        data: dict[str, Any] = {"jobIds": job_ids}
        if types is not None:
            data["messageTypes"] = types
        self.ws.send(json.dumps({"type": "subscribe", "data": data}))
        self.wait_for(
            lambda m: (
                m.get("type") == "connection_ack"
                and (m.get("data") or {}).get("status") == "subscribed"
            )
        )

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout_s: float | None = None
    ) -> tuple[dict[str, Any], float]:
        """The first message satisfying `match` and its receipt time (perf_counter); others are
        skipped. PushTimeout when none arrives within the timeout."""
        deadline = time.perf_counter() + (timeout_s or self.timeout_s)
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise PushTimeout(f"no matching message within {timeout_s or self.timeout_s:g} s")
            try:
                raw = self.ws.recv(timeout=left)
            except TimeoutError:
                continue
            received = time.perf_counter()
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if isinstance(msg, dict) and match(msg):
                return msg, received

    def close(self) -> None:
        """Close the connection (errors while closing are irrelevant here)."""
        with contextlib.suppress(Exception):
            self._stack.close()


def fire_ws(
    environment: Environment,
    name: str,
    started: float,
    *,
    ended: float | None = None,
    exception: BaseException | None = None,
    length: int = 0,
) -> None:
    """Report a WebSocket measurement to Locust as a request of type ``WS``.

    `started`/`ended` are `time.perf_counter()` values; the latency goes to Locust's statistics
    and charts and, through the ``request`` listener, into the gate's histograms.
    """
    end = time.perf_counter() if ended is None else ended
    elapsed_s = max(end - started, 0.0)
    request: Any = environment.events.request  # locust's EventHook.fire is untyped
    request.fire(
        request_type="WS",
        name=name,
        response_time=elapsed_s * 1000.0,
        response_length=length,
        exception=exception,
        context={},
        start_time=time.time() - (time.perf_counter() - started),
    )


# --- staged ramp -------------------------------------------------------------------------------


class RampShape(LoadTestShape):
    """A staged ramp to ``--users``: a quarter, a half, then all of them, over ``--run-time``.

    Deliberately not importable from the locustfile's namespace: Locust uses any shape class it
    finds there automatically. `EtlGate` installs it only with ``--etl-shape ramp``.
    """

    def __init__(self, users: int, spawn_rate: float, run_time_s: float) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # locust's __init__ is unannotated
        self.users = users
        self.spawn_rate = spawn_rate
        self.run_time_s = run_time_s
        quarter = run_time_s / 4
        self.stages: list[tuple[float, int]] = [
            (quarter, max(1, users // 4)),
            (2 * quarter, max(1, users // 2)),
            (run_time_s, users),
        ]

    def tick(self) -> tuple[int, float] | None:
        """(users, spawn rate) of the current stage; None ends the test."""
        now: float = self.get_run_time()  # type: ignore[no-untyped-call]
        for until, count in self.stages:
            if now < until:
                return count, self.spawn_rate
        return None


# --- the gate ----------------------------------------------------------------------------------


class _Exit(Exception):
    """Internal: stop with `code` after printing `message` (one line)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _error_kind(exception: BaseException | None, response: object) -> str:
    status = getattr(response, "status_code", None)
    if isinstance(status, int) and status >= 400:
        return f"http_{status}"
    name = type(exception).__name__ if exception is not None else "error"
    lowered = name.lower()
    if "timeout" in lowered:
        return "timeout"
    if status == 0 or "connection" in lowered or "refused" in lowered:
        return "connection"
    if name == "CatchResponseError":
        return "check"
    return name


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n", "utf-8")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    """NaN/inf (not JSON) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _iso(wall: float | None) -> str | None:
    """ISO-8601 UTC with a Z, to the second (None stays None)."""
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _not_judged(trigger: TriggerResult, why: str) -> TriggerResult:
    """A rollback trigger that cannot be judged, with why (state UNKNOWN: it does not decide)."""
    return TriggerResult(
        trigger.name, TriggerState.UNKNOWN, f"NOT JUDGED: {why}", None, trigger.threshold
    )


def _describe_incomparable(problems: list[Mismatch]) -> str:
    """What makes a baseline not comparable, for people, in one clause."""
    plan = [
        f"{m.field.removeprefix('load.')}: baseline {m.baseline!r}, this run {m.current!r}"
        for m in problems
        if m.field.startswith("load.")
    ]
    parts = [f"baseline recorded with another load plan ({'; '.join(plan)})"] if plan else []
    parts += [m.describe() for m in problems if not m.field.startswith("load.")]
    return "; ".join(parts)


def _comparable(comparison: Comparison) -> tuple[Comparison, str | None]:
    """`comparison` unchanged and None when its baseline is comparable with the run; else every
    metric verdict INCONCLUSIVE and every relative rollback trigger NOT JUDGED, and why.

    Not comparable: another load plan (`load.*` differs: ERROR) or other hardware or another
    target configuration (FOREIGN). `compare()` already makes the metric verdicts of a FOREIGN
    baseline INCONCLUSIVE; a relative trigger, though, would still fire on a baseline measured
    for another run time or on another CPU, and a FAIL there says nothing about the service.
    The absolute triggers (unavailability, memory, database failures) are kept: they need no
    baseline.
    """
    problems = [
        m for m in comparison.environment if m.severity in (Severity.ERROR, Severity.FOREIGN)
    ]
    if not problems:
        return comparison, None
    why = _describe_incomparable(problems)

    def result(r: MetricVerdict) -> MetricVerdict:
        if r.verdict is Verdict.INCONCLUSIVE:
            return r
        return replace(
            r,
            verdict=Verdict.INCONCLUSIVE,
            reason=f"not comparable: {why}; as measured it would be {r.verdict.value} ({r.reason})",
        )

    relative = f"the baseline is not comparable: {why}"
    return (
        replace(
            comparison,
            results=tuple(result(r) for r in comparison.results),
            triggers=tuple(
                _not_judged(t, relative) if t.name in RELATIVE_TRIGGERS else t
                for t in comparison.triggers
            ),
        ),
        why,
    )


@dataclass
class WorkerSeen:
    """What the master knows of one worker in this test: its reports and whether the final one,
    sent after its users stopped, has arrived."""

    client_id: str
    index: int | None = None
    host: str | None = None
    pid: int | None = None
    reports: int = 0
    last_report_wall: float | None = None
    final: bool = False
    #: no longer connected to the master (no heartbeat) when the master waited for it
    lost: bool = False

    def name(self) -> str:
        """``worker <client id> (index i, pid p)``: Locust's client id starts with the host name."""
        extra = [f"index {self.index}"] if self.index is not None else []
        if self.host and not self.client_id.startswith(self.host):
            extra.append(f"host {self.host}")
        if self.pid is not None:
            extra.append(f"pid {self.pid}")
        return f"worker {self.client_id}" + (f" ({', '.join(extra)})" if extra else "")

    def to_json(self) -> dict[str, Any]:
        """Plain form for the summary."""
        return {
            "client_id": self.client_id,
            "index": self.index,
            "host": self.host,
            "pid": self.pid,
            "reports": self.reports,
            "last_report_at": _iso(self.last_report_wall),
            "final_report": self.final,
            "lost": self.lost,
        }


@dataclass
class _Findings:
    """Why a run gets no baseline verdict: rate limiting (lines to print, summary object) and
    incompleteness (one sentence per reason)."""

    rate_lines: list[str] = field(default_factory=list)
    rate_json: dict[str, Any] | None = None
    incomplete: list[str] = field(default_factory=list)

    @property
    def unjudged(self) -> bool:
        return bool(self.rate_lines or self.incomplete)


class EtlGate:
    """The gate's state and listeners for one Locust process (see the module docstring)."""

    def __init__(self, events: Events, *, out: Callable[[str], None] | None = None) -> None:
        self.events = events
        self.out = out or (lambda line: print(line, flush=True))
        self.options: GateOptions | None = None
        self.environment: Environment | None = None
        self.baseline: Baseline | None = None
        self.target: EmbeddedTarget | None = None
        self.host: str | None = None
        self.faults_set = False
        self.rec: WindowedRecorder | None = None
        self.fingerprint: Fingerprint | None = None
        self.samples: list[ServerSample] = []
        self._sampler: gevent.Greenlet | None = None
        self._t0 = 0.0
        self.judged = False
        # identity and evidence
        self.run_id = uuid.uuid4().hex
        self.started_wall = time.time()
        self.summary_path: Path | None = None
        self.stopped_wall: float | None = None
        # distributed: the master's view of its workers; a worker's "my users have stopped"
        self.workers: dict[str, WorkerSeen] = {}
        self.worker_stopped = False
        self._holding_quit = False
        self.final_wait_s: float | None = None
        #: no --host: the embedded reference is (or was to be) the target
        self.embedded = True
        #: /api/health/status of the target at the test's start (for the identity block)
        self.target_status: dict[str, Any] | None = None
        #: the summary of an earlier run has been replaced by this run's "running" one
        self.superseded = False
        #: where the baseline of the judged run is (a --etl-baseline file, or this machine's cache
        #: file, known once the load plan is)
        self.baseline_path: Path | None = None

    # listeners are registered in `install()`

    def on_parser(self, parser: Any, **_: Any) -> None:
        """``init_command_line_parser``."""
        add_options(parser)

    @property
    def is_worker(self) -> bool:
        """True in a ``--worker`` process (it records and reports, never judges)."""
        return isinstance(getattr(self.environment, "runner", None), WorkerRunner)

    @property
    def is_master(self) -> bool:
        """True in a ``--master`` process (it merges worker reports and judges)."""
        return isinstance(getattr(self.environment, "runner", None), MasterRunner)

    def on_init(self, environment: Environment, runner: Runner | None = None, **_: Any) -> None:
        """``init``: supersede the old summary (headless and --autostart runs; the web UI's
        when its first test starts), validate options; on master/local load the baseline file
        and resolve the target."""
        self.environment = environment
        try:
            parsed = environment.parsed_options
            if parsed is None:
                return  # a library use of Environment without the CLI: nothing to gate
            if not self.is_worker:
                self.started_wall = time.time()
                self.embedded = not getattr(parsed, "host", None)
                raw = getattr(parsed, "etl_summary", None)
                self.summary_path = Path(str(raw or DEFAULT_SUMMARY))
                # The web UI without --autostart may be closed without a test ever starting: the
                # summary of an earlier run is replaced only when a test starts (`on_test_start`).
                if getattr(parsed, "headless", False) or getattr(parsed, "autostart", False):
                    self._supersede()
            self.options = GateOptions.from_namespace(parsed)
            self.summary_path = self.options.summary
            self.options.layout(0.0)  # validates warm-up against run time before anything starts
            if self.is_worker:
                return
            if self.is_master:
                self._hold_quit_for_final_reports(environment.runner)
            self._load_baseline()
            self._resolve_target()
            if self.options.shape == "ramp":
                self._install_shape(environment)
        except _Exit as exc:
            self._abort(exc.code, str(exc))
        except SettingsError as exc:
            self._abort(EXIT_USAGE, f"etlverify: {exc}")

    # --- the summary as evidence ------------------------------------------------------------

    def identity(self, *, finished: bool) -> dict[str, Any]:
        """This run's identity block (``run`` in the summary), built like the pytest run's
        (`etlverify.report.summary.run_identity`): the same target gives the same fingerprint."""
        return run_identity(
            tool="locust",
            run_id=self.run_id,
            started_at=_iso(self.started_wall),
            finished_at=_iso(time.time()) if finished else None,
            target_url=self.host,
            embedded=self.embedded,
            facts=target_facts(self.target_status),
        )

    def _bare_summary(
        self, *, code: int | None, reason: str, finished: bool, error: str | None = None
    ) -> dict[str, Any]:
        """A summary with no measurements: INCOMPLETE, with the reason."""
        return {
            "schema_version": SUMMARY_SCHEMA_VERSION,
            "verdict": "INCOMPLETE",
            "exit_code": code,
            "reason": reason,
            "error": error,
            "incomplete": [reason],
            "rate_limited": None,
            "baseline": None if self.options is None else self.options.baseline_label,
            "metrics": [],
            "triggers": [],
            "fingerprint": {},
            "measured": [],
            "messages": [],
            "run": self.identity(finished=finished),
        }

    def _supersede(self) -> None:
        """Replace the summary this run will write with an INCOMPLETE "running" one, before
        anything else: a run that dies on the way must not leave an earlier verdict behind."""
        path = self.summary_path
        if path is None:
            return
        data = self._bare_summary(
            code=None,
            reason=(
                f"the Locust run {self.run_id} started at {_iso(self.started_wall)} has not "
                "finished: it is still running, or it was killed before it wrote its verdict"
            ),
            finished=False,
        )
        data["status"] = "running"
        self.superseded = True
        try:
            _write_json_atomic(path, data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            self.out(f"etlverify: warning: cannot write {path}: {exc.strerror or exc}")

    def _abort(self, code: int, message: str) -> NoReturn:
        """One line on stderr, a summary naming the error, and exit with `code` (no traceback)."""
        sys.stderr.write(message.rstrip() + "\n")
        sys.stderr.flush()
        self._stop_target()
        summary = self.summary_path or Path(DEFAULT_SUMMARY)
        if not self.is_worker:
            reason = message.strip().removeprefix("etlverify: ")
            data = self._bare_summary(code=code, reason=reason, finished=True, error=message)
            with contextlib.suppress(OSError, ValueError):
                _write_json_atomic(summary, data)
        sys.exit(code)

    def _load_baseline(self) -> None:
        assert self.options is not None
        path = self.options.baseline
        if path is None:
            return  # this machine's: its file depends on the load plan (`_find_machine_baseline`)
        self.baseline_path = path
        if not path.exists():
            if self.options.record:
                return  # the first recorded run creates it
            raise _Exit(
                EXIT_USAGE,
                f"etlverify: --etl-baseline {path}: no such baseline file "
                "(record one with --etl-record)",
            )
        try:
            self.baseline = load(path)
        except BaselineError as exc:
            raise _Exit(EXIT_USAGE, f"etlverify: --etl-baseline {exc}") from None

    def _resolve_target(self) -> None:
        assert self.options is not None
        assert self.environment is not None
        opts = self.options
        if opts.host is None:
            self.target = EmbeddedTarget(
                enable_faults=opts.embedded_faults, config_overrides=SUITE_CONFIG_OVERRIDES
            )
            # Stop it even if Locust dies before `quitting` (a crash in another listener).
            atexit.register(self._stop_target)
            try:
                self.target.start()
            except EmbeddedTargetError as exc:
                raise _Exit(EXIT_UNREACHABLE, f"etlverify: embedded target: {exc}") from None
            self.host = self.target.base_url
            self.environment.host = self.host
            for user_class in self.environment.user_classes:
                user_class.host = self.host
            assert self.target.process is not None
            self.out(
                f"etlverify: embedded reference target at {self.host} "
                f"(pid {self.target.process.pid}, root {self.target.root})"
            )
        else:
            if opts.embedded_faults and opts.inject_latency_ms is None:
                raise _Exit(
                    EXIT_USAGE,
                    "etlverify: --etl-embedded-faults: only applies to the embedded target "
                    "(drop --host)",
                )
            self.host = opts.host
            try:
                resp = httpx.get(f"{self.host}/api/health", timeout=PROBE_TIMEOUT_S)
            except httpx.HTTPError as exc:
                raise _Exit(
                    EXIT_UNREACHABLE,
                    f"etlverify: --host {self.host}: target unreachable ({_transport_reason(exc)})",
                ) from None
            if resp.status_code != 200:
                self.out(f"etlverify: warning: {self.host}/api/health answered {resp.status_code}")
        if opts.inject_latency_ms is not None:
            self._set_latency_fault(opts.inject_latency_ms)

    def _set_latency_fault(self, ms: float) -> None:
        body = {"latency": {"ms": ms, "fraction": 1.0}}
        try:
            resp = httpx.post(
                f"{self.host}/api/_faults", json=body, headers=auth_headers(), timeout=5.0
            )
        except httpx.HTTPError as exc:
            raise _Exit(EXIT_UNREACHABLE, f"etlverify: setting the latency fault: {exc}") from None
        if resp.status_code not in (200, 204):
            raise _Exit(
                EXIT_USAGE,
                f"etlverify: --etl-inject-latency-ms: the target refused /api/_faults "
                f"(HTTP {resp.status_code}); it needs --enable-faults",
            )
        self.faults_set = True
        self.out(f"etlverify: injected latency fault: +{ms:g} ms on every non-health /api/ route")

    def _install_shape(self, environment: Environment) -> None:
        assert self.options is not None
        if self.options.run_time_s is None:
            raise SettingsError("--etl-shape ramp: needs --run-time (the ramp is spread over it)")
        shape = RampShape(self.options.users, self.options.spawn_rate, self.options.run_time_s)
        shape.runner = environment.runner
        environment.shape_class = shape

    def on_test_start(self, environment: Environment, **_: Any) -> None:
        """``test_start``: fix the window layout (master/local) or adopt the master's (worker)."""
        if self.options is None:
            return
        parsed = environment.parsed_options
        self.stopped_wall = None
        if self.is_worker:
            self.worker_stopped = False
            raw = getattr(parsed, "etl_layout", None)
            layout = WindowLayout.from_json(raw) if isinstance(raw, dict) else None
            if layout is None:
                layout = self.options.layout(time.time())
        else:
            self.options = self.options.for_test(parsed)
            try:
                layout = self.options.layout(time.time())
            except SettingsError as exc:  # a run time from the web UI's form
                self.options = replace(self.options, run_time_s=None, timed=False)
                layout = self.options.layout(time.time())
                self.out(
                    f"etlverify: warning: {exc}; measuring in windows of {layout.window_s:g} s"
                )
            self.workers = {}
            if not self.superseded:
                self._supersede()
            # Custom attributes of parsed_options travel to workers in every spawn message,
            # which Locust sends right after this event.
            if parsed is not None:
                parsed.etl_layout = layout.to_json()
            self._start_sampler()
            self.fingerprint = self._collect_fingerprint()
        self.rec = WindowedRecorder(layout)
        self.judged = False

    def on_test_stop(self, environment: Environment, **_: Any) -> None:
        """``test_stop``: the users have stopped. A worker marks its next reports final; the
        master/local runner notes when the load ended (the last window ends there)."""
        if self.rec is None:
            return
        if self.is_worker:
            self.worker_stopped = True
        elif self.stopped_wall is None:
            self.stopped_wall = time.time()

    def on_request(
        self,
        *,
        request_type: str,
        name: str,
        response_time: float,
        response_length: int = 0,
        response: object = None,
        context: object = None,
        exception: BaseException | None = None,
        start_time: float | None = None,
        **_: Any,
    ) -> None:
        """``request``: file the sample under ``"<type> <name>"`` (and the HTTP aggregate).

        Per request this adds one status check to the recording: a 429 answer is also counted,
        with the target's rate-limit headers, in `RateLimitLog`.
        """
        rec = self.rec
        if rec is None:
            return
        metric = f"{request_type} {name}"
        if getattr(response, "status_code", None) == 429:
            rec.rate_limits.add(metric, response)
        started = start_time if start_time is not None else time.time() - response_time / 1000
        error = None if exception is None else _error_kind(exception, response)
        rec.on_request(metric, response_time, started, error)
        if request_type != "WS":
            window = rec.layout.window_of(started)
            if window is not None:
                if error is None:
                    rec.recorder.record(AGGREGATE_METRIC, response_time / 1000.0, window=window)
                else:
                    rec.recorder.record_error(AGGREGATE_METRIC, error, window=window)

    def on_report_to_master(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        """``report_to_master`` (worker): ship what was recorded since the last report; a report
        sent after this worker's users stopped is marked final (nothing can follow it)."""
        if self.rec is not None:
            payload = self.rec.drain()
            payload["final"] = self.worker_stopped
            payload["host"] = socket.gethostname()
            payload["pid"] = os.getpid()
            data[PAYLOAD_KEY] = payload

    def on_worker_report(self, client_id: str, data: Mapping[str, Any], **_: Any) -> None:
        """``worker_report`` (master): merge a worker's histograms into the run's."""
        payload = data.get(PAYLOAD_KEY)
        if self.rec is None or not isinstance(payload, dict):
            return
        self.rec.merge(payload)
        seen = self.workers.get(client_id)
        if seen is None:
            seen = self.workers[client_id] = WorkerSeen(
                client_id, index=self._worker_index(client_id)
            )
        seen.reports += 1
        seen.last_report_wall = time.time()
        seen.final = bool(payload.get("final"))
        host, pid = payload.get("host"), payload.get("pid")
        seen.host = str(host) if isinstance(host, str) else seen.host
        seen.pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else seen.pid

    def _worker_index(self, client_id: str) -> int | None:
        runner = getattr(self.environment, "runner", None)
        index_of = getattr(runner, "get_worker_index", None)
        if index_of is None:
            return None
        try:
            index = index_of(client_id)
        except (KeyError, ValueError, TypeError):
            return None
        return index if isinstance(index, int) else None

    # --- distributed: wait for every worker's final report ----------------------------------

    def _hold_quit_for_final_reports(self, runner: Runner | None) -> None:
        """Make the master's ``quit`` wait for the workers' final reports.

        Locust's `MasterRunner.quit` sends ``quit`` to the workers, sleeps 0.5 s and stops
        listening: a worker slower than that to stop its users loses its last samples. Ours
        sends ``quit`` first and waits (at most ``--etl-worker-report-timeout``) until every
        worker of the test has sent a report marked final, has quit, or is missing (no
        heartbeat); Locust's own quit then runs as before.
        """
        if not isinstance(runner, MasterRunner):
            return
        original = runner.quit

        def quit_after_final_reports() -> None:
            if not self._holding_quit:
                self._holding_quit = True
                try:
                    self._await_final_reports(runner)
                except Exception as exc:  # never a traceback; the verdict names what is missing
                    self.out(
                        f"etlverify: waiting for the workers' final reports failed: "
                        f"{type(exc).__name__}: {exc}"
                    )
            original()

        runner.quit = quit_after_final_reports  # type: ignore[method-assign]

    def _await_final_reports(self, runner: MasterRunner) -> None:
        if self.rec is None or self.options is None:
            return  # no test ran: nothing to wait for
        started = time.monotonic()
        runner.stop(send_stop_to_client=False)
        for client in list(runner.clients.all):
            quit_msg = Message("quit", None, client.id)  # type: ignore[no-untyped-call]
            runner.server.send_to_client(quit_msg)
        deadline = started + self.options.worker_report_timeout_s
        while self._pending_workers(runner) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        self.final_wait_s = round(time.monotonic() - started, 3)

    def _pending_workers(self, runner: MasterRunner) -> list[str]:
        """Workers still connected whose final report has not arrived."""
        connected = {c.id for c in runner.clients.all if c.state != STATE_MISSING}
        for client_id in connected:
            if client_id not in self.workers:
                self.workers[client_id] = WorkerSeen(client_id, index=self._worker_index(client_id))
        pending = []
        for worker in self.workers.values():
            worker.lost = not worker.final and worker.client_id not in connected
            if not worker.final and not worker.lost:
                pending.append(worker.client_id)
        return pending

    # --- server sampling and fingerprint ------------------------------------------------------

    def _start_sampler(self) -> None:
        """Poll /api/health/metrics every 2 s for the memory and database rollback triggers."""
        self.samples = []
        self._t0 = time.monotonic()
        host = self.host or (self.environment.host if self.environment else None)
        if not host or self._sampler is not None:
            return

        def loop() -> None:
            with httpx.Client(base_url=host, timeout=2.0, headers=auth_headers()) as client:
                while True:
                    t = time.monotonic() - self._t0
                    try:
                        resp = client.get(METRICS_PATH)
                        sample = (
                            parse_metrics(t, resp.json())
                            if resp.status_code == 200
                            else ServerSample(t, ok=False, error=f"HTTP {resp.status_code}")
                        )
                    except ValueError:
                        sample = ServerSample(t, ok=False, error="the answer was not JSON")
                    except httpx.HTTPError as exc:
                        sample = ServerSample(t, ok=False, error=_transport_reason(exc))
                    self.samples.append(sample)
                    gevent.sleep(SAMPLER_INTERVAL_S)

        self._sampler = gevent.spawn(loop)

    def _stop_sampler(self) -> None:
        if self._sampler is not None:
            self._sampler.kill(block=False)
            self._sampler = None

    def _load_json(self) -> dict[str, Any]:
        """The load part of the fingerprint: what makes two runs the same workload."""
        assert self.options is not None
        assert self.environment is not None
        opts = self.options
        params = LoadParameters(
            model="closed",
            duration_s=opts.run_time_s or 0.0,
            windows=opts.windows,
            users=opts.users,
            identities=opts.users,
        )
        classes = sorted(
            f"{cls.__name__}:{getattr(cls, 'weight', 1)}:{getattr(cls, 'fixed_count', 0)}"
            for cls in self.environment.user_classes
        )
        return {
            **params.to_json(),
            "tool": "locust",
            "spawn_rate": opts.spawn_rate,
            "warmup_s": opts.warmup_s,
            "shape": opts.shape,
            "user_classes": classes,
        }

    def _target_facts(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The target's /api/health/status and /api/flags bodies (None when not readable)."""
        status: dict[str, Any] | None = None
        flags: dict[str, Any] | None = None
        if self.host:
            with httpx.Client(base_url=self.host, timeout=5.0, headers=auth_headers()) as c:
                for path in ("/api/health/status", "/api/flags"):
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        resp = c.get(path)
                        if resp.status_code == 200 and isinstance(resp.json(), dict):
                            if path.endswith("status"):
                                status = resp.json()
                            else:
                                flags = resp.json()
        return status, flags

    def _collect_fingerprint(self) -> Fingerprint:
        status, flags = self._target_facts()
        self.target_status = status
        fp = Fingerprint.collect(status=status, flags=flags, target_config=self._target_config_id())
        return replace(fp, load=self._load_json())

    def _target_config(self) -> dict[str, Any]:
        """What the target is configured with, as far as the gate knows (machine baseline key):
        the embedded reference's version and the suite's config overrides, else the URL."""
        if self.embedded:
            return {
                "target": "embedded reference",
                "version": __version__,
                "overrides": overrides_digest(),
            }
        return {"target": self.host}

    def _target_config_id(self) -> str | None:
        """The fingerprint's `target_config`: known for the embedded target only (as pytest's)."""
        if not self.embedded:
            return None
        return f"embedded reference {__version__}, suite overrides {overrides_digest()}"

    # --- the verdict -------------------------------------------------------------------------

    def run_result(self, end_wall: float | None = None) -> RunResult:
        """The run so far as a `RunResult` (what `compare` and `record` take)."""
        assert self.rec is not None
        assert self.options is not None
        end = time.time() if end_wall is None else end_wall
        layout = self.rec.layout
        # Observed window lengths: a run cut short must not be credited with unused time.
        self.rec.recorder.durations = [max(d, 1e-6) for d in layout.durations(end)]
        trace = (
            ServerTrace(samples=tuple(self.samples), interval_s=SAMPLER_INTERVAL_S)
            if self.samples
            else None
        )
        load = self._load_json() if self.environment is not None else {}
        return RunResult(
            metrics=self.rec.recorder.results(),
            load=LoadParameters.from_json(load),
            started_at=datetime.fromtimestamp(layout.start_wall, UTC)
            .isoformat(timespec="seconds")
            .replace("+00:00", "Z"),
            duration_s=round(end - layout.start_wall, 3),
            longest_outage_s=self.rec.outages.longest_outage_s(),
            server=trace,
        )

    def judge(self) -> int:
        """Compare, print, record if asked, write the summary; return the exit code.

        A run that is rate limited (429 answers) or incomplete (interrupted, a worker's final
        report missing, worker reports dropped) is not compared with the baseline: it prints why
        and exits 5 or 4, and its summary's verdict is INCOMPLETE with the reason. With this
        machine's baseline holding fewer than `MACHINE_RUNS` runs, the run is recorded into it
        instead (`_judge_first_use`). A baseline that is not comparable (another load plan, other
        hardware, another target configuration) judges nothing relative (`_comparable`).
        """
        assert self.options is not None
        opts = self.options
        if self.rec is None:
            return self._judge_unstarted()
        end = self.stopped_wall or time.time()
        run = self.run_result(end)
        fingerprint = self.fingerprint or replace(
            Fingerprint.collect(target_config=self._target_config_id()), load=self._load_json()
        )
        failures, exceptions = self._failure_counts()
        findings = _Findings(incomplete=self._incomplete_reasons(end))
        findings.rate_lines, findings.rate_json = self._rate_limit_report()
        messages: list[str] = []
        if opts.machine:
            messages += self._find_machine_baseline()
            if not opts.record and self._recorded_runs() < MACHINE_RUNS:
                return self._judge_first_use(
                    run, fingerprint, findings, (failures, exceptions), messages
                )
        comparison: Comparison | None = None
        not_comparable: str | None = None
        if self.baseline is not None and not findings.unjudged:
            comparison, not_comparable = _comparable(
                compare(
                    self.baseline,
                    run,
                    opts.specs,
                    alpha=opts.alpha,
                    environment=fingerprint,
                    triggers=opts.triggers,
                )
            )
        self.out("")
        self.out(f"etlverify: performance gate, baseline {self._baseline_text()}")
        for line in findings.rate_lines:
            self.out(line)
        for reason in findings.incomplete:
            self.out(f"INCOMPLETE: {reason}")
        if findings.unjudged:
            self.out(
                "etlverify: no baseline verdict: this run is not a performance verdict on the "
                "service"
            )
        elif comparison is not None:
            for line in comparison.format().splitlines():
                self.out(line)
            if not_comparable is not None:
                self.out(
                    f"etlverify: NOT COMPARABLE: {not_comparable}: every relative check is "
                    "INCONCLUSIVE and the relative rollback triggers are NOT JUDGED (the absolute "
                    "ones still apply); judge with a baseline of this load plan on this machine "
                    f"(--etl-baseline {MACHINE}, or one recorded with --etl-record FILE)"
                )
        verdict = comparison.verdict if comparison is not None else None
        code = EXIT_PASS
        if findings.rate_lines:
            code = EXIT_RATE_LIMITED
        elif findings.incomplete:
            code = EXIT_INCOMPLETE
        elif verdict is Verdict.FAIL:
            code = EXIT_FAIL
        elif verdict is Verdict.INCONCLUSIVE:
            if opts.inconclusive_exit:
                code = EXIT_INCONCLUSIVE
            else:
                messages.append(
                    "warning: verdict INCONCLUSIVE does not block (exit 0); "
                    "--etl-inconclusive-exit makes it exit 4"
                )
        if failures or exceptions:
            messages.append(self._failure_text(failures, exceptions))
        recorded: dict[str, Any] | None = None
        if opts.record:
            target = self.baseline_path
            assert target is not None
            refusal = None
            if findings.rate_lines:
                refusal = "the target rate-limited the load generator (429)"
            elif findings.incomplete:
                refusal = "the run is incomplete"
            elif failures or exceptions:
                refusal = f"{failures} failed requests and {exceptions} user exceptions"
            elif verdict is Verdict.FAIL:
                refusal = "the verdict is FAIL"
            if refusal is not None:
                messages.append(f"refusing to record into {target}: {refusal}")
                if not findings.unjudged:  # 4 and 5 say more than "refused"
                    code = EXIT_FAIL
            else:
                try:
                    stored = record(
                        target, run, environment=fingerprint, append=self.baseline is not None
                    )
                except BaselineError as exc:
                    messages.append(f"--etl-record: {exc}")
                    code = EXIT_USAGE
                else:
                    recorded = {"path": str(target), "runs": len(stored.runs)}
                    messages.append(
                        f"recorded this run into {target} (run {len(stored.runs)} of "
                        f"{len(stored.runs)})"
                    )
                    code = EXIT_PASS
        for message in messages:
            self.out(f"etlverify: {message}")
        self.out(f"etlverify: exit code {code}")
        self._write_summary(
            run=run,
            comparison=comparison,
            fingerprint=fingerprint,
            code=code,
            messages=messages,
            recorded=recorded,
            findings=findings,
            reasons=[] if not_comparable is None else [f"not comparable: {not_comparable}"],
            comparable=None if comparison is None else not_comparable is None,
        )
        return code

    def _judge_first_use(
        self,
        run: RunResult,
        fingerprint: Fingerprint,
        findings: _Findings,
        errors: tuple[int, int],
        messages: list[str],
    ) -> int:
        """This machine's baseline holds fewer than `MACHINE_RUNS` runs: record this one into it.

        A recording run is INCOMPLETE, never PASS, and exits 0: it is not a failure. Its relative
        checks and triggers are not judged (there is nothing comparable yet); the absolute
        rollback triggers are, and one that fires makes it FAIL (exit 1), not recorded. Like the
        pytest side's first use, a run that was rate limited, incomplete, or had failed requests
        or user exceptions is not recorded (a baseline measured then would flatter every later
        run); the next run tries again.
        """
        assert self.options is not None
        path = self.baseline_path
        assert path is not None
        failures, exceptions = errors
        this_run = self._recorded_runs() + 1
        judged_from = MACHINE_RUNS + 1
        not_judged = (
            f"this run is recorded into this machine's baseline (run {this_run} of "
            f"{MACHINE_RUNS}); relative checks are judged from run {judged_from} on"
        )
        triggers = tuple(
            _not_judged(t, not_judged) if t.name in RELATIVE_TRIGGERS else t
            for t in evaluate_triggers({}, run, self.options.triggers)
        )
        self.out("")
        self.out(f"etlverify: performance gate, baseline {self._baseline_text()}")
        for line in findings.rate_lines:
            self.out(line)
        for reason in findings.incomplete:
            self.out(f"INCOMPLETE: {reason}")
        reasons: list[str] = []
        recorded: dict[str, Any] | None = None
        verdict = "INCOMPLETE"
        if findings.unjudged:
            self.out(
                "etlverify: no baseline verdict: this run is not a performance verdict on the "
                "service"
            )
            code = EXIT_RATE_LIMITED if findings.rate_lines else EXIT_INCOMPLETE
            messages.append(f"not recorded into this machine's baseline ({path})")
        else:
            for trigger in triggers:
                if trigger.name not in RELATIVE_TRIGGERS:
                    self.out(trigger.line())
            if any(t.fired for t in triggers):
                code, verdict = EXIT_FAIL, "FAIL"
                messages.append(
                    f"not recorded into this machine's baseline ({path}): a rollback trigger fired"
                )
            elif failures or exceptions:
                code = EXIT_INCOMPLETE
                reasons.append(
                    f"this machine's baseline was not recorded: {failures} failed requests and "
                    f"{exceptions} user exceptions in this run (a baseline is measured without "
                    "errors); the next run without them records it"
                )
                self.out(f"INCOMPLETE: {reasons[-1]}")
            else:
                code, line, recorded = self._record_machine_run(run, fingerprint, path)
                reasons.append(line)
                self.out(f"{'etlverify' if code == EXIT_PASS else 'INCOMPLETE'}: {line}")
        if failures or exceptions:
            messages.append(self._failure_text(failures, exceptions))
        for message in messages:
            self.out(f"etlverify: {message}")
        self.out(f"etlverify: exit code {code}")
        self._write_summary(
            run=run,
            comparison=None,
            fingerprint=fingerprint,
            code=code,
            messages=messages,
            recorded=recorded,
            findings=findings,
            verdict=verdict,
            reasons=reasons,
            triggers=triggers,
        )
        return code

    def _record_machine_run(
        self, run: RunResult, fingerprint: Fingerprint, path: Path
    ) -> tuple[int, str, dict[str, Any] | None]:
        """Append `run` to this machine's baseline: (exit code, the one line, `recorded`)."""
        try:
            # A cache file that could not be read is replaced (it is a cache, not reviewed data).
            stored = record(path, run, environment=fingerprint, append=self.baseline is not None)
        except BaselineError as exc:
            return EXIT_INCOMPLETE, f"this machine's baseline was not recorded: {exc}", None
        except OSError as exc:
            why = exc.strerror or "cannot write"
            return EXIT_INCOMPLETE, f"this machine's baseline was not recorded: {path}: {why}", None
        runs = len(stored.runs)
        line = (
            f"recording this machine's baseline, run {runs} of {MACHINE_RUNS} "
            f"({len(run.metrics)} metrics, {self._check_count(run)} checks measured; judged "
            f"from run {MACHINE_RUNS + 1} on): {path}"
        )
        recorded = {
            "path": str(path),
            "runs": runs,
            "machine": True,
            "judged_from_run": MACHINE_RUNS + 1,
        }
        return EXIT_PASS, line, recorded

    def _find_machine_baseline(self) -> list[str]:
        """Look up this machine's baseline for this target and load plan in the cache (sets
        `baseline_path` and `baseline`); warning messages, if any."""
        path = machine_baseline_path(self._target_config(), self._load_json())
        self.baseline_path, self.baseline = path, None
        if not path.exists():
            return []
        try:
            self.baseline = load(path)
        except BaselineError as exc:
            return [f"warning: {exc}; this machine's baseline is recorded afresh"]
        return []

    def _recorded_runs(self) -> int:
        """Runs in the baseline: Locust records a run whole, so each is one entry of `runs`
        (unlike the pytest side's per-group first uses, `etlverify.baseline.machine`)."""
        return len(self.baseline.runs) if self.baseline is not None else 0

    def _check_count(self, run: RunResult) -> int:
        """How many metric checks the tolerance specs make of `run` (what will be judged)."""
        assert self.options is not None
        specs = parse_specs(self.options.specs)
        stats = list(dict.fromkeys(s.stat for s in specs))
        return sum(
            1 for metric in run.metrics for stat in stats if resolve_spec(specs, metric, stat)
        )

    def _baseline_text(self) -> str:
        """The baseline for the verdict's header line."""
        assert self.options is not None
        if self.options.machine:
            return f"this machine's ({self.baseline_path})"
        return str(self.baseline_path or self.options.baseline)

    def _failure_counts(self) -> tuple[int, int]:
        """(failed requests, user exceptions) of the run, from the gate and Locust's stats."""
        assert self.rec is not None
        runner = self.environment.runner if self.environment is not None else None
        failures = self.rec.failures
        if runner is not None:
            failures = max(failures, int(runner.stats.total.num_failures))
        return failures, len(getattr(runner, "exceptions", {}) or {})

    def _failure_text(self, failures: int, exceptions: int) -> str:
        assert self.rec is not None
        rate_limited = self.rec.rate_limits.total
        of_which = f" ({rate_limited} of them answered 429)" if rate_limited else ""
        return f"{failures} failed requests{of_which}, {exceptions} user exceptions in this run"

    def _judge_unstarted(self) -> int:
        """No test was started. From the web UI (no --headless, no --autostart) nothing was
        written yet, and nothing is: an earlier run's summary stays its evidence. A headless run
        has replaced it already, so its summary says so, with the target's identity."""
        reason = "no test was started: nothing to judge"
        path = self.summary_path or Path(DEFAULT_SUMMARY)
        if not self.superseded:
            self.out(
                f"etlverify: INCOMPLETE: {reason} ({path} is left as it was: this process "
                "wrote no evidence)"
            )
            self.out(f"etlverify: exit code {EXIT_INCOMPLETE}")
            return EXIT_INCOMPLETE
        self.out(f"etlverify: INCOMPLETE: {reason}")
        self.out(f"etlverify: exit code {EXIT_INCOMPLETE}")
        if self.target_status is None:
            # the identity names the target it did not test, as every other summary does
            self.target_status = self._target_facts()[0]
        try:
            _write_json_atomic(
                path, self._bare_summary(code=EXIT_INCOMPLETE, reason=reason, finished=True)
            )
        except OSError as exc:
            self.out(f"etlverify: cannot write {path}: {exc.strerror or exc}")
        return EXIT_INCOMPLETE

    def _incomplete_reasons(self, end_wall: float) -> list[str]:
        """Why the evidence of this run is partial, one sentence each ([] when complete)."""
        assert self.options is not None
        assert self.rec is not None
        opts = self.options
        reasons = []
        if opts.timed and opts.run_time_s is not None:
            ran = end_wall - self.rec.layout.start_wall
            if ran < opts.run_time_s - INTERRUPT_SLACK_S:
                reasons.append(
                    f"the run stopped after {ran:.1f} s of the planned {opts.run_time_s:g} s "
                    "(interrupted: Ctrl-C, SIGTERM, a stop from the web UI, or every worker quit)"
                )
        waited = self.options.worker_report_timeout_s
        for worker in sorted(self.workers.values(), key=lambda w: (w.index is None, w.index or 0)):
            if worker.final:
                continue
            since = (
                "every sample it took is missing"
                if worker.reports == 0
                else f"the samples it took after its last report at "
                f"{_iso(worker.last_report_wall)} ({worker.reports} reports received) are missing"
            )
            if worker.lost:
                what = f"went missing (no heartbeat) before its final report: {since}"
            else:
                what = (
                    f"sent no final report within {waited:g} s (--etl-worker-report-timeout): "
                    f"{since}"
                )
            reasons.append(f"{worker.name()} {what}")
        if self.rec.dropped_reports:
            reasons.append(
                f"{self.rec.dropped_reports} worker reports did not fit this run and were "
                "dropped: their samples are missing"
            )
        return reasons

    def _requests_by_metric(self) -> dict[str, int]:
        """Requests per metric name from Locust's own statistics (the master's are merged)."""
        runner = getattr(self.environment, "runner", None)
        entries = getattr(getattr(runner, "stats", None), "entries", None) or {}
        out: dict[str, int] = {}
        for key, entry in entries.items():
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                name, method = key
                out[f"{method} {name}"] = int(entry.num_requests)
        return out

    def _rate_limit_report(self) -> tuple[list[str], dict[str, Any] | None]:
        """The RATE LIMITED verdict line and one line per route answered 429 ([] when none)."""
        assert self.rec is not None
        log = self.rec.rate_limits
        if log.total == 0:
            return [], None
        by_metric = self._requests_by_metric()
        runner = getattr(self.environment, "runner", None)
        stats_total = getattr(
            getattr(getattr(runner, "stats", None), "total", None), "num_requests", 0
        )
        total = max(self.rec.requests, int(stats_total or 0), log.total)
        window, source = log.window()
        top = max(sorted(log.counts), key=lambda m: log.counts[m])

        def limit_text(metric: str) -> str:
            limit = log.limits.get(metric)
            return (
                "no X-RateLimit-Limit header" if limit is None else f"limit {limit} per {window} s"
            )

        where = (
            "X-RateLimit-Limit / X-RateLimit-Reset headers"
            if source == "X-RateLimit-Reset"
            else f"X-RateLimit-Limit header and {source}"
        )
        share = 100.0 * log.total / total
        if top in log.limits:
            limit_part = f"{limit_text(top)} on {top}, from the target's {where}"
        else:
            limit_part = f"on {top}; the target sent no X-RateLimit-Limit header"
        retry = (
            f"; Retry-After up to {log.retry_after_max} s"
            if log.retry_after_max is not None
            else ""
        )
        lines = [
            f"RATE LIMITED: {share:.1f}% of requests were answered 429 ({log.total} of {total}; "
            f"{limit_part}{retry}): exempt the load generator or lower the load"
        ]
        routes = []
        for metric in sorted(log.counts, key=lambda m: (-log.counts[m], m)):
            count = log.counts[metric]
            requests = max(by_metric.get(metric, 0), count)
            lines.append(
                f"  429 {metric}: {count} of {requests} requests "
                f"({100.0 * count / requests:.1f}%), {limit_text(metric)}"
            )
            routes.append(
                {
                    "metric": metric,
                    "count": count,
                    "requests": requests,
                    "limit": log.limits.get(metric),
                }
            )
        data = {
            "count": log.total,
            "requests": total,
            "share_pct": round(share, 2),
            "window_s": window,
            "window_source": source,
            "retry_after_max_s": log.retry_after_max,
            "routes": routes,
            "line": lines[0],
        }
        return lines, data

    def _write_summary(
        self,
        *,
        run: RunResult,
        comparison: Comparison | None,
        fingerprint: Fingerprint,
        code: int,
        messages: list[str],
        recorded: dict[str, Any] | None,
        findings: _Findings,
        verdict: str | None = None,
        reasons: Sequence[str] = (),
        triggers: Sequence[TriggerResult] | None = None,
        comparable: bool | None = None,
    ) -> None:
        """Write the summary; `verdict`, `reasons` and `triggers` override what `comparison` and
        `findings` say (a recording run has no comparison, its verdict is INCOMPLETE)."""
        assert self.options is not None
        assert self.rec is not None
        measured = []
        for name, res in sorted(run.metrics.items()):
            merged = res.merged
            measured.append(
                {
                    "name": name,
                    "count": merged.count,
                    "errors": merged.errors,
                    "p50_ms": merged.p50_ms,
                    "p95_ms": merged.p95_ms,
                    "p99_ms": merged.p99_ms,
                    "max_ms": merged.max_ms,
                    "throughput_rps": round(merged.throughput_rps, 3),
                    "windows": len(res.windows),
                }
            )
        cmp_json = comparison.to_json() if comparison is not None else {}
        why = (
            ([findings.rate_json["line"]] if findings.rate_json else [])
            + findings.incomplete
            + list(reasons)
        )
        if verdict is None:
            verdict = "INCOMPLETE" if findings.unjudged else cmp_json.get("verdict")
        summary = {
            "schema_version": SUMMARY_SCHEMA_VERSION,
            "verdict": verdict,
            "exit_code": code,
            "reason": why[0] if why else None,
            "incomplete": why,
            "rate_limited": findings.rate_json,
            "baseline": str(self.baseline_path or self.options.baseline_label),
            "baseline_source": MACHINE if self.options.machine else "file",
            "comparable": comparable,
            "tolerance": self.options.tolerance_text,
            "alpha": self.options.alpha,
            "response_time_trigger": {
                "pct": self.options.triggers.response_time_pct,
                "floor_ms": self.options.triggers.response_time_floor_ms,
                "stat": self.options.triggers.response_time_stat,
            },
            "metrics": cmp_json.get("results", []),
            "triggers": (
                cmp_json.get("triggers", [])
                if triggers is None
                else [t.to_json() for t in triggers]
            ),
            "environment": cmp_json.get("environment", []),
            "rollback": (
                cmp_json.get("rollback", False)
                if triggers is None
                else any(t.fired for t in triggers)
            ),
            "fingerprint": fingerprint.to_json(),
            "measured": measured,
            "workers": [w.to_json() for w in self.workers.values()],
            "run": {
                **self.identity(finished=True),
                "host": self.host,
                "test_started_at": run.started_at,
                "duration_s": run.duration_s,
                "layout": self.rec.layout.to_json(),
                "longest_outage_s": run.longest_outage_s,
                "requests": self.rec.requests,
                "failures": self.rec.failures,
                "rate_limited": self.rec.rate_limits.total,
                "dropped_worker_reports": self.rec.dropped_reports,
                "final_report_wait_s": self.final_wait_s,
                "injected_latency_ms": self.options.inject_latency_ms,
            },
            "recorded": recorded,
            "messages": messages,
        }
        path = self.summary_path or self.options.summary
        try:
            _write_json_atomic(path, _jsonable(summary))
        except OSError as exc:
            self.out(f"etlverify: cannot write {path}: {exc}")

    def on_quitting(self, environment: Environment, **_: Any) -> None:
        """``quitting`` (master/local): judge once, set the exit code, stop the target."""
        if self.options is None or self.is_worker:
            return
        self._stop_sampler()
        try:
            if not self.judged:
                self.judged = True
                # Fail closed: if judging itself crashes, the run must not look like a pass.
                environment.process_exit_code = EXIT_FAIL
                try:
                    environment.process_exit_code = self.judge()
                except Exception as exc:  # one line, never a traceback
                    reason = f"judging failed: {type(exc).__name__}: {exc}"
                    self.out(f"etlverify: {reason}")
                    self.out(f"etlverify: exit code {EXIT_FAIL}")
                    with contextlib.suppress(OSError, ValueError):
                        _write_json_atomic(
                            self.summary_path or self.options.summary,
                            self._bare_summary(code=EXIT_FAIL, reason=reason, finished=True),
                        )
        finally:
            self._clear_fault()
            self._stop_target()

    def _clear_fault(self) -> None:
        """Undo the latency fault on a target that outlives us (a --host target)."""
        if self.faults_set and self.target is None and self.host:
            with contextlib.suppress(httpx.HTTPError):
                httpx.delete(f"{self.host}/api/_faults", headers=auth_headers(), timeout=5.0)
        self.faults_set = False

    def _stop_target(self) -> None:
        """Stop the embedded target (by PID, through `EmbeddedTarget.stop`)."""
        target, self.target = self.target, None
        if target is not None:
            target.stop()


def _transport_reason(exc: httpx.HTTPError) -> str:
    """Why an httpx request got no answer, in words (no exception class name)."""
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    text = str(exc).strip()
    if "refused" in text.lower():
        return "connection refused"
    return text.splitlines()[0][:160] if text else "the request failed"


# --- Locust's CSV writer at shutdown (a workaround; remove when Locust fixes it) ---------------
#
# Found with locust 2.47.0 (`locust/main.py`, `locust/stats.py`): `main()` starts the CSV writer
# with `gevent.spawn(stats_csv_writer.stats_writer)` and keeps no reference to the greenlet.
# Since locust PR #3486 its `shutdown()` ends with `stats_csv_writer.close_files()` and then
# `sys.exit(code)`, but the writer greenlet (a loop that rewrites the four CSV files every
# `CSV_STATS_INTERVAL_SEC` = 1 s) is never stopped. Whatever yields to gevent's hub after
# `close_files()` lets it run once more on closed files: with `--processes N` that is the
# `kill_workers` atexit handler, which waits up to 3 s for the forked workers with
# `time.sleep(0.1)` (a gevent sleep under monkey-patching) while they stop their users and send
# the final reports the gate waits for. The writer then dies with `ValueError: I/O operation on
# closed file` and Locust prints "Unhandled exception in greenlet" with a traceback, after the
# verdict (2 of 2 runs of `--processes 2 -t 20s` with locust.conf's `csv`; reproduced here with
# the workaround off: the error came 0.5 s after "Shutting down"). A master with separately
# started `--worker` processes has no such atexit wait.
#
# The workaround owns the order of shutdown: the writer greenlet is recorded when it starts and
# killed in Locust's `quit` event, which `shutdown()` fires right before `close_files()`. The writer
# only yields at its `gevent.sleep`, so it is never killed halfway through a file; its last pass
# ran at most 1 s before (after the workers' final reports, which the held quit waited for).
# When Locust stops the writer itself before closing its files, delete this block and the `quit`
# listener in `install`; `tests/loadtests/test_locust_gate.py::
# test_processes_run_with_csv_ends_without_a_traceback` shows whether it is still needed.

#: the greenlets running Locust's `StatsCSVFileWriter.stats_writer` in this process
_CSV_WRITERS: weakref.WeakSet[gevent.Greenlet] = weakref.WeakSet()


def _track_csv_writers() -> None:
    """Record the greenlet of every `StatsCSVFileWriter.stats_writer` (once per process)."""
    original = StatsCSVFileWriter.stats_writer
    if getattr(original, "_etlverify_tracked", False):
        return

    @functools.wraps(original)
    def stats_writer(self: StatsCSVFileWriter) -> None:
        current = gevent.getcurrent()
        if isinstance(current, gevent.Greenlet):
            _CSV_WRITERS.add(current)
        original(self)

    stats_writer._etlverify_tracked = True  # type: ignore[attr-defined]
    StatsCSVFileWriter.stats_writer = stats_writer  # type: ignore[method-assign]


def stop_csv_writers(**_: Any) -> None:
    """``quit``: stop Locust's CSV writer before Locust closes its files (see above)."""
    writers = [g for g in _CSV_WRITERS if not g.dead and g is not gevent.getcurrent()]
    if writers:
        gevent.killall(writers, block=True, timeout=2.0)


def install(events: Events) -> EtlGate:
    """Register the gate's listeners on Locust's `events`; call once from the locustfile."""
    gate = EtlGate(events)
    _track_csv_writers()
    # httpx logs every request at INFO; the sampler's polls would drown Locust's own log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    hooks: Any = events  # EventHook.add_listener is unannotated in locust
    hooks.init_command_line_parser.add_listener(gate.on_parser)
    hooks.init.add_listener(gate.on_init)
    hooks.test_start.add_listener(gate.on_test_start)
    hooks.test_stop.add_listener(gate.on_test_stop)
    hooks.request.add_listener(gate.on_request)
    hooks.report_to_master.add_listener(gate.on_report_to_master)
    hooks.worker_report.add_listener(gate.on_worker_report)
    hooks.quitting.add_listener(gate.on_quitting)
    hooks.quit.add_listener(stop_csv_writers)
    return gate
