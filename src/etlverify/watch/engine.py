"""The watch: hours of low-cost observation, the rollback triggers judged continuously, the
deployment's rollback run once when one fires, notifications, and evidence that survives a crash.

One loop on the watch's clock (wall time since the watch started, so a restarted watcher knows
how long the watch has run): health probes every `probe_every_s`, a metrics sample every
`metrics_every_s`, a synthetic job every `job_every_s` (in a thread, followed over WebSocket),
and at each window boundary the window is closed, appended to the state (fsync'd), and the five
rollback triggers are judged over the last `trigger_windows` windows against the baseline with
the gate's own rules (`etlverify.baseline.triggers`). The baseline is `--baseline` (an earlier
watch's `watch.json`) or this watch's first `baseline_windows` windows.

Users' signals (`sources`: Prometheus, the target's request counters, its log) are recorded with
every window; the error-rate and response-time triggers are judged on the best one present
(`signals`), and each window ends with one progress line (`progress`).
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from etlverify.baseline.triggers import (
    TriggerConfig,
    TriggerResult,
    TriggerState,
    evaluate_triggers,
)
from etlverify.durations import format_duration, utc
from etlverify.errors import CheckFailed, TargetError
from etlverify.measure.results import LoadParameters, MetricResult, RunResult, WindowStats
from etlverify.measure.sampler import ServerSample, ServerTrace
from etlverify.watch.probe import (
    HEALTH_METRIC,
    LogScanner,
    Prober,
    WindowAccumulator,
)
from etlverify.watch.progress import progress_line, window_figures
from etlverify.watch.signals import judge_users
from etlverify.watch.sources import SourceWindow, measure_sources, source_windows
from etlverify.watch.state import StateError, WatchState

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from etlverify.deployment import OpsRunner
    from etlverify.watch.exporter import WatchExporter
    from etlverify.watch.notify import Notifier
    from etlverify.watch.sources import PrometheusSource

__all__ = [
    "WatchOutcome",
    "WatchPlan",
    "WatchRunner",
    "install_signals",
]

MAX_WATCH_S = 7 * 86400.0


@dataclass(frozen=True)
class WatchPlan:
    """How long and how closely to watch; the trigger limits (checklist values by default)."""

    duration_s: float
    window_s: float = 60.0
    probe_every_s: float = 5.0
    metrics_every_s: float = 15.0
    job_every_s: float = 300.0
    baseline_windows: int = 5
    trigger_windows: int = 5
    status_every_s: float = 1800.0
    recovery_windows: int = 3
    outage_limit_s: float = 300.0
    memory_sustain_s: float = 60.0
    request_timeout_s: float = 5.0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (stored in the state, so a resumed watch keeps its plan)."""
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WatchPlan:
        """Inverse of `to_json()`."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def trigger_config(self) -> TriggerConfig:
        """The checklist's triggers for a watch: response time on p50 (a watch's few probes per
        window make p95 a handful of samples), outage and memory horizons from the plan."""
        return TriggerConfig(
            response_time_stat="p50",
            outage_s=self.outage_limit_s,
            memory_sustain_s=self.memory_sustain_s,
        )


@dataclass
class WatchOutcome:
    """What the watch found: verdict (PASS, FAIL, INCONCLUSIVE), why, and its exit code."""

    verdict: str
    reasons: list[str]
    exit_code: int
    summary: dict[str, Any] = field(default_factory=dict)


#: exit codes: the gate's family (docs/exit-codes.md), none of pytest's or Locust's
EXIT_PASS, EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_UNREACHABLE, EXIT_USAGE = 0, 10, 11, 13, 14


def _metric_results(windows: Sequence[Mapping[str, Any]]) -> dict[str, MetricResult]:
    by: dict[str, list[WindowStats]] = {}
    for w in windows:
        for name, data in (w.get("metrics") or {}).items():
            by.setdefault(name, []).append(WindowStats.from_json(data))
    return {name: MetricResult(name, tuple(ws)) for name, ws in by.items()}


def _trace(windows: Sequence[Mapping[str, Any]], interval_s: float) -> ServerTrace:
    samples = [ServerSample.from_json(s) for w in windows for s in (w.get("server") or [])]
    return ServerTrace(samples=tuple(samples), interval_s=interval_s)


class WatchRunner:
    """One watch, new or resumed from its state folder."""

    def __init__(
        self,
        *,
        plan: WatchPlan,
        base_url: str,
        ws_url: str,
        state: WatchState,
        reports_dir: Path,
        prober: Prober,
        logs: LogScanner,
        notifier: Notifier | None = None,
        ops: OpsRunner | None = None,
        on_trigger: str = "none",
        baseline: Mapping[str, MetricResult] | None = None,
        baseline_label: str = "",
        exporter: WatchExporter | None = None,
        out: Callable[[str], None] = print,
        fingerprint: Mapping[str, Any] | None = None,
        settings_view: Mapping[str, Any] | None = None,
        prometheus: PrometheusSource | None = None,
        baseline_sources: Mapping[str, Sequence[SourceWindow]] | None = None,
        progress_every: int = 1,
    ) -> None:
        self.plan = plan
        self.base_url = base_url
        self.ws_url = ws_url
        self.state = state
        self.reports_dir = reports_dir
        self.prober = prober
        self.logs = logs
        self.notifier = notifier
        self.ops = ops
        self.on_trigger = on_trigger
        self.fixed_baseline = dict(baseline) if baseline is not None else None
        self.baseline_label = baseline_label
        self.exporter = exporter
        self.out = out
        self.fingerprint = dict(fingerprint or {})
        self.settings_view = dict(settings_view or {})
        self.prometheus = prometheus
        self.fixed_baseline_sources = (
            {k: list(v) for k, v in baseline_sources.items()}
            if baseline_sources is not None
            else None
        )
        #: a progress line every this many windows (0: none, `--quiet`)
        self.progress_every = progress_every
        self.stop_reason: str | None = None
        self._job_thread: threading.Thread | None = None
        self.meta: dict[str, Any] = {}
        self.windows: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.down_since: float | None = None  # watch-clock seconds of the first failed probe
        self.last_triggers: tuple[TriggerResult, ...] = ()

    # -- state ---------------------------------------------------------------------------------

    def open(self) -> bool:
        """Create the watch's state, or resume it; True when resumed."""
        if self.state.exists():
            self.meta = self.state.meta()
            if self.meta.get("target_url") != self.base_url:
                raise StateError(
                    f"--state {self.state.folder}: it holds the watch of "
                    f"{self.meta.get('target_url')}, not of {self.base_url}; use another --state"
                )
            stored = WatchPlan.from_json(self.meta.get("plan") or {})
            if stored.duration_s != self.plan.duration_s:
                self.out(
                    f"watch: resuming with its stored plan ({format_duration(stored.duration_s)}); "
                    f"--for {format_duration(self.plan.duration_s)} is ignored"
                )
            self.plan = stored
            self.state.prepare_append()
            self.windows = self.state.windows()
            self.events = self.state.events()
            for w in self.windows:
                self.down_since = w.get("down_since_s")
            return True
        self.meta = {
            "watch_id": secrets.token_hex(6),
            "started_at": utc(time.time()),
            "started_ts": time.time(),
            "target_url": self.base_url,
            "ws_url": self.ws_url,
            "plan": self.plan.to_json(),
            "on_trigger": self.on_trigger,
            "baseline": self.baseline_label or "this watch's first windows",
            "settings": self.settings_view,
            "fingerprint": self.fingerprint,
        }
        self.state.create(self.meta)
        return False

    @property
    def started_ts(self) -> float:
        return float(self.meta["started_ts"])

    def now_s(self) -> float:
        """Seconds since the watch started (wall clock: survives a restart)."""
        return time.time() - self.started_ts

    def event(self, event_type: str, /, **data: Any) -> dict[str, Any]:
        """Record an event (fsync'd) and keep it."""
        record = {"type": event_type, "at": utc(time.time()), "t_s": round(self.now_s(), 3), **data}
        self.state.add_event(record)
        self.events.append(record)
        return record

    def _sent(self, key: str) -> bool:
        return any(e.get("type") == "notification" and e.get("key") == key for e in self.events)

    def notify(self, kind: str, key: str, title: str, body: str, level: str = "info") -> None:
        """Send once per key over the whole watch (a resumed watch does not repeat it)."""
        if self._sent(key):
            return
        self.event("notification", key=key, kind=kind, title=title)
        if self.notifier is None:
            return
        from etlverify.watch.notify import Notification

        self.notifier.send(Notification(kind=kind, key=key, title=title, body=body, level=level))

    # -- judging -------------------------------------------------------------------------------

    def _baseline_windows(self) -> list[dict[str, Any]]:
        if self.fixed_baseline is not None:
            return []
        return [w for w in self.windows if w["index"] < self.plan.baseline_windows]

    def baseline_metrics(self) -> dict[str, MetricResult] | None:
        """The baseline's metrics, None while this watch's own baseline windows are not all in."""
        if self.fixed_baseline is not None:
            return self.fixed_baseline
        base = self._baseline_windows()
        done = any(w["index"] >= self.plan.baseline_windows - 1 for w in self.windows)
        if not done or not base:
            return None
        return _metric_results(base)

    def baseline_sources(self) -> dict[str, list[SourceWindow]] | None:
        """The baseline's users' signals per source, None while the baseline is not known."""
        if self.fixed_baseline_sources is not None:
            return self.fixed_baseline_sources
        if self.baseline_metrics() is None:
            return None
        return source_windows(self._baseline_windows())

    def _judged_windows(self) -> list[dict[str, Any]]:
        first = 0 if self.fixed_baseline is not None else self.plan.baseline_windows
        rollback = self._rollback_finished_index()
        if rollback is not None:
            first = max(first, rollback + 1)
        return [w for w in self.windows if w["index"] >= first]

    def _rollback_finished_index(self) -> int | None:
        for e in self.events:
            if e.get("type") == "rollback-finished":
                return int(e.get("window", 0))
        return None

    def judge(self) -> tuple[TriggerResult, ...]:
        """The five triggers over the last `trigger_windows` judged windows (absolute ones over
        the baseline windows too, before the baseline is complete)."""
        judged = self._judged_windows()
        span = judged[-self.plan.trigger_windows :] if judged else self.windows[-1:]
        base = self.baseline_metrics() or {}
        duration = sum(float(w.get("duration_s") or 0.0) for w in span)
        outage = self.now_s() - self.down_since if self.down_since is not None else 0.0
        run = RunResult(
            metrics=_metric_results(span),
            load=LoadParameters(model="watch", duration_s=duration, windows=len(span)),
            started_at=str(span[0].get("wall_start", "")) if span else "",
            duration_s=duration,
            longest_outage_s=outage,
            server=_trace(span, self.plan.metrics_every_s),
        )
        cfg = self.plan.trigger_config()
        results = evaluate_triggers(base, run, cfg)
        results = judge_users(results, self.baseline_sources(), source_windows(span), cfg)
        if not base:
            results = tuple(
                replace(
                    r,
                    state=TriggerState.UNKNOWN,
                    reason=f"baseline not known yet (the first {self.plan.baseline_windows} "
                    "windows are the baseline)",
                )
                if r.name in ("error_rate_increase", "response_time_degradation")
                else r
                for r in results
            )
        return results

    # -- actions -------------------------------------------------------------------------------

    def _fired_names(self) -> set[str]:
        return {str(e["name"]) for e in self.events if e.get("type") == "trigger"}

    def _figures(self, window: Mapping[str, Any]) -> str:
        return window_figures(window, prometheus=self.prometheus is not None)

    def on_window(self, record: dict[str, Any]) -> None:
        """A window ended: judge, notify, act."""
        triggers = self.judge()
        record["triggers"] = [t.to_json() for t in triggers]
        self.state.add_window(record)
        self.windows.append(record)
        self.last_triggers = triggers
        fired_before = self._fired_names()
        for t in triggers:
            if t.fired and t.name not in fired_before:
                self.event(
                    "trigger",
                    name=t.name,
                    window=record["index"],
                    reason=t.reason,
                    decided_by=t.decided_by,
                )
                self.notify(
                    "trigger",
                    f"trigger-{t.name}",
                    f"ROLLBACK TRIGGER {t.name} FIRED on {self.base_url}",
                    f"{t.line()}\nat {format_duration(self.now_s())} into the watch "
                    f"(window {record['index']}); last window: {self._figures(record)}\n"
                    f"action: {self._action_text()}",
                    level="failure",
                )
                self.out(f"watch: {t.line()}")
        self._source_events(record)
        if self.progress_every and (
            len(self.windows) % self.progress_every == 0 or any(t.fired for t in triggers)
        ):
            self.out(self._progress(record, triggers))
        if any(t.fired for t in triggers):
            self._rollback_once(record["index"], [t for t in triggers if t.fired])
        self._recovery(record["index"], triggers)
        self._status()
        if self.exporter is not None:
            self._export(record, triggers)

    def _progress(self, record: Mapping[str, Any], triggers: Sequence[TriggerResult]) -> str:
        known = self.baseline_metrics() is not None
        done = len(self._baseline_windows())
        return progress_line(
            elapsed_s=min(self.now_s(), self.plan.duration_s),
            planned_s=self.plan.duration_s,
            record=record,
            triggers=triggers,
            baseline=None if known else (done, self.plan.baseline_windows),
            prometheus=self.prometheus is not None,
            fired_earlier=sorted(self._fired_names()),
        )

    def _source_events(self, record: Mapping[str, Any]) -> None:
        """A counter restart, and Prometheus becoming unavailable or available again: events,
        said once each time they happen."""
        sources = record.get("sources") or {}
        counters = sources.get("counters") or {}
        if counters.get("restarts"):
            self.event(
                "counter-restart", window=record["index"], restarts=counters["restarts"],
                note=counters.get("note"),
            )  # fmt: skip
            self.out(f"watch: {counters.get('note')} (window {record['index']})")
        prom = sources.get("prometheus")
        if prom is None:
            return
        changes = [e for e in self.events if e.get("type") in ("source-down", "source-up")]
        down = bool(changes) and changes[-1]["type"] == "source-down"
        if not prom.get("available") and not down:
            self.event("source-down", source="prometheus", window=record["index"],
                       note=prom.get("note"))  # fmt: skip
            self.out(f"watch: Prometheus unavailable: {prom.get('note')}")
        elif prom.get("available") and down:
            self.event("source-up", source="prometheus", window=record["index"])
            self.out("watch: Prometheus answers again")

    def _action_text(self) -> str:
        if self.on_trigger == "none":
            return "none (--on-trigger none): a person decides on the rollback"
        return f"rollback.sh {self.on_trigger.replace(':', ' ')}, once"

    def _rollback_once(self, window: int, fired: Sequence[TriggerResult]) -> None:
        if self.on_trigger == "none":
            return
        if any(e.get("type") == "rollback-started" for e in self.events):
            return  # once per watch, also across restarts: never in a loop
        args = self.on_trigger.split(":", 1)
        self.event("rollback-started", window=window, command=" ".join(args))
        self.out(f"watch: running the rollback: rollback.sh {' '.join(args)}")
        code: int | None
        try:
            if self.ops is None:
                raise TargetError("no rollback command: give --deploy-root or --rollback-cmd")
            proc = self.ops.rollback(*args, timeout=600)
            code, output = proc.returncode, (proc.stdout + proc.stderr).strip()[-500:]
        except (TargetError, CheckFailed) as exc:
            code, output = None, str(exc).splitlines()[0]
        ok = code == 0
        self.event("rollback-finished", window=window, exit_code=code, ok=ok, output=output)
        self.notify(
            "rollback",
            "rollback",
            f"ROLLBACK {'done' if ok else 'FAILED'}: rollback.sh {' '.join(args)} on "
            f"{self.base_url}",
            f"ordered by: {', '.join(t.name for t in fired)}\nexit code {code}\n{output[-300:]}\n"
            f"watching the recovery for {self.plan.recovery_windows} window(s)",
            level="failure" if not ok else "warning",
        )

    def _recovery(self, window: int, triggers: Sequence[TriggerResult]) -> None:
        done = self._rollback_finished_index()
        if done is None or window <= done:
            return
        if any(e.get("type") in ("recovered", "not-recovered") for e in self.events):
            return
        since = window - done
        fired = [t for t in triggers if t.fired]
        if not fired:
            self.event("recovered", window=window, windows_after=since)
            self.notify(
                "recovery",
                "recovery",
                f"RECOVERED after the rollback on {self.base_url}",
                f"every trigger is clear {since} window(s) after the rollback; "
                f"{self._figures(self.windows[-1])}",
            )
        elif since >= self.plan.recovery_windows:
            self.event("not-recovered", window=window, windows_after=since)
            self.notify(
                "recovery",
                "recovery",
                f"NOT RECOVERED after the rollback on {self.base_url}",
                "still firing: " + "; ".join(t.line() for t in fired),
                level="failure",
            )

    def _status(self) -> None:
        every = self.plan.status_every_s
        n = int(self.now_s() // every)
        if n < 1:
            return
        states = ", ".join(f"{t.name} {t.state.value}" for t in self.last_triggers)
        last = self.windows[-1] if self.windows else {}
        self.notify(
            "status",
            f"status-{n}",
            f"watch status: {format_duration(self.now_s())} of "
            f"{format_duration(self.plan.duration_s)} on {self.base_url}",
            f"triggers: {states}\nlast window: {self._figures(last)}\n"
            f"baseline: {self.meta.get('baseline')}",
        )

    def _export(self, record: Mapping[str, Any], triggers: Sequence[TriggerResult]) -> None:
        from etlverify.watch.exporter import WatchSnapshot

        assert self.exporter is not None
        self.exporter.observe(
            WatchSnapshot.of_window(
                record,
                triggers,
                watch_id=str(self.meta["watch_id"]),
                elapsed_s=self.now_s(),
                planned_s=self.plan.duration_s,
                windows=len(self.windows),
                target_up=self.down_since is None,
                baseline_health=(self.baseline_metrics() or {}).get(HEALTH_METRIC),
                notifications_failed=self.notifier.failed if self.notifier else 0,
            )
        )

    # -- the loop ------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """End the watch at the next tick (signal handlers call this)."""
        self.stop_reason = reason

    def _start_job(self, win: WindowAccumulator) -> None:
        if self._job_thread is not None and self._job_thread.is_alive():
            return  # one synthetic job at a time

        def run() -> None:
            line = self.prober.job(win)
            if "completed" not in line:
                with win.lock:
                    win.notes.append(line)

        self._job_thread = threading.Thread(target=run, name="etlverify-watch-job", daemon=True)
        self._job_thread.start()

    def run(self) -> WatchOutcome:
        """Watch until the plan's end or a stop request; write the evidence; the outcome."""
        resumed = self.open()
        plan = self.plan
        if resumed:
            self.event("watcher-resumed", pid=os.getpid(), windows=len(self.windows))
            self.out(
                f"watch: resumed {self.meta['watch_id']} at {format_duration(self.now_s())} of "
                f"{format_duration(plan.duration_s)} ({len(self.windows)} window(s) on disk)"
            )
        else:
            self.event("watcher-started", pid=os.getpid())
        if any(e.get("type") == "finished" for e in self.events):
            self.out("watch: this watch has already finished; its evidence is written again")
            return self.finish(write_event=False)
        self.notify(
            "start",
            "start",
            f"watch started: {self.base_url} for {format_duration(plan.duration_s)}",
            f"windows of {format_duration(plan.window_s)}, health every "
            f"{plan.probe_every_s:g} s, a synthetic job every {format_duration(plan.job_every_s)}"
            f"\nbaseline: {self.meta.get('baseline')}\non a trigger: {self._action_text()}",
        )
        end_s = plan.duration_s
        recorded = {int(w["index"]) for w in self.windows}
        next_probe = next_sample = next_job = next_scan = 0.0
        win: WindowAccumulator | None = None
        while self.stop_reason is None:
            now = self.now_s()
            if now >= end_s:
                break
            index = int(now // plan.window_s)
            if win is None or index != win.index:
                if win is not None:
                    self.on_window(self._close(win, min(now, (win.index + 1) * plan.window_s)))
                    recorded.add(win.index)
                    if self.stop_reason is not None:
                        win = None
                        break
                if index in recorded:  # the slot is already on disk: start with the next one
                    time.sleep(min(0.2, (index + 1) * plan.window_s - now))
                    win = None
                    continue
                win = WindowAccumulator(
                    index=index,
                    start_s=now,
                    wall_start=utc(time.time()),
                    requests_at_start=self.prober.requests,
                )
            if now >= next_probe:
                next_probe = now + plan.probe_every_s
                win.probes += 1
                if self.prober.health(win):
                    if self.down_since is not None:
                        win.notes.append(
                            f"target answering again after {now - self.down_since:.1f} s"
                        )
                    self.down_since = None
                else:
                    win.probe_failures += 1
                    if self.down_since is None:
                        self.down_since = now
            if now >= next_sample:
                next_sample = now + plan.metrics_every_s
                win.server.append(self.prober.sample(now))
            if now >= next_job:
                next_job = now + plan.job_every_s
                self._start_job(win)
            if now >= next_scan:
                next_scan = now + max(plan.probe_every_s, 5.0)
                lines = self.logs.scan()
                win.log_errors += len(lines)
                win.log_samples.extend(lines[: 5 - len(win.log_samples)])
            wake = min(next_probe, next_sample, next_job, (index + 1) * plan.window_s, end_s)
            time.sleep(max(0.0, min(0.5, wake - self.now_s())))
        if win is not None:
            end = min(self.now_s(), end_s)
            if end - win.start_s > 0.05:
                self.on_window(self._close(win, end))
        return self.finish()

    def _close(self, win: WindowAccumulator, end_s: float) -> dict[str, Any]:
        record = win.close(end_s)
        record["down_since_s"] = self.down_since
        record["pid"] = os.getpid()
        record["sources"] = self._measure_sources(win, record)
        return record

    def _measure_sources(
        self, win: WindowAccumulator, record: Mapping[str, Any]
    ) -> dict[str, dict[str, Any]]:
        """The users' signals of the window just closed (and the watch's own probes)."""
        prev = self.windows[-1] if self.windows else None
        contiguous = prev is not None and prev["index"] == win.index - 1
        return measure_sources(
            record,
            previous_server=(prev.get("server") or []) if prev and contiguous else [],
            prometheus=self.prometheus,
            log_folder=self.logs.folder,
            watch_requests=self.prober.requests - win.requests_at_start,
        )

    # -- the end -------------------------------------------------------------------------------

    def coverage(self) -> tuple[float, float]:
        """(watched seconds, seconds of the plan that have passed)."""
        watched = sum(float(w.get("duration_s") or 0.0) for w in self.windows)
        return watched, min(self.plan.duration_s, self.now_s())

    def finish(self, *, write_event: bool = True) -> WatchOutcome:
        """Judge the whole watch, write watch.json / watch_summary.json / watch.html, notify."""
        from etlverify.watch.report import build_outcome, write_reports

        outcome = build_outcome(self)
        if write_event and not any(e.get("type") == "finished" for e in self.events):
            if self.stop_reason is not None:
                self.event("stopped", reason=self.stop_reason)
            self.event("finished", verdict=outcome.verdict)
        self.notify(
            "completion",
            "completion",
            f"watch {outcome.verdict}: {self.base_url}, "
            f"{format_duration(self.coverage()[0])} of {format_duration(self.plan.duration_s)}",
            "\n".join(outcome.reasons[:8]),
            level="info" if outcome.verdict == "PASS" else "failure",
        )
        if self.notifier is not None:
            self.notifier.flush(30.0)
            # judged again: the completion notification's delivery is evidence of its own item
            outcome = build_outcome(self)
        write_reports(self, outcome)
        return outcome


def install_signals(runner: WatchRunner) -> None:
    """SIGINT and SIGTERM end the watch cleanly, with a partial verdict."""

    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        runner.request_stop(f"stopped by {name}")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
