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

Exit codes (`EXIT_*`)::

    0  PASS (or INCONCLUSIVE without --etl-inconclusive-exit: a warning line is printed),
       or a run recorded with --etl-record
    1  FAIL: a metric beyond tolerance and significant, or a rollback trigger fired;
       or --etl-record refused because the run had failed requests / checks
    2  usage or configuration error: a bad --etl-* option, a missing or broken baseline file
    3  target unreachable: --host does not answer /api/health, or the embedded target cannot start
    4  INCONCLUSIVE, only with --etl-inconclusive-exit

Errors of kind 2 and 3 are one line on stderr (which option or file, what is wrong), no traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import gevent
import httpx
from locust import LoadTestShape
from locust.runners import MasterRunner, WorkerRunner
from websockets.sync.client import connect as ws_connect

from etlverify.baseline import (
    Baseline,
    BaselineError,
    Comparison,
    Fingerprint,
    ToleranceSpec,
    TriggerConfig,
    Verdict,
    compare,
    load,
    parse_specs,
    record,
)
from etlverify.baseline.compare import DEFAULT_ALPHA
from etlverify.embedded import SUITE_CONFIG_OVERRIDES, EmbeddedTarget, EmbeddedTargetError
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

if TYPE_CHECKING:
    from argparse import Namespace
    from collections.abc import Callable, Mapping

    from locust.env import Environment
    from locust.event import Events
    from locust.runners import Runner
    from websockets.sync.client import ClientConnection

__all__ = [
    "AGGREGATE_METRIC",
    "EXIT_FAIL",
    "EXIT_INCONCLUSIVE",
    "EXIT_PASS",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "SUMMARY_SCHEMA_VERSION",
    "EtlGate",
    "GateOptions",
    "OutageTracker",
    "PushChannel",
    "PushTimeout",
    "RampShape",
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

SUMMARY_SCHEMA_VERSION = 1
#: Every HTTP sample is also filed under this metric, like Locust's "Aggregated" row: it is the
#: only metric with enough samples per window for whole-scenario throughput and tail statistics.
AGGREGATE_METRIC = "HTTP Aggregated"
#: Key of our payload inside Locust's worker -> master stats message.
PAYLOAD_KEY = "etlverify"
PAYLOAD_VERSION = 1

DEFAULT_BASELINE = "baselines/locust-embedded.json"
DEFAULT_SUMMARY = "reports/locust_summary.json"
SHAPES = ("constant", "ramp")
PROBE_TIMEOUT_S = 5.0
SAMPLER_INTERVAL_S = 2.0


# --- options ---------------------------------------------------------------------------------


def add_options(parser: Any) -> None:
    """Add the ``--etl-*`` options to Locust's (configargparse) parser.

    Values are kept as strings and validated by `GateOptions.from_namespace`, so that every bad
    value gives the same one-line error (exit 2) instead of argparse's usage dump. They are hidden
    from the web UI: the gate is configured like a CI job, not per run in a browser.
    """

    def opt(name: str, help_text: str, **kwargs: Any) -> None:
        env = "LOCUST_" + name.lstrip("-").upper().replace("-", "_")
        # On the parser itself: only LocustArgumentParser.add_argument knows include_in_web_ui.
        parser.add_argument(name, env_var=env, include_in_web_ui=False, help=help_text, **kwargs)

    opt("--etl-baseline", f"baseline file (default {DEFAULT_BASELINE})", default=DEFAULT_BASELINE)
    opt(
        "--etl-tolerance",
        "tolerance specs, ';'-separated, e.g. 'p95:10%,+1ms' (default: the library's "
        "'p50:10%,+1ms; p95:10%,+1ms; p99:10%,+2ms; throughput:-10%; error_rate:+1pp')",
        default=None,
    )
    opt("--etl-record", "append this run to the baseline (refused if it had errors)", **_flag())
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
        "--etl-response-time-trigger",
        "the checklist's response-time rollback trigger as 'PCT%[,+FLOOR ms]' on p95 "
        "(default '50%,+1ms'; raise it only for tests on a noisy machine)",
        default=None,
    )


def _flag() -> dict[str, Any]:
    return {"action": "store_true", "default": False}


@dataclass(frozen=True)
class GateOptions:
    """The validated ``--etl-*`` options plus the Locust options the gate depends on."""

    baseline: Path
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
        return cls(
            baseline=Path(str(get("etl_baseline") or DEFAULT_BASELINE)),
            specs=specs,
            tolerance_text=None if tolerance is None else str(tolerance),
            record=bool(get("etl_record")),
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
        self.requests = self.failures = 0
        return payload

    def payload(self) -> dict[str, Any]:
        """The current contents in report form (no state change)."""
        return {
            "v": PAYLOAD_VERSION,
            "windows": self.layout.windows,
            "metrics": {name: res.to_json() for name, res in self.recorder.results().items()},
            "outages": self.outages.to_json(),
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
        """``init``: validate options; on master/local load the baseline and resolve the target."""
        self.environment = environment
        try:
            if environment.parsed_options is None:
                return  # a library use of Environment without the CLI: nothing to gate
            self.options = GateOptions.from_namespace(environment.parsed_options)
            self.options.layout(0.0)  # validates warm-up against run time before anything starts
            if self.is_worker:
                return
            self._load_baseline()
            self._resolve_target()
            if self.options.shape == "ramp":
                self._install_shape(environment)
        except _Exit as exc:
            self._abort(exc.code, str(exc))
        except SettingsError as exc:
            self._abort(EXIT_USAGE, f"etlverify: {exc}")

    def _abort(self, code: int, message: str) -> NoReturn:
        """One line on stderr, a summary naming the error, and exit with `code` (no traceback)."""
        sys.stderr.write(message.rstrip() + "\n")
        sys.stderr.flush()
        self._stop_target()
        summary = self.options.summary if self.options is not None else Path(DEFAULT_SUMMARY)
        with contextlib.suppress(OSError, ValueError):
            _write_json_atomic(
                summary,
                {
                    "schema_version": SUMMARY_SCHEMA_VERSION,
                    "verdict": None,
                    "exit_code": code,
                    "error": message,
                    "metrics": [],
                    "triggers": [],
                    "fingerprint": {},
                },
            )
        sys.exit(code)

    def _load_baseline(self) -> None:
        assert self.options is not None
        path = self.options.baseline
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
                    f"etlverify: --host {self.host}: target unreachable "
                    f"({type(exc).__name__}: {exc or 'no detail'})",
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
        if self.is_worker:
            raw = getattr(parsed, "etl_layout", None)
            layout = WindowLayout.from_json(raw) if isinstance(raw, dict) else None
            if layout is None:
                layout = self.options.layout(time.time())
        else:
            layout = self.options.layout(time.time())
            # Custom attributes of parsed_options travel to workers in every spawn message,
            # which Locust sends right after this event.
            if parsed is not None:
                parsed.etl_layout = layout.to_json()
            self._start_sampler()
            self.fingerprint = self._collect_fingerprint()
        self.rec = WindowedRecorder(layout)
        self.judged = False

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
        """``request``: file the sample under ``"<type> <name>"`` (and the HTTP aggregate)."""
        rec = self.rec
        if rec is None:
            return
        started = start_time if start_time is not None else time.time() - response_time / 1000
        error = None if exception is None else _error_kind(exception, response)
        rec.on_request(f"{request_type} {name}", response_time, started, error)
        if request_type != "WS":
            window = rec.layout.window_of(started)
            if window is not None:
                if error is None:
                    rec.recorder.record(AGGREGATE_METRIC, response_time / 1000.0, window=window)
                else:
                    rec.recorder.record_error(AGGREGATE_METRIC, error, window=window)

    def on_report_to_master(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        """``report_to_master`` (worker): ship what was recorded since the last report."""
        if self.rec is not None:
            data[PAYLOAD_KEY] = self.rec.drain()

    def on_worker_report(self, client_id: str, data: Mapping[str, Any], **_: Any) -> None:
        """``worker_report`` (master): merge a worker's histograms into the run's."""
        payload = data.get(PAYLOAD_KEY)
        if self.rec is not None and isinstance(payload, dict):
            self.rec.merge(payload)

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
                    except (httpx.HTTPError, ValueError) as exc:
                        sample = ServerSample(t, ok=False, error=type(exc).__name__)
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

    def _collect_fingerprint(self) -> Fingerprint:
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
        fp = Fingerprint.collect(status=status, flags=flags)
        return replace(fp, load=self._load_json())

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
        """Compare, print, record if asked, write the summary; return the exit code."""
        assert self.options is not None
        opts = self.options
        if self.rec is None:
            self.out("etlverify: no test was started, nothing to judge")
            return EXIT_USAGE
        run = self.run_result()
        fingerprint = self.fingerprint or replace(Fingerprint.collect(), load=self._load_json())
        runner = self.environment.runner if self.environment is not None else None
        failures = self.rec.failures
        if runner is not None:
            failures = max(failures, int(runner.stats.total.num_failures))
        exceptions = len(getattr(runner, "exceptions", {}) or {})
        comparison: Comparison | None = None
        if self.baseline is not None:
            comparison = compare(
                self.baseline,
                run,
                opts.specs,
                alpha=opts.alpha,
                environment=fingerprint,
                triggers=opts.triggers,
            )
        messages: list[str] = []
        if self.rec.dropped_reports:
            dropped = self.rec.dropped_reports
            messages.append(f"{dropped} worker reports did not fit and were dropped")
        self.out("")
        self.out(f"etlverify: performance gate, baseline {opts.baseline}")
        if comparison is not None:
            for line in comparison.format().splitlines():
                self.out(line)
        verdict = comparison.verdict if comparison is not None else None
        code = EXIT_PASS
        if verdict is Verdict.FAIL:
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
            messages.append(f"{failures} failed requests, {exceptions} user exceptions in this run")
        recorded: dict[str, Any] | None = None
        if opts.record:
            if failures or exceptions or verdict is Verdict.FAIL:
                why = (
                    f"{failures} failed requests and {exceptions} user exceptions"
                    if failures or exceptions
                    else "the verdict is FAIL"
                )
                messages.append(f"refusing to record into {opts.baseline}: {why}")
                code = EXIT_FAIL
            else:
                try:
                    stored = record(opts.baseline, run, environment=fingerprint)
                except BaselineError as exc:
                    messages.append(f"--etl-record: {exc}")
                    code = EXIT_USAGE
                else:
                    recorded = {"path": str(opts.baseline), "runs": len(stored.runs)}
                    messages.append(
                        f"recorded this run into {opts.baseline} (run {len(stored.runs)} of "
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
        )
        return code

    def _write_summary(
        self,
        *,
        run: RunResult,
        comparison: Comparison | None,
        fingerprint: Fingerprint,
        code: int,
        messages: list[str],
        recorded: dict[str, Any] | None,
    ) -> None:
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
        summary = {
            "schema_version": SUMMARY_SCHEMA_VERSION,
            "verdict": cmp_json.get("verdict"),
            "exit_code": code,
            "baseline": str(self.options.baseline),
            "tolerance": self.options.tolerance_text,
            "alpha": self.options.alpha,
            "response_time_trigger": {
                "pct": self.options.triggers.response_time_pct,
                "floor_ms": self.options.triggers.response_time_floor_ms,
                "stat": self.options.triggers.response_time_stat,
            },
            "metrics": cmp_json.get("results", []),
            "triggers": cmp_json.get("triggers", []),
            "environment": cmp_json.get("environment", []),
            "rollback": cmp_json.get("rollback", False),
            "fingerprint": fingerprint.to_json(),
            "measured": measured,
            "run": {
                "host": self.host,
                "started_at": run.started_at,
                "duration_s": run.duration_s,
                "layout": self.rec.layout.to_json(),
                "longest_outage_s": run.longest_outage_s,
                "requests": self.rec.requests,
                "failures": self.rec.failures,
                "dropped_worker_reports": self.rec.dropped_reports,
                "injected_latency_ms": self.options.inject_latency_ms,
            },
            "recorded": recorded,
            "messages": messages,
        }
        try:
            _write_json_atomic(self.options.summary, _jsonable(summary))
        except OSError as exc:
            self.out(f"etlverify: cannot write {self.options.summary}: {exc}")

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
                environment.process_exit_code = self.judge()
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


def install(events: Events) -> EtlGate:
    """Register the gate's listeners on Locust's `events`; call once from the locustfile."""
    gate = EtlGate(events)
    # httpx logs every request at INFO; the sampler's polls would drown Locust's own log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    hooks: Any = events  # EventHook.add_listener is unannotated in locust
    hooks.init_command_line_parser.add_listener(gate.on_parser)
    hooks.init.add_listener(gate.on_init)
    hooks.test_start.add_listener(gate.on_test_start)
    hooks.request.add_listener(gate.on_request)
    hooks.report_to_master.add_listener(gate.on_report_to_master)
    hooks.worker_report.add_listener(gate.on_worker_report)
    hooks.quitting.add_listener(gate.on_quitting)
    return gate
