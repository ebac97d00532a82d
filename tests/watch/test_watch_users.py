"""`etlverify watch` judges what users experience (issue 15): real references with faults on, users
sending `GET /api/jobs` at about 5 requests a second, real watcher processes, compressed windows.

Three watches run at the same time (module fixture, about 45 s):

- fault: once the baseline and one clean window are on disk, half the `/api/...` answers become
  500 (the health route the probes use is untouched): `error_rate_increase` fires within 3 windows,
  naming the server counters, and the watch exits 10;
- calm: the same without the fault ends PASS, the server counters deciding;
- blind: a target without request counters (a proxy that strips the block), no --metrics: the
  "not observable" line, the error-rate item INCONCLUSIVE, exit 11.

Then, once the reference serves `/metrics`, a real Prometheus scrapes it every second and a watch
with `--metrics prometheus=URL` fires `response_time_degradation` on latency added to the job
routes only (which the probes never call), naming Prometheus.

Each waits for readiness (the watch's own state file), never for a fixed time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from watch_support import Prometheus, StrippingProxy, Users

from etlverify.embedded import EmbeddedTarget

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# one xdist group: the module fixture's three watches run once, on one worker (the Prometheus
# latency test, which judges time, is in the "timing" group of its own marker)
pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("watch-users")]

WINDOW_S = 5.0
COMPRESSED = (
    "--window", "5s", "--probe-every", "0.5s", "--metrics-every", "1s", "--job-every", "1h",
    "--baseline-windows", "3", "--trigger-windows", "2",
)  # fmt: skip
PROMETHEUS = shutil.which("prometheus")
PROGRESS = re.compile(r"^watch \d[\dhms]*/\d[\dhms]*: ")
NOT_OBSERVABLE = (
    "users' error rate not observable: the target exports no request counters and no --metrics "
    "source was given"
)


@dataclass
class Run:
    """One watcher process against one target, and what it left behind."""

    name: str
    base_url: str
    folder: Path
    args: list[str]
    proc: subprocess.Popen[str] | None = None
    output: str = ""
    fault_wall: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        argv = [sys.executable, "-m", "etlverify", "watch", *self.args, "--base-url", self.base_url]
        argv += ["--state", str(self.folder / "state"), "--reports", str(self.folder / "reports")]
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            cwd=self.folder,
        )

    def windows_on_disk(self) -> int:
        path = self.folder / "state" / "windows.jsonl"
        return path.read_text().count("\n") if path.exists() else 0

    def wait_windows(self, n: int, timeout: float) -> None:
        """Until the watch has `n` windows on disk (its own readiness signal)."""
        deadline = time.monotonic() + timeout
        while self.windows_on_disk() < n:
            assert self.proc is not None
            assert self.proc.poll() is None, f"the {self.name} watch ended early"
            assert time.monotonic() < deadline, f"{self.name}: {n} windows not in {timeout} s"
            time.sleep(0.1)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            self.output, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            self.output, _ = self.proc.communicate()
            raise
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def data(self, name: str = "watch.json") -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.folder / "reports" / name).read_text())
        return result

    def started_ts(self) -> float:
        return float(json.loads((self.folder / "state" / "watch.json").read_text())["started_ts"])

    def progress_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if PROGRESS.match(line)]


def _fault(base_url: str, body: dict[str, Any]) -> float:
    """Switch a fault on now; the wall time it took effect (after the answer)."""
    resp = httpx.post(f"{base_url}/api/_faults", json=body, timeout=5)
    assert resp.status_code in (200, 202), resp.text
    return time.time()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """The three watches, started together; waited for (about 45 s)."""
    targets: list[EmbeddedTarget] = []
    users: list[Users] = []
    proxy: StrippingProxy | None = None
    made: dict[str, Run] = {}
    try:
        for name, seconds in (("fault", "45s"), ("calm", "40s"), ("blind", "25s")):
            target = EmbeddedTarget(enable_faults=True)
            targets.append(target.start())
            users.append(Users(target.base_url).start())
            url = target.base_url
            if name == "blind":
                proxy = StrippingProxy(target.base_url)
                url = proxy.base_url
            folder = tmp_path_factory.mktemp(name)
            made[name] = Run(name, url, folder, ["--for", seconds, *COMPRESSED])
        for run in made.values():
            run.start()
        fault = made["fault"]
        fault.wait_windows(4, timeout=60)  # the 3 baseline windows and one judged clean
        fault.fault_wall = _fault(targets[0].base_url, {"errors": {"fraction": 0.5, "status": 500}})
        for run in made.values():
            run.wait(timeout=150)
        made["fault"].extra["users"] = dict(users[0].statuses)
        yield made
    finally:
        for run in made.values():
            run.stop()
        for u in users:
            u.stop()
        if proxy is not None:
            proxy.close()
        for target in targets:
            target.stop()


def _fired(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in data["events"] if e["type"] == "trigger"]


def test_users_errors_fire_within_three_windows_naming_the_server_counters(
    runs: dict[str, Run],
) -> None:
    run = runs["fault"]
    assert run.proc is not None
    assert run.proc.returncode == 10, run.output
    assert "Traceback" not in run.output
    assert run.extra["users"].get(500), run.extra  # the users did get 500s
    data = run.data()
    fired = _fired(data)
    assert [e["name"] for e in fired][:1] == ["error_rate_increase"], fired
    assert fired[0]["decided_by"] == "server counters"
    assert run.fault_wall is not None
    fault_t = run.fault_wall - run.started_ts()
    assert 0 <= fired[0]["t_s"] - fault_t <= 3 * WINDOW_S, (fault_t, fired)
    # the watch's own probes saw nothing: only the users' signal could tell
    probe_errors = sum(
        int(m.get("errors") or 0) for w in data["windows"] for m in w["metrics"].values()
    )
    assert probe_errors == 0
    assert re.search(
        r"rollback trigger error_rate_increase FIRED \(source: server counters\) at .*: "
        r"users \(server counters\): \d+\.\d\d% errors",
        run.output,
    ), run.output
    summary = run.data("watch_summary.json")
    states = {t["name"]: (t["state"], t.get("decided_by")) for t in summary["triggers"]}
    assert states["error_rate_increase"] == ("FIRED", "server counters")
    assert summary["signals"]["error_rate"]["source"] == "counters"
    assert summary["signals"]["sources"]["counters"]["errors"] > 0
    # every window carries every source's figures
    assert all({"counters", "probes"} <= set(w["sources"]) for w in data["windows"])
    page = (run.folder / "reports" / "watch.html").read_text()
    assert "<h2>Users' signals</h2>" in page
    assert "server counters" in page


def test_the_same_users_without_the_fault_pass(runs: dict[str, Run]) -> None:
    run = runs["calm"]
    assert run.proc is not None
    assert run.proc.returncode == 0, run.output
    assert "etlverify watch: PASS (exit code 0)" in run.output
    summary = run.data("watch_summary.json")
    assert summary["signals"]["error_rate"] == {
        "source": "counters",
        "label": "server counters",
        "observable": True,
        "reason": None,
    }
    counters = summary["signals"]["sources"]["counters"]
    assert counters["requests"] > 100, counters  # the users' requests, not only the watch's
    assert "error rate decided by server counters" in summary["measured"]


def test_a_target_without_request_counters_is_not_observable(runs: dict[str, Run]) -> None:
    run = runs["blind"]
    assert run.proc is not None
    assert run.proc.returncode == 11, run.output
    assert "Traceback" not in run.output
    assert NOT_OBSERVABLE in run.output
    summary = run.data("watch_summary.json")
    assert summary["verdict"] == "INCONCLUSIVE"
    assert NOT_OBSERVABLE in summary["incomplete"]
    item = {i["id"]: i for i in summary["items"]}["success.long_term.error_rate_baseline"]
    assert item["status"] == "INCONCLUSIVE"
    assert item["reason"].startswith(NOT_OBSERVABLE)
    states = {t["name"]: t["state"] for t in summary["triggers"]}
    assert states["error_rate_increase"] == "UNKNOWN"
    assert summary["signals"]["error_rate"]["observable"] is False


@pytest.mark.parametrize("name", ["fault", "calm", "blind"])
def test_one_progress_line_per_window(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    lines = run.progress_lines()
    windows = len(run.data()["windows"])
    assert len(lines) >= windows, run.output
    if name == "blind":
        assert "users not observable (no request counters, no --metrics)" in lines[-1]
    else:
        users = r"users [\d,]+ req( \([\d,]+ the watch's\))?, \d+\.\d% err \(server counters\)"
        assert re.search(users, lines[-1]), lines
    assert re.search(r"probes \d+ ok", lines[-1]), lines


def test_quiet_prints_the_verdict_only(tmp_path: Path) -> None:
    """`--quiet`: no header and no progress lines, only the verdict and its reasons."""
    target = EmbeddedTarget().start()
    try:
        run = Run("quiet", target.base_url, tmp_path, ["--for", "2s", "--window", "1s",
                  "--probe-every", "0.5s", "--metrics-every", "0.25s", "--baseline-windows", "1",
                  "--quiet"])  # fmt: skip
        run.start()
        run.wait(timeout=60)
    finally:
        target.stop()
    lines = run.output.splitlines()
    assert lines[0].startswith("etlverify watch: PASS (exit code 0)"), run.output
    assert not run.progress_lines()


@pytest.mark.xdist_group("timing")
@pytest.mark.skipif(
    PROMETHEUS is None,
    reason="needs a Prometheus server on PATH: apt-get install -y prometheus (Debian/Ubuntu)",
)
def test_prometheus_sees_latency_on_the_job_routes_the_probes_never_call(tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    target = EmbeddedTarget(enable_faults=True).start()
    prom: Prometheus | None = None
    users: Users | None = None
    run: Run | None = None
    try:
        if httpx.get(f"{target.base_url}/metrics", timeout=5).status_code != 200:
            pytest.skip("the reference serves no /metrics yet (etlplus_http_requests_total)")
        prom = Prometheus(PROMETHEUS, tmp_path, [f"127.0.0.1:{target.port}"])
        assert prom.wait_ready(60), (tmp_path / "prometheus.log").read_text()[-2000:]
        users = Users(target.base_url).start()
        assert prom.wait_for("etlplus_http_requests_total", timeout=60), "nothing scraped"
        run = Run(
            "prometheus",
            target.base_url,
            tmp_path,
            ["--for", "55s", *COMPRESSED, "--baseline-windows", "5", "--trigger-windows", "3",
             "--metrics", f"prometheus={prom.url}"],
        )  # fmt: skip
        run.start()
        run.wait_windows(6, timeout=90)  # the 5 baseline windows and one judged clean
        run.fault_wall = _fault(target.base_url, {"latency": {"routes": {"GET /api/jobs": 150}}})
        code = run.wait(timeout=150)
    finally:
        if run is not None:
            run.stop()
        if users is not None:
            users.stop()
        if prom is not None:
            prom.stop()
        target.stop()
    assert code == 10, run.output
    assert "Traceback" not in run.output
    fired = _fired(run.data())
    latency = [e for e in fired if e["name"] == "response_time_degradation"]
    assert latency, fired
    assert latency[0]["decided_by"] == "Prometheus"
    assert "(source: Prometheus)" in run.output
    summary = run.data("watch_summary.json")
    assert summary["signals"]["response_time"]["source"] == "prometheus"
    assert summary["signals"]["error_rate"]["source"] == "prometheus"
    # the probes never called the job routes: their own response time did not move
    assert not any(e["name"] == "error_rate_increase" for e in fired), fired
