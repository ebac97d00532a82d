"""`etlverify rollout` end to end: the default plan, holds compressed to 8 s (1 s judge windows,
100 requests a second), on two real references at the same time:

- healthy: the conductor is killed (`kill -9`) at a random moment and `etlverify rollout resume`
  continues from the journal: all six components reach 100%, PASS, no step done twice, the
  report shows the timeline;
- request handler +30%: a cohort fault adds 30% of `GET /api/jobs`'s p50 for the users inside
  `new_request_handler`'s cohort only; the judge catches it at that component's first step, rolls
  back only `request_handler` (flag off, 0%), the other five still reach 100%, and the report names
  the request handler with the inside/outside figures. Its judge traffic is first recorded as a
  stored baseline (`--record-baseline`) that every step also compares both cohorts with (the
  healthy one's too, which its resumed conductor finds in the journal).
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from etlverify.embedded import SUITE_CONFIG_OVERRIDES, EmbeddedTarget
from etlverify.rollout.cohort import pick_users

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.timeout(420)

COMPRESSED = ("--no-checks", "--hold", "8s", "--window", "1s", "--rate", "100")
COMPONENTS = ("logger", "exception", "request_handler", "websocket", "concurrency", "types")


@dataclass
class Rollout:
    """One reference and the conductor processes run against it."""

    target: EmbeddedTarget
    folder: Path
    outputs: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(self, *extra: str) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "etlverify", "rollout", *extra, *COMPRESSED,
                "--base-url", self.target.base_url, "--deploy-root", str(self.target.root),
                "--state", str(self.folder / "state"),
                "--reports", str(self.folder / "reports")]  # fmt: skip
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, cwd=self.folder,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def wait(self, timeout: float) -> int:
        proc = self.procs[-1]
        out, _ = proc.communicate(timeout=timeout)
        self.outputs.append(out)
        return proc.returncode

    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.folder / "reports" / "rollout.json").read_text())
        return data

    def flags(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.target.base_url}/api/flags", timeout=5).json()
        return body

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
        self.target.stop()


def _p50_ms(client: httpx.Client, user: str, n: int = 120) -> float:
    """GET /api/jobs's p50 as the judge sees it: paced at its rate (100 a second)."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.get("/api/jobs?limit=20", headers={"X-User-Id": user})
        samples.append((time.perf_counter() - t0) * 1000.0)
        time.sleep(0.01)
    return statistics.median(samples[10:])


def _set_request_handler(target: EmbeddedTarget, percent: int) -> None:
    path = target.root / "config" / "feature_flags.json"
    data = json.loads(path.read_text())
    data["flags"]["new_request_handler"] = percent > 0
    data["rollout_percentages"]["new_request_handler"] = percent
    path.write_text(json.dumps(data, indent=2))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = httpx.get(f"{target.base_url}/api/flags", timeout=5).json()
        if got["rollout_percentages"]["new_request_handler"] == percent:
            return
        time.sleep(0.2)
    raise AssertionError(f"the reference did not load new_request_handler at {percent}%")


def _slow_request_handler_by_30_percent(target: EmbeddedTarget) -> float:
    """A cohort fault that makes GET /api/jobs +30% slower, as the judge measures it, for the
    users inside new_request_handler's cohort: calibrated at 25% (an injected sleep does not show
    one to one at the client on this host), then the flag is put back to 0."""
    inside, outside = pick_users((0.0, 25.0), (25.0, 100.0), count=1)
    _set_request_handler(target, 25)
    url = f"{target.base_url}/api/_faults"
    with httpx.Client(base_url=target.base_url, timeout=5) as client:
        base = _p50_ms(client, outside[0])
        extra = 0.3 * base
        for _ in range(3):
            client.post(url, json={"cohorts": {"request_handler": {"latency_ms": round(extra, 3)}}})
            seen = _p50_ms(client, inside[0]) - _p50_ms(client, outside[0])
            if seen >= 0.27 * base:
                break
            extra *= 0.3 * base / max(seen, 0.05 * base)
    _set_request_handler(target, 0)
    return extra


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Rollout]]:
    made: dict[str, Rollout] = {}
    try:
        for name in ("healthy", "faulty"):
            target = EmbeddedTarget(
                enable_faults=True, config_overrides=dict(SUITE_CONFIG_OVERRIDES)
            )
            target.start()
            made[name] = Rollout(target, tmp_path_factory.mktemp(name))
        faulty = made["faulty"]
        _slow_request_handler_by_30_percent(faulty.target)
        healthy = made["healthy"]
        for rollout in made.values():  # flags at 0: nobody inside the fault; both at once
            rollout.start("--record-baseline", str(rollout.folder / "stored.json"))
        for rollout in made.values():
            rollout.wait(timeout=120)
        for rollout in made.values():
            rollout.start("--baseline", str(rollout.folder / "stored.json"))
        time.sleep(random.uniform(15.0, 45.0))
        conductor = healthy.procs[-1]
        os.killpg(conductor.pid, signal.SIGKILL)  # kill -9 the conductor mid-step
        healthy.outputs.append(conductor.communicate()[0])
        healthy.start("resume")  # without --baseline: the journal names it
        for rollout in made.values():
            rollout.wait(timeout=360)
        yield made
    finally:
        for rollout in made.values():
            rollout.stop()


def _steps_done(report: dict[str, Any]) -> list[int]:
    return [r["step"] for r in report["journal"] if r["type"] == "step-done"]


def test_default_plan_reaches_100_percent_after_a_kill_and_resume(
    rollouts: dict[str, Rollout],
) -> None:
    rollout = rollouts["healthy"]
    out = rollout.outputs[-1]
    assert rollout.procs[-1].returncode == 0, "\n".join(rollout.outputs)
    assert "etlverify rollout: PASS (exit code 0)" in out
    assert "Traceback" not in "\n".join(rollout.outputs)
    report = rollout.report()
    done = _steps_done(report)
    assert sorted(done) == list(range(15)), done  # every step exactly once
    assert any(r["type"] == "resumed" for r in report["journal"])
    flags = rollout.flags()
    assert len(flags["rollout_percentages"]) == len(COMPONENTS)
    assert all(v == 100 for v in flags["rollout_percentages"].values()), flags
    assert all(flags["flags"].values()), flags
    page = (rollout.folder / "reports" / "rollout.html").read_text()
    assert 'alt="rollout timeline" src="data:image/png;base64,' in page
    # the stored baseline given at the start is still compared with after the resume
    judged = [s for s in report["steps"] if s["verdict"]]
    assert len(judged) == 15
    assert all(set(s["stored_baseline"]) == {"inside", "outside"} for s in judged), judged


def test_request_handler_regression_is_caught_and_only_it_is_rolled_back(
    rollouts: dict[str, Rollout],
) -> None:
    rollout = rollouts["faulty"]
    out = rollout.outputs[-1]
    assert rollout.procs[-1].returncode == 10, out
    assert "Traceback" not in out
    assert "problematic component: request_handler" in out
    report = rollout.report()
    verdicts = [r for r in report["journal"] if r["type"] == "verdict"]
    failed = [v for v in verdicts if v["verdict"] == "FAIL"]
    assert [(v["component"], v["percent"]) for v in failed] == [("request_handler", 25)], failed
    assert "cohort GET /api/jobs" in failed[0]["reason"]
    backs = [r for r in report["journal"] if r["type"] == "rollback-finished"]
    assert [b["component"] for b in backs] == ["request_handler"]
    assert backs[0]["exit_code"] == 0
    assert backs[0]["flag_off"] is True
    flags = rollout.flags()
    assert flags["flags"]["new_request_handler"] is False
    assert flags["rollout_percentages"]["new_request_handler"] == 0
    others = {k: v for k, v in flags["rollout_percentages"].items() if k != "new_request_handler"}
    assert all(v == 100 for v in others.values()), flags
    page = (rollout.folder / "reports" / "rollout.html").read_text()
    assert "request_handler" in page
    assert "FAIL p50 cohort GET /api/jobs" in page
    # --record-baseline, then --baseline: every judged step also compares both cohorts with it
    assert rollout.procs[0].returncode == 0, rollout.outputs[0]
    assert "Traceback" not in rollout.outputs[0]
    assert "recorded; use it with --baseline" in rollout.outputs[0]
    judged = [s for s in report["steps"] if s["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")]
    assert judged
    assert all(set(s["stored_baseline"]) == {"inside", "outside"} for s in judged), judged
    assert "stored baseline 'rollout': inside " in out


def test_checklist_items_and_the_gate(rollouts: dict[str, Rollout]) -> None:
    """The phase 2/3 items judged from each rollout; `etlverify gate --require rollout` blocks
    the faulty one naming the request handler, and the sign-off-style sections get a timeline."""
    healthy = {i["id"]: i for i in rollouts["healthy"].report()["items"]}
    faulty = {i["id"]: i for i in rollouts["faulty"].report()["items"]}
    p2, p3 = "deploy.phase2.2_3_request_handler.", "deploy.phase3.3_2_websocket_manager."
    assert healthy[p3 + "increase_rollout_gradually"]["status"] == "PASS"
    assert healthy[p2 + "rollback_issues_detected"]["status"] == "N/A"
    assert faulty[p2 + "monitor_request_throughput"]["status"] == "FAIL"
    assert faulty[p2 + "rollback_issues_detected"]["status"] == "PASS"
    assert faulty[p3 + "increase_rollout_gradually"]["status"] == "PASS"
    for name in ("healthy", "faulty"):
        assert (rollouts[name].folder / "reports" / "rollout_timeline.png").stat().st_size > 1000
    gate = subprocess.run(
        [sys.executable, "-m", "etlverify", "gate", str(rollouts["faulty"].folder / "reports"),
         "--require", "rollout", "--no-html"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert gate.returncode == 10, gate.stdout + gate.stderr
    assert "request_handler" in gate.stdout
