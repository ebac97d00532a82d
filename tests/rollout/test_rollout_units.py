"""The rollout's pieces that need no target: the plan, the cohort ranges, the command line."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from typing import TYPE_CHECKING

import pytest

from etlverify.contract import fnv1a_bucket
from etlverify.rollout.cohort import cohorts, pick_users
from etlverify.rollout.plan import PlanError, load_plan, parse_plan

if TYPE_CHECKING:
    from pathlib import Path


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
