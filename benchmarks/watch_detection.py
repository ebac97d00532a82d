"""How fast `etlverify watch` notices what users experience, and how often it fires for nothing.

For each scenario, `--repeat` times: a fresh reference (faults on), users sending `GET /api/jobs`
at `--rate` requests a second (many client addresses, as production has), and a watch with
compressed windows (`--window`, 5 baseline windows, 3 trigger windows). Once the baseline and one
clean window are on the watch's disk, the scenario's fault is switched on:

- ``errors``: a share (`--error-fraction`, 0.1) of the `/api/jobs` answers become 500;
- ``latency``: `GET /api/jobs` answers `--latency-ms` (100) later;
- ``none``: nothing (A/A): every fire is a false one.

Each scenario runs with the server counters as the best source and, when `/usr/bin/prometheus` is
installed and the reference serves `/metrics`, again with ``--metrics prometheus=URL`` (a
Prometheus scraping the reference every second). Printed per scenario and source: how many runs
fired the expected trigger, the time to fire in windows after the fault (median, max), and false
fires (a trigger before the fault, or any in A/A).

    python benchmarks/watch_detection.py [--repeat 3] [--window 5s] [--out FILE]

Not for CI: it runs for minutes. Every process is stopped by PID; every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from etlverify.durations import parse_duration
from etlverify.embedded import EmbeddedTarget, free_port

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "reports" / "benchmarks" / "watch_detection.json"
EXPECTED = {"errors": "error_rate_increase", "latency": "response_time_degradation", "none": None}
BASELINE_WINDOWS, TRIGGER_WINDOWS, AFTER_FAULT_WINDOWS = 5, 3, 6


class Users:
    """`GET /api/jobs` at `rate` a second from a thread, paced on a schedule."""

    def __init__(self, base_url: str, rate: float) -> None:
        self.base_url, self.interval = base_url, 1.0 / rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n, next_at = 0, time.monotonic()
        with httpx.Client(base_url=self.base_url, timeout=5.0, trust_env=False) as client:
            while not self._stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    client.get("/api/jobs", headers={"X-Forwarded-For": f"10.9.0.{n % 200 + 1}"})
                n += 1
                next_at += self.interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class Prom:
    """A Prometheus scraping `target` every second, on a free loopback port."""

    def __init__(self, binary: str, folder: Path, target: str) -> None:
        config = folder / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
            f"  - job_name: etl\n    static_configs:\n      - targets: ['{target}']\n"
        )
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address={self.url.removeprefix('http://')}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def wait_scraping(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                body = httpx.get(
                    f"{self.url}/api/v1/query",
                    params={"query": "etlplus_http_requests_total"},
                    timeout=2,
                ).json()
                if body.get("data", {}).get("result"):
                    return True
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _windows_on_disk(state: Path) -> int:
    path = state / "windows.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def one_run(scenario: str, source: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One watch of one scenario; what it found."""
    window_s = parse_duration(args.window, "--window")
    target = EmbeddedTarget(enable_faults=True).start()
    prom: Prom | None = None
    users: Users | None = None
    proc: subprocess.Popen[str] | None = None
    try:
        extra: list[str] = []
        if source == "prometheus":
            binary = shutil.which("prometheus")
            assert binary is not None
            prom = Prom(binary, tmp, f"127.0.0.1:{target.port}")
        users = Users(target.base_url, args.rate)
        if prom is not None:
            if not prom.wait_scraping(60):
                return {"scenario": scenario, "source": source, "error": "nothing scraped"}
            extra = ["--metrics", f"prometheus={prom.url}"]
        windows = BASELINE_WINDOWS + 1 + AFTER_FAULT_WINDOWS
        state, reports = tmp / "state", tmp / "reports"
        proc = subprocess.Popen(
            [sys.executable, "-m", "etlverify", "watch", "--for", f"{windows * window_s:g}s",
             "--window", args.window, "--probe-every", "0.5s", "--metrics-every", "1s",
             "--job-every", "1h", "--baseline-windows", str(BASELINE_WINDOWS),
             "--trigger-windows", str(TRIGGER_WINDOWS), "--quiet", *extra,
             "--base-url", target.base_url, "--state", str(state), "--reports", str(reports)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30 * window_s + 60
        while _windows_on_disk(state) < BASELINE_WINDOWS + 1:
            if proc.poll() is not None or time.monotonic() > deadline:
                return {"scenario": scenario, "source": source, "error": "watch ended early"}
            time.sleep(0.1)
        body: dict[str, Any] | None = None
        if scenario == "errors":
            body = {"errors": {"fraction": args.error_fraction, "status": 500,
                               "route_prefix": "/api/jobs"}}  # fmt: skip
        elif scenario == "latency":
            body = {"latency": {"routes": {"GET /api/jobs": args.latency_ms}}}
        if body is not None:
            httpx.post(f"{target.base_url}/api/_faults", json=body, timeout=5).raise_for_status()
        fault_wall = time.time()
        out, _ = proc.communicate(timeout=30 * window_s + 120)
        data = json.loads((reports / "watch.json").read_text())
        started = float(json.loads((state / "watch.json").read_text())["started_ts"])
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if users is not None:
            users.stop()
        if prom is not None:
            prom.stop()
        target.stop()
    fault_t = fault_wall - started
    fired = [e for e in data["events"] if e["type"] == "trigger"]
    expected = EXPECTED[scenario]
    hit = next((e for e in fired if e["name"] == expected), None)
    false = [e["name"] for e in fired if e["name"] != expected or (expected and e["t_s"] < fault_t)]
    return {
        "scenario": scenario,
        "source": source,
        "exit_code": proc.returncode,
        "fault_t_s": round(fault_t, 2),
        "fired": [(e["name"], e.get("decided_by"), round(e["t_s"], 2)) for e in fired],
        "detected": hit is not None,
        "windows_to_fire": round((hit["t_s"] - fault_t) / window_s, 2) if hit else None,
        "decided_by": hit.get("decided_by") if hit else None,
        "false_fires": false,
        "output_tail": out.splitlines()[-3:],
    }


def _prometheus_possible() -> bool:
    if shutil.which("prometheus") is None:
        return False
    target = EmbeddedTarget().start()
    try:
        return httpx.get(f"{target.base_url}/metrics", timeout=5).status_code == 200
    finally:
        target.stop()


def main(argv: list[str] | None = None) -> int:
    """Run every scenario; print the figures; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--window", default="5s")
    parser.add_argument("--rate", type=float, default=5.0, help="users' requests a second (5)")
    parser.add_argument("--error-fraction", type=float, default=0.1)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--scenarios", default="errors,latency,none")
    parser.add_argument("--sources", default="counters,prometheus")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]
    if "prometheus" in sources and not _prometheus_possible():
        print("prometheus: skipped (no /usr/bin/prometheus, or the reference serves no /metrics)")
        sources.remove("prometheus")
    results: list[dict[str, Any]] = []
    for scenario in [s for s in args.scenarios.split(",") if s]:
        for source in sources:
            for i in range(args.repeat):
                with tempfile.TemporaryDirectory(prefix="etlv-detect-") as tmp:
                    r = one_run(scenario, source, args, Path(tmp))
                results.append(r)
                print(f"{scenario:8} {source:10} run {i + 1}: {json.dumps(r)}", flush=True)
    print("\nscenario  source      detected  windows to fire (median, max)  false fires")
    for scenario in [s for s in args.scenarios.split(",") if s]:
        for source in sources:
            mine = [r for r in results if r["scenario"] == scenario and r["source"] == source]
            ttf = [r["windows_to_fire"] for r in mine if r.get("windows_to_fire") is not None]
            false = sum(len(r.get("false_fires") or []) for r in mine)
            detected = sum(1 for r in mine if r.get("detected"))
            timing = f"{statistics.median(ttf):.2f}, {max(ttf):.2f}" if ttf else "-"
            wanted = f"{detected}/{len(mine)}" if EXPECTED[scenario] else "n/a"
            print(f"{scenario:9} {source:11} {wanted:9} {timing:30} {false}/{len(mine)} runs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                    "runs": results}, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
