"""`etlverify rollout [PLAN]`: the command line. `etlverify rollout resume` = `--resume`.

Exit codes (the gate's family): 0 PASS (every component reached the plan's percentage), 10 FAIL (a
component was judged worse and rolled back), 11 INCOMPLETE (paused: by the plan or because the
judge could not decide twice; stopped), 13 target unreachable, 14 usage.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etlverify.durations import format_duration, parse_duration
from etlverify.errors import EtlVerifyError
from etlverify.rollout.conductor import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Conductor,
    RolloutError,
    dry_run,
)
from etlverify.rollout.plan import PlanError, load_plan
from etlverify.target import probe, unreachable_message

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping

    from etlverify.rollout.cohort import CohortJudge
    from etlverify.rollout.plan import RolloutPlan

__all__ = ["add_parser", "main_rollout"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The `rollout` subcommand's options."""
    p: argparse.ArgumentParser = sub.add_parser(
        "rollout",
        help="drive the staged flag rollout, judged live against its own control cohort",
        description="Drive the feature-flag rollout of PLAN (TOML; default: the checklist's "
        "phases 2 and 3). Each step sets a flag, waits until the target reports it, runs the "
        "component's checks, then holds while users inside and outside the cohort get the same "
        "traffic, interleaved; a significant regression of the inside cohort rolls back exactly "
        "that component (rollback.sh partial). `etlverify rollout resume` continues from the "
        "journal after a crash.",
        epilog="exit codes: 0 PASS, 10 FAIL (a component rolled back), 11 INCOMPLETE (paused or "
        "stopped), 13 target unreachable, 14 usage",
    )
    p.add_argument("plan", nargs="?", help="plan file (TOML), or `resume`")
    p.add_argument("--resume", action="store_true", help="continue the rollout in --state")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its timings only")
    p.add_argument("--base-url", metavar="URL", help="the target [env ETLPLUS_BASE_URL]")
    p.add_argument("--deploy-root", metavar="DIR", type=Path,
                   help="the deployment folder (config/feature_flags.json, deployment/rollback.sh)"
                   " [env ETLPLUS_DEPLOY_ROOT]")  # fmt: skip
    p.add_argument("--state", metavar="DIR", type=Path, default=Path("reports/rollout-state"),
                   help="the journal's folder (reports/rollout-state)")  # fmt: skip
    p.add_argument("--reports", metavar="DIR", type=Path, default=Path("reports"))
    p.add_argument("--notify", metavar="URL", action="append", default=[],
                   help="an apprise URL; repeatable (as etlverify watch)")  # fmt: skip
    p.add_argument("--no-checks", action="store_true",
                   help="do not run the component's pytest checks at each step")  # fmt: skip
    p.add_argument(
        "--hold",
        metavar="DURATION",
        help="every step's hold (overrides the plan: for tests and rehearsals)",
    )
    p.add_argument("--window", metavar="DURATION", help="judge window (overrides the plan)")
    p.add_argument("--rate", metavar="RPS", type=float, help="judge rate (overrides the plan)")
    p.add_argument(
        "--rollback-cmd", metavar="CMD", help="default <deploy-root>/deployment/rollback.sh"
    )
    p.add_argument("--baseline", metavar="FILE", type=Path,
                   help="also compare both cohorts with this stored baseline at every hold "
                   "(recorded with --record-baseline)")  # fmt: skip
    p.add_argument("--record-baseline", metavar="FILE", type=Path,
                   help="measure the judge's traffic for one hold (--hold, else the plan's "
                   "first step) with the flags as they are, append it to FILE, "
                   "and exit")  # fmt: skip
    return p


def main_rollout(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """Run `etlverify rollout`; the exit code."""
    environ = os.environ if env is None else env
    resume = bool(args.resume or args.plan == "resume")
    plan_path = None if args.plan in (None, "resume") else Path(args.plan)
    notifier = None
    try:
        plan = load_plan(plan_path)
        hold = parse_duration(args.hold, "--hold") if args.hold else None
        window = parse_duration(args.window, "--window") if args.window else None
        plan = plan.compressed(hold, window)
        if args.rate is not None:
            if not 0 < args.rate <= 200:
                raise PlanError(
                    f"--rate: expected requests per second in (0, 200], got {args.rate}"
                )
            from dataclasses import replace

            plan = replace(plan, rate_rps=args.rate)
        if args.dry_run:
            for line in dry_run(plan):
                print(line)
            return 0
        base_url = (args.base_url or environ.get("ETLPLUS_BASE_URL") or "").rstrip("/")
        root = args.deploy_root or environ.get("ETLPLUS_DEPLOY_ROOT")
        token = environ.get("ETLPLUS_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else None
        baseline = None
        deploy_root = Path(root or ".")
        if args.record_baseline is not None:  # measures only: no flag is changed
            if not base_url:
                raise PlanError("--record-baseline needs --base-url (the target to measure)")
        else:
            if args.baseline is not None:
                from etlverify.baseline.store import load

                baseline = load(args.baseline)
            if not base_url or not root:
                raise PlanError(
                    "--base-url and --deploy-root are needed (the flags file is changed there)"
                )
            if not (deploy_root / "config" / "feature_flags.json").is_file():
                raise PlanError(f"--deploy-root {deploy_root}: no config/feature_flags.json there")
            if args.notify:
                from etlverify.watch.notify import Notifier

                notifier = Notifier(args.notify, on_event=lambda line: print(line, flush=True))
    except (EtlVerifyError, ValueError) as exc:
        print(f"etlverify rollout: {exc}", file=sys.stderr)
        return EXIT_USAGE
    problem = probe(base_url, 5.0)
    if problem:
        print(unreachable_message(base_url, problem, "etlverify rollout"), file=sys.stderr)
        return EXIT_UNREACHABLE
    from etlverify.rollout.cohort import CohortJudge

    judge = CohortJudge(base_url, headers=headers)
    if args.record_baseline is not None:
        return _record(judge, args.record_baseline, plan)
    from etlverify.deployment import OpsRunner

    rollback_cmd = args.rollback_cmd or str(deploy_root / "deployment" / "rollback.sh")
    conductor = Conductor(
        plan=plan,
        base_url=base_url,
        deploy_root=deploy_root,
        state_dir=args.state,
        reports_dir=args.reports,
        judge_=judge,
        ops=OpsRunner(None, (rollback_cmd,), cwd=deploy_root),
        notifier=notifier,
        baseline=baseline,
        baseline_path=args.baseline,
        run_checks=not args.no_checks,
        out=lambda line: print(line, flush=True),
    )

    def stop(signum: int, frame: object) -> None:
        conductor.stop_reason = f"stopped by {signal.Signals(signum).name}"

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        outcome = conductor.run(resume=resume)
    except RolloutError as exc:
        print(f"etlverify rollout: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        judge.close()
        if notifier is not None:
            notifier.close(10.0)
    print(f"etlverify rollout: {outcome.verdict} (exit code {outcome.exit_code})")
    for line in outcome.lines:
        print(f"  {line}")
    print(f"  evidence: {args.reports / 'rollout.json'}, {args.reports / 'rollout.html'}")
    return outcome.exit_code


def _record(judge: CohortJudge, path: Path, plan: RolloutPlan) -> int:
    """`--record-baseline FILE`: one hold of the judge's traffic, appended to FILE."""
    hold = plan.steps[0].hold_s if plan.steps else 10 * plan.window_s
    print(
        f"etlverify rollout: recording the judge's traffic into {path}: "
        f"{format_duration(hold)} at {plan.rate_rps:g} requests/s, windows of "
        f"{format_duration(plan.window_s)}",
        flush=True,
    )
    try:
        stored = judge.record_baseline(path, hold, plan.window_s, plan.rate_rps)
    except EtlVerifyError as exc:
        print(f"etlverify rollout: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        judge.close()
    for name, metric in stored.metrics.items():
        p50 = metric.merged.p50_ms
        print(
            f"  {name}: p50 {p50:.3g} ms over {len(metric.windows)} windows "
            f"({len(stored.runs)} run(s) recorded)"
            if p50 is not None
            else f"  {name}: no successful sample"
        )
    print(f"etlverify rollout: baseline {path} recorded; use it with --baseline {path}")
    return 0
