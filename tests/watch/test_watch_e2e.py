"""`etlverify watch` end to end: real references, real watcher processes, real receivers.

Three watches run at the same time (module fixture), each against its own reference, with the
windows compressed (10 s windows, probes every 0.5 s) so that the module takes about three minutes:

- healthy: 3 minutes, notifications to a JSON webhook and to an SMTP server (aiosmtpd) -> PASS,
  start, status and completion notifications in that order, the e-mail variant delivered;
- fault: an error fault on /api/health scheduled by the reference to start 60 s in; the
  error-rate trigger fires within one window of it, the notification arrives, `--on-trigger
  partial:logger` runs `rollback.sh partial logger` once, and watch.html shows the timeline;
- killed: `kill -9` of the watcher at a random moment, then the same command again: every window
  is in watch.json exactly once and the elapsed time is the wall time since the watch started.
"""

from __future__ import annotations

import email
import email.policy
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from watch_support import Prometheus, SmtpSink, Webhook, free_port

from etlverify.embedded import EmbeddedTarget

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.timeout(420)

COMPRESSED = (
    "--window", "10s", "--probe-every", "0.5s", "--metrics-every", "2s", "--job-every", "10s",
    "--baseline-windows", "3", "--trigger-windows", "2", "--recovery-windows", "2",
)  # fmt: skip
FAULT_AFTER_S = 60.0
PROMETHEUS = shutil.which("prometheus")
PROM_PORT = free_port()


@dataclass
class Watch:
    """One watcher process and what it left behind."""

    name: str
    target: EmbeddedTarget
    folder: Path
    args: list[str]
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    started: float = 0.0
    scraped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reports(self) -> Path:
        return self.folder / "reports"

    def start(self) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "etlverify", "watch", *self.args]
        argv += ["--base-url", self.target.base_url, "--deploy-root", str(self.target.root)]
        argv += ["--state", str(self.folder / "state"), "--reports", str(self.reports)]
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            cwd=self.folder,
        )
        self.procs.append(proc)
        return proc

    def wait(self, timeout: float) -> int:
        proc = self.procs[-1]
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            self.outputs.append(out)
            raise
        self.outputs.append(out)
        return proc.returncode

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.reports / "watch.json").read_text())
        return data

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
        self.target.stop()


@pytest.fixture(scope="module")
def receivers() -> Iterator[tuple[Webhook, SmtpSink]]:
    hook, smtp = Webhook(), SmtpSink()
    try:
        yield hook, smtp
    finally:
        hook.close()
        smtp.close()


@pytest.fixture(scope="module")
def watches(
    receivers: tuple[Webhook, SmtpSink], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Watch]]:
    """Start the three watches together; wait for all of them (about three minutes)."""
    hook, smtp = receivers
    made: dict[str, Watch] = {}
    try:
        for name, extra in (
            (
                "healthy",
                ["--for", "3m", "--status-every", "60s", "--prometheus-port", str(PROM_PORT),
                 "--notify", f"json://127.0.0.1:{hook.port}/healthy", "--notify", smtp.url()],
            ),
            (
                "fault",
                ["--for", "130s", "--on-trigger", "partial:logger",
                 "--notify", f"json://127.0.0.1:{hook.port}/fault"],
            ),
            ("killed", ["--for", "60s"]),
        ):  # fmt: skip
            target = EmbeddedTarget(enable_faults=True)
            target.start()
            folder = tmp_path_factory.mktemp(name)
            made[name] = Watch(name, target, folder, [*extra, *COMPRESSED])
        # the reference itself starts the fault 60 s from now (as a regression would)
        resp = httpx.post(
            f"{made['fault'].target.base_url}/api/_faults",
            json={
                "after_s": FAULT_AFTER_S,
                "errors": {"fraction": 0.5, "status": 500, "route_prefix": "/api/health"},
            },
            timeout=5,
        )
        assert resp.status_code in (200, 202), resp.text
        for watch in made.values():
            watch.started = time.time()
            watch.start()
        scraped: list[dict[str, Any]] = []
        prom_thread = None
        if PROMETHEUS is not None:
            prom = Prometheus(
                PROMETHEUS, tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{PROM_PORT}"]
            )

            def scrape() -> None:
                try:
                    scraped.extend(prom.wait_for("etlverify_watch_windows >= 2", timeout=120))
                finally:
                    prom.stop()

            prom_thread = threading.Thread(target=scrape, daemon=True)
            prom_thread.start()
        killed = made["killed"]
        time.sleep(random.uniform(12.0, 40.0))
        os.killpg(killed.procs[0].pid, signal.SIGKILL)  # kill -9 the watcher, mid-window
        killed.procs[0].communicate()
        time.sleep(2.0)
        killed.start()  # the same command: it resumes the same watch
        for watch in made.values():
            watch.wait(timeout=300)
        if prom_thread is not None:
            prom_thread.join(150)
        made["healthy"].scraped = scraped
        yield made
    finally:
        for watch in made.values():
            watch.stop()


def _events(data: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in data["events"] if e["type"] == kind]


def test_healthy_watch_passes_and_notifies_in_order(
    watches: dict[str, Watch], receivers: tuple[Webhook, SmtpSink]
) -> None:
    watch = watches["healthy"]
    out = watch.outputs[-1]
    assert watch.procs[-1].returncode == 0, out
    assert "etlverify watch: PASS (exit code 0)" in out
    assert "Traceback" not in out
    data = watch.summary()
    assert data["verdict"] == "PASS"
    assert len(data["windows"]) == 18
    hook, smtp = receivers
    titles = [b["title"] for path, b in hook.received if path == "/healthy"]
    kinds = [t.split(":")[0] for t in titles]
    assert kinds[0] == "watch started", titles
    assert kinds[-1] == "watch PASS", titles
    assert kinds[1:-1], titles
    assert all(k == "watch status" for k in kinds[1:-1]), titles
    mails = [email.message_from_bytes(m, policy=email.policy.default) for m in smtp.messages]
    subjects = [str(m["Subject"]) for m in mails]
    assert any(s.startswith("watch PASS") for s in subjects), subjects
    assert any(s.startswith("watch started") for s in subjects), subjects
    items = {i["id"]: i for i in data["items"]}
    assert items["comms.post_deployment.send_deployment_completion"]["status"] == "PASS"
    assert items["deploy.phase3.3_1_gradual_feature.monitor_stability_4"]["status"] == "SHORT"
    assert (
        "watched 3 m of the 4 h"
        in items["deploy.phase3.3_1_gradual_feature.monitor_stability_4"]["reason"]
    )


def test_fault_fires_the_trigger_notifies_and_rolls_back_once(
    watches: dict[str, Watch], receivers: tuple[Webhook, SmtpSink]
) -> None:
    watch = watches["fault"]
    out = watch.outputs[-1]
    assert watch.procs[-1].returncode == 10, out
    assert "etlverify watch: FAIL (exit code 10)" in out
    assert "Traceback" not in out
    data = watch.summary()
    fired = _events(data, "trigger")
    assert [e["name"] for e in fired][:1] == ["error_rate_increase"], fired
    # within one window (10 s) of the fault's start, plus the window it started in
    assert FAULT_AFTER_S <= fired[0]["t_s"] <= FAULT_AFTER_S + 2 * 10.0 + 3.0, fired
    rollbacks = _events(data, "rollback-started")
    assert len(rollbacks) == 1
    assert rollbacks[0]["command"] == "partial logger"
    done = _events(data, "rollback-finished")
    assert done, data["events"]
    assert done[0]["exit_code"] == 0, done
    hook, _ = receivers
    titles = [b["title"] for path, b in hook.received if path == "/fault"]
    assert any(t.startswith("ROLLBACK TRIGGER error_rate_increase FIRED") for t in titles), titles
    assert any(t.startswith("ROLLBACK done") for t in titles), titles
    page = (watch.reports / "watch.html").read_text()
    assert 'alt="watch timeline" src="data:image/png;base64,' in page
    assert "error_rate_increase" in page
    summary = json.loads((watch.reports / "watch_summary.json").read_text())
    states = {t["name"]: t["state"] for t in summary["triggers"]}
    assert states["error_rate_increase"] == "FIRED"


def test_killed_watcher_resumes_without_losing_or_repeating_a_window(
    watches: dict[str, Watch],
) -> None:
    watch = watches["killed"]
    out = "\n".join(watch.outputs)
    assert watch.procs[-1].returncode in (0, 11), out
    assert "resumed" in out
    data = watch.summary()
    indices = [w["index"] for w in data["windows"]]
    assert len(indices) == len(set(indices)), indices
    assert indices == sorted(indices)
    spans = [(w["start_s"], w["start_s"] + w["duration_s"]) for w in data["windows"]]
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.01, spans  # no window overlaps another: nothing counted twice
    # the plan is wall time since the start: the last window ends at 60 s of the watch's clock
    assert spans[-1][1] == pytest.approx(60.0, abs=1.5), spans
    assert len(_events(data, "watcher-resumed")) == 1
    assert len([e for e in data["events"] if e.get("key") == "start"]) == 1
    watched = sum(end - start for start, end in spans)
    assert 40.0 <= watched < 60.0, spans  # the kill cost the window in progress and 2 s


@pytest.mark.skipif(
    PROMETHEUS is None,
    reason="needs a Prometheus server on PATH: apt-get install -y prometheus (Debian/Ubuntu)",
)
def test_real_prometheus_scrapes_the_watch(watches: dict[str, Watch]) -> None:
    """Prometheus scraped `--prometheus-port` while the healthy watch ran; its query API returned
    the watch's series, labelled with the watch's id."""
    scraped = watches["healthy"].scraped
    assert scraped, "Prometheus returned no etlverify_watch_windows series within 120 s"
    watch_id = watches["healthy"].summary()["run"]["id"]
    assert scraped[0]["metric"]["watch"] == watch_id
    assert float(scraped[0]["value"][1]) >= 2


def _gate(reports: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "etlverify",
            "gate",
            str(reports),
            "--require",
            "watch",
            "--no-html",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_gate_merges_the_watch(watches: dict[str, Watch]) -> None:
    """`etlverify gate --require watch`: the fault watch blocks, naming the trigger; the healthy
    one does not block (PROMOTE, or INCOMPLETE for what a 3-minute watch cannot decide)."""
    fault = _gate(watches["fault"].reports)
    assert fault.returncode == 10, fault.stdout + fault.stderr
    assert "DO NOT PROMOTE" in fault.stdout
    assert "error_rate_increase" in fault.stdout
    healthy = _gate(watches["healthy"].reports)
    assert healthy.returncode in (0, 11), healthy.stdout + healthy.stderr
    assert "used " in healthy.stdout
