"""Overhead of etlverify's Locust HTTP user: its throughput next to a bare `FastHttpUser`.

Both variants hit the same route, `GET /api/health` of one embedded reference ETL Plus target
(started here on 127.0.0.1 with rate limits off, stopped by PID at the end), with no wait time,
the same users and duration, each in its own `locust --headless` process:

* **bare**: a `FastHttpUser` with one task, ``self.client.get("/api/health")``, and no listeners;
* **etlverify**: `EtlApiUser` from `loadtests/etl.py` (the scenario's HTTP user) restricted to its
  own `health` task with ``wait_time = constant(0)``. Importing the locustfile installs the gate
  (`etlverify.locust_support`): per-user identity headers, ``catch_response``, every request filed
  into HDR histograms per metric and per window plus the aggregate, the outage tracker, and the
  server sampler polling ``/api/health/metrics`` every 2 s. The gate runs with ``--etl-warmup 0``
  (every request recorded) and ``--etl-record`` into a throw-away baseline in a temp folder (so no
  baseline is needed and nothing in the repo is touched); the comparison/recording happens after
  the measured time.

Each process runs in a temporary working directory, so the repo's ``locust.conf`` is not read.
Rounds are interleaved (bare, etlverify; next round etlverify, bare; ...) so drift on this shared
machine hits both. Reported per variant: Locust's aggregated requests/s (median over rounds) and
the Locust process's CPU time per request (from the child's rusage); the goal is etlverify >= 70%
of bare throughput (median of the per-round ratios).

    python benchmarks/locust_overhead.py [--rounds 3] [--users 20] [--duration 10] [--quick]

Results: a table on stdout and JSON in reports/benchmarks/locust_overhead.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from etlverify.embedded import EmbeddedTarget

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOCUSTFILE = REPO / "loadtests" / "etl.py"
SUPPORT = REPO / "src" / "etlverify" / "locust_support.py"
DEFAULT_OUT = REPO / "reports" / "benchmarks" / "locust_overhead.json"
LOCUST = Path(sys.executable).with_name("locust")
GOAL_RATIO = 0.70
#: Overrides of the embedded target: no rate limits (a 429 would be measured), WARN logging.
TARGET_OVERRIDES: dict[str, Any] = {"rate_limits": {"enabled": False}, "logging": {"level": "WARN"}}

BARE_LOCUSTFILE = '''\
"""Bare FastHttpUser: GET /api/health in a loop, no listeners."""
from locust import FastHttpUser, constant, task


class BareHealthUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def health(self):
        self.client.get("/api/health")
'''

ETL_LOCUSTFILE = '''\
"""etlverify's HTTP user (loadtests/etl.py EtlApiUser) on its health task only, no wait."""
import sys

sys.path.insert(0, {loadtests!r})

from etl import EtlApiUser  # noqa: E402  (installs the etlverify gate's listeners)
from locust import constant  # noqa: E402


class EtlHealthUser(EtlApiUser):
    wait_time = constant(0)


# After class creation: Locust's metaclass would add the base class's whole task mix to a
# `tasks` attribute given in the class body.
EtlHealthUser.tasks = [EtlApiUser.health]
'''

VARIANTS = {"bare": "BareHealthUser", "etlverify": "EtlHealthUser"}


class Interrupted(Exception):
    """SIGTERM arrived: stop, write what there is, stop the target."""


def _on_signal(signum: int, _frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def wait_for_locustfile(timeout_s: float) -> None:
    """The locustfile is written by another helper: wait until it defines `EtlApiUser`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if (
            LOCUSTFILE.exists()
            and SUPPORT.exists()
            and "class EtlApiUser" in LOCUSTFILE.read_text(encoding="utf-8")
        ):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{LOCUSTFILE} with class EtlApiUser not there after {timeout_s} s")
        time.sleep(5)


def _aggregated(stats_csv: Path) -> dict[str, float]:
    """Locust's Aggregated row; refuses a run that requested anything but the health route."""
    with stats_csv.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = {(row.get("Type"), row.get("Name")) for row in rows} - {("", "Aggregated")}
    if names != {("GET", "/api/health")}:
        raise RuntimeError(f"{stats_csv}: expected only GET /api/health, got {sorted(names)}")
    for row in rows:
        if row.get("Name") == "Aggregated":
            return {
                "requests": float(row["Request Count"]),
                "failures": float(row["Failure Count"]),
                "rps": float(row["Requests/s"]),
                "p50_ms": float(row["50%"]),
                "p95_ms": float(row["95%"]),
            }
    raise RuntimeError(f"{stats_csv}: no Aggregated row")


def run_variant(
    variant: str, *, workdir: Path, host: str, users: int, duration_s: int, index: int
) -> dict[str, Any]:
    """One headless locust process of `variant`; its throughput and CPU per request."""
    locustfile = workdir / f"{variant}_locustfile.py"
    prefix = workdir / f"{variant}_{index}"
    cmd = [str(LOCUST), "-f", str(locustfile), VARIANTS[variant], "--headless"]
    cmd += ["-u", str(users), "-r", str(users), "-t", f"{duration_s}s", "-H", host]
    cmd += ["--csv", str(prefix), "--only-summary", "--loglevel", "WARNING"]
    if variant == "etlverify":
        cmd += ["--etl-baseline", str(workdir / f"throwaway_{index}.json"), "--etl-record"]
        cmd += ["--etl-warmup", "0", "--etl-windows", "5"]
        cmd += ["--etl-summary", str(workdir / f"summary_{index}.json")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=duration_s + 90,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stats_csv = Path(f"{prefix}_stats.csv")
    if not stats_csv.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{variant}: locust exited {proc.returncode}: {' | '.join(tail)}")
    agg = _aggregated(stats_csv)
    return {
        "variant": variant,
        "round": index,
        "exit_code": proc.returncode,
        **agg,
        "cpu_s": round(cpu, 3),
        "cpu_us_per_request": round(1e6 * cpu / agg["requests"], 1) if agg["requests"] else None,
        "wall_s": round(wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Measure both variants in interleaved rounds, print and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--duration", type=int, default=10, help="seconds per locust run")
    parser.add_argument("--quick", action="store_true", help="1 round of 5 s (a smoke)")
    parser.add_argument(
        "--wait-locustfile",
        type=float,
        default=600.0,
        help="seconds to wait for loadtests/etl.py (default 600)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rounds, duration = (1, 5) if args.quick else (args.rounds, args.duration)
    if rounds < 1 or duration < 1 or args.users < 1:
        parser.error("--rounds, --duration and --users must be >= 1")
    signal.signal(signal.SIGTERM, _on_signal)
    wait_for_locustfile(args.wait_locustfile)
    t0 = time.monotonic()
    started = _now_iso()
    load_start = os.getloadavg()
    rows: list[dict[str, Any]] = []
    incomplete = ""
    target = EmbeddedTarget(config_overrides=TARGET_OVERRIDES)
    with tempfile.TemporaryDirectory(prefix="locust-overhead-") as tmp:
        workdir = Path(tmp)
        (workdir / "bare_locustfile.py").write_text(BARE_LOCUSTFILE, encoding="utf-8")
        (workdir / "etlverify_locustfile.py").write_text(
            ETL_LOCUSTFILE.format(loadtests=str(LOCUSTFILE.parent)), encoding="utf-8"
        )
        try:
            target.start()
            pid = target.process.pid if target.process else None
            print(
                f"reference target pid {pid} at {target.base_url}; {rounds} rounds x "
                f"{args.users} users x {duration} s",
                flush=True,
            )
            for r in range(rounds):
                order = ("bare", "etlverify") if r % 2 == 0 else ("etlverify", "bare")
                for variant in order:
                    row = run_variant(
                        variant,
                        workdir=workdir,
                        host=target.base_url,
                        users=args.users,
                        duration_s=duration,
                        index=r,
                    )
                    rows.append(row)
                    print(
                        f"round {r + 1} {variant:<10} {row['rps']:8.1f} req/s  "
                        f"{row['failures']:.0f} failures  {row['cpu_us_per_request']} us "
                        f"CPU/request (exit {row['exit_code']})",
                        flush=True,
                    )
        except (Interrupted, KeyboardInterrupt, subprocess.TimeoutExpired) as exc:
            incomplete = f"stopped early: {type(exc).__name__} {exc}"
        finally:
            target.stop()

    def med(variant: str, key: str) -> float | None:
        vals = [row[key] for row in rows if row["variant"] == variant and row[key] is not None]
        return round(statistics.median(vals), 2) if vals else None

    ratios = []
    for r in range(rounds):
        pair = {row["variant"]: row for row in rows if row["round"] == r}
        if len(pair) == 2 and pair["bare"]["rps"]:
            ratios.append(round(pair["etlverify"]["rps"] / pair["bare"]["rps"], 3))
    ratio = round(statistics.median(ratios), 3) if ratios else None
    summary = {
        v: {
            "rps_median": med(v, "rps"),
            "cpu_us_per_request_median": med(v, "cpu_us_per_request"),
            "p50_ms_median": med(v, "p50_ms"),
            "failures": sum(row["failures"] for row in rows if row["variant"] == v),
        }
        for v in VARIANTS
    }
    report: dict[str, Any] = {
        "benchmark": "locust_overhead",
        "started_at": started,
        "finished_at": _now_iso(),
        "wall_minutes": round((time.monotonic() - t0) / 60, 2),
        "incomplete": incomplete or None,
        "command": " ".join(["python", "benchmarks/locust_overhead.py", *(argv or sys.argv[1:])]),
        "settings": {
            "route": "GET /api/health",
            "users": args.users,
            "duration_s": duration,
            "rounds": rounds,
            "wait_time": "constant(0)",
            "etl_options": "--etl-warmup 0 --etl-windows 5 --etl-record (temp file)",
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        },
        "summary": summary,
        "ratio_per_round": ratios,
        "ratio_median": ratio,
        "goal": {
            "goal": f"etlverify user >= {GOAL_RATIO:.0%} of bare FastHttpUser throughput",
            "value": ratio,
            "met": None if ratio is None else ratio >= GOAL_RATIO,
        },
        "rows": rows,
    }
    print(f"\n{'variant':<12}{'req/s (median)':>16}{'CPU us/req':>12}{'p50 ms':>8}{'failures':>10}")
    for v in VARIANTS:
        s = summary[v]
        print(
            f"{v:<12}{s['rps_median'] or 0:>16.1f}{s['cpu_us_per_request_median'] or 0:>12.0f}"
            f"{s['p50_ms_median'] or 0:>8.0f}{s['failures']:>10.0f}"
        )
    print(f"\nratio etlverify/bare per round {ratios}, median {ratio}")
    met = report["goal"]["met"]
    print(
        f"goal ({report['goal']['goal']}): {'MET' if met else 'NOT MET' if met is False else 'n/a'}"
    )
    if incomplete:
        print(f"INCOMPLETE: {incomplete}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0 if not incomplete else 3


if __name__ == "__main__":
    raise SystemExit(main())
