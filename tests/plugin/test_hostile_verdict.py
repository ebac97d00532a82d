"""Hostile targets: a fast, bounded verdict that names the root cause (issue 8).

Each test starts the reference with one hostile mode (`serve --enable-faults --hostile MODE`: the
modes imitate real misbehaving ETL Plus builds), runs a slice of the real post-deployment suite
against it as a deployed target (`--base-url`), and proves:

- the run ends DO NOT PROMOTE with summary.json and signoff.html written, within a bound;
- the first primary finding names the cause (the target stopped answering, the process exited, the
  WebSocket handshake never completes, the keep-alive hang, non-JSON error bodies, query strings);
- once the target stopped answering, later checks fail fast as "blocked", not by waiting;
- no traceback, exception group or object repr in the output, summary.json or signoff.html.

`benchmarks/hostile_targets.py` measures the same against the whole `pytest -m post_deploy`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from fault_support import REPO, parse_junit

from etlverify.embedded import SUITE_CONFIG_OVERRIDES, deep_merge

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.slow

SELECTION = (
    "verification/rollback/test_rollback_triggers.py::test_service_is_available",
    "verification/post_deploy/test_post_errors.py",
    "verification/post_deploy/test_post_jobs.py",
    "verification/post_deploy/test_post_websocket.py",
)
FORBIDDEN = ("Traceback", "Exception Group", "object at 0x")
#: mode -> words, one of which the first primary finding must contain
MODES = {
    "connection-cap=5": ("stopped answering",),
    "hang-after-error": ("keep-alive",),
    "non-json-errors": ("not JSON",),
    "ws-handshake-hang": ("WebSocket handshake",),
    "exit-after-first-job": ("stopped accepting connections",),
    "query-string-400": ("query string",),
}
#: the slice's time bound with a 3 s request timeout (the healthy slice takes ~15 s)
BOUND_S = 90.0


@dataclass
class Hostile:
    """A reference started in one hostile mode."""

    url: str
    root: Path
    process: subprocess.Popen[bytes]


def _suite_limits(root: Path) -> None:
    """The embedded target's config changes for the suite (raised rate limits, fast reload), so
    the time measured is the hostile behaviour's, not pacing within the default limits."""
    path = root / "config" / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(deep_merge(config, SUITE_CONFIG_OVERRIDES), indent=2), "utf-8")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hostile(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hostile]:
    """The reference in the mode given by indirect parametrisation, stopped by PID after."""
    mode = str(request.param)
    root = tmp_path / "deployment"
    subprocess.run(
        [sys.executable, "-m", "etlplus_reference", "init", str(root)],
        check=True,
        capture_output=True,
    )
    _suite_limits(root)
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
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
            "--enable-faults",
            "--hostile",
            mode,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # wait for the listening socket without an HTTP request
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    try:
        yield Hostile(f"http://127.0.0.1:{port}", root, process)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


@pytest.mark.parametrize(
    ("hostile", "keywords"),
    list(MODES.items()),
    indirect=["hostile"],
    ids=list(MODES),
)
def test_hostile_target_gets_a_fast_verdict_naming_the_cause(
    hostile: Hostile, keywords: tuple[str, ...], tmp_path: Path
) -> None:
    reports = tmp_path / "reports"
    args = [
        sys.executable, "-m", "pytest", "--rootdir", str(REPO), "-p", "no:randomly",
        "-p", "no:xdist", "--base-url", hostile.url, "--deploy-root", str(hostile.root),
        "--request-timeout", "3", "--html", str(reports / "report.html"),
        "--junitxml", str(reports / "junit.xml"), *SELECTION,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETLPLUS_", "PYTEST_"))}
    started = time.monotonic()
    proc = subprocess.run(
        args, cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    seconds = time.monotonic() - started
    output = proc.stdout + proc.stderr
    where = f"$ {' '.join(args)}\n(exit {proc.returncode}, {seconds:.0f} s)\n{output[-5000:]}"
    assert proc.returncode == 1, where
    assert seconds < BOUND_S, where
    summary_text = (reports / "summary.json").read_text(encoding="utf-8")
    signoff_text = (reports / "signoff.html").read_text(encoding="utf-8")
    summary = json.loads(summary_text)
    assert summary["verdict"] == "DO NOT PROMOTE", where
    first = summary["primary_findings"][0]["sentence"]
    assert any(k.lower() in first.lower() for k in keywords), f"first finding: {first}\n{where}"
    for name, text in (("output", output), ("summary", summary_text), ("signoff", signoff_text)):
        for word in FORBIDDEN:
            assert word not in text, f"{word!r} in the {name}\n{where}"
    assert "primary findings (root cause first):" in output
    assert output.rstrip().splitlines()[-1].startswith("etlverify: DO NOT PROMOTE"), where
    checks = parse_junit(reports / "junit.xml")
    blocked = [c for c in checks.values() if "blocked:" in c.full_text]
    if keywords[0] in ("stopped answering", "stopped accepting connections"):
        assert blocked, f"no check was blocked\n{where}"
        cause = summary["primary_findings"][0]
        assert cause["consequences"] >= 1, cause
        assert all(c.nodeid in cause["checks"] for c in blocked), cause
    if keywords[0] == "stopped accepting connections":
        # issue 17 item 4: its last moments, and the FATAL line of its log (--deploy-root)
        assert re.search(
            r"Last moments: the target went away about \d+\.\d s after POST /api/jobs created "
            r"\S+.*; the first failure after it: .+(connection refused|was refused)",
            first,
        ), first
        assert "[FATAL] [Faults] Hostile exit armed: exiting with status 70" in first, first
