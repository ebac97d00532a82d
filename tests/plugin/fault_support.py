"""Helpers of `test_fault_detection.py`: run a subset of the real verification suite against a
reference target whose fault switches are set, and read back what each check said.

Nothing here is a fixture: the test module owns the target's lifecycle; these are plain functions
and small classes over an `EmbeddedTarget` and the JUnit XML of an inner run.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from etlverify.embedded import EmbeddedTarget

__all__ = [
    "REPO",
    "CheckOutcome",
    "DropFirstTransition",
    "SuiteRun",
    "clear_faults",
    "loaded_sha256",
    "run_suite",
    "set_faults",
    "settle",
]

#: the checkout: the inner runs use its root conftest (the plugin manifest) and pyproject ini
REPO = Path(__file__).resolve().parents[2]
FAULTS = "/api/_faults"
#: what a Python traceback or pytest's source excerpt looks like in a failure text
TRACEBACK = re.compile(
    r"Traceback \(most recent call last\)|^\s*File \".*\", line \d+|\.py:\d+: in \w|^[>E] {3}",
    re.MULTILINE,
)


# -- fault switches -------------------------------------------------------------------------------


def set_faults(target: EmbeddedTarget, **settings: Any) -> dict[str, Any]:
    """POST `settings` to the reference's fault switches; the resulting state."""
    resp = httpx.post(f"{target.base_url}{FAULTS}", json=settings, timeout=5)
    assert resp.status_code == 200, f"faults {settings}: HTTP {resp.status_code} {resp.text}"
    state: dict[str, Any] = resp.json()
    assert state["active"], state
    return state


def clear_faults(target: EmbeddedTarget) -> None:
    """DELETE the fault switches: everything off."""
    resp = httpx.delete(f"{target.base_url}{FAULTS}", timeout=5)
    assert resp.status_code in (200, 204), f"clearing faults: HTTP {resp.status_code} {resp.text}"


def loaded_sha256(target: EmbeddedTarget) -> dict[str, str]:
    """The sha256 of config.json and feature_flags.json as the server reports them loaded."""
    body = httpx.get(f"{target.base_url}/api/health/status", timeout=5).json()
    return {"config": body["config"]["sha256"], "feature_flags": body["feature_flags"]["sha256"]}


def _file_sha256(target: EmbeddedTarget) -> dict[str, str]:
    config = target.root / "config"
    return {
        "config": hashlib.sha256((config / "config.json").read_bytes()).hexdigest(),
        "feature_flags": hashlib.sha256((config / "feature_flags.json").read_bytes()).hexdigest(),
    }


def settle(target: EmbeddedTarget, timeout: float = 15.0) -> None:
    """Wait until the server has loaded the deployment's files as they are on disk (after a run
    that changed them while the server ignored changes), so no run inherits another's state."""
    deadline = time.monotonic() + timeout
    while True:
        files, loaded = _file_sha256(target), loaded_sha256(target)
        if files == loaded:
            return
        assert time.monotonic() < deadline, f"server never loaded the files: {files} vs {loaded}"
        time.sleep(0.2)


# -- inner runs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckOutcome:
    """One check of an inner run, as its JUnit test case tells it."""

    nodeid: str
    outcome: str  # passed | failed | error | skipped
    message: str
    text: str

    @property
    def full_text(self) -> str:
        """Message and body: what a reader of the report sees for this check."""
        return f"{self.message}\n{self.text}"


@dataclass
class SuiteRun:
    """The result of one inner run: exit code, terminal output, and every check's outcome."""

    args: list[str]
    returncode: int
    output: str
    seconds: float
    checks: dict[str, CheckOutcome] = field(default_factory=dict)

    def describe(self) -> str:
        """Enough of the run to debug an assertion: the command line and the output's tail."""
        return f"$ {' '.join(self.args)}\n(exit {self.returncode})\n{self.output[-6000:]}"

    def check(self, nodeid: str) -> CheckOutcome:
        """The outcome of `nodeid` (which must have run)."""
        assert nodeid in self.checks, f"{nodeid} did not run\n{self.describe()}"
        return self.checks[nodeid]

    def assert_passed(self, nodeids: Iterable[str]) -> None:
        """Every one of `nodeids` passed."""
        bad = {n: self.check(n) for n in nodeids if self.check(n).outcome != "passed"}
        assert not bad, (
            "control checks did not pass:\n"
            + "\n".join(f"  {n}: {c.outcome}: {c.message[:300]}" for n, c in bad.items())
            + f"\n{self.describe()}"
        )

    def assert_failed(self, nodeid: str, *snippets: str) -> CheckOutcome:
        """`nodeid` failed (not errored), its text has every snippet and no Python traceback."""
        check = self.check(nodeid)
        assert check.outcome == "failed", (
            f"{nodeid} should have caught the fault but {check.outcome}: {check.message[:500]}\n"
            f"{self.describe()}"
        )
        text = check.full_text
        missing = [s for s in snippets if s not in text]
        assert not missing, f"{nodeid}: failure text lacks {missing}:\n{text}"
        mark = TRACEBACK.search(check.text)
        assert mark is None, f"{nodeid}: failure text shows a traceback ({mark}):\n{text}"
        return check


def _nodeid(case: ET.Element) -> str:
    classname = case.get("classname", "")
    return f"{classname.replace('.', '/')}.py::{case.get('name', '')}"


def parse_junit(path: Path) -> dict[str, CheckOutcome]:
    """Node id -> outcome for every test case of a JUnit XML file."""
    checks: dict[str, CheckOutcome] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message, text = "passed", "", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                message, text = node.get("message", ""), node.text or ""
                break
        nodeid = _nodeid(case)
        if nodeid in checks and outcome == "passed":
            continue  # a teardown error is a second test case: keep the first, worse, outcome
        checks[nodeid] = CheckOutcome(nodeid, outcome, message, text)
    return checks


def _child_env() -> dict[str, str]:
    """This environment without anything that would change the inner run's settings or make it
    think it is an xdist worker (which skips the checks that change the whole target)."""
    drop = ("ETLPLUS_", "PYTEST_XDIST", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def run_suite(
    target: EmbeddedTarget,
    selection: Sequence[str],
    workdir: Path,
    *,
    extra: Sequence[str] = (),
    timeout: float = 180,
) -> SuiteRun:
    """Run `selection` (node ids under verification/) of the real suite against `target`.

    Reports go to `workdir` (never the checkout's reports/); the run is bounded by `timeout`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    junit = workdir / "junit.xml"
    args = [
        sys.executable,
        "-m",
        "pytest",
        "--rootdir",
        str(REPO),
        "-p",
        "no:randomly",
        "-p",
        "no:xdist",
        "-q",
        "-rA",
        "--base-url",
        target.base_url,
        "--deploy-root",
        str(target.root),
        "--allow-destructive",
        "--html",
        str(workdir / "report.html"),
        "--junitxml",
        str(junit),
        *extra,
        *selection,
    ]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            args,
            cwd=REPO,
            env=_child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise AssertionError(
            f"inner run exceeded {timeout:g} s: {' '.join(args)}\n{out[-4000:]}"
        ) from None
    run = SuiteRun(args, proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)
    assert junit.exists(), f"no JUnit XML written\n{run.describe()}"
    run.checks = parse_junit(junit)
    return run


# -- one lost WebSocket push, on purpose ----------------------------------------------------------


class DropFirstTransition(threading.Thread):
    """Makes the reference lose exactly the first status push of one job, for every subscriber.

    The reference decides a drop when it sends, after `delay_ms`; with a delay of `delay_s` every
    push of a connection leaves `delay_s` after the previous one. The watcher waits for a job whose
    id starts with `prefix` to appear in `GET /api/jobs`, switches `drop_fraction` to 1.0 at once
    (well before the job's first push, `pending -> running`, is sent), and back to 0.0 as soon as
    `/api/health/websocket` counts `subscribers` dropped messages (that push, on each connection),
    long before the terminal push leaves. The chain the subscribers see then lacks its first
    transition: exactly what a check of real-time updates must call lost.
    """

    def __init__(
        self, target: EmbeddedTarget, prefix: str, *, subscribers: int, delay_s: float = 0.6
    ) -> None:
        super().__init__(name="drop-first-transition", daemon=True)
        self.base_url = target.base_url
        self.prefix = prefix
        self.subscribers = subscribers
        self.delay_s = delay_s
        self.events: list[str] = []
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self._known: set[str] = set()
        self._dropped0 = 0

    def arm(self) -> None:
        """Set the per-push delay and start watching."""
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            resp = client.post(
                FAULTS, json={"websocket": {"delay_ms": self.delay_s * 1000, "drop_fraction": 0}}
            )
            resp.raise_for_status()
            self._known = {j["id"] for j in client.get("/api/jobs").json()["jobs"]}
            self._dropped0 = self._dropped(client)
        self.start()

    def stop(self) -> None:
        """Stop watching (bounded) and leave drops off."""
        self._stop_event.set()
        if self.ident is not None:
            self.join(timeout=10)
        httpx.post(
            f"{self.base_url}{FAULTS}", json={"websocket": {"drop_fraction": 0}}, timeout=5
        ).raise_for_status()

    @staticmethod
    def _dropped(client: httpx.Client) -> int:
        return int(client.get("/api/health/websocket").json()["websocket"]["messages_dropped"])

    def _log(self, what: str) -> None:
        self.events.append(f"{time.monotonic():.3f} {what}")

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.base_url, timeout=5) as client:
                job = self._wait_for_job(client)
                if job is None:
                    return
                client.post(FAULTS, json={"websocket": {"drop_fraction": 1.0}}).raise_for_status()
                self._log(f"job {job} seen: drops on")
                deadline = time.monotonic() + 10 * self.delay_s + 5
                while not self._stop_event.is_set() and time.monotonic() < deadline:
                    dropped = self._dropped(client) - self._dropped0
                    if dropped >= self.subscribers:
                        break
                    time.sleep(0.01)
                client.post(FAULTS, json={"websocket": {"drop_fraction": 0}}).raise_for_status()
                self._log(f"drops off after {self._dropped(client) - self._dropped0} dropped")
        except BaseException as exc:  # reported by the test, never lost in the thread
            self.error = exc

    def _wait_for_job(self, client: httpx.Client) -> str | None:
        while not self._stop_event.is_set():
            for job in client.get("/api/jobs").json()["jobs"]:
                job_id = str(job["id"])
                if job_id.startswith(self.prefix) and job_id not in self._known:
                    return job_id
            time.sleep(0.01)
        self._log("stopped before the job appeared")
        return None
