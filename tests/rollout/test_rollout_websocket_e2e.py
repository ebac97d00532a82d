"""The WebSocket manager judged where it lives, on real references:

- the judge's push measurement itself (`component="websocket"`): healthy, every job's pushes
  arrive and the first-push latency is measured on both sides; with the reference dropping a third
  of all pushes (its global WebSocket fault, every user alike) the loss is counted on both sides
  and is not blamed on the cohort;
- a rollout of the default plan (holds compressed to 8 s, 1 s windows, 100 jobs or requests a
  second) whose WebSocket manager delays its cohort's pushes by +50% of the push p50 (the
  reference's WebSocket cohort fault, calibrated at 25% as the judge measures it): rolled back at
  that component's first step, naming the push latency with both sides' figures; every other
  component reaches 100%. Skipped while the reference has no WebSocket cohort fault.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from etlverify.embedded import SUITE_CONFIG_OVERRIDES, EmbeddedTarget
from etlverify.rollout.cohort import CohortJudge
from etlverify.rollout.traffic import PUSH_METRIC

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.timeout(300)

COMPRESSED = ("--no-checks", "--hold", "8s", "--window", "1s", "--rate", "100")
FLAG = "new_websocket_manager"


@pytest.fixture
def target() -> Iterator[EmbeddedTarget]:
    made = EmbeddedTarget(enable_faults=True, config_overrides=dict(SUITE_CONFIG_OVERRIDES))
    made.start()
    try:
        yield made
    finally:
        made.stop()


def _pushes(
    base_url: str, hold_s: float = 3.0, *, healthy: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each side's `cohort ws push` pooled over a short hold: (inside, outside) windows' sums."""
    judge = CohortJudge(base_url)
    try:
        inside, outside, limited = judge.measure(
            (0.0, 25.0), (25.0, 100.0), hold_s, 0.5, 100.0, component="websocket"
        )
    finally:
        judge.close()
    assert limited == 0
    if healthy:
        assert judge.problems == []
    out = []
    for side in (inside, outside):
        assert list(side) == [PUSH_METRIC]
        merged = side[PUSH_METRIC].merged
        out.append(
            {
                "p50_ms": merged.p50_ms,
                "count": merged.count,
                "errors": merged.errors,
                "kinds": dict(merged.error_kinds),
                "windows": len(side[PUSH_METRIC].windows),
            }
        )
    return out[0], out[1]


def test_the_judge_times_and_counts_pushes_on_both_sides(target: EmbeddedTarget) -> None:
    inside, outside = _pushes(target.base_url)
    for side in (inside, outside):
        assert side["windows"] == 6
        assert side["count"] >= 100, side  # ~150 jobs a side in 3 s
        assert side["errors"] == 0, side
        assert 0 < side["p50_ms"] < 500, side
    url = f"{target.base_url}/api/_faults"
    resp = httpx.post(url, json={"websocket": {"drop_fraction": 0.33}}, timeout=5)
    assert resp.status_code == 200, resp.text
    try:
        # the fault drops every message, subscribe acknowledgements too: the judge goes on
        inside, outside = _pushes(target.base_url, healthy=False)
    finally:
        httpx.delete(url, timeout=5)
    for side in (inside, outside):
        share = side["errors"] / (side["errors"] + side["count"])
        # a job loses if either of its two pushes is dropped: 1 - 0.67^2 = 55% on average
        assert 0.3 < share < 0.8, side
        # mostly lost pushes; the fault drops a third of the subscribe acknowledgements and can
        # close a connection too (a CI run: lost 58, not_subscribed 43, ws_closed 1 of 102)
        assert side["kinds"].get("lost", 0) > 0, side
        assert set(side["kinds"]) <= {"lost", "not_subscribed", "ws_closed"}, side


def _set_flag(target: EmbeddedTarget, percent: int) -> None:
    path = target.root / "config" / "feature_flags.json"
    data = json.loads(path.read_text())
    data["flags"][FLAG] = percent > 0
    data["rollout_percentages"][FLAG] = percent
    path.write_text(json.dumps(data, indent=2))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = httpx.get(f"{target.base_url}/api/flags", timeout=5).json()
        if got["rollout_percentages"][FLAG] == percent:
            return
        time.sleep(0.2)
    raise AssertionError(f"the reference did not load {FLAG} at {percent}%")


def _late_pushes_by_50_percent(target: EmbeddedTarget) -> float:
    """A WebSocket cohort fault that makes the judge's push latency +50% for the users inside
    new_websocket_manager's cohort: calibrated at 25% (a delay does not show one to one at the
    client), then the flag is put back to 0. Skips while the reference has no such fault."""
    url = f"{target.base_url}/api/_faults"
    _set_flag(target, 25)
    try:
        inside, outside = _pushes(target.base_url)
        base = float(outside["p50_ms"])
        extra = 0.5 * base
        for _ in range(3):
            patch = {"cohorts": {"websocket": {"ws_delay_ms": round(extra, 3), "ws_drop": 0.0}}}
            resp = httpx.post(url, json=patch, timeout=5)
            if resp.status_code == 400:
                pytest.skip(f"the reference has no WebSocket cohort fault yet: {resp.text[:200]}")
            assert resp.status_code == 200, resp.text
            inside, outside = _pushes(target.base_url)
            seen = float(inside["p50_ms"]) - float(outside["p50_ms"])
            if seen >= 0.45 * base:
                break
            extra *= 0.5 * base / max(seen, 0.05 * base)
    finally:
        _set_flag(target, 0)
    return extra


def test_late_pushes_roll_back_the_websocket_manager_alone(
    target: EmbeddedTarget, tmp_path: Path
) -> None:
    _late_pushes_by_50_percent(target)
    argv = [sys.executable, "-m", "etlverify", "rollout", *COMPRESSED,
            "--base-url", target.base_url, "--deploy-root", str(target.root),
            "--state", str(tmp_path / "state"), "--reports", str(tmp_path / "reports")]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 10, out
    assert "Traceback" not in out
    assert "problematic component: websocket" in out
    report = json.loads((tmp_path / "reports" / "rollout.json").read_text())
    verdicts = [r for r in report["journal"] if r["type"] == "verdict"]
    failed = [v for v in verdicts if v["verdict"] == "FAIL"]
    assert [(v["component"], v["percent"]) for v in failed] == [("websocket", 25)], failed
    assert f"FAIL p50 {PUSH_METRIC}: inside " in failed[0]["reason"]
    assert " ms vs outside " in failed[0]["reason"]
    backs = [r for r in report["journal"] if r["type"] == "rollback-finished"]
    assert [b["component"] for b in backs] == ["websocket"]
    assert backs[0]["flag_off"] is True
    flags = httpx.get(f"{target.base_url}/api/flags", timeout=5).json()
    assert flags["flags"][FLAG] is False
    assert flags["rollout_percentages"][FLAG] == 0
    others = {k: v for k, v in flags["rollout_percentages"].items() if k != FLAG}
    assert len(others) == 5
    assert all(v == 100 for v in others.values()), flags
