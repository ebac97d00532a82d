"""The rollout conductor: each step sets a flag, waits until the target reports it, runs the
component's checks, holds while the cohort judge runs, then advances, holds longer once, pauses,
or rolls back exactly the component judged worse.

Every action is written to the journal (`state/journal.jsonl`, one fsync'd line each) before and
after it happens. `--resume` reads it: steps that are done are not repeated, a step that started
but did not finish is done again from its flag change (idempotent) and judged again, never assumed
good, and a component rolled back stays rolled back.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from etlverify.deployment import deep_merge
from etlverify.durations import format_duration, utc
from etlverify.errors import CheckFailed, EtlVerifyError, TargetError
from etlverify.report.summary import target_facts
from etlverify.rollout.cohort import (
    CohortJudge,
    CohortResult,
    against_stored,
    cohorts,
    judge,
    judge_load,
)
from etlverify.target import read_status
from etlverify.watch.state import append_line, read_lines, truncate_partial

if TYPE_CHECKING:
    from collections.abc import Callable

    from etlverify.baseline.store import Baseline
    from etlverify.deployment import OpsRunner
    from etlverify.rollout.plan import RolloutPlan, Step
    from etlverify.watch.notify import Notifier

__all__ = ["Conductor", "RolloutError", "RolloutOutcome", "dry_run"]

JOURNAL = "journal.jsonl"
EXIT_PASS, EXIT_FAIL, EXIT_INCOMPLETE, EXIT_UNREACHABLE, EXIT_USAGE = 0, 10, 11, 13, 14


class RolloutError(EtlVerifyError):
    """The rollout cannot go on (a flag the target never reports, a journal of another target)."""


@dataclass
class RolloutOutcome:
    """The verdict of a rollout (or of the part run so far)."""

    verdict: str  # PASS, FAIL, INCOMPLETE (paused, stopped)
    exit_code: int
    lines: list[str] = field(default_factory=list)


class Conductor:
    """One rollout, new or resumed from its journal."""

    def __init__(
        self,
        *,
        plan: RolloutPlan,
        base_url: str,
        deploy_root: Path,
        state_dir: Path,
        reports_dir: Path,
        judge_: CohortJudge,
        ops: OpsRunner | None,
        notifier: Notifier | None = None,
        run_checks: bool = True,
        out: Callable[[str], None] = print,
        reload_timeout_s: float = 30.0,
        baseline: Baseline | None = None,
        baseline_path: Path | None = None,
    ) -> None:
        self.plan = plan
        self.baseline = baseline
        self.baseline_path = baseline_path
        self.base_url = base_url.rstrip("/")
        self.deploy_root = deploy_root
        self.state_dir = state_dir
        self.reports_dir = reports_dir
        self.judge = judge_
        self.ops = ops
        self.notifier = notifier
        self.run_checks = run_checks
        self.out = out
        self.reload_timeout_s = reload_timeout_s
        self.journal: list[dict[str, Any]] = []
        self.rollout_id = secrets.token_hex(6)
        self.stop_reason: str | None = None

    # -- the journal ---------------------------------------------------------------------------

    @property
    def journal_path(self) -> Path:
        return self.state_dir / JOURNAL

    def log(self, kind: str, /, **data: Any) -> dict[str, Any]:
        """Append one journal line (fsync'd) and keep it."""
        record = {"type": kind, "at": utc(time.time()), "ts": round(time.time(), 3), **data}
        append_line(self.journal_path, record)
        self.journal.append(record)
        return record

    def _of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.journal if r.get("type") == kind]

    def open(self, resume: bool) -> None:
        """Start a journal, or read one to resume."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        truncate_partial(self.journal_path)
        existing = read_lines(self.journal_path)
        if existing and not resume:
            if any(r.get("type") == "finished" for r in existing):
                old = existing[0].get("rollout_id", "old")
                archive = self.state_dir.with_name(f"{self.state_dir.name}.{old}")
                self.state_dir.rename(archive)
                self.state_dir.mkdir(parents=True)
                self.out(f"rollout: {self.state_dir} held a finished rollout; moved to {archive}")
                existing = []
            else:
                raise RolloutError(
                    f"{self.journal_path}: a rollout is in progress there; continue it with "
                    "`etlverify rollout --resume` (or `etlverify rollout resume`), or give "
                    "another --state"
                )
        if resume and not existing:
            raise RolloutError(f"{self.journal_path}: no rollout to resume there")
        if existing:
            first = existing[0]
            if first.get("target_url") != self.base_url:
                raise RolloutError(
                    f"{self.journal_path}: the rollout of {first.get('target_url')}, not of "
                    f"{self.base_url}"
                )
            from etlverify.rollout.plan import RolloutPlan

            self.plan = RolloutPlan.from_json(first["plan"])
            self.rollout_id = str(first.get("rollout_id", self.rollout_id))
            self.journal = existing
            if self.baseline is None and first.get("baseline"):
                # the stored baseline the rollout started with goes on being compared with
                from etlverify.baseline.store import load

                self.baseline_path = Path(first["baseline"])
                try:
                    self.baseline = load(self.baseline_path)
                except EtlVerifyError as exc:
                    raise RolloutError(
                        f"the rollout was started with --baseline {self.baseline_path}, which "
                        f"cannot be read now ({exc}); give --baseline again"
                    ) from None
            self.log("resumed", pid=os.getpid())
            return
        self.log(
            "started",
            rollout_id=self.rollout_id,
            target_url=self.base_url,
            # what identifies the deployment (its flags are what this rollout changes)
            target=target_facts(read_status(self.base_url, 5.0)),
            plan=self.plan.to_json(),
            pid=os.getpid(),
            baseline=str(self.baseline_path.resolve()) if self.baseline_path else None,
        )

    # -- flags ---------------------------------------------------------------------------------

    def flags(self) -> dict[str, Any]:
        """GET /api/flags."""
        resp = httpx.get(f"{self.base_url}/api/flags", timeout=5.0)
        body = resp.json()
        if resp.status_code != 200 or not isinstance(body, dict):
            raise RolloutError(f"GET /api/flags answered {resp.status_code}")
        return body

    def set_flag(self, flag: str, percent: int) -> None:
        """Write the flags file (atomically) and wait until the target reports the change."""
        path = self.deploy_root / "config" / "feature_flags.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RolloutError(f"{path}: cannot read the flags file: {exc}") from None
        data = deep_merge(
            data, {"flags": {flag: percent > 0}, "rollout_percentages": {flag: percent}}
        )
        tmp = path.with_name(f".{path.name}.rollout")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        reached, seen = self.wait_for_flag(flag, percent)
        if reached:
            return
        raise RolloutError(
            f"the target did not report {flag} at {percent}% within {self.reload_timeout_s:g} s "
            f"of writing {path} (it reports {seen})"
        )

    def wait_for_flag(self, flag: str, percent: int) -> tuple[bool, Any]:
        """Poll `/api/flags` until the target reports `flag` at `percent` (off at 0), at most the
        reload timeout; (reached, what it reported last). An error answer is polled again."""
        want = (percent > 0, percent)
        deadline = time.monotonic() + self.reload_timeout_s
        seen: Any = None
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError, RolloutError):
                body = self.flags()
                seen = (
                    body.get("flags", {}).get(flag),
                    body.get("rollout_percentages", {}).get(flag),
                )
                if seen == want:
                    return True, seen
            if time.monotonic() >= deadline:
                return False, seen
            time.sleep(0.2)

    def current_percent(self, flag: str) -> float:
        """The flag's percentage as the target reports it now (0 when off or unknown)."""
        with contextlib.suppress(httpx.HTTPError, ValueError, RolloutError):
            body = self.flags()
            if body.get("flags", {}).get(flag):
                return float(body.get("rollout_percentages", {}).get(flag) or 0.0)
        return 0.0

    # -- steps ---------------------------------------------------------------------------------

    def notify(self, kind: str, key: str, title: str, body: str, level: str = "info") -> None:
        """Once per key over the whole rollout (the journal remembers)."""
        if any(r.get("type") == "notification" and r.get("key") == key for r in self.journal):
            return
        self.log("notification", key=key, kind=kind, title=title)
        if self.notifier is None:
            return
        from etlverify.watch.notify import Notification

        self.notifier.send(Notification(kind=kind, key=key, title=title, body=body, level=level))

    def _checks(self, step: Step) -> tuple[bool, str]:
        """`pytest -m "component and <name>"` against the target; (ok, one line)."""
        argv = [
            sys.executable, "-m", "pytest", "-m", f"component and {step.component}",
            "--base-url", self.base_url, "--deploy-root", str(self.deploy_root),
            "-q", "-p", "no:randomly", "--no-header", "-p", "no:cacheprovider",
        ]  # fmt: skip
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=900, check=False,
                cwd=self.reports_dir.parent if self.reports_dir.parent.exists() else None,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return False, "the component's checks did not finish within 900 s"
        last = [line for line in proc.stdout.splitlines() if line.strip()]
        return proc.returncode == 0, (last[-1] if last else f"exit code {proc.returncode}")

    def _others(self, flag: str) -> list[float]:
        """The percentages of the other flags that are on (cohort boundaries to stay between)."""
        with contextlib.suppress(httpx.HTTPError, ValueError, RolloutError):
            body = self.flags()
            on = body.get("flags", {})
            pct = body.get("rollout_percentages", {})
            return [float(pct.get(f) or 0) for f in on if f != flag and on.get(f)]
        return []

    def _hold(self, index: int, step: Step, previous: float) -> CohortResult:
        inside_range, outside_range, control = cohorts(
            step.percent, previous, self._others(step.flag)
        )
        inside, outside, limited = self.judge.measure(
            inside_range,
            outside_range,
            step.hold_s,
            self.plan.window_s,
            self.plan.rate_rps,
            stop=lambda: self.stop_reason is not None,
            component=step.component,
        )
        if limited:
            return CohortResult(
                "INCONCLUSIVE",
                f"the target answered 429 to {limited} of the judge's requests: exempt the judge "
                "or lower its rate (rate in the plan)",
                None,
                inside,
                outside,
                "rate limited",
            )
        result = judge(inside, outside, compared_with=control, outside=outside)
        if self.baseline is not None:
            load = judge_load(self.plan.window_s, self.plan.rate_rps)
            result.stored = against_stored(
                self.baseline,
                {"inside": inside, "outside": outside},
                load,
                self.judge.fingerprint(load),
                component=step.component,
            )
        return result

    def _rollback(self, index: int, step: Step, why: str) -> None:
        self.log("rollback-started", step=index, component=step.component, reason=why)
        self.notify(
            "rollback",
            f"rollback-{step.component}",
            f"ROLLOUT: rolling back {step.component} on {self.base_url}",
            f"step {index + 1} ({step.describe()}): {why}\n"
            f"running rollback.sh partial {step.component}",
            level="failure",
        )
        code: int | None
        try:
            if self.ops is None:
                raise TargetError("no rollback command: give --deploy-root or --rollback-cmd")
            proc = self.ops.rollback("partial", step.component, timeout=300)
            code, output = proc.returncode, (proc.stdout + proc.stderr).strip()[-400:]
        except (TargetError, CheckFailed) as exc:
            code, output = None, str(exc).splitlines()[0]
        off, flag_state = self.wait_for_flag(step.flag, 0)
        healthy = False
        with contextlib.suppress(httpx.HTTPError):
            healthy = httpx.get(f"{self.base_url}/api/health", timeout=5.0).status_code == 200
        self.log(
            "rollback-finished",
            step=index,
            component=step.component,
            exit_code=code,
            output=output,
            flag_off=off,
            flag=list(flag_state) if isinstance(flag_state, tuple) else flag_state,
            healthy_after=healthy,
        )
        self.notify(
            "recovery",
            f"recovery-{step.component}",
            f"ROLLOUT: {step.component} rolled back "
            + ("(flag off, target healthy)" if off and healthy else "(NOT confirmed)"),
            f"rollback.sh partial {step.component}: exit code {code}; {step.flag} now "
            f"{flag_state}; /api/health {'200' if healthy else 'not 200'}\n"
            "the system runs with reduced functionality",
            level="warning" if off and healthy else "failure",
        )

    def rolled_back(self) -> set[str]:
        """Components rolled back so far."""
        return {str(r["component"]) for r in self._of("rollback-finished")}

    def run(self, resume: bool = False) -> RolloutOutcome:
        """Drive the plan (from where the journal stopped); write the evidence; the outcome."""
        self.open(resume)
        done = {int(r["step"]) for r in self._of("step-done")}
        if not self._of("notification"):
            self.notify(
                "start",
                "start",
                f"rollout started on {self.base_url}: {len(self.plan.steps)} steps",
                "\n".join(s.describe() for s in self.plan.steps),
            )
        outcome: RolloutOutcome | None = None
        for index, step in enumerate(self.plan.steps):
            if index in done:
                continue
            if self.stop_reason is not None:
                outcome = RolloutOutcome("INCOMPLETE", EXIT_INCOMPLETE, [self.stop_reason])
                break
            if step.component in self.rolled_back():
                self.log("step-done", step=index, component=step.component, action="skipped",
                         reason=f"{step.component} was rolled back earlier")  # fmt: skip
                continue
            half = [r for r in self._of("step-start") if r.get("step") == index]
            previous = float(half[0]["previous"]) if half else self.current_percent(step.flag)
            self.log("step-start", step=index, component=step.component, percent=step.percent,
                     previous=previous, again=bool(half))  # fmt: skip
            self.out(f"rollout: step {index + 1}/{len(self.plan.steps)}: {step.describe()}"
                     + (" (again: it had started before the restart)" if half else ""))  # fmt: skip
            self.log("flag-set", step=index, flag=step.flag, percent=step.percent)
            self.set_flag(step.flag, step.percent)
            self.log("flag-confirmed", step=index, flag=step.flag, percent=step.percent)
            if step.checks and self.run_checks:
                ok, line = self._checks(step)
                self.log("checks", step=index, ok=ok, line=line)
                if not ok:
                    why = f"the component's checks failed: {line}"
                    self.log(
                        "verdict", step=index, component=step.component, verdict="FAIL",
                        reason=why, result={},
                    )  # fmt: skip
                    self._rollback(index, step, f"the component's checks failed: {line}")
                    self.log(
                        "step-done", step=index, component=step.component, action="rolled-back"
                    )
                    if self.plan.on_regression == "stop":
                        break
                    continue
            result = self._hold(index, step, previous)
            if result.verdict == "INCONCLUSIVE" and self.stop_reason is None:
                self.log("hold-extended", step=index, reason=result.reason)
                self.out(
                    f"rollout: step {index + 1} INCONCLUSIVE ({result.reason[:200]}); "
                    "holding once more"
                )
                result = self._hold(index, step, previous)
            self.log(
                "verdict", step=index, component=step.component, percent=step.percent,
                verdict=result.verdict, reason=result.reason, result=result.to_json(),
            )  # fmt: skip
            self.out(f"rollout: step {index + 1} {result.verdict}: {result.reason[:300]}")
            if result.stored_line():
                self.out(f"rollout: step {index + 1} {result.stored_line()}")
            if self.stop_reason is not None:
                outcome = RolloutOutcome("INCOMPLETE", EXIT_INCOMPLETE, [self.stop_reason])
                break
            if result.verdict == "FAIL":
                self._rollback(index, step, result.reason)
                self.log("step-done", step=index, component=step.component, action="rolled-back")
                if self.plan.on_regression == "stop":
                    break
                continue
            if result.verdict == "INCONCLUSIVE":
                self.log("paused", step=index, reason=result.reason)
                outcome = RolloutOutcome(
                    "INCOMPLETE",
                    EXIT_INCOMPLETE,
                    [f"paused at step {index + 1} ({step.describe()}): the judge could not decide "
                     f"twice: {result.reason}; a person decides, then `etlverify rollout resume`"],
                )  # fmt: skip
                break
            self.log("step-done", step=index, component=step.component, action="advanced")
            self.notify(
                "status",
                f"step-{index}",
                f"rollout step {index + 1}/{len(self.plan.steps)} PASS: {step.describe()}",
                "\n".join(result.figures()[:6]),
            )
            if step.pause:
                self.log("paused", step=index, reason="the plan pauses here")
                outcome = RolloutOutcome(
                    "INCOMPLETE",
                    EXIT_INCOMPLETE,
                    [f"paused after step {index + 1} as the plan says: `etlverify rollout resume`"],
                )
                break
        if outcome is None:
            outcome = self._final()
            self.log("finished", verdict=outcome.verdict)
            self.notify(
                "completion",
                "completion",
                f"rollout {outcome.verdict} on {self.base_url}",
                "\n".join(outcome.lines[:10]),
                level="info" if outcome.verdict == "PASS" else "failure",
            )
        if self.notifier is not None:
            self.notifier.flush(30.0)
        from etlverify.rollout.report import write_reports

        write_reports(self, outcome)
        return outcome

    def _final(self) -> RolloutOutcome:
        back = self.rolled_back()
        final: dict[str, int] = {}
        for step in self.plan.steps:
            final[step.component] = step.percent
        lines = []
        for r in self._of("rollback-finished"):
            verdicts = [
                v for v in self._of("verdict") if v.get("step") == r["step"] and v.get("reason")
            ]
            why = verdicts[-1]["reason"] if verdicts else ""
            lines.append(
                f"problematic component: {r['component']} (rolled back at step {r['step'] + 1}: "
                f"{why[:300]})"
            )
        lines += self._stored_lines()
        reached = [c for c in final if c not in back]
        lines.append(
            "reached the plan's final percentage: "
            + ", ".join(f"{c} {final[c]}%" for c in reached)
            + (f"; rolled back: {', '.join(sorted(back))}" if back else "")
        )
        if back:
            return RolloutOutcome("FAIL", EXIT_FAIL, lines)
        return RolloutOutcome("PASS", EXIT_PASS, lines)

    def _stored_lines(self) -> list[str]:
        """Steps where a side was worse than the stored baseline. Facts for a person, not a
        rollback: the cohorts decide which component is to blame; the stored baseline sees a
        common cause (the host, the data, every component) that moves both sides alike."""
        lines = []
        for v in self._of("verdict"):
            stored = (v.get("result") or {}).get("stored_baseline") or {}
            worse = [side for side, c in stored.items() if c.get("verdict") == "FAIL"]
            if not worse:
                continue
            both = len(worse) == 2
            lines.append(
                f"step {int(v['step']) + 1} ({v.get('component')}): "
                f"{' and '.join(worse)} worse than the stored baseline"
                + (": both cohorts alike, so not this component (the host or a common cause)"
                   if both else "")
            )  # fmt: skip
        return lines


def dry_run(plan: RolloutPlan) -> list[str]:
    """The plan, its timings and what each step changes; nothing is touched."""
    lines = [f"rollout plan: {plan.source}; judge windows {format_duration(plan.window_s)} at "
             f"{plan.rate_rps:g} req/s; after a regression: {plan.on_regression}"]  # fmt: skip
    t = 0.0
    for i, step in enumerate(plan.steps, 1):
        lines.append(
            f"  {i:2}. at +{format_duration(t):>8}: {step.flag} -> {step.percent}%"
            f" ({step.describe()})"
        )
        t += step.hold_s
    lines.append(f"  total hold time {format_duration(t)} (plus flag reloads and checks)")
    return lines
