"""The rollout's pieces that need no target: the plan, the cohort ranges, the command line."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from typing import TYPE_CHECKING

import pytest

from etlverify.baseline.compare import Verdict
from etlverify.baseline.store import BaselineError, Fingerprint, load, record
from etlverify.contract import fnv1a_bucket
from etlverify.measure import LatencyRecorder, MetricResult, RunResult
from etlverify.rollout.cohort import against_stored, cohorts, judge, judge_load, pick_users
from etlverify.rollout.plan import PlanError, load_plan, parse_plan

if TYPE_CHECKING:
    from pathlib import Path

    from etlverify.baseline.store import Baseline


def test_default_plan_is_the_checklists() -> None:
    plan = load_plan(None)
    assert [(s.component, s.percent) for s in plan.steps[:6]] == [
        ("logger", 25), ("exception", 25), ("request_handler", 25),
        ("logger", 50), ("exception", 50), ("request_handler", 50),
    ]  # fmt: skip
    final = {s.component: s.percent for s in plan.steps}
    assert set(final.values()) == {100}
    assert len(final) == 6
    assert [s.hold_s for s in plan.steps[3:6]] == [4 * 3600.0] * 3


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("", "no [[step]]"),
        ('[[step]]\ncomponent = "loger"\npercent = 25', "step 1: component: expected one of"),
        ('[[step]]\ncomponent = "logger"\npercent = 125', "step 1: percent: expected an integer"),
        ('[[step]]\ncomponent = "logger"\npercent = 25\nhold = "soon"', "step 1: hold: expected"),
        ('rate = 0\n[[step]]\ncomponent = "logger"\npercent = 25', "rate: expected"),
        ('colour = 1\n[[step]]\ncomponent = "logger"\npercent = 5', "unknown key 'colour'"),
    ],
)
def test_bad_plans_are_one_line(toml: str, message: str) -> None:
    with pytest.raises(PlanError) as caught:
        parse_plan(tomllib.loads(toml), "plan.toml")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_sides_differ_in_this_flag_only() -> None:
    # logger to 50% while exception and request_handler are at 25%: both sides above 25
    inside, outside, _ = cohorts(50, 25, [25, 25])
    assert inside == (25, 50)
    assert outside == (50, 100)
    ins, outs = pick_users(inside, outside)
    assert len(ins) == len(outs) == 8
    assert all(25 <= fnv1a_bucket(u) < 50 for u in ins)
    assert all(50 <= fnv1a_bucket(u) < 100 for u in outs)
    # at 100% the users this step admits against those admitted before
    assert cohorts(100, 25, [])[:2] == ((25, 100), (0.0, 25))
    assert "no control" in cohorts(100, 0, [])[2]


def _rollout(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etlverify", "rollout", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, check=False,
    )  # fmt: skip


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    result = _rollout("--dry-run", cwd=tmp_path)
    assert result.returncode == 0
    assert "15. at +" in result.stdout
    assert "total hold time 14 h" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_exit_14(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text('[[step]]\ncomponent = "x"\npercent = 5\n')
    bad = _rollout("p.toml", "--dry-run", cwd=tmp_path)
    assert bad.returncode == 14
    assert bad.stderr.strip().startswith("etlverify rollout: p.toml: step 1: component")
    missing = _rollout("--base-url", "http://127.0.0.1:9", cwd=tmp_path)
    assert missing.returncode == 14
    assert "--deploy-root are needed" in missing.stderr
    assert "Traceback" not in bad.stderr + missing.stderr
    record = _rollout("--record-baseline", "b.json", cwd=tmp_path)
    assert record.returncode == 14
    assert "--record-baseline needs --base-url" in record.stderr
    (tmp_path / "broken.json").write_text("{not json")
    broken = _rollout(
        "--baseline", "broken.json", "--base-url", "http://127.0.0.1:9", "--deploy-root", ".",
        cwd=tmp_path,
    )  # fmt: skip
    assert broken.returncode == 14, broken.stderr
    assert broken.stderr.startswith("etlverify rollout: ")
    assert "broken.json" in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1
    unreachable = _rollout("--record-baseline", "b.json", "--base-url", "http://127.0.0.1:9",
                           cwd=tmp_path)  # fmt: skip
    assert unreachable.returncode == 13
    assert "etlverify rollout: target http://127.0.0.1:9 is unreachable" in unreachable.stderr
    assert not (tmp_path / "b.json").exists()


METRIC = "cohort GET /api/jobs"
LOAD = judge_load(1.0, 100.0)


def _windows(*p50s: float, n: int = 60) -> dict[str, MetricResult]:
    """One metric whose windows hold `n` samples each, all at that window's value (ms)."""
    rec = LatencyRecorder(windows=len(p50s), window_s=1.0)
    for w, v in enumerate(p50s):
        for _ in range(n):
            rec.record(METRIC, v / 1000.0, window=w)
    return {METRIC: rec.result(METRIC)}


def _stored(tmp_path: Path) -> Baseline:
    path = tmp_path / "stored.json"
    for k in range(2):
        base = [4.0 + 0.02 * ((w + k) % 5) for w in range(10)]
        run = RunResult(metrics=_windows(*base), load=LOAD, started_at="", duration_s=10.0)
        record(path, run, environment=Fingerprint(load=LOAD.to_json()), name="rollout")
    return load(path)


def test_both_sides_slower_than_the_stored_baseline_is_seen_but_not_blamed(
    tmp_path: Path,
) -> None:
    """The host got 30% slower for everybody: the cohorts agree (PASS, nothing rolled back), the
    stored baseline sees both sides worse and says so."""
    inside = _windows(5.2, 5.25, 5.3, 5.2, 5.22, 5.28, 5.21, 5.3, 5.24, 5.26)
    outside = _windows(5.21, 5.24, 5.29, 5.22, 5.2, 5.27, 5.23, 5.28, 5.25, 5.22)
    result = judge(inside, outside, compared_with="the users just outside", outside=outside)
    assert result.verdict == "PASS", result.reason
    result.stored = against_stored(_stored(tmp_path), {"inside": inside, "outside": outside}, LOAD)
    assert {s: c.verdict for s, c in result.stored.items()} == {
        "inside": Verdict.FAIL,
        "outside": Verdict.FAIL,
    }
    line = result.stored_line()
    assert line is not None
    assert line.startswith("stored baseline 'rollout': inside FAIL (p50 +")
    assert "outside FAIL" in line
    assert result.to_json()["stored_baseline"]["inside"]["verdict"] == "FAIL"


def test_a_stored_baseline_of_another_load_is_not_comparable(tmp_path: Path) -> None:
    stored = _stored(tmp_path)
    same = _windows(*[4.0 + 0.02 * (w % 5) for w in range(10)])
    other = judge_load(60.0, 2.0)  # another plan's windows and rate
    got = against_stored(stored, {"inside": same}, other)
    assert got["inside"].verdict is not Verdict.PASS
    assert any(m.field == "load.duration_s" for m in got["inside"].environment)


def test_recording_refuses_errors_and_rate_limits(tmp_path: Path) -> None:
    """A baseline is recorded from a healthy target only: the judge's traffic to a port where
    nothing listens fails, and nothing is written."""
    from etlverify.rollout.cohort import CohortJudge

    cj = CohortJudge("http://127.0.0.1:9", timeout_s=0.5)
    try:
        with pytest.raises(BaselineError, match=r"not recorded: .* failed"):
            cj.record_baseline(tmp_path / "b.json", 0.5, 0.1, 40.0)
    finally:
        cj.close()
    assert not (tmp_path / "b.json").exists()
