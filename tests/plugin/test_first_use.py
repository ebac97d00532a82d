"""The first uses of a machine baseline, said once and counted as runs (issue 14 item 4, issue 16
item 5), and `etlverify baseline record`, which records the missing runs now.

The inner runs use a stand-in performance section: the real plugin and collector, with a measurer
that returns fixed, synthetic measurements of the four groups (no target, no load), so three runs
and a judged fourth take seconds. The real section's first use is in test_performance_gate.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from markupsafe import escape

from etlverify import cli
from etlverify.pytest_plugin import performance

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

SUITE = '''
import pytest

from etlverify.measure import LatencyRecorder
from etlverify.pytest_plugin.performance import (
    PERF_KEY, POOL_METRIC, ROUTE_METRICS, USERS_METRIC, WS_METRIC, GroupResult,
)

NAMES = {"routes": ROUTE_METRICS, "users": (USERS_METRIC,), "pool": (POOL_METRIC,),
         "ws": (WS_METRIC,)}


def _measure(group, phase, tick):
    rec = LatencyRecorder(windows=5, window_s=1.0)
    for w in range(5):
        for i in range(120):
            for name in NAMES[group]:
                rec.record(name, 0.002 + i * 1e-5, window=w)
    return GroupResult(group, rec.results())


@pytest.fixture(scope="session")
def perf(request):
    """The run's collector with the synthetic measurer (no etl_ fixture: no target starts)."""
    collector = request.config.stash[PERF_KEY]
    collector.measurer = _measure
    return collector


def _check(perf, request, group):
    perf.group(request, group)
    perf.report(request, what=group, metrics=lambda m: m in NAMES[group])


@pytest.mark.performance
@pytest.mark.perf_uses("routes")
@pytest.mark.checklist("post.2_performance_validation.compare_response_times")
def test_routes(perf, request):
    _check(perf, request, "routes")


@pytest.mark.performance
@pytest.mark.perf_uses("users")
@pytest.mark.checklist("post.2_performance_validation.concurrent_user_load")
def test_users(perf, request):
    _check(perf, request, "users")


@pytest.mark.performance
@pytest.mark.perf_uses("pool")
@pytest.mark.checklist("post.2_performance_validation.validate_database_connection")
def test_pool(perf, request):
    _check(perf, request, "pool")


@pytest.mark.performance
@pytest.mark.perf_uses("ws")
@pytest.mark.checklist("post.2_performance_validation.websocket_throughput")
def test_ws(perf, request):
    _check(perf, request, "ws")
'''
PYTEST = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist")


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETLPLUS_", "PYTEST_"))}
    env["ETLPLUS_BASELINE_CACHE"] = str(cache)
    return env


def _suite(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_perf.py").write_text(SUITE, encoding="utf-8")
    return folder


def _verdict(out: str) -> str:
    """The terminal's etlverify verdict section."""
    return out[out.index("etlverify verdict") :].split("summary: ", maxsplit=1)[0]


def test_first_uses_are_said_once_and_counted_as_runs(tmp_path: Path) -> None:
    folder = _suite(tmp_path / "suite")
    cache = tmp_path / "cache"
    reports = folder / "reports"
    outs: list[str] = []
    for k in (1, 2, 3, 4):
        proc = subprocess.run(
            [*PYTEST, "--html", str(reports / "report.html"), "--baseline", "machine", "-rs"],
            cwd=folder,
            env=_env(cache),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        out = proc.stdout + proc.stderr
        outs.append(out)
        assert proc.returncode == 0, out
        summary = json.loads((reports / "summary.json").read_text(encoding="utf-8"))
        html = (reports / "signoff.html").read_text(encoding="utf-8")
        (path,) = cache.glob("*.json")
        state = f"performance: this machine's baseline {path}: {k - 1} of 3 runs recorded"
        assert state in out, out
        # the sign-off page counts runs, not the four groups' entries (was 4 / 8 / 12)
        assert f"<br>{min(k, 3)} recorded run(s), last " in html
        if k == 4:
            assert "(cached; " in out
            assert "recording this machine's baseline" not in out
            assert summary["performance"]["first_use"] is None
            break
        first_use = summary["performance"]["first_use"]
        assert (first_use["run"], first_use["of"], first_use["metrics"]) == (k, 3, 7)
        assert first_use["complete"] is (k == 3)
        verdict = _verdict(out)
        said = [ln for ln in verdict.splitlines() if "recording this machine's baseline" in ln]
        assert len(said) == 1, verdict  # once, not once per metric and item
        assert "first use (" not in verdict
        assert len(verdict.splitlines()) < 10, verdict
        line = said[0].strip()
        assert line == first_use["line"]
        assert [f["text"] for f in summary["undecided"]] == [line]
        # every metric's verdict stays in summary.json
        assert len(summary["metrics"]) == 28
        assert all(m["reason"].startswith(f"first use ({k} of 3 runs)") for m in summary["metrics"])
        # once in the verdict's list, once above the performance table
        assert html.count(str(escape(line))) == 2
        if k < 3:
            assert line == (
                f"performance: recording this machine's baseline, run {k} of 3 (7 metrics, 28 "
                f"statistics measured; judged from run 4 on); to record "
                + ("runs 2-3" if k == 1 else "run 3")
                + " now: etlverify baseline record"
            )
            assert "there is no earlier baseline to compare it with" in json.dumps(summary)
        else:
            assert line == (
                "performance: recording this machine's baseline, run 3 of 3 (7 metrics, 28 "
                "statistics measured): the baseline is now complete; judging starts with the "
                "next run"
            )
            assert "there is no earlier baseline" not in out + json.dumps(summary) + html
            assert "judged once 3 are recorded" not in out
        assert "no earlier baseline" not in out  # the long reason stays out of the terminal


# -- etlverify baseline record --------------------------------------------------------------


def test_record_command_knows_the_plugin_s_state_line() -> None:
    """The command parses the plugin's header line; the two spell it the same way."""
    assert cli.MACHINE_STATE_PREFIX == performance.MACHINE_STATE_PREFIX
    assert cli.MACHINE_RUNS == performance.MACHINE_RUNS


class _Stub:
    """Stands in for the pytest processes: answers the probe with a state line, and writes each
    run's summary.json as a first-use run would."""

    def __init__(self, held: int) -> None:
        self.held = held
        self.commands: list[list[str]] = []

    def __call__(self, cmd: Sequence[str], env: Mapping[str, str]) -> tuple[int, str]:
        self.commands.append(list(cmd))
        if "--collect-only" in cmd:
            state = f"{self.held} of 3 runs recorded, judged from run 4 on"
            return 0, f"{cli.MACHINE_STATE_PREFIX}/cache/m.json: {state}\n"
        self.held += 1
        reports = Path(cmd[cmd.index("--html") + 1]).parent
        reports.mkdir(parents=True)
        first_use: dict[str, Any] = {"run": self.held, "of": 3, "metrics": 7}
        first_use["groups"] = ["routes", "users", "pool", "ws"]
        summary = {"performance": {"first_use": first_use}}
        (reports / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
        return 0, "..."


def test_record_command_runs_the_missing_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stub = _Stub(held=1)
    monkeypatch.setattr(cli, "_run_pytest", stub)
    monkeypatch.setenv("ETLPLUS_BASELINE_RECORD", "1")  # this command sets what it records
    argv = ["baseline", "record", "--base-url", "http://etl:8080", "--", "--perf-duration", "20"]
    assert cli.main(argv) == 0
    probe, run1, run2, after = stub.commands
    head = [sys.executable, "-m", "pytest", "-m", "performance", "-p", "no:locust"]
    tail = ["--baseline", "machine", "--base-url", "http://etl:8080", "--perf-duration", "20"]
    assert probe == [*head, *tail, "--collect-only"]
    assert after == probe
    for run in (run1, run2):
        assert run[: len(head) + len(tail)] == [*head, *tail]
        assert run[len(head) + len(tail) :: 2] == ["--html", "--junitxml"]
    assert run1[run1.index("--html") + 1] != run2[run2.index("--html") + 1]  # fresh folders
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("recording this machine's baseline /cache/m.json: it holds 1 of 3")
    assert re.fullmatch(
        r"run 1 of 2: recorded as the baseline's run 2 of 3 \(routes, users, pool, ws; 7 "
        r"metrics\) in \d+ s",
        lines[1],
    )
    assert lines[2].startswith("run 2 of 2: recorded as the baseline's run 3 of 3")
    assert lines[3] == (
        "this machine's baseline /cache/m.json holds 3 of 3 runs: complete; from now on the "
        "performance checks are judged against it"
    )
    assert len(lines) == 4


def test_record_command_runs_at_most_n_and_refuses_its_own_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stub = _Stub(held=0)
    monkeypatch.setattr(cli, "_run_pytest", stub)
    assert cli.main(["baseline", "record", "--runs", "1"]) == 0
    assert len(stub.commands) == 3  # probe, one run, probe
    assert "--base-url" not in stub.commands[1]
    out = capsys.readouterr().out
    assert "run 1 of 1: recorded as the baseline's run 1 of 3" in out
    assert out.rstrip().endswith("2 more to record (etlverify baseline record)")
    stub.commands.clear()
    assert cli.main(["baseline", "record", "--", "--baseline-record"]) == 14
    assert stub.commands == []
    assert "--baseline-record is set by this command" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cli.main(["baseline", "record", "--runs", "0"])
    assert stop.value.code == 14


def test_record_command_records_for_real(tmp_path: Path) -> None:
    """The command itself, on the stand-in section: two runs, then nothing left to record."""
    folder = _suite(tmp_path / "suite")
    cmd = [sys.executable, "-m", "etlverify", "baseline", "record", "--runs", "2"]
    env = _env(tmp_path / "cache")
    proc = subprocess.run(
        cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4, proc.stdout
    assert "it holds 0 of 3 runs; 2 run(s)" in lines[0]
    assert lines[1].startswith("run 1 of 2: recorded as the baseline's run 1 of 3 (routes, users")
    assert lines[2].startswith("run 2 of 2: recorded as the baseline's run 2 of 3")
    assert lines[3].endswith("holds 2 of 3 runs: 1 more to record (etlverify baseline record)")
    assert not (folder / "reports").exists()  # the user's reports/ are left alone
    proc = subprocess.run(
        [*cmd[:-2]], cwd=folder, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "run 1 of 1: recorded as the baseline's run 3 of 3" in proc.stdout
    assert "holds 3 of 3 runs: complete" in proc.stdout
    again = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0
    assert again.stdout.strip().endswith("holds 3 runs: complete, nothing to record")
