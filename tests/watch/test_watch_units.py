"""The watch's pieces that need no target: durations, the state folder after a crash, the command
line's one-line usage errors and its exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from watch_support import free_port

from etlverify.durations import format_duration, parse_duration
from etlverify.watch.state import StateError, WatchState

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("4h", 14400), ("1h30m", 5400), ("2d", 172800), ("1w", 604800),
     ("45", 45), ("0.5s", 0.5)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "--for") == seconds


@pytest.mark.parametrize("text", ["", "4x", "h", "-5m", "0s", "1h30"])
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(ValueError, match=r"^--for: "):
        parse_duration(text, "--for")


def test_format_duration() -> None:
    assert format_duration(4320) == "1 h 12 m"
    assert format_duration(185) == "3 m 5 s"
    assert format_duration(14400) == "4 h"


def test_partial_last_line_is_dropped_and_cut_before_the_next_append(tmp_path: Path) -> None:
    state = WatchState(tmp_path / "s")
    state.create({"watch_id": "x"})
    state.add_window({"index": 0, "duration_s": 1.0})
    state.add_window({"index": 1, "duration_s": 1.0})
    with state.windows_path.open("ab") as fh:  # a crash in the middle of a write
        fh.write(b'{"index": 2, "durat')
    assert [w["index"] for w in state.windows()] == [0, 1]
    state.prepare_append()
    state.add_window({"index": 2, "duration_s": 1.0})
    assert [w["index"] for w in state.windows()] == [0, 1, 2]


def test_a_window_written_twice_counts_once(tmp_path: Path) -> None:
    state = WatchState(tmp_path / "s")
    state.create({"watch_id": "x"})
    state.add_window({"index": 0, "duration_s": 1.0, "copy": 1})
    state.add_window({"index": 0, "duration_s": 1.0, "copy": 2})
    assert state.windows() == [{"index": 0, "duration_s": 1.0, "copy": 1}]


def test_a_broken_line_in_the_middle_is_one_line_error(tmp_path: Path) -> None:
    state = WatchState(tmp_path / "s")
    state.create({"watch_id": "x"})
    state.windows_path.write_text('{"index": 0}\nnot json\n{"index": 1}\n')
    with pytest.raises(StateError, match=r"windows.jsonl: line 2 is not JSON$"):
        state.windows()


def _watch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etlverify", "watch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--for", "soon"], "--for: expected a duration such as 90s"),
        (["--for", "8d"], "--for: at most a week, got '8d'"),
        (["--for", "1m", "--window", "5m"], "--window 5m is longer than --for 1m"),
        (["--for", "1m", "--on-trigger", "partial:loger"], "--on-trigger: expected none, full"),
        (["--for", "1m", "--base-url", "localhost:1"], "--base-url: expected a URL starting"),
        (["--for", "1m", "--notify", "nosuch://x"], "notification URL"),
        (["--for", "1m", "--baseline", "missing.json"], "--baseline missing.json: cannot read"),
        (["--for", "1m", "--metrics", "graphite=http://x"], "--metrics: expected prometheus=URL"),
        (["--for", "1m", "--metrics", "prometheus=x:9090"], "starting with http:// or https://"),
        (
            ["--for", "1m", "--metrics", "prometheus=http://127.0.0.1:1", "--analysis", "no.toml"],
            "--analysis no.toml: cannot read it",
        ),
        (["--for", "1m", "--progress-every", "soon"], "--progress-every: expected a duration"),
    ],
)
def test_usage_errors_are_one_line_exit_14(args: list[str], message: str, tmp_path: Path) -> None:
    result = _watch(*args, cwd=tmp_path)
    assert result.returncode == 14, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_a_baseline_that_is_not_a_watch_is_refused(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text(json.dumps({"tool": "locust", "windows": []}))
    result = _watch("--for", "1m", "--baseline", "b.json", cwd=tmp_path)
    assert result.returncode == 14
    assert "not a watch.json with windows" in result.stderr


def test_unreachable_target_exits_13_with_a_curl_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = _watch("--for", "1m", "--base-url", url, cwd=tmp_path)
    assert result.returncode == 13, result.stdout + result.stderr
    assert f"target {url} is unreachable" in result.stderr
    assert f"curl -sS -m 5 {url}/api/health" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_watch_too_short_to_judge_says_so_in_its_first_line(tmp_path: Path) -> None:
    """`--for 1m` with the default baseline (5 windows of 60 s) can never judge the relative
    triggers: the first line says so and names the way out (it is still a watch: the target here
    is unreachable, which ends it with 13 right after)."""
    url = f"http://127.0.0.1:{free_port()}"
    result = _watch("--for", "1m", "--base-url", url, cwd=tmp_path)
    first = result.stdout.splitlines()[0]
    assert first.startswith("etlverify watch: a watch of 1 m cannot judge the relative triggers")
    assert "first 5 windows of 1 m (5 m)" in first
    assert "--baseline FILE" in first
    assert "--baseline-windows N" in first
    # long enough, or with a stored baseline: no such line
    for args in (["--for", "6m"], ["--for", "1m", "--window", "10s", "--baseline-windows", "3"]):
        result = _watch(*args, "--base-url", url, cwd=tmp_path)
        assert "cannot judge" not in result.stdout, args


def test_sigterm_ends_the_watch_with_a_partial_verdict(tmp_path: Path) -> None:
    """SIGTERM: the watch stops at once, writes its evidence and says how much it watched."""
    import signal
    import time

    from etlverify.embedded import EmbeddedTarget

    target = EmbeddedTarget()
    target.start()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "etlverify", "watch", "--for", "10m", "--window", "2s",
             "--probe-every", "0.5s", "--base-url", target.base_url,
             "--state", str(tmp_path / "state"), "--reports", str(tmp_path / "reports")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        )  # fmt: skip
        time.sleep(7.0)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        target.stop()
    assert proc.returncode == 11, out
    assert "etlverify watch: INCONCLUSIVE (exit code 11)" in out
    assert "of 10 m (stopped by SIGTERM)" in out
    assert "Traceback" not in out
    data = json.loads((tmp_path / "reports" / "watch.json").read_text())
    kinds = [e["type"] for e in data["events"] if e["type"] != "notification"]
    assert kinds[-2:] == ["stopped", "finished"]
