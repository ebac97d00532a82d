"""Locust as Locust users expect: the --etl-* options are listed, and locust.conf does not force
headless mode (the web UI works with ordinary Locust flags).

`locust -f FILE --help` answers before Locust imports FILE, so no locustfile option can appear there
(locust#2917); `--etl-help` and `python loadtests/etl.py --help` print Locust's help with them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "loadtests" / "etl.py"
CONFIG = REPO / "loadtests" / "locust.conf"

pytestmark = pytest.mark.timeout(90)

OPTIONS = (
    "--etl-baseline FILE",
    "--etl-tolerance SPECS",
    "--etl-record",
    "--etl-worker-report-timeout SECONDS",
    "--etl-inconclusive-exit",
    "--etl-response-time-trigger SPEC",
)


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "ETLPLUS_"))}
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    "cmd",
    [
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--etl-help"],
        [sys.executable, str(LOCUSTFILE), "--help"],
    ],
    ids=["locust --etl-help", "python etl.py --help"],
)
def test_help_lists_the_etl_options(cmd: list[str], tmp_path: Path) -> None:
    result = run(cmd, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "etlverify performance gate (docs/locust.md):" in out
    for option in OPTIONS:
        assert option in out, option
    # Locust's own options are there too: this is Locust's help, extended
    assert "--headless" in out
    assert "--autostart" in out
    assert "Traceback" not in result.stderr
    assert "embedded reference target" not in out, "help starts nothing"


def test_locust_conf_does_not_force_headless() -> None:
    keys = {
        line.split("=", 1)[0].strip()
        for line in CONFIG.read_text(encoding="utf-8").splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    assert "headless" not in keys
    assert {"users", "spawn-rate", "run-time", "html", "etl-baseline"} <= keys
    # the web UI is loopback-only unless asked otherwise
    assert "web-host = 127.0.0.1" in CONFIG.read_text(encoding="utf-8")
