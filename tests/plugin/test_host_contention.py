"""Busy hosts (issue 16 items 1 and 2): the host is sampled alongside every measurement window,
and a relative FAIL measured on a contended host is measured again, at most twice, then
INCONCLUSIVE naming the contention; never DO NOT PROMOTE from contention alone. On a quiet host a
FAIL stays a FAIL.

The inner runs use a stand-in performance section: the real plugin and collector, with a measurer
that returns synthetic measurements (2 ms, or 3 ms when the target is "slow") and a host sampler
that reports what the test scripts (quiet or busy per measurement), so the rules are tested with
measurements the test builds (STYLE.md convention 12), in seconds. `tests/etlverify/
test_measure_host.py` shows the real sampler seeing a real busy loop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

SUITE = '''
import os

import pytest

from etlverify.measure import LatencyRecorder
from etlverify.measure.host import ContentionLimits, HostWindow, _with_reasons
from etlverify.pytest_plugin.performance import PERF_KEY, ROUTE_METRICS, GroupResult

CALLS = {"n": 0}


def _script(name, default):
    return os.environ.get(name, default).split(",")


def _measure(group, phase, tick):
    """Measurement k of this run: slow (3 ms) or fast (2 ms) as ETLV_SLOW scripts it."""
    k = CALLS["n"]
    CALLS["n"] += 1
    slow = _script("ETLV_SLOW", "0")
    ms = 3.0 if slow[min(k, len(slow) - 1)] == "1" else 2.0
    rec = LatencyRecorder(windows=5, window_s=1.0)
    for w in range(5):
        for i in range(120):
            for name in ROUTE_METRICS:
                rec.record(name, (ms + i * 0.01) / 1000, window=w)
    return GroupResult(group, rec.results())


class ScriptedHost:
    """The sampler of measurement k: busy (other processes 90% CPU) or quiet, per ETLV_BUSY."""

    def __init__(self, k):
        busy = _script("ETLV_BUSY", "0")
        self.busy = busy[min(k, len(busy) - 1)] == "1"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def window(self, start_s, end_s, sender_late_ms=None):
        other = 90.0 if self.busy else 3.0
        return _with_reasons(HostWindow(start_s, end_s, other, 0.0, 0.2, 20.0), ContentionLimits())


@pytest.fixture(scope="session")
def perf(request):
    collector = request.config.stash[PERF_KEY]
    collector.set_environment(None, None)  # as perf_run does with the target's status
    collector.measurer = _measure
    collector.host_sampler = lambda: ScriptedHost(CALLS["n"])
    return collector


@pytest.mark.performance
@pytest.mark.perf_uses("routes")
@pytest.mark.checklist("post.2_performance_validation.compare_response_times")
def test_routes(perf, request):
    perf.group(request, "routes")
    perf.report(request, what="routes", metrics=lambda m: m in ROUTE_METRICS)
'''
PYTEST = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-rs")


def _run(
    folder: Path, *args: str, slow: str = "0", busy: str = "0", baseline: bool = True
) -> tuple[int, str, dict]:  # type: ignore[type-arg]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETLPLUS_", "PYTEST_"))}
    env.update({"ETLV_SLOW": slow, "ETLV_BUSY": busy})
    env["ETLPLUS_BASELINE_CACHE"] = str(folder / "cache")
    reports = folder / "reports"
    proc = subprocess.run(
        [
            *PYTEST,
            "--html",
            str(reports / "report.html"),
            *(("--baseline", "machine") if baseline else ()),
            *args,
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    summary = json.loads((reports / "summary.json").read_text(encoding="utf-8"))
    return proc.returncode, out, summary


def _baseline(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_perf.py").write_text(SUITE, encoding="utf-8")
    for _ in range(3):  # this machine's baseline: three recording runs
        code, out, _ = _run(folder)
        assert code == 0, out


def _p50(summary: dict, metric: str = "GET /api/health") -> dict:  # type: ignore[type-arg]
    return next(m for m in summary["metrics"] if m["metric"] == metric and m["stat"] == "p50")


def test_contention(tmp_path: Path) -> None:
    folder = tmp_path / "suite"
    _baseline(folder)

    # +50% on a quiet host: a FAIL, measured once
    code, out, summary = _run(folder, slow="1", busy="0")
    assert code == 1, out
    assert summary["verdict"] == "DO NOT PROMOTE"
    assert _p50(summary)["verdict"] == "FAIL"
    host = summary["performance"]["host"]
    assert host["groups"]["routes"]["remeasured"] == 0
    assert host["groups"]["routes"]["contention"] is None
    assert len(host["groups"]["routes"]["windows"]) == 5

    # +50% on a host that stays busy: measured again twice, then INCONCLUSIVE naming the host
    code, out, summary = _run(folder, slow="1", busy="1")
    assert code == 0, out
    assert summary["verdict"] == "INCOMPLETE", out
    p50 = _p50(summary)
    assert p50["verdict"] == "INCONCLUSIVE"
    assert p50["reason"] == (
        "host busy: other processes 90% CPU in windows 1-5, re-measured twice; not a verdict "
        "on the target"
    )
    group = summary["performance"]["host"]["groups"]["routes"]
    assert group["remeasured"] == 2
    assert group["excused"].startswith("host busy")
    assert summary["performance"]["host"]["lines"] == [
        "routes: host: other processes 90% CPU in windows 1-5 (measured 3 times)"
    ]
    html = (folder / "reports" / "signoff.html").read_text(encoding="utf-8")
    assert "other processes 90% CPU in windows 1-5" in html
    assert all(t["state"] != "FIRED" for t in summary["triggers"])

    # the host was busy, the re-measure on a quiet host is healthy: the slowdown was the host's
    code, out, summary = _run(folder, slow="1,0", busy="1,0")
    assert code == 0, out
    assert summary["verdict"] == "PROMOTE", out
    assert summary["performance"]["host"]["groups"]["routes"]["remeasured"] == 1
    assert _p50(summary)["verdict"] == "PASS"

    # busy at first, then quiet and still slow: it fails on the quiet host
    code, out, summary = _run(folder, slow="1", busy="1,0")
    assert code == 1, out
    assert _p50(summary)["verdict"] == "FAIL"
    assert summary["performance"]["host"]["groups"]["routes"]["remeasured"] == 1


def test_a_young_recorded_baseline_does_not_refuse_its_own_recording(tmp_path: Path) -> None:
    """`--baseline FILE --baseline-record`, three times, as the README's staging pipeline records
    it: runs 2 and 3 are not judged against one or two runs (a busy moment, here +50%, would
    refuse the very runs that teach the baseline its spread); they are recorded."""
    folder = tmp_path / "suite"
    folder.mkdir()
    (folder / "test_perf.py").write_text(SUITE, encoding="utf-8")
    args = ("--baseline", "base.json", "--baseline-record")
    code, out, _ = _run(folder, *args, baseline=False)
    assert code == 0, out
    code, out, summary = _run(folder, *args, slow="1", baseline=False)
    assert code == 0, out
    assert "appended run 1" in out
    p50 = _p50(summary)
    assert p50["verdict"] == "INCONCLUSIVE"
    assert p50["reason"].startswith("recording the baseline: it holds 1 of the 3 runs it needs")
    assert all(t["state"] != "FIRED" for t in summary["triggers"])
    code, out, _ = _run(folder, *args, baseline=False)
    assert code == 0, out
    assert "it now holds 3 run(s)" in out
    # from the fourth run on it judges (against all three runs, the busy one included: its
    # spread is what the baseline learned)
    code, out, summary = _run(folder, "--baseline", "base.json", baseline=False)
    assert code == 0, out
    assert _p50(summary)["verdict"] == "PASS"
    assert "recording the baseline" not in json.dumps(summary)
