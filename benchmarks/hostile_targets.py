"""Time to verdict against hostile targets: the main command against each hostile mode.

For each mode of the reference target (`serve --enable-faults --hostile MODE`: a lifetime
connection cap, a hang on a reused connection after an error, error bodies that are not JSON, a
WebSocket handshake that never completes, a process that exits after the first job, 400 with a
non-contract body for any query string) and a healthy control, this script:

1. initialises a deployment root and starts the reference on a free loopback port (stopped by PID);
2. runs ``python -m pytest -m post_deploy --base-url URL --deploy-root ROOT`` (the main command
   against a deployed target, reports into a folder of its own) with a hard limit;
3. prints, per mode: the time to the verdict, the exit code, the verdict, whether the first
   primary finding names the cause (a keyword per mode; for exit-after-first-job also the target's
   last moments: the job whose creation it did not survive), and whether ``Traceback``,
   ``Exception Group``, ``object at 0x`` or a library path (``site-packages``) appeared in stdout,
   stderr, summary.json or signoff.html.

    python benchmarks/hostile_targets.py [--modes connection-cap=100,non-json-errors] [--limit 300]

Goal (issues 8 and 17): every hostile mode ends DO NOT PROMOTE within 120 s with reports written,
the first primary finding names the cause, and no traceback anywhere; the healthy control is not
blocked by any hostile-target finding.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from etlverify.embedded import SUITE_CONFIG_OVERRIDES, deep_merge

ROOT = Path(__file__).resolve().parent.parent
#: mode -> words one of which the first primary finding must contain
MODES: dict[str, tuple[str, ...]] = {
    "connection-cap=100": ("stopped answering",),
    "connection-cap=200": ("stopped answering",),
    "hang-after-error": ("keep-alive",),
    "non-json-errors": ("not JSON", "not the contract's JSON"),
    "ws-handshake-hang": ("WebSocket handshake",),
    "exit-after-first-job": ("stopped accepting connections", "process"),
    "query-string-400": ("query string",),
}
#: mode -> what the first primary finding must also say: the target's last moments (issue 17)
MOMENTS: dict[str, str] = {
    "exit-after-first-job": "after POST /api/jobs created ",
}
FORBIDDEN = ("Traceback", "Exception Group", "object at 0x", "site-packages")


@dataclass
class Outcome:
    """One mode's run."""

    mode: str
    seconds: float
    exit_code: int | None
    verdict: str
    first_finding: str
    names_cause: bool
    forbidden: list[str]
    reports: bool


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


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait for the port to accept a TCP connection (no HTTP request: the cap counts those)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the reference exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("the reference did not listen in time")


def run_mode(mode: str, keywords: tuple[str, ...], limit: float, work: Path) -> Outcome:
    """Start the reference in `mode` (empty: healthy), run the main command, judge the output."""
    root = work / "deployment"
    reports = work / "reports"
    subprocess.run(
        [sys.executable, "-m", "etlplus_reference", "init", str(root)],
        check=True,
        capture_output=True,
    )
    _suite_limits(root)
    port = _free_port()
    argv = [
        sys.executable, "-m", "etlplus_reference", "serve", "--root", str(root),
        "--host", "127.0.0.1", "--port", str(port), "--enable-faults",
    ]  # fmt: skip
    if mode:
        argv += ["--hostile", mode]
    log = (work / "server.log").open("wb")
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, server)
        cmd = [
            sys.executable, "-m", "pytest", "-m", "post_deploy", "-p", "no:randomly",
            "--base-url", f"http://127.0.0.1:{port}", "--deploy-root", str(root),
            f"--html={reports / 'report.html'}", f"--junitxml={reports / 'junit.xml'}",
        ]  # fmt: skip
        started = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit, check=False
            )
            code: int | None = proc.returncode
            out, err = proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            code = None
            out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode()
            err = exc.stderr if isinstance(exc.stderr, str) else (exc.stderr or b"").decode()
        seconds = time.monotonic() - started
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(server.pid, signal.SIGKILL)
                server.wait()
        log.close()
    summary_path, signoff_path = reports / "summary.json", reports / "signoff.html"
    texts = {"stdout": out, "stderr": err}
    verdict, first = "(no summary)", ""
    if summary_path.exists():
        texts["summary.json"] = summary_path.read_text(encoding="utf-8")
        data = json.loads(texts["summary.json"])
        verdict = str(data.get("verdict"))
        primary = data.get("primary_findings") or []
        first = str(primary[0].get("sentence", "")) if primary else ""
    if signoff_path.exists():
        texts["signoff.html"] = signoff_path.read_text(encoding="utf-8")
    forbidden = [
        f"{word!r} in {where}" for where, t in texts.items() for word in FORBIDDEN if word in t
    ]
    names = any(k.lower() in first.lower() for k in keywords) if keywords else not first
    if mode in MOMENTS:
        names = names and MOMENTS[mode] in first
    return Outcome(
        mode or "(healthy)",
        seconds,
        code,
        verdict,
        first,
        names,
        forbidden,
        summary_path.exists() and signoff_path.exists(),
    )


def main() -> int:
    """Run every selected mode and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default=",".join(["", *MODES]), help="comma-separated modes")
    parser.add_argument("--limit", type=float, default=300.0, help="hard limit per run (s)")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",")]
    results: list[Outcome] = []
    for mode in modes:
        keywords = MODES.get(mode, ())
        with tempfile.TemporaryDirectory(prefix="etlverify-hostile-") as tmp:
            outcome = run_mode(mode, keywords, args.limit, Path(tmp))
        results.append(outcome)
        print(
            f"{outcome.mode:<24} {outcome.seconds:6.1f} s  exit {outcome.exit_code}  "
            f"{outcome.verdict:<15} names cause: {'yes' if outcome.names_cause else 'NO '}  "
            f"tracebacks: {', '.join(outcome.forbidden) or 'none'}  reports: "
            f"{'yes' if outcome.reports else 'NO'}",
            flush=True,
        )
        print(f"    first finding: {outcome.first_finding[:220]}", flush=True)
    out = ROOT / "reports" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    (out / "hostile_targets.json").write_text(
        json.dumps([r.__dict__ for r in results], indent=2) + "\n", encoding="utf-8"
    )
    hostile = [r for r in results if r.mode != "(healthy)"]
    ok = all(
        r.seconds <= 120 and r.verdict == "DO NOT PROMOTE" and r.names_cause and not r.forbidden
        for r in hostile
    )
    print("goal met" if ok else "goal NOT met", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
