"""Can the performance section catch a 25% slowdown on this machine, with its machine baseline?

What it runs (everything on 127.0.0.1, every process stopped by PID, every run bounded in time):

1. *First use.* A fresh reference ETL Plus (`python -m etlplus_reference serve --enable-faults`,
   the suite's config overrides, one fixed loopback port for every run) and the performance
   section, exactly as a user runs it but against that URL:
   `python -m pytest -m performance --base-url URL --baseline machine`, with
   `ETLPLUS_BASELINE_CACHE` pointing at a temporary directory. The cache is empty, so this run
   records its measurement as this machine's baseline (its checks are INCONCLUSIVE: nothing
   earlier to compare with); its time is the first-use cost.
2. *Runs.* `--runs N` rounds of two conditions, interleaved (the order alternates each round), each
   on a fresh reference, judged against the cached baseline of step 1:
   - `unchanged`: the reference as it is;
   - `+25%`: every measured key route slowed by 25% of its own p50 in the baseline
     (`latency.routes` fault: `GET /api/health`, `GET /api/jobs`, `GET /api/jobs/{id}`,
     `POST /api/jobs`, each by its own amount).
3. Per run: the section's outcome (FAIL when a performance test failed, PASS when every one
   passed, else INCONCLUSIVE), the outcome of the key-route check
   (`test_response_times_within_baseline`) alone, the measured p50 change of each key route, the
   reasons of every non-PASS, and the load average before and after.

    python benchmarks/perf_detection.py [--runs 5] [--perf-duration 40] [--out PATH]

Goal (issue 9): `+25%` never PASS and FAIL at least 4 of 5; `unchanged` never FAIL and PASS at least
4 of 5. Results: a table on stdout and JSON in reports/benchmarks/perf_detection.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from etlverify.baseline import load
from etlverify.embedded import SUITE_CONFIG_OVERRIDES, EmbeddedTarget, free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECTION = REPO / "verification" / "performance"
DEFAULT_OUT = REPO / "reports" / "benchmarks" / "perf_detection.json"
#: Each inner run's terminal output, for the reasons behind a verdict.
LOGS = REPO / "reports" / "benchmarks" / "perf_detection"
#: The key routes and the `latency.routes` key that slows exactly that route.
ROUTES = {
    "GET /api/health": "GET /api/health",
    "GET /api/jobs": "GET /api/jobs",
    "GET /api/jobs/{id}": "GET /api/jobs/",
    "POST /api/jobs": "POST /api/jobs",
}
KEY_TEST = "test_response_times_within_baseline"
CONDITIONS = ("unchanged", "+25%")
#: A first use whose recording was refused (a busy host) is tried again, at most this often.
FIRST_USE_ATTEMPTS = 3
#: Hard limit of one inner pytest run (the section takes about a minute; first use about two).
RUN_TIMEOUT_S = 420.0
_P50 = re.compile(
    r"^(PASS|FAIL|INCONCLUSIVE) p50 (GET /api/health|GET /api/jobs|GET /api/jobs/\{id\}|"
    r"POST /api/jobs): .*?\(([+-][\d.]+)%"
)


def _loadavg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def _outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """test name -> (passed/failed/skipped, message) from the inner run's junit XML."""
    out: dict[str, tuple[str, str]] = {}
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return out
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        state, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                state, message = "failed", (child.get("message") or child.text or "")
            elif child.tag == "skipped":
                state, message = "skipped", (child.get("message") or "")
        out[name] = (state, " ".join(message.split())[:400])
    return out


def _verdict(states: list[str]) -> str:
    if not states:
        return "INCONCLUSIVE"
    if "failed" in states:
        return "FAIL"
    return "PASS" if all(s == "passed" for s in states) else "INCONCLUSIVE"


def run_section(work: Path, url: str, cache: Path, duration: float, label: str) -> dict[str, Any]:
    """One inner `pytest -m performance` run against `url`; its outcomes and figures."""
    shutil.rmtree(work / "performance", ignore_errors=True)
    shutil.copytree(SECTION, work / "performance", ignore=shutil.ignore_patterns("__pycache__"))
    junit = work / f"junit-{label}.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "etlverify.pytest_plugin",
        "-p",
        "no:locust",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-m",
        "performance",
        "--base-url",
        url,
        "--baseline",
        "machine",
        "--perf-duration",
        f"{duration:g}",
        f"--junitxml={junit}",
        "performance",
    ]
    env = {**os.environ, "ETLPLUS_BASELINE_CACHE": str(cache)}
    load_before = _loadavg()
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        stdout, code = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout
        stdout = out.decode(errors="replace") if isinstance(out, bytes) else (out or "")
        code = -1
    seconds = round(time.monotonic() - t0, 1)
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / f"stdout-{label}.txt").write_text(stdout, encoding="utf-8")
    outcomes = _outcomes(junit)
    p50: dict[str, float] = {}
    for line in stdout.splitlines():
        match = _P50.match(line.strip())
        if match:
            p50[match.group(2)] = float(match.group(3))
    calibration = re.search(r"measuring time: (.*)", stdout)
    return {
        "label": label,
        "exit_code": code,
        "seconds": seconds,
        "load_before": load_before,
        "load_after": _loadavg(),
        "section": _verdict([s for s, _ in outcomes.values()]),
        "key_routes": _verdict([outcomes[KEY_TEST][0]] if KEY_TEST in outcomes else []),
        "p50_change_pct": p50,
        "measuring_time": calibration.group(1) if calibration else None,
        "not_passed": {n: f"{s}: {m}" for n, (s, m) in outcomes.items() if s != "passed"},
    }


def _set_faults(url: str, routes: dict[str, float] | None) -> None:
    if routes is None:
        return
    body = {"latency": {"routes": routes}}
    resp = httpx.post(f"{url}/api/_faults", json=body, timeout=5.0)
    resp.raise_for_status()


def one_run(
    work: Path,
    port: int,
    cache: Path,
    duration: float,
    label: str,
    *,
    routes: dict[str, float] | None,
) -> dict[str, Any]:
    """A fresh reference on `port`, faults set, the section run, the reference stopped."""
    target = EmbeddedTarget(
        port=port, enable_faults=True, config_overrides=dict(SUITE_CONFIG_OVERRIDES)
    )
    target.start()
    try:
        _set_faults(target.base_url, routes)
        return run_section(work, target.base_url, cache, duration, label)
    finally:
        target.stop()


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds: the inner pytest is killed, the reference stopped by PID


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the JSON."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="rounds of both conditions (5)")
    parser.add_argument(
        "--perf-duration", type=float, default=40.0, help="route load seconds (the default 40)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="etlv-perfdet-") as tmp:
        work, cache = Path(tmp) / "work", Path(tmp) / "cache"
        work.mkdir()
        baseline = None
        first: dict[str, Any] = {}
        for attempt in range(1, FIRST_USE_ATTEMPTS + 1):
            print(f"first use (cache {cache}): record the baseline, attempt {attempt}", flush=True)
            first = one_run(work, port, cache, args.perf_duration, "first-use", routes=None)
            print(
                f"  {first['section']} in {first['seconds']} s, load {first['load_before']} -> "
                f"{first['load_after']}; {first['measuring_time']}",
                flush=True,
            )
            for name, why in first["not_passed"].items():
                print(f"      {name}: {why[:300]}", flush=True)
            files = sorted(cache.glob("*.json"))
            baseline = load(files[0]) if files else None
            if baseline is not None and all(m in baseline.metrics for m in ROUTES):
                break
            baseline = None
            shutil.rmtree(cache, ignore_errors=True)
            time.sleep(30.0)  # a busy host: give it a moment
        if baseline is None:
            print(f"the key routes' machine baseline was not recorded; see {LOGS}")
            return 1
        routes: dict[str, float] = {}
        for metric, key in ROUTES.items():
            value = baseline.metrics[metric].merged.p50_ms
            routes[key] = round(0.25 * float(value or 0.0), 3)
        print(f"+25% of each route's baseline p50 (ms): {routes}", flush=True)
        runs: list[dict[str, Any]] = []
        for i in range(args.runs):
            order = CONDITIONS if i % 2 == 0 else tuple(reversed(CONDITIONS))
            for cond in order:
                label = f"{cond}-{i + 1}".replace("+", "plus").replace("%", "pct")
                res = one_run(
                    work,
                    port,
                    cache,
                    args.perf_duration,
                    label,
                    routes=routes if cond == "+25%" else None,
                )
                res["condition"] = cond
                runs.append(res)
                change = ", ".join(f"{k} {v:+.1f}%" for k, v in res["p50_change_pct"].items())
                print(
                    f"  round {i + 1} {cond:9s}: section {res['section']:12s} key routes "
                    f"{res['key_routes']:12s} p50 {change}; {res['seconds']} s, load "
                    f"{res['load_before']} -> {res['load_after']}",
                    flush=True,
                )
                for name, why in res["not_passed"].items():
                    print(f"      {name}: {why[:300]}", flush=True)
    table: dict[str, Any] = {}
    print("\ncondition  | section FAIL / PASS / INCONCLUSIVE | key routes FAIL / PASS / INCONCL.")
    for cond in CONDITIONS:
        mine = [r for r in runs if r["condition"] == cond]
        sec = Counter(r["section"] for r in mine)
        key = Counter(r["key_routes"] for r in mine)
        table[cond] = {"section": dict(sec), "key_routes": dict(key), "runs": len(mine)}
        print(
            f"{cond:10s} | {sec['FAIL']} / {sec['PASS']} / {sec['INCONCLUSIVE']}"
            f"{'':24s}| {key['FAIL']} / {key['PASS']} / {key['INCONCLUSIVE']}"
        )
    loads = [r["load_before"] for r in runs] + [r["load_after"] for r in runs]
    print(
        f"load average (1 min) during the runs: min {min(loads)}, max {max(loads)}; "
        f"first use took {first['seconds']} s ({first['measuring_time']})"
    )
    result = {
        "started": started,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "perf_duration_s": args.perf_duration,
        "slowdown_ms": routes,
        "first_use": first,
        "runs": runs,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
