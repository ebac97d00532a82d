"""`etlverify watch`: the command line (options, target, header, exit code).

Exit codes, the gate's family (docs/exit-codes.md): 0 PASS, 10 FAIL (a rollback trigger fired or
the one-week indicators are worse than the baseline), 11 INCONCLUSIVE (stopped early, a gap, no
baseline), 13 target unreachable at the start, 14 usage (a bad option, a broken baseline or state
file, a notification URL apprise cannot use, a port in use).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etlverify.contract import FLAG_BY_COMPONENT
from etlverify.durations import format_duration, parse_duration
from etlverify.errors import EtlVerifyError
from etlverify.measure.results import MetricResult, WindowStats
from etlverify.report.summary import target_facts
from etlverify.target import probe, read_status, unreachable_message
from etlverify.watch.engine import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    WatchPlan,
    WatchRunner,
    install_signals,
)
from etlverify.watch.probe import LogScanner, Prober
from etlverify.watch.sources import (
    PrometheusSource,
    SourceWindow,
    load_analysis,
    parse_metrics_option,
    source_windows,
)
from etlverify.watch.state import StateError, WatchState

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["add_parser", "main_watch"]

EPILOG = """\
exit codes: 0 PASS, 10 FAIL (a rollback trigger fired, or error rate/latency worse than the
baseline), 11 INCONCLUSIVE (stopped early, the watcher was down, no baseline), 13 target
unreachable at the start, 14 usage.

Resume: run the same command with the same --state after a crash or kill -9; the watch goes on
where it stopped (no window lost or counted twice). SIGINT/SIGTERM end it with a partial verdict.
environment: ETLPLUS_BASE_URL, ETLPLUS_DEPLOY_ROOT, ETLPLUS_PIPELINE_RUN_ID, ETLPLUS_TOKEN
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The `watch` subcommand's options."""
    p: argparse.ArgumentParser = sub.add_parser(
        "watch",
        help="watch a deployment for hours against the rollback triggers, with notifications",
        description="Watch a deployed ETL Plus for --for (seconds to a week) at low cost: health "
        "probes, metrics samples, a synthetic job now and then, the log error scan. The five "
        "rollback triggers are judged continuously against the baseline; a trigger notifies at "
        "once and, with --on-trigger, runs the deployment's rollback once. Writes "
        "reports/watch.json, watch_summary.json (for etlverify gate) and watch.html.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--for",
        dest="duration",
        required=True,
        metavar="DURATION",
        help="how long to watch: 90s, 30m, 4h, 1h30m, 2d, 1w",
    )
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="the target [env ETLPLUS_BASE_URL]; "
        "without one, the embedded reference is started and watched",
    )
    p.add_argument(
        "--deploy-root",
        metavar="DIR",
        type=Path,
        help="the deployment folder (logs/, deployment/rollback.sh) [env ETLPLUS_DEPLOY_ROOT]",
    )
    p.add_argument(
        "--baseline",
        metavar="FILE",
        type=Path,
        help="an earlier watch's watch.json as the baseline (default: this watch's "
        "first --baseline-windows windows)",
    )
    p.add_argument(
        "--state",
        metavar="DIR",
        type=Path,
        default=Path("reports/watch-state"),
        help="the watch's state folder; the same folder resumes it (default reports/watch-state)",
    )
    p.add_argument(
        "--reports",
        metavar="DIR",
        type=Path,
        default=Path("reports"),
        help="where watch.json, watch_summary.json and watch.html go (reports)",
    )
    p.add_argument(
        "--status-every",
        metavar="DURATION",
        default="30m",
        help="a status notification this often (30m)",
    )
    p.add_argument(
        "--notify",
        metavar="URL",
        action="append",
        default=[],
        help="an apprise URL (json://, mailto://, slack://, ...); repeatable",
    )
    p.add_argument(
        "--on-trigger",
        metavar="ACTION",
        default="none",
        help="none | partial:COMPONENT | full: the rollback to run once when a "
        "trigger fires (none)",
    )
    p.add_argument(
        "--rollback-cmd",
        metavar="CMD",
        help="the rollback command (default <deploy-root>/deployment/rollback.sh)",
    )
    p.add_argument(
        "--metrics",
        metavar="prometheus=URL",
        action="append",
        default=[],
        help="read users' request rate, error rate and latency from this Prometheus server "
        "(its HTTP API); the error-rate and response-time triggers then judge it, not the "
        "watch's own probes",
    )
    p.add_argument(
        "--analysis",
        metavar="FILE",
        type=Path,
        help="a TOML file whose [prometheus] table overrides the PromQL (request_rate, "
        "error_ratio, latency, quantile); see docs/watch.md",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="print the verdict only (no progress lines)",
    )
    p.add_argument(
        "--progress-every",
        metavar="DURATION",
        help="a progress line this often (default: every window)",
    )
    p.add_argument(
        "--prometheus-port",
        metavar="PORT",
        type=int,
        help="expose the watch's figures on 127.0.0.1:PORT/metrics",
    )
    tuning = p.add_argument_group("windows and limits (defaults are the checklist's)")
    tuning.add_argument("--window", default="60s", metavar="DURATION", help="window length (60s)")
    tuning.add_argument(
        "--probe-every", default="5s", metavar="DURATION", help="health probe interval (5s)"
    )
    tuning.add_argument(
        "--metrics-every",
        default="15s",
        metavar="DURATION",
        help="/api/health/metrics interval (15s)",
    )
    tuning.add_argument(
        "--job-every", default="5m", metavar="DURATION", help="synthetic job interval (5m)"
    )
    tuning.add_argument(
        "--baseline-windows",
        default=5,
        type=int,
        metavar="N",
        help="windows that are the baseline without --baseline (5)",
    )
    tuning.add_argument(
        "--trigger-windows",
        default=5,
        type=int,
        metavar="N",
        help="sliding windows the triggers are judged over (5)",
    )
    tuning.add_argument(
        "--recovery-windows",
        default=3,
        type=int,
        metavar="N",
        help="windows after a rollback to recover in (3)",
    )
    tuning.add_argument(
        "--outage-limit", default="5m", metavar="DURATION", help="unavailability trigger (5m)"
    )
    tuning.add_argument(
        "--memory-sustain",
        default="60s",
        metavar="DURATION",
        help="memory > 95%% must last this long (60s)",
    )
    tuning.add_argument(
        "--request-timeout", default="5s", metavar="DURATION", help="timeout of every request (5s)"
    )
    return p


class _Usage(EtlVerifyError):
    """A bad option; one line."""


def _plan(args: argparse.Namespace) -> WatchPlan:
    def d(value: str, flag: str) -> float:
        try:
            return parse_duration(value, flag)
        except ValueError as exc:
            raise _Usage(str(exc)) from None

    for flag, n in (
        ("--baseline-windows", args.baseline_windows),
        ("--trigger-windows", args.trigger_windows),
        ("--recovery-windows", args.recovery_windows),
    ):
        if n < 1:
            raise _Usage(f"{flag}: must be at least 1, got {n}")
    plan = WatchPlan(
        duration_s=d(args.duration, "--for"),
        window_s=d(args.window, "--window"),
        probe_every_s=d(args.probe_every, "--probe-every"),
        metrics_every_s=d(args.metrics_every, "--metrics-every"),
        job_every_s=d(args.job_every, "--job-every"),
        baseline_windows=args.baseline_windows,
        trigger_windows=args.trigger_windows,
        status_every_s=d(args.status_every, "--status-every"),
        recovery_windows=args.recovery_windows,
        outage_limit_s=d(args.outage_limit, "--outage-limit"),
        memory_sustain_s=d(args.memory_sustain, "--memory-sustain"),
        request_timeout_s=d(args.request_timeout, "--request-timeout"),
    )
    if plan.duration_s > 7 * 86400:
        raise _Usage(f"--for: at most a week, got {args.duration!r}")
    if plan.window_s > plan.duration_s:
        raise _Usage(f"--window {args.window} is longer than --for {args.duration}")
    return plan


def undecidable_warning(plan: WatchPlan) -> str | None:
    """Why a watch of `plan` without ``--baseline`` can never judge the relative triggers, with
    the way out; None when it can. Said in the first line, not found out minutes later."""
    needed = (plan.baseline_windows + 1) * plan.window_s
    if plan.duration_s >= needed:
        return None
    period = plan.baseline_windows * plan.window_s
    return (
        f"a watch of {format_duration(plan.duration_s)} cannot judge the relative triggers "
        f"(response time, error rate): its baseline is its first {plan.baseline_windows} "
        f"windows of {format_duration(plan.window_s)} ({format_duration(period)}), and at least "
        "one window "
        f"after them is needed ({format_duration(needed)}), so this watch will end INCONCLUSIVE. "
        "Give --baseline FILE (an earlier watch's watch.json), or fewer or shorter baseline "
        f"windows (--baseline-windows N, --window D), or watch for {format_duration(needed)} or "
        "more"
    )


def _on_trigger(text: str) -> str:
    value = text.strip().lower()
    if value in ("none", "full"):
        return value
    kind, _, component = value.partition(":")
    if kind == "partial" and component in FLAG_BY_COMPONENT:
        return f"partial:{component}"
    known = ", ".join(sorted(FLAG_BY_COMPONENT))
    raise _Usage(f"--on-trigger: expected none, full or partial:COMPONENT ({known}), got {text!r}")


def load_watch_baseline(
    path: Path,
) -> tuple[dict[str, MetricResult], dict[str, list[SourceWindow]]]:
    """An earlier watch's windows (its watch.json) as baseline metrics and users' signals;
    one-line errors."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _Usage(f"--baseline {path}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _Usage(f"--baseline {path}: invalid JSON: {exc}") from None
    windows = data.get("windows") if isinstance(data, dict) else None
    if data.get("tool") != "watch" or not isinstance(windows, list) or not windows:
        raise _Usage(f"--baseline {path}: not a watch.json with windows (from etlverify watch)")
    by: dict[str, list[WindowStats]] = {}
    try:
        for w in windows:
            for name, stats in (w.get("metrics") or {}).items():
                by.setdefault(name, []).append(WindowStats.from_json(stats))
        users = source_windows(windows)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise _Usage(f"--baseline {path}: a window is malformed: {exc}") from None
    return {name: MetricResult(name, tuple(ws)) for name, ws in by.items()}, users


def _signals_line(prober: Prober, prometheus_url: str | None, deploy_root: Path | None) -> str:
    """Which users' signals this watch will read, said before it starts; or that users' error
    rate cannot be observed (then only the watch's own probes are judged)."""
    from etlverify.watch.notify import redact

    sample = prober.sample(0.0)
    counters = sample.ok and sample.requests_total is not None
    logs = deploy_root / "logs" if deploy_root is not None else None
    found = [
        *([f"Prometheus {redact(prometheus_url)}"] if prometheus_url else []),
        *(["the target's request counters"] if counters else []),
        *([f"the log's error lines ({logs})"] if logs is not None and logs.is_dir() else []),
    ]
    if found:
        return "etlverify watch: users' signals: " + ", ".join(found)
    why = (
        "the target exports no request counters"
        if sample.ok
        else (f"the target's request counters could not be read ({sample.error})")
    )
    return (
        f"etlverify watch: users' error rate not observable: {why} and no --metrics source was "
        "given; only the watch's own probes are judged, and the watch cannot end PASS "
        "(give --metrics prometheus=URL, or --deploy-root for the log)"
    )


def main_watch(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """Run `etlverify watch`; the exit code."""
    environ = os.environ if env is None else env
    embedded = None
    try:
        plan = _plan(args)
        on_trigger = _on_trigger(args.on_trigger)
        baseline, baseline_users = (
            load_watch_baseline(args.baseline) if args.baseline else (None, None)
        )
        prometheus_url = parse_metrics_option(args.metrics)
        queries = load_analysis(args.analysis)
        if args.analysis is not None and prometheus_url is None:
            raise _Usage(f"--analysis {args.analysis}: needs --metrics prometheus=URL")
        progress_every = 1
        if args.progress_every:
            try:
                every = parse_duration(args.progress_every, "--progress-every")
            except ValueError as exc:
                raise _Usage(str(exc)) from None
            progress_every = max(1, round(every / plan.window_s))
        if args.quiet:
            progress_every = 0
        base_url = (args.base_url or environ.get("ETLPLUS_BASE_URL") or "").rstrip("/")
        root_text = args.deploy_root or environ.get("ETLPLUS_DEPLOY_ROOT")
        deploy_root = Path(root_text) if root_text else None
        if base_url and not base_url.startswith(("http://", "https://")):
            raise _Usage(
                f"--base-url: expected a URL starting with http:// or https://, got {base_url!r}"
            )
        from etlverify.watch.notify import Notifier

        notifier = (
            Notifier(args.notify, on_event=lambda line: print(line, flush=True))
            if args.notify
            else None
        )
        exporter = None
        if args.prometheus_port is not None:
            from etlverify.watch.exporter import WatchExporter

            exporter = WatchExporter(args.prometheus_port)
            exporter.start()
    except EtlVerifyError as exc:
        print(f"etlverify watch: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def say(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    prometheus = None
    if baseline is None:
        warning = undecidable_warning(plan)
        if warning:
            print(f"etlverify watch: {warning}", flush=True)
    try:
        if not base_url:
            from etlverify.embedded import EmbeddedTarget

            embedded = EmbeddedTarget()
            embedded.start()
            base_url, deploy_root = embedded.base_url, embedded.root
            say(f"etlverify watch: no --base-url: watching the embedded reference at {base_url}")
        token = environ.get("ETLPLUS_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ws_url = base_url.replace("https://", "wss://").replace("http://", "ws://") + "/ws"
        state = WatchState(args.state)
        resuming = state.exists()
        if resuming:
            with contextlib.suppress(StateError):
                if any(e.get("type") == "finished" for e in state.events()):
                    old = state.meta().get("watch_id", "old")
                    archive = args.state.with_name(f"{args.state.name}.{old}")
                    shutil.move(str(args.state), str(archive))
                    print(
                        f"etlverify watch: {args.state} held a finished watch; moved to "
                        f"{archive}, starting a new one"
                    )
                    resuming = False
        if not resuming:
            problem = probe(base_url, plan.request_timeout_s)
            if problem:
                print(unreachable_message(base_url, problem, "etlverify watch"), file=sys.stderr)
                return EXIT_UNREACHABLE
        rollback_cmd = (
            (args.rollback_cmd,)
            if args.rollback_cmd
            else (str(deploy_root / "deployment" / "rollback.sh"),)
            if deploy_root
            else None
        )
        from etlverify.deployment import OpsRunner

        ops = OpsRunner(None, rollback_cmd, cwd=deploy_root) if rollback_cmd else None
        from etlverify.watch.notify import redact

        prober = Prober(base_url, ws_url, timeout_s=plan.request_timeout_s, headers=headers)
        if prometheus_url is not None:
            prometheus = PrometheusSource(prometheus_url, queries, timeout_s=plan.request_timeout_s)
            problem = prometheus.check()
            if problem:
                print(
                    f"etlverify watch: --metrics: {problem}; the source is unavailable until "
                    "it answers",
                    flush=True,
                )
        say(_signals_line(prober, prometheus_url, deploy_root))
        runner = WatchRunner(
            plan=plan,
            base_url=base_url,
            ws_url=ws_url,
            state=state,
            reports_dir=args.reports,
            prober=prober,
            logs=LogScanner(deploy_root),
            notifier=notifier,
            ops=ops,
            on_trigger=on_trigger,
            baseline=baseline,
            baseline_label=f"{args.baseline} (an earlier watch)" if args.baseline else "",
            baseline_sources=baseline_users,
            exporter=exporter,
            out=say,
            prometheus=prometheus,
            progress_every=progress_every,
            fingerprint={
                **target_facts(read_status(base_url, plan.request_timeout_s, headers)),
                "embedded": embedded is not None,
            },
            settings_view={
                "notify": [redact(u) for u in args.notify],
                "deploy_root": str(deploy_root) if deploy_root else None,
                "prometheus_port": args.prometheus_port,
                "metrics": redact(prometheus_url) if prometheus_url else None,
                "analysis": str(args.analysis) if args.analysis else None,
            },
        )
        install_signals(runner)
        say(
            f"etlverify watch: {base_url} for {format_duration(plan.duration_s)} in windows of "
            f"{format_duration(plan.window_s)}; state {args.state}; reports {args.reports}; "
            f"on a trigger: {on_trigger}; notify: "
            + (", ".join(redact(u) for u in args.notify) or "none")
            + (f"; Prometheus {exporter.url}" if exporter else "")
        )
        outcome = runner.run()
    except StateError as exc:
        print(f"etlverify watch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if prometheus is not None:
            prometheus.close()
        if notifier is not None:
            notifier.close(10.0)
        if exporter is not None:
            exporter.stop()
        if embedded is not None:
            embedded.stop()
    print(f"etlverify watch: {outcome.verdict} (exit code {outcome.exit_code})")
    for line in outcome.reasons:
        print(f"  {line}")
    print(f"  evidence: {args.reports / 'watch.json'}, {args.reports / 'watch.html'}")
    return outcome.exit_code
