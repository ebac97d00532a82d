"""How often the rollout's cohort judge blames a component, with and without a real change.

One reference (loopback, free port, fault switches on) with `new_request_handler` at 25%; the
judge (`etlverify.rollout.cohort`) holds as it does at that step: users inside [0, 25) and outside
[25, 100) of the cohort, interleaved in random-order pairs, `GET /api/jobs?limit=20`, compared
with `COHORT_SPECS` (`p50:10%,+2sd; error_rate:+1pp`). The traffic is the default plan's per
step: 10 windows of 120 requests (a 10-minute hold at 2 requests/s in 60 s windows), sent faster
(`--rate`, default 100/s, 1.2 s windows) so that 80 holds fit in about 20 minutes.

Conditions, interleaved in rotation (each round starts one later), so that drift of this shared
machine hits them alike:

- `A/A busy`: no fault; at the middle of the hold, one CPU busy loop per core starts (a separate
  process, stopped by PID at the end of the hold): the host gets slower for both sides at once.
- `+10%`, `+25%`: a cohort fault adds that share of the route's p50 for the users inside
  `request_handler`'s cohort only, on the reference's own route (no injected base service time).
  The injected milliseconds are calibrated first so that the *realised* inside/outside change is
  the nominal one (a sleep of a fraction of a millisecond does not show one to one at the client).
- `+25% busy`: the +25% fault and the busy loops.

Every hold is also compared with a stored baseline (three holds recorded before the runs, no
fault, quiet host), the way `etlverify rollout --baseline` does: what a stored baseline would
have said in the same runs.

    python benchmarks/rollout_judge.py [--runs 20] [--quick] [--max-minutes 30]
    python benchmarks/rollout_judge.py --reanalyze reports/benchmarks/rollout_judge_runs.json

The raw windows of every hold (and of the stored baseline) are saved (`--raw`), so that another
version of the judge can be compared on the very same measurements (`--reanalyze`).

Goals (issue 11): A/A busy blames a component in at most 1 of 20 runs; +25% is caught in at
least 19 of 20. Writes `reports/benchmarks/rollout_judge.json`. Every process is stopped by PID;
every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
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

from etlverify.baseline.store import Baseline, Fingerprint, load
from etlverify.embedded import SUITE_CONFIG_OVERRIDES, EmbeddedTarget
from etlverify.measure.results import LoadParameters, MetricResult
from etlverify.rollout.cohort import (
    CohortJudge,
    against_stored,
    judge,
    judge_load,
    stored_name,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "reports" / "benchmarks" / "rollout_judge.json"
DEFAULT_RAW = REPO / "reports" / "benchmarks" / "rollout_judge_runs.json"
FLAG = "new_request_handler"
INSIDE, OUTSIDE = (0.0, 25.0), (25.0, 100.0)
METRIC = "cohort GET /api/jobs"
#: the component whose traffic (GET /api/jobs) this benchmark judges; a stored baseline holds
#: every component's traffic under `stored_name(component, metric)`
COMPONENT = "request_handler"
CONDITIONS: tuple[tuple[str, float, bool], ...] = (
    ("A/A busy", 0.0, True),
    ("+10%", 0.10, False),
    ("+25%", 0.25, False),
    ("+25% busy", 0.25, True),
)


class Busy:
    """One CPU busy loop per core from `at` seconds on, each bounded by `until` (and killed)."""

    def __init__(self, at: float, until: float) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.timer = threading.Timer(at, self._start, args=(until - at,))

    def _start(self, seconds: float) -> None:
        code = "import time\nend = time.monotonic() + %.1f\nwhile time.monotonic() < end: pass"
        code %= seconds
        for _ in range(os.cpu_count() or 2):
            self.procs.append(subprocess.Popen([sys.executable, "-c", code]))

    def __enter__(self) -> Busy:
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def set_flag(target: EmbeddedTarget, percent: int) -> None:
    path = target.root / "config" / "feature_flags.json"
    data = json.loads(path.read_text())
    data["flags"][FLAG] = percent > 0
    data["rollout_percentages"][FLAG] = percent
    path.write_text(json.dumps(data, indent=2))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = httpx.get(f"{target.base_url}/api/flags", timeout=5).json()
        if got["rollout_percentages"][FLAG] == percent:
            return
        time.sleep(0.2)
    raise SystemExit(f"the reference did not load {FLAG} at {percent}%")


def set_fault(target: EmbeddedTarget, ms: float) -> None:
    body = {"cohorts": {"request_handler": {"latency_ms": round(ms, 3)} if ms > 0 else None}}
    resp = httpx.post(f"{target.base_url}/api/_faults", json=body, timeout=5)
    if resp.status_code != 200:
        raise SystemExit(f"POST /api/_faults answered {resp.status_code}: {resp.text[:200]}")


def p50(metrics: dict[str, Any]) -> float:
    value = metrics[METRIC].merged.p50_ms
    return float(value) if value is not None else float("nan")


def hold(
    cj: CohortJudge, hold_s: float, window_s: float, rate: float, busy: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    if not busy:
        inside, outside, _ = cj.measure(INSIDE, OUTSIDE, hold_s, window_s, rate)
        return inside, outside
    with Busy(hold_s / 2, hold_s):
        inside, outside, _ = cj.measure(INSIDE, OUTSIDE, hold_s, window_s, rate)
    return inside, outside


def calibrate(
    target: EmbeddedTarget, cj: CohortJudge, share: float, shape: tuple[float, float, float]
) -> float:
    """The injected ms whose realised inside/outside p50 change is `share` (3 rounds at most);
    `shape` is (hold, window, rate)."""
    hold_s, window_s, rate = shape
    inside, outside = hold(cj, hold_s, window_s, rate, busy=False)
    base = p50(outside)
    ms = share * base
    for _ in range(3):
        set_fault(target, ms)
        inside, outside = hold(cj, hold_s, window_s, rate, busy=False)
        seen = (p50(inside) - p50(outside)) / p50(outside)
        print(f"  calibrating {share:+.0%}: injected {ms:.3f} ms -> realised {seen:+.1%}")
        if abs(seen - share) <= 0.1 * share:
            break
        ms *= share / max(seen, 0.2 * share)
    set_fault(target, 0.0)
    return ms


def main(argv: list[str] | None = None) -> int:
    """Run it; print the table; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per condition (20)")
    parser.add_argument("--quick", action="store_true", help="4 runs per condition")
    parser.add_argument("--windows", type=int, default=10, help="windows per hold (10)")
    parser.add_argument("--per-window", type=int, default=120,
                        help="requests per window, both sides (120: 60 s at 2/s)")  # fmt: skip
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (100)")
    parser.add_argument("--max-minutes", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW, help="where the windows go")
    parser.add_argument("--reanalyze", type=Path, metavar="RAW",
                        help="judge the holds saved in RAW again instead of measuring")  # fmt: skip
    args = parser.parse_args(argv)
    if args.reanalyze:
        return reanalyze(args.reanalyze)
    runs = 4 if args.quick else args.runs
    window_s = args.per_window / args.rate
    hold_s = window_s * args.windows
    deadline = time.monotonic() + 60.0 * args.max_minutes
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    target = EmbeddedTarget(enable_faults=True, config_overrides=dict(SUITE_CONFIG_OVERRIDES))
    target.start()
    cj = CohortJudge(target.base_url)
    rows: list[dict[str, Any]] = []
    try:
        set_flag(target, 25)
        print(
            f"reference at {target.base_url}; {FLAG} at 25%; holds of "
            f"{args.windows} x {window_s:.2f} s windows at {args.rate:g}/s; {runs} runs x "
            f"{len(CONDITIONS)} conditions",
            flush=True,
        )
        with tempfile.TemporaryDirectory(prefix="etlv-judge-") as tmp:
            path = Path(tmp) / "stored.json"
            cj.measure(INSIDE, OUTSIDE, hold_s / 2, window_s, args.rate)  # warm-up, discarded
            for _ in range(3):
                cj.record_baseline(path, hold_s, window_s, args.rate)
            stored = load(path)
            stored_json = json.loads(path.read_text())
        stored_p50 = stored.metrics[stored_name(COMPONENT, METRIC)].merged.p50_ms
        print(f"stored baseline: 3 holds, pooled p50 {stored_p50:.3f} ms", flush=True)
        injected = {
            name: (calibrate(target, cj, share, (hold_s, window_s, args.rate)) if share else 0.0)
            for name, share, _ in CONDITIONS[:3]
        }
        injected["+25% busy"] = injected["+25%"]
        load_params = judge_load(window_s, args.rate)
        environment = cj.fingerprint(load_params)
        raw: list[dict[str, Any]] = []
        n = 0
        for rnd in range(runs):
            for k in range(len(CONDITIONS)):
                name, _, busy = CONDITIONS[(rnd + k) % len(CONDITIONS)]
                if time.monotonic() > deadline:
                    print("deadline reached; the runs left are skipped", flush=True)
                    break
                set_fault(target, injected[name])
                inside, outside = hold(cj, hold_s, window_s, args.rate, busy)
                set_fault(target, 0.0)
                row = {
                    "round": rnd,
                    "injected_ms": round(injected[name], 3),
                    **judge_row(
                        name,
                        inside,
                        outside,
                        stored=stored,
                        load_params=load_params,
                        environment=environment,
                    ),
                }
                rows.append(row)
                raw.append(
                    {
                        "condition": name,
                        "injected_ms": row["injected_ms"],
                        "inside": {k: v.to_json() for k, v in inside.items()},
                        "outside": {k: v.to_json() for k, v in outside.items()},
                    }
                )
                n += 1
                print(
                    f"[{n:3d}] {name:9s} judge {row['verdict']:12s} inside/outside "
                    f"{row['realised_pct']:+6.1f}%  stored: inside {row['stored_inside']:12s} "
                    f"outside {row['stored_outside']}",
                    flush=True,
                )
    except KeyboardInterrupt:
        print("interrupted; the runs so far are reported", flush=True)
    finally:
        cj.close()
        target.stop()
    summary = summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if rows:
        args.raw.write_text(
            json.dumps(
                {
                    "stored": stored_json,
                    "environment": environment.to_json(),
                    "load": load_params.to_json(),
                    "holds": raw,
                }
            )
            + "\n"
        )
    args.out.write_text(
        json.dumps(
            {
                "settings": {
                    k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                },
                "summary": summary,
                "runs": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written {args.out}")
    return 0


def judge_row(
    name: str,
    inside: dict[str, Any],
    outside: dict[str, Any],
    *,
    stored: Baseline,
    load_params: LoadParameters,
    environment: Fingerprint,
) -> dict[str, Any]:
    """One hold's verdicts: the cohort judge, and each side against the stored baseline."""
    result = judge(inside, outside, compared_with="outside", outside=outside)
    vs_stored = against_stored(
        stored,
        {"inside": inside, "outside": outside},
        load_params,
        environment,
        component=COMPONENT,
    )
    return {
        "condition": name,
        "verdict": result.verdict,
        "reason": result.reason[:300],
        "inside_p50_ms": round(p50(inside), 3),
        "outside_p50_ms": round(p50(outside), 3),
        "realised_pct": round(100 * (p50(inside) / p50(outside) - 1), 2),
        "stored_inside": vs_stored["inside"].verdict.value,
        "stored_outside": vs_stored["outside"].verdict.value,
    }


def reanalyze(path: Path) -> int:
    """Judge the saved holds again with the library as it is now; print the table."""
    data = json.loads(path.read_text())
    with tempfile.TemporaryDirectory(prefix="etlv-judge-") as tmp:
        stored_path = Path(tmp) / "stored.json"
        stored_path.write_text(json.dumps(data["stored"]))
        stored = load(stored_path)
    environment = Fingerprint.from_json(data["environment"])
    load_params = LoadParameters(**{**data["load"], "routes": tuple(data["load"]["routes"])})
    rows = []
    for hold_ in data["holds"]:
        sides = [
            {k: MetricResult.from_json(k, v) for k, v in hold_[side].items()}
            for side in ("inside", "outside")
        ]
        verdicts = judge_row(
            hold_["condition"],
            sides[0],
            sides[1],
            stored=stored,
            load_params=load_params,
            environment=environment,
        )
        rows.append({"injected_ms": hold_.get("injected_ms"), **verdicts})
    summarise(rows)
    return 0


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per condition: judge verdicts, realised change, what the stored baseline said."""
    out: dict[str, Any] = {}
    print(
        "\n| condition | runs | judge FAIL (blames) | PASS | INCONCLUSIVE | realised change "
        "(median) | stored: inside FAIL/PASS/INC | stored: outside FAIL/PASS/INC |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, _, _ in CONDITIONS:
        mine = [r for r in rows if r["condition"] == name]
        if not mine:
            continue

        def count(key: str, value: str, rs: list[dict[str, Any]] = mine) -> int:
            return sum(1 for r in rs if r[key] == value)

        entry = {
            "runs": len(mine),
            "injected_ms": mine[0].get("injected_ms"),
            "judge": {v: count("verdict", v) for v in ("FAIL", "PASS", "INCONCLUSIVE")},
            "realised_pct_median": round(statistics.median(r["realised_pct"] for r in mine), 2),
            "stored_inside": {
                v: count("stored_inside", v) for v in ("FAIL", "PASS", "INCONCLUSIVE")
            },
            "stored_outside": {
                v: count("stored_outside", v) for v in ("FAIL", "PASS", "INCONCLUSIVE")
            },
        }
        out[name] = entry
        j, si, so = entry["judge"], entry["stored_inside"], entry["stored_outside"]
        print(
            f"| {name} | {len(mine)} | {j['FAIL']} | {j['PASS']} | {j['INCONCLUSIVE']} | "
            f"{entry['realised_pct_median']:+.1f}% | "
            f"{si['FAIL']}/{si['PASS']}/{si['INCONCLUSIVE']} | "
            f"{so['FAIL']}/{so['PASS']}/{so['INCONCLUSIVE']} |"
        )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
