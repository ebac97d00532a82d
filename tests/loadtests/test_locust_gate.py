"""The Locust scenario end to end: runs as subprocesses against the embedded target (or a reference
started with its default configuration, rate limits on).

Each run is short (18 s of load in 8 windows of 2 s) and records into, or compares with, a baseline
in a temporary folder, so these tests never touch `baselines/`. Locust runs with cwd = tmp_path
and `--config loadtests/locust.conf`, so its relative report paths land in tmp_path too; headless
unless a test runs the web UI.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from etlverify.baseline import load
from etlverify.embedded import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "loadtests" / "etl.py"
CONFIG = REPO / "loadtests" / "locust.conf"
# Short runs: 2 s warm-up + 8 windows of 2 s. Enough windows that a real shift reaches p < 0.05
# even with a couple of overlapping windows (8 vs 8: smallest p 0.00016).
SHORT = ["-t", "18s", "--etl-warmup", "2", "--etl-windows", "8"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(170)]


@dataclass
class Run:
    """One finished locust process."""

    code: int
    stdout: str
    stderr: str
    summary_path: Path

    @property
    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.summary_path.read_text(encoding="utf-8"))
        return data


def locust_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a locust subprocess: gevent patching on, no inherited LOCUST_* or
    ETLPLUS_* settings that could change the scenario."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "ETLPLUS_", "PYTEST_"))
    }
    env.update(extra or {})
    return env


def locust_cmd(summary: Path, args: Sequence[str], *, headless: bool = True) -> list[str]:
    """`python -m locust -f loadtests/etl.py --config loadtests/locust.conf [--headless] ...`."""
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--config",
        str(CONFIG),
        *(["--headless"] if headless else []),
        "--etl-summary",
        str(summary),
        *args,
    ]


def finish(proc: subprocess.Popen[str], summary: Path, timeout: float) -> Run:
    """Wait for a locust process; on overrun SIGTERM it (its quitting listeners stop the
    embedded target) and fail the test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM lets locust run its quitting listeners, which stop the embedded target.
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"locust did not finish in {timeout:.0f} s:\n{out[-2000:]}\n{err[-2000:]}")
    return Run(proc.returncode, out, err, summary)


def run_locust(
    cwd: Path,
    args: Sequence[str],
    timeout: float = 120.0,
    *,
    env: Mapping[str, str] | None = None,
    headless: bool = True,
) -> Run:
    """Run `locust -f loadtests/etl.py --config loadtests/locust.conf <args>` in `cwd`."""
    summary = cwd / "summary.json"
    proc = subprocess.Popen(
        locust_cmd(summary, args, headless=headless),
        cwd=cwd,
        env=locust_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return finish(proc, summary, timeout)


def our_lines(text: str) -> list[str]:
    """The gate's lines in a stream (Locust's own log lines start with a timestamp)."""
    return [line for line in text.splitlines() if line.startswith("etlverify:")]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-run baseline recorded with the SHORT load (the first test run of the module)."""
    cwd = tmp_path_factory.mktemp("record")
    baseline = cwd / "baseline.json"
    run = run_locust(cwd, [*SHORT, "--etl-record", "--etl-baseline", str(baseline)])
    assert run.code == 0, run.stdout + run.stderr
    assert "etlverify: recorded this run into" in run.stdout
    assert run.summary["recorded"] == {"path": str(baseline), "runs": 1}
    stored = load(baseline)
    assert len(stored.runs) == 1
    assert stored.environment.load["duration_s"] == 18.0
    # Locust's own reports, from the shared locust.conf, relative to the cwd.
    assert (cwd / "reports" / "locust.html").exists()
    assert (cwd / "reports" / "locust.json").exists()
    assert (cwd / "reports" / "locust_stats.csv").exists()
    return baseline


def test_same_load_passes_and_writes_the_summary(recorded: Path, tmp_path: Path) -> None:
    # A wide tolerance on the aggregate only (2 s windows hold too few samples per route for a
    # percentile): this checks the pipeline, not the noise of a shared machine.
    run = run_locust(
        tmp_path,
        [
            *SHORT,
            "--etl-baseline",
            str(recorded),
            "--etl-tolerance",
            "p50@HTTP Aggregated:100%,+5ms; p95@HTTP Aggregated:100%,+10ms; error_rate:+1pp",
            # The p95 of a route over 18 s (~150 samples) moves by +50% between two runs on a
            # busy machine; the trigger itself is tested in tests/etlverify.
            "--etl-response-time-trigger",
            "300%,+20ms",
        ],
        env={"ETLPLUS_PIPELINE_RUN_ID": "ci-4711-1"},
    )
    assert run.code == 0, run.stdout + run.stderr
    summary = run.summary
    assert summary["schema_version"] == 1
    assert summary["verdict"] == "PASS", run.stdout
    assert summary["exit_code"] == 0
    assert summary["reason"] is None
    assert summary["incomplete"] == []
    assert summary["rate_limited"] is None
    identity = summary["run"]
    assert identity["tool"] == "locust"
    assert identity["pipeline_run_id"] == "ci-4711-1"
    assert re.fullmatch(r"[0-9a-f]{32}", identity["id"])
    assert identity["started_at"] <= identity["test_started_at"] <= identity["finished_at"]
    assert identity["target_url"] == identity["host"]
    assert identity["target_url"].startswith("http://127.0.0.1:")
    assert re.fullmatch(r"[0-9a-f]{16}", identity["target_fingerprint"])
    names = {m["metric"] for m in summary["metrics"]}
    assert {"GET /api/health", "POST /api/jobs", "WS push cancelled"} <= names
    assert {t["name"] for t in summary["triggers"]} >= {"response_time_degradation"}
    assert summary["fingerprint"]["load"]["users"] == 12
    assert summary["run"]["failures"] == 0
    assert any(line.startswith("PASS against baseline") for line in run.stdout.splitlines())
    assert "Traceback" not in run.stderr


def test_injected_latency_fails_naming_the_metric(recorded: Path, tmp_path: Path) -> None:
    """+50% of the baseline's POST p50 as server latency on every job route: FAIL (exit 1).

    The p50 floor is 0.5 ms here: the reference answers in 1-3 ms, so half a p50 is about 1 ms, the
    size of the library's default floor; the test must not hinge on which side of it we land.
    """
    base = load(recorded).metrics["POST /api/jobs"].merged.p50_ms
    assert base is not None
    inject = round(base * 0.5, 3)
    run = run_locust(
        tmp_path,
        [
            *SHORT,
            "--etl-baseline",
            str(recorded),
            "--etl-inject-latency-ms",
            str(inject),
            "--etl-tolerance",
            "p50:10%,+0.5ms",
        ],
    )
    assert run.code == 1, run.stdout + run.stderr
    assert run.summary["verdict"] == "FAIL"
    assert run.summary["run"]["injected_latency_ms"] == inject
    fail_lines = [
        line
        for line in run.stdout.splitlines()
        if re.match(r"FAIL p50 (GET|POST|PUT) /api/jobs\S*: ", line)
    ]
    assert fail_lines, run.stdout
    # metric, current vs baseline, change, tolerance and p-value, all on the one line
    assert re.search(
        r"[\d.]+ ms vs baseline [\d.]+ ms \(\+[\d.]+%, tolerance 10% \+0\.5 ms, "
        r"Mann-Whitney p=[\d.e-]+\) - significant change beyond tolerance",
        fail_lines[0],
    ), fail_lines[0]
    failed = {m["metric"] for m in run.summary["metrics"] if m["verdict"] == "FAIL"}
    assert failed
    assert "GET /api/health" not in failed, "the fault spares /api/health"
    assert "etlverify: exit code 1" in run.stdout


def stale_summary(path: Path) -> None:
    """A passing summary of an earlier run, as a failed run must not leave it behind."""
    path.write_text(
        json.dumps({"schema_version": 1, "verdict": "PASS", "exit_code": 0, "run": {"id": "old"}}),
        encoding="utf-8",
    )


def test_broken_baseline_is_one_line_and_exit_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema_version": 1, "name": ', encoding="utf-8")
    stale_summary(tmp_path / "summary.json")
    run = run_locust(tmp_path, ["--etl-baseline", str(broken)], timeout=60)
    assert run.code == 2, run.stdout + run.stderr
    lines = our_lines(run.stderr)
    assert len(lines) == 1, run.stderr
    assert str(broken) in lines[0]
    assert "invalid JSON at line 1" in lines[0]
    assert "Traceback" not in run.stderr
    summary = run.summary
    assert summary["exit_code"] == 2
    assert summary["verdict"] == "INCOMPLETE"
    assert "invalid JSON at line 1" in summary["reason"]
    assert summary["run"]["id"] != "old"
    assert summary["run"]["tool"] == "locust"
    assert summary["run"]["finished_at"] is not None
    assert "embedded reference target" not in run.stdout, "nothing starts before the checks"


def test_bad_tolerance_is_one_line_and_exit_2(tmp_path: Path, recorded: Path) -> None:
    stale_summary(tmp_path / "summary.json")
    run = run_locust(
        tmp_path, ["--etl-baseline", str(recorded), "--etl-tolerance", "p95=10%"], timeout=60
    )
    assert run.code == 2, run.stdout + run.stderr
    assert run.summary["verdict"] == "INCOMPLETE"
    assert run.summary["reason"].startswith("--etl-tolerance: invalid tolerance spec")
    lines = our_lines(run.stderr)
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("etlverify: --etl-tolerance: invalid tolerance spec 'p95=10%'")
    assert "did you mean 'p95:10%'?" in lines[0]


def test_unreachable_host_is_exit_3(tmp_path: Path, recorded: Path) -> None:
    host = f"http://127.0.0.1:{free_port()}"
    run = run_locust(tmp_path, ["--etl-baseline", str(recorded), "-H", host], timeout=60)
    assert run.code == 3, run.stdout + run.stderr
    lines = our_lines(run.stderr)
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"etlverify: --host {host}: target unreachable")
    assert "Traceback" not in run.stderr


@pytest.fixture
def rate_limited_target(tmp_path: Path) -> Iterator[str]:
    """A reference ETL Plus with its default configuration (the contract's rate limits: 30
    requests per minute per client on /api/jobs), on a free loopback port; stopped by PID."""
    root = tmp_path / "deployment"
    init = subprocess.run(
        [sys.executable, "-m", "etlplus_reference", "init", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "etlplus_reference",
            "serve",
            "--root",
            str(root),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, "the reference exited at start"
            assert time.monotonic() < deadline, "the reference did not answer in 30 s"
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


def test_rate_limited_run_is_named_and_exits_5(
    recorded: Path, rate_limited_target: str, tmp_path: Path
) -> None:
    """Issue 8 item 7: the 429 answers are counted apart and the verdict says so in one line."""
    run = run_locust(
        tmp_path,
        [
            "-t",
            "10s",
            "--etl-warmup",
            "2",
            "--etl-windows",
            "4",
            "--etl-baseline",
            str(recorded),
            "-H",
            rate_limited_target,
        ],
    )
    assert run.code == 5, run.stdout + run.stderr
    verdicts = [line for line in run.stdout.splitlines() if line.startswith("RATE LIMITED: ")]
    assert len(verdicts) == 1, run.stdout
    assert re.match(
        r"RATE LIMITED: [\d.]+% of requests were answered 429 \(\d+ of \d+; limit 30 per 60 s on "
        r"\S+ /api/jobs\S*, from the target's X-RateLimit-Limit.*\): exempt the load generator or "
        r"lower the load$",
        verdicts[0],
    ), verdicts[0]
    assert re.search(
        r"^  429 POST /api/jobs: \d+ of \d+ requests \([\d.]+%\), limit 30 per 60 s$",
        run.stdout,
        re.MULTILINE,
    ), run.stdout
    assert "etlverify: exit code 5" in run.stdout
    assert not re.search(r"^FAIL ", run.stdout, re.MULTILINE), "no verdict on the service"
    assert "Traceback" not in run.stdout + run.stderr
    summary = run.summary
    assert summary["verdict"] == "INCOMPLETE"
    assert summary["exit_code"] == 5
    assert summary["reason"] == verdicts[0]
    limited = summary["rate_limited"]
    assert limited["count"] > 0
    assert 0 < limited["share_pct"] <= 100
    assert {r["metric"] for r in limited["routes"]} >= {"POST /api/jobs"}
    assert all(r["limit"] == 30 for r in limited["routes"])
    assert summary["metrics"] == [], "no baseline comparison on a rate-limited run"
    assert summary["run"]["target_url"] == rate_limited_target


def test_web_ui_autostart_run_ends_with_the_verdict(recorded: Path, tmp_path: Path) -> None:
    """Issue 9 item 7: no --headless: the web UI serves while the test runs, and the run ends
    (--autoquit) with the gate's verdict and exit code."""
    port = free_port()
    summary = tmp_path / "summary.json"
    args = [
        *SHORT,
        "--autostart",
        "--autoquit",
        "3",
        "--web-host",
        "127.0.0.1",
        "--web-port",
        str(port),
        "--etl-baseline",
        str(recorded),
        "--etl-tolerance",
        "p50@HTTP Aggregated:100%,+5ms; p95@HTTP Aggregated:100%,+10ms; error_rate:+1pp",
        "--etl-response-time-trigger",
        "300%,+20ms",
    ]
    proc = subprocess.Popen(
        locust_cmd(summary, args, headless=False),
        cwd=tmp_path,
        env=locust_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ui_status = None
    # The web UI starts after `init` (the embedded target's start): ~10 s on a busy machine.
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            ui_status = httpx.get(f"http://127.0.0.1:{port}/", timeout=2.0).status_code
            break
        except httpx.HTTPError:
            time.sleep(0.3)
    run = finish(proc, summary, timeout=90)
    assert ui_status == 200, run.stdout + run.stderr
    assert run.code == 0, run.stdout + run.stderr
    assert run.summary["verdict"] == "PASS", run.stdout
    assert any(line.startswith("PASS against baseline") for line in run.stdout.splitlines())
    assert "etlverify: exit code 0" in run.stdout
    assert run.summary["run"]["duration_s"] < 18 + 2, "the --autoquit wait is not measured"
    assert "Traceback" not in run.stderr


def test_interrupted_run_is_incomplete(recorded: Path, tmp_path: Path) -> None:
    """SIGTERM halfway through a 30 s run: exit 4, INCOMPLETE naming the interruption."""
    summary = tmp_path / "summary.json"
    proc = subprocess.Popen(
        locust_cmd(summary, ["-t", "30s", "--etl-warmup", "2", "--etl-baseline", str(recorded)]),
        cwd=tmp_path,
        env=locust_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(12)
    assert proc.poll() is None
    running = json.loads(summary.read_text(encoding="utf-8"))
    assert running["status"] == "running"
    assert running["verdict"] == "INCOMPLETE"
    assert running["run"]["finished_at"] is None
    proc.send_signal(signal.SIGTERM)
    run = finish(proc, summary, timeout=60)
    assert run.code == 4, run.stdout + run.stderr
    assert re.search(
        r"^INCOMPLETE: the run stopped after [\d.]+ s of the planned 30 s \(interrupted",
        run.stdout,
        re.MULTILINE,
    ), run.stdout
    assert run.summary["verdict"] == "INCOMPLETE"
    assert run.summary["exit_code"] == 4
    assert "interrupted" in run.summary["reason"]
    assert run.summary["run"]["id"] == running["run"]["id"]
    assert "Traceback" not in run.stdout + run.stderr


# --- distributed: one master and two real worker processes on loopback --------------------------
# The master judges only after every worker's final report (sent after its users stopped) has
# arrived; a worker killed with SIGKILL before its final report makes the run INCOMPLETE (exit 4),
# naming the worker, never a verdict on partial data.

#: 12 s of load: 2 s warm-up and 5 windows of 2 s; the workers report every 3 s.
DIST_RUN = ["-t", "12s", "--etl-warmup", "2", "--etl-windows", "5"]


class Worker:
    """A `locust --worker` subprocess (stdout discarded, stderr kept for the failure message)."""

    def __init__(self, cwd: Path, port: int) -> None:
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--config",
            str(CONFIG),
            "--worker",
            "--master-host",
            "127.0.0.1",
            "--master-port",
            str(port),
            "--etl-summary",
            str(cwd / "worker-summary.json"),
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=locust_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> str:
        """Wait briefly for it to quit (the master tells it to), else SIGTERM/SIGKILL it."""
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                _, err = self.proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate()
        return err or ""


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[int, list[Worker]]]:
    """Two workers waiting for a master on a free loopback port; stopped by PID afterwards."""
    port = free_port()
    started = [Worker(tmp_path, port), Worker(tmp_path, port)]
    try:
        yield port, started
    finally:
        for worker in started:
            if worker.proc.poll() is None:
                worker.stop()


def master(cwd: Path, port: int, args: Sequence[str]) -> subprocess.Popen[str]:
    cmd = locust_cmd(
        cwd / "summary.json",
        [
            *DIST_RUN,
            "--master",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--expect-workers",
            "2",
            "--expect-workers-max-wait",
            "40",
            *args,
        ],
    )
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=locust_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_workers_are_merged_after_their_final_reports(
    tmp_path: Path, workers: tuple[int, list[Worker]]
) -> None:
    port, procs = workers
    baseline = tmp_path / "dist.json"
    proc = master(tmp_path, port, ["--etl-record", "--etl-baseline", str(baseline)])
    run = finish(proc, tmp_path / "summary.json", timeout=90)
    errs = "".join(w.stop() for w in procs)
    assert run.code == 0, run.stdout + run.stderr + errs
    summary = run.summary
    seen = summary["workers"]
    assert len(seen) == 2, seen
    assert {w["pid"] for w in seen} == {w.proc.pid for w in procs}
    assert all(w["final_report"] for w in seen), seen
    assert all(w["reports"] >= 3 for w in seen), seen
    assert summary["incomplete"] == []
    assert summary["run"]["final_report_wait_s"] < 10
    measured = {m["name"]: m for m in summary["measured"]}
    # The master runs no users: every sample it judged came from the workers' reports.
    assert measured["GET /api/health"]["count"] > 20
    assert measured["WS push cancelled"]["count"] > 0
    assert summary["run"]["dropped_worker_reports"] == 0
    assert len(load(baseline).runs) == 1
    assert not (tmp_path / "worker-summary.json").exists(), "workers never judge"


def test_a_killed_worker_makes_the_run_incomplete_naming_it(
    tmp_path: Path, workers: tuple[int, list[Worker]]
) -> None:
    port, procs = workers
    baseline = tmp_path / "dist.json"
    proc = master(
        tmp_path,
        port,
        ["--etl-record", "--etl-baseline", str(baseline), "--etl-worker-report-timeout", "5"],
    )
    # Locust logs to stderr; wait for the spawn, then for the workers' first reports (every 3 s).
    spawned = threading.Event()
    lines: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "Sending spawn jobs" in line:
                spawned.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert spawned.wait(60), "".join(lines)
    time.sleep(5.0)
    victim = procs[1]
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(timeout=10)
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail("the master did not finish in 90 s")
    reader.join(timeout=10)
    err = "".join(lines)
    run = Run(proc.returncode, out, err, tmp_path / "summary.json")
    procs[0].stop()
    assert run.code == 4, run.stdout + run.stderr
    incomplete = [line for line in run.stdout.splitlines() if line.startswith("INCOMPLETE: ")]
    named = [line for line in incomplete if f"pid {victim.proc.pid}" in line]
    assert len(named) == 1, run.stdout
    assert re.match(
        r"INCOMPLETE: worker \S+ \(index \d+, pid \d+\) (went missing \(no heartbeat\) before "
        r"its final report|sent no final report within 5 s)",
        named[0],
    ), named[0]
    assert named[0].endswith("are missing")
    assert not any(line.startswith(("PASS", "FAIL")) for line in run.stdout.splitlines())
    summary = run.summary
    assert summary["verdict"] == "INCOMPLETE"
    assert summary["exit_code"] == 4
    assert summary["metrics"] == []
    by_pid = {w["pid"]: w for w in summary["workers"]}
    assert by_pid[victim.proc.pid]["final_report"] is False
    assert by_pid[procs[0].proc.pid]["final_report"] is True
    assert "refusing to record" in run.stdout
    assert not baseline.exists(), "an incomplete run is never recorded"
    assert "Traceback" not in run.stdout


def test_processes_run_with_csv_ends_without_a_traceback(tmp_path: Path) -> None:
    """Issue 17 item 1: `--processes 2` with locust.conf's `csv`: the verdict and exit code, the CSV
    files written, and no traceback after the verdict (Locust 2.47 closed the CSV files while its
    writer greenlet still ran: `locust_support.stop_csv_writers`)."""
    baseline = tmp_path / "processes.json"
    run = run_locust(
        tmp_path,
        [
            "-t",
            "20s",
            "--etl-warmup",
            "2",
            "--etl-windows",
            "6",
            "--processes",
            "2",
            "--etl-record",
            "--etl-baseline",
            str(baseline),
        ],
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.code == 0, output
    assert "etlverify: recorded this run into" in run.stdout, output
    assert our_lines(run.stdout)[-1] == "etlverify: exit code 0", output
    for word in ("Traceback", "Unhandled exception", "I/O operation on closed file"):
        assert word not in output, output
    summary = run.summary
    assert len(summary["workers"]) == 2, summary["workers"]
    assert all(w["final_report"] for w in summary["workers"]), summary["workers"]
    stats = (tmp_path / "reports" / "locust_stats.csv").read_text(encoding="utf-8")
    assert "Aggregated" in stats, stats


# --- which baseline: this machine's by default, and one that is not comparable -----------------


def test_default_baseline_is_this_machines_recorded_on_first_use(tmp_path: Path) -> None:
    """Issue 14 item 3: locust.conf's default baseline is this machine's. With an empty cache the
    run records run 1 of 3 into it, says so in one line, exits 0 and is INCOMPLETE (never PASS).
    The runs after it are judged in-process in test_locust_baseline.py."""
    cache = tmp_path / "cache"
    run = run_locust(tmp_path, SHORT, env={"ETLPLUS_BASELINE_CACHE": str(cache)})
    assert run.code == 0, run.stdout + run.stderr
    files = list(cache.glob("*.json"))
    assert len(files) == 1, run.stdout
    mentions = [line for line in run.stdout.splitlines() if "recording this machine's" in line]
    assert len(mentions) == 1, run.stdout
    assert re.fullmatch(
        r"etlverify: recording this machine's baseline, run 1 of 3 \(\d+ metrics, \d+ checks "
        r"measured; judged from run 4 on\): " + re.escape(str(files[0])),
        mentions[0],
    ), mentions[0]
    assert not re.search(r"^(PASS|FAIL|INCONCLUSIVE) ", run.stdout, re.MULTILINE), run.stdout
    summary = run.summary
    assert summary["verdict"] == "INCOMPLETE"
    assert summary["exit_code"] == 0
    assert summary["reason"] == mentions[0].removeprefix("etlverify: ")
    assert summary["baseline"] == str(files[0])
    assert summary["recorded"]["runs"] == 1
    assert len(load(files[0]).runs) == 1
    assert load(files[0]).environment.cpu_model is not None
    assert "Traceback" not in run.stdout + run.stderr


def test_a_baseline_of_another_load_plan_judges_nothing_relative(
    recorded: Path, tmp_path: Path
) -> None:
    """Issue 16: -t 12s against a baseline recorded with -t 18s, with +30 ms injected on every job
    route (a relative rollback trigger would fire on a comparable baseline): not comparable,
    relative triggers NOT JUDGED, exit 0 (4 with --etl-inconclusive-exit), never 1."""
    run = run_locust(
        tmp_path,
        [
            "-t",
            "12s",
            "--etl-warmup",
            "2",
            "--etl-windows",
            "8",
            "--etl-baseline",
            str(recorded),
            "--etl-inject-latency-ms",
            "30",
            "--etl-inconclusive-exit",
        ],
    )
    assert run.code == 4, run.stdout + run.stderr
    notes = [line for line in run.stdout.splitlines() if line.startswith("etlverify: NOT COMP")]
    assert len(notes) == 1, run.stdout
    assert "another load plan (duration_s: baseline 18.0, this run 12.0)" in notes[0]
    assert not re.search(r"^(FAIL|FIRED) ", run.stdout, re.MULTILINE), run.stdout
    summary = run.summary
    assert summary["verdict"] == "INCONCLUSIVE"
    assert summary["comparable"] is False
    assert summary["reason"].startswith("not comparable: baseline recorded with another load")
    states = {t["name"]: t for t in summary["triggers"]}
    for name in ("response_time_degradation", "error_rate_increase"):
        assert states[name]["state"] == "UNKNOWN"
        assert states[name]["reason"].startswith("NOT JUDGED: the baseline is not comparable")
    assert states["unavailability"]["state"] == "CLEAR"
    assert any("as measured it would be FAIL" in m["reason"] for m in summary["metrics"])
    assert "Traceback" not in run.stdout + run.stderr


def test_web_ui_closed_without_a_test_keeps_the_earlier_summary(tmp_path: Path) -> None:
    """Issue 14 item 3: the web UI opened and quit (SIGTERM) before any test started writes no
    summary: the earlier run's evidence stays as it was."""
    summary = tmp_path / "summary.json"
    stale_summary(summary)
    before = summary.read_text(encoding="utf-8")
    port = free_port()
    args = ["--web-host", "127.0.0.1", "--web-port", str(port), "--etl-baseline", "machine"]
    proc = subprocess.Popen(
        locust_cmd(summary, args, headless=False),
        cwd=tmp_path,
        env=locust_env({"ETLPLUS_BASELINE_CACHE": str(tmp_path / "cache")}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ui_status = None
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            ui_status = httpx.get(f"http://127.0.0.1:{port}/", timeout=2.0).status_code
            break
        except httpx.HTTPError:
            time.sleep(0.3)
    assert summary.read_text(encoding="utf-8") == before, "opening the UI writes nothing"
    proc.send_signal(signal.SIGTERM)
    run = finish(proc, summary, timeout=60)
    assert ui_status == 200, run.stdout + run.stderr
    assert run.code == 4, run.stdout + run.stderr
    assert summary.read_text(encoding="utf-8") == before
    assert (
        f"etlverify: INCOMPLETE: no test was started: nothing to judge ({summary} is left as it "
        "was: this process wrote no evidence)"
    ) in run.stdout
    assert not (tmp_path / "cache").exists(), "nothing recorded"
    assert "Traceback" not in run.stdout + run.stderr
