"""Throughput and push-latency benchmark of the embedded reference ETL Plus target.

Three measurements in one run, each against servers that this script starts (and stops, by PID)
on 127.0.0.1:

1. HTTP: `GET /api/health` and `GET /api/jobs` of the reference versus `GET /api/health` of a bare
   Starlette app (`benchmarks/bare_app.py`) on the same uvicorn settings, with `wrk`, interleaved
   bare, ref, ref-jobs, bare, ... for R rounds; medians and the paired ref/bare ratio.
2. Job creation: sustained `POST /api/jobs` with a unique `job_id` per request (a wrk Lua script),
   counting 200/201 against everything else; jobs/s as the median over the rounds.
3. WebSocket fan-out: N connections subscribed to the benchmark's jobs; jobs are started, some
   completed and some cancelled; per-connection latency of every `job_status_update` from the
   server's `data.timestamp` (same host clock) and, for cancels, from the client's PUT.

CPU placement: on a machine with two or more CPUs the servers are pinned to the first CPU of this
process's affinity set and the load generators (wrk, and this process's WebSocket client) to the
second, with `os.sched_setaffinity` (every thread of the server processes is re-pinned after start).
On one CPU nothing is pinned and the report says so.

    python benchmarks/reference_throughput.py [--rounds N] [--duration S] [--connections N]
                                              [--quick]

Results: a table on stdout and JSON in reports/benchmarks/reference_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import itertools
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.frames import Frame, Opcode

from etlverify.embedded import (
    SUITE_CONFIG_OVERRIDES,
    EmbeddedTarget,
    EmbeddedTargetError,
    deep_merge,
    free_port,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUT = REPO / "reports" / "benchmarks" / "reference_throughput.json"

#: Overrides on top of the suite's: no rate limiting and WARN logging, so that neither a 429 nor
#: the log file is what gets measured.
BENCH_OVERRIDES: dict[str, Any] = deep_merge(
    SUITE_CONFIG_OVERRIDES,
    {"rate_limits": {"enabled": False}, "logging": {"level": "WARN"}},
)

#: a job that costs the server next to nothing (the job creation phase)
CHEAP_JOB = "rows=10;batch=10;delay_ms=0"
#: a job whose transitions the WebSocket phase lets run to completion
COMPLETE_JOB = "rows=2000;batch=100;delay_ms=20"
#: a job long enough to be cancelled while running (WebSocket phase)
CANCEL_JOB = "rows=2000;batch=100;delay_ms=100"

GOAL_HEALTH_RATIO = 0.5
GOAL_JOBS_PER_S = 300.0
GOAL_WS_P99_MS = 100.0

TERMINAL = frozenset({"completed", "failed", "cancelled"})
STATUS_RANK = {
    "pending": 0,
    "scheduled": 0,
    "running": 1,
    "completed": 2,
    "failed": 2,
    "cancelled": 2,
}

WRK_REPORT_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
  if threads then
    local ok, conflict, other = 0, 0, 0
    for _, t in ipairs(threads) do
      ok = ok + t:get("ok"); conflict = conflict + t:get("conflict"); other = other + t:get("other")
    end
    io.write(string.format(',"ok":%d,"conflict":%d,"other":%d', ok, conflict, other))
  end
  io.write("}\n")
end
"""

WRK_POST_JOBS_LUA = (
    r"""
threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
function init(args)
  prefix = (args[1] or "bench") .. "-" .. tostring(tid)
  source = args[2] or "rows=10;batch=10;delay_ms=0"
  counter = 0
  ok = 0
  conflict = 0
  other = 0
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  counter = counter + 1
  local body = '{"type":"EXTRACT","source_config":"' .. source ..
    '","target_config":"bench-target","job_id":"' .. prefix .. '-' .. counter .. '"}'
  return wrk.format("POST", "/api/jobs", nil, body)
end
function response(status, headers, body)
  if status == 200 or status == 201 then
    ok = ok + 1
  elseif status == 409 then
    conflict = conflict + 1
  else
    other = other + 1
  end
end
"""
    + WRK_REPORT_LUA
)


class BenchError(RuntimeError):
    """A phase could not run; the message says why (it goes into the report)."""


# --------------------------------------------------------------------------------------------
# time budget, CPU placement, process accounting


class Budget:
    """A wall-clock budget for the whole run: phases ask before they start."""

    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic()
        self.end = self.start + seconds

    def left(self) -> float:
        """Seconds left."""
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.start


@dataclass(frozen=True)
class Placement:
    """Which CPUs the servers and the load generators run on (None: not pinned)."""

    server: frozenset[int] | None
    client: frozenset[int] | None
    note: str


def plan_placement(pin: bool) -> Placement:
    """Servers on one CPU, load generators on another, when there are two to choose from."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin:
        return Placement(None, None, f"not pinned (--no-pin); CPUs available {cpus}")
    if len(cpus) < 2:
        return Placement(None, None, f"not pinned: only CPU(s) {cpus} available")
    return Placement(
        frozenset({cpus[0]}),
        frozenset({cpus[1]}),
        f"servers on CPU {cpus[0]}, wrk and the WebSocket client on CPU {cpus[1]} "
        "(os.sched_setaffinity on every thread)",
    )


@contextlib.contextmanager
def affinity(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the block with this process pinned to `cpus` (children started inside inherit it)."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pin_process(pid: int, cpus: frozenset[int] | None) -> None:
    """Pin every thread of `pid` (threads started later inherit from their creator)."""
    if cpus is None:
        return
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpus)


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a whole process (all threads), from /proc; NaN if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def runq_wait_seconds(pid: int) -> float:
    """Seconds the process's main thread (the event loop) spent runnable but waiting for a CPU.

    From /proc/PID/task/PID/schedstat (run time, run-queue wait, timeslices, in ns). On a shared
    machine this is the time other processes took from the server: the noise indicator.
    """
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def raise_fd_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (servers started afterwards inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --------------------------------------------------------------------------------------------
# servers


class BareServer:
    """`benchmarks/bare_app.py` in a process of its own, stopped by PID."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log = log_dir / "bare_app.out"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 20.0) -> None:
        """Start and wait until `/api/health` answers 200."""
        cmd = [
            sys.executable,
            str(HERE / "bare_app.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise BenchError(f"bare app exited with {self.process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.base_url}/api/health").status_code == 200:
                        return
                time.sleep(0.1)
        raise BenchError(f"bare app not healthy after {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def reference_pid(target: EmbeddedTarget) -> int:
    """The reference server's PID (our direct child)."""
    assert target.process is not None
    return target.process.pid


def wait_jobs_idle(base_url: str, timeout: float) -> dict[str, Any]:
    """Poll the job counters until no job is pending or running; what was seen, and how long."""
    t0 = time.monotonic()
    last: dict[str, Any] = {}
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        while time.monotonic() - t0 < timeout:
            try:
                jobs = client.get(f"{base_url}/api/health/metrics").json()["metrics"]["jobs"]
                last = dict(jobs)
                done = sum(int(jobs.get(k, 0)) for k in ("completed", "failed", "cancelled"))
                if done >= int(jobs.get("total", 0)):
                    return {"idle": True, "seconds": time.monotonic() - t0, "jobs": last}
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                last = {"error": f"{type(exc).__name__}: {exc}"}
            time.sleep(0.1)
    return {"idle": False, "seconds": time.monotonic() - t0, "jobs": last}


def create_jobs(base_url: str, count: int, prefix: str) -> int:
    """Create `count` cheap jobs one by one; how many were accepted."""
    accepted = 0
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        for i in range(count):
            body = {
                "type": "EXTRACT",
                "source_config": CHEAP_JOB,
                "target_config": "bench",
                "job_id": f"{prefix}-{i}",
            }
            with contextlib.suppress(httpx.HTTPError):
                if client.post(f"{base_url}/api/jobs", json=body).status_code in (200, 201):
                    accepted += 1
    return accepted


# --------------------------------------------------------------------------------------------
# wrk


@dataclass
class WrkRun:
    """One wrk run: what it reported plus the CPU used by the server and by wrk."""

    label: str
    seconds: float
    rps: float
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int
    non_2xx: int
    server_cpu_pct: float
    server_runq_wait_pct: float
    req_per_cpu_s: float
    wrk_cpu_pct: float
    ok: int | None = None
    conflict: int | None = None
    other: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class Wrk:
    """Runs wrk with the benchmark's Lua scripts, one thread, on the client CPU."""

    def __init__(self, work_dir: Path, connections: int, placement: Placement) -> None:
        self.connections = connections
        self.placement = placement
        self.report_lua = work_dir / "report.lua"
        self.report_lua.write_text(WRK_REPORT_LUA)
        self.post_lua = work_dir / "post_jobs.lua"
        self.post_lua.write_text(WRK_POST_JOBS_LUA)

    def run(
        self,
        label: str,
        url: str,
        duration: float,
        server_pid: int,
        *,
        post_jobs: tuple[str, str] | None = None,
    ) -> WrkRun:
        """Run wrk for `duration` seconds against `url`; raise BenchError on a failed run."""
        script = self.post_lua if post_jobs else self.report_lua
        cmd = [
            "wrk",
            "-t1",
            f"-c{self.connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url,
        ]
        if post_jobs:
            cmd += ["--", *post_jobs]
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0, t0 = cpu_seconds(server_pid), time.monotonic()
        wait0 = runq_wait_seconds(server_pid)
        with affinity(self.placement.client):
            try:
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=duration + 20, check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise BenchError(f"wrk ({label}) did not finish in {duration + 20:.0f} s") from exc
        wall = time.monotonic() - t0
        cpu1 = cpu_seconds(server_pid)
        wait1 = runq_wait_seconds(server_pid)
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
        if proc.returncode != 0 or line is None:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise BenchError(
                f"wrk ({label}) failed (exit {proc.returncode}): "
                f"{detail[-1] if detail else 'no output'}"
            )
        data = json.loads(line.removeprefix("WRKJSON "))
        seconds = data["duration_us"] / 1e6
        wrk_cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
        return WrkRun(
            label=label,
            seconds=seconds,
            rps=data["requests"] / seconds if seconds else 0.0,
            requests=data["requests"],
            p50_ms=data["p50_us"] / 1000,
            p90_ms=data["p90_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            max_ms=data["max_us"] / 1000,
            socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
            non_2xx=data["status"],
            server_cpu_pct=100 * (cpu1 - cpu0) / wall,
            server_runq_wait_pct=100 * (wait1 - wait0) / wall,
            req_per_cpu_s=data["requests"] / (cpu1 - cpu0) if cpu1 > cpu0 else float("nan"),
            wrk_cpu_pct=100 * wrk_cpu / wall,
            ok=data.get("ok"),
            conflict=data.get("conflict"),
            other=data.get("other"),
        )


def median(values: list[float]) -> float | None:
    """Median, or None for no values."""
    return statistics.median(values) if values else None


def summarize(runs: list[WrkRun]) -> dict[str, Any]:
    """Medians of a list of wrk runs."""

    def med(attr: str) -> float | None:
        value = median([float(getattr(r, attr)) for r in runs])
        return None if value is None else round(value, 3)

    return {
        "rounds": len(runs),
        "rps_median": med("rps"),
        "p50_ms_median": med("p50_ms"),
        "p99_ms_median": med("p99_ms"),
        "server_cpu_pct_median": med("server_cpu_pct"),
        "server_runq_wait_pct_median": med("server_runq_wait_pct"),
        "req_per_cpu_s_median": med("req_per_cpu_s"),
        "wrk_cpu_pct_median": med("wrk_cpu_pct"),
        "socket_errors": sum(r.socket_errors for r in runs),
        "non_2xx": sum(r.non_2xx for r in runs),
    }


# --------------------------------------------------------------------------------------------
# phases 1 and 2: HTTP


def http_phase(
    wrk: Wrk, bare: BareServer, ref: EmbeddedTarget, args: argparse.Namespace, budget: Budget
) -> dict[str, Any]:
    """Interleaved rounds of bare health, ref health and ref job list."""
    ref_pid = reference_pid(ref)
    targets = [
        ("bare_health", f"{bare.base_url}/api/health", bare.pid),
        ("ref_health", f"{ref.base_url}/api/health", ref_pid),
        ("ref_jobs", f"{ref.base_url}/api/jobs", ref_pid),
    ]
    warm = min(1.0, args.duration)
    for label, url, pid in targets:
        wrk.run(f"warmup {label}", url, warm, pid)
    runs: dict[str, list[WrkRun]] = {label: [] for label, _, _ in targets}
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        if budget.left() < 3 * (args.duration + 2) + args.reserve:
            print(f"  http: stopping after {r} round(s), time budget", flush=True)
            break
        row: dict[str, Any] = {"round": r + 1}
        for label, url, pid in targets:
            run = wrk.run(label, url, args.duration, pid)
            runs[label].append(run)
            row[label] = run.as_dict()
            print(
                f"  round {r + 1} {label:12s} {run.rps:9.0f} req/s  p50 {run.p50_ms:6.2f} ms"
                f"  p99 {run.p99_ms:6.2f} ms  server cpu {run.server_cpu_pct:4.0f}%"
                f" (waited for CPU {run.server_runq_wait_pct:3.0f}%)"
                f"  errors {run.socket_errors + run.non_2xx}",
                flush=True,
            )
        rounds.append(row)
    health_ratios = [
        r.rps / b.rps for r, b in zip(runs["ref_health"], runs["bare_health"], strict=True) if b.rps
    ]
    jobs_ratios = [
        r.rps / b.rps for r, b in zip(runs["ref_jobs"], runs["bare_health"], strict=True) if b.rps
    ]
    cpu_ratios = [
        r.req_per_cpu_s / b.req_per_cpu_s
        for r, b in zip(runs["ref_health"], runs["bare_health"], strict=True)
        if b.req_per_cpu_s
    ]
    return {
        "rounds": rounds,
        "summary": {label: summarize(rs) for label, rs in runs.items()},
        "ratio_ref_health_to_bare_median": _round(median(health_ratios)),
        "ratio_ref_jobs_to_bare_health_median": _round(median(jobs_ratios)),
        "ratios_health_per_round": [round(x, 3) for x in health_ratios],
        "ratio_ref_health_to_bare_per_cpu_second_median": _round(median(cpu_ratios)),
    }


def jobs_phase(
    wrk: Wrk, ref: EmbeddedTarget, args: argparse.Namespace, budget: Budget
) -> dict[str, Any]:
    """Rounds of sustained POST /api/jobs, each followed by waiting for the backlog to drain."""
    ref_pid = reference_pid(ref)
    runs: list[WrkRun] = []
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        if budget.left() < args.duration + 5 + args.reserve:
            print(f"  jobs: stopping after {r} round(s), time budget", flush=True)
            break
        prefix = f"b{uuid.uuid4().hex[:8]}r{r + 1}"
        run = wrk.run(
            "ref_post_jobs",
            f"{ref.base_url}/api/jobs",
            args.duration,
            ref_pid,
            post_jobs=(prefix, CHEAP_JOB),
        )
        drain = wait_jobs_idle(ref.base_url, timeout=min(20.0, max(2.0, budget.left() - 60)))
        runs.append(run)
        errors = (run.other or 0) + (run.conflict or 0) + run.socket_errors
        row = {
            "round": r + 1,
            **run.as_dict(),
            "jobs_per_s": round((run.ok or 0) / run.seconds, 1) if run.seconds else 0.0,
            "jobs_done_per_s_incl_drain": round(
                (run.ok or 0) / (run.seconds + drain["seconds"]), 1
            ),
            "errors": errors,
            "drain": drain,
        }
        rounds.append(row)
        print(
            f"  round {r + 1} POST /api/jobs {row['jobs_per_s']:8.0f} jobs/s  "
            f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  errors {errors}  "
            f"server cpu {run.server_cpu_pct:4.0f}% (waited for CPU "
            f"{run.server_runq_wait_pct:3.0f}%)  backlog drained in "
            f"{drain['seconds']:.1f} s{'' if drain['idle'] else ' (NOT idle)'}",
            flush=True,
        )
    rates = [float(row["jobs_per_s"]) for row in rounds]
    return {
        "rounds": rounds,
        "job_profile": CHEAP_JOB,
        "jobs_per_s_median": _round(median(rates)),
        "jobs_done_per_s_incl_drain_median": _round(
            median([float(row["jobs_done_per_s_incl_drain"]) for row in rounds])
        ),
        "errors_total": sum(int(row["errors"]) for row in rounds),
        "summary": summarize(runs),
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------------------------
# phase 3: WebSocket fan-out


class StampedConnection(ClientConnection):
    """A client connection that notes when each data message's bytes were read off the socket.

    `data_received` is where the event loop hands over what the socket read; stamping there keeps
    the client's own task scheduling (waking 500 reader tasks for one fan-out) out of the
    measurement. `process_event` runs inside `data_received`, once per parsed frame, in order, so
    the stamps line up with the messages that `recv()` returns later.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rx_time = 0.0
        self.rx_stamps: collections.deque[float] = collections.deque()

    def data_received(self, data: bytes) -> None:
        """Stamp, then let websockets parse."""
        self.rx_time = time.time()
        super().data_received(data)

    def process_event(self, event: Any) -> None:
        """One stamp per complete data message."""
        if isinstance(event, Frame) and event.fin and event.opcode in _DATA_OPCODES:
            self.rx_stamps.append(self.rx_time)
        super().process_event(event)


_DATA_OPCODES = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.CONT})


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class RawWsProtocol(asyncio.Protocol):
    """A minimal WebSocket client (RFC 6455, optional permessage-deflate) for measuring only.

    Far cheaper per message than a full client library: `data_received` stamps the time, cuts the
    frames out of the buffer (server frames are unmasked), inflates when the message is
    compressed, and appends (time, time, payload) to `frames`. Nothing is decoded or validated;
    the analysis parses the JSON after the run. It answers pings and closes, and sends masked text
    frames (the subscription) uncompressed, which permessage-deflate allows.
    """

    def __init__(self, key: str, frames: list[tuple[float, float, bytes]]) -> None:
        self.key = key
        self.frames = frames
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[dict[str, str]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.arrived = asyncio.Event()
        self.inflater: Any = None
        self.inflate_reset = False
        self.fragments: list[bytes] = []
        self.fragment_compressed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        """Resolve whatever still waits."""
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)
        self.arrived.set()

    def data_received(self, data: bytes) -> None:
        """Stamp first, then cut frames."""
        now = time.time()
        self.buf += data
        if not self.handshake.done():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[: end + 4]
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            headers[":status"] = head[0]
            # Frames may follow in this very read: set up inflating before cutting them.
            extensions = headers.get("sec-websocket-extensions", "")
            if "permessage-deflate" in extensions:
                self.inflater = zlib.decompressobj(-15)
                self.inflate_reset = "server_no_context_takeover" in extensions
            self.handshake.set_result(headers)
        self._frames(now)

    def _frames(self, now: float) -> None:
        buf = self.buf
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, hdr = b1 & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, hdr = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, hdr = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if size - pos < hdr + length:
                break
            payload = bytes(buf[pos + hdr : pos + hdr + length])
            pos += hdr + length
            opcode = b0 & 0x0F
            if opcode in (0x1, 0x2):
                self.fragments = [payload]
                self.fragment_compressed = bool(b0 & 0x40)
            elif opcode == 0x0:
                self.fragments.append(payload)
            elif opcode == 0x9:
                self.send(0xA, payload)
                continue
            elif opcode == 0x8:
                if not self.closed.done():
                    self.send(0x8, payload[:2])
                    self.closed.set_result(None)
                    if self.transport is not None:
                        self.transport.close()
                continue
            else:
                continue
            if b0 & 0x80:  # FIN: a complete message
                message = b"".join(self.fragments)
                if self.fragment_compressed and self.inflater is not None:
                    if self.inflate_reset:
                        self.inflater = zlib.decompressobj(-15)
                    message = self.inflater.decompress(message + b"\x00\x00\xff\xff")
                self.frames.append((now, now, message))
                self.arrived.set()
        del buf[:pos]

    def send(self, opcode: int, payload: bytes) -> None:
        """One masked frame."""
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | opcode, 0x80 | n])
        elif n < 65536:
            head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big") if n else 0
        masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
        self.transport.write(head + mask + masked)

    async def close(self, timeout: float = 2.0) -> None:
        """Close handshake, then drop the connection."""
        if not self.closed.done():
            self.send(0x8, (1000).to_bytes(2, "big"))
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        if self.transport is not None:
            self.transport.close()


@dataclass
class WsConn:
    """One client connection and the raw messages it received.

    Each entry is (socket read time, recv() return time, raw bytes); the raw client has no
    separate recv(), so both times are the same there.
    """

    ws: StampedConnection | None = None
    raw: RawWsProtocol | None = None
    frames: list[tuple[float, float, bytes]] = field(default_factory=list)
    scanned: int = 0
    seen: set[tuple[str, str]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Stop reading and close the connection."""
        if self.task is not None:
            self.task.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.raw is not None:
            await self.raw.close()


async def _reader(conn: WsConn) -> None:
    """Receive forever: take the time first, keep the raw message, parse nothing."""
    assert conn.ws is not None
    frames = conn.frames
    stamps = conn.ws.rx_stamps
    recv = conn.ws.recv
    now = time.time
    with contextlib.suppress(ConnectionClosed, asyncio.CancelledError):
        while True:
            raw = await recv(decode=False)
            t = now()
            frames.append(
                (
                    stamps.popleft() if stamps else t,
                    t,
                    raw if isinstance(raw, bytes) else raw.encode(),
                )
            )


def _scan(conns: list[WsConn]) -> None:
    """Note, per connection, the (job, status) transitions received since the last scan."""
    for conn in conns:
        frames = conn.frames
        for _, _, raw in frames[conn.scanned :]:
            if b"job_status_update" not in raw:
                continue
            with contextlib.suppress(ValueError, KeyError, TypeError):
                msg = json.loads(raw)
                if msg["type"] == "job_status_update":
                    conn.seen.add((str(msg["data"]["jobId"]), str(msg["data"]["status"])))
        conn.scanned = len(frames)


async def _wait_for(
    conns: list[WsConn], job_id: str, statuses: frozenset[str], timeout: float
) -> tuple[bool, float]:
    """Wait until every connection saw one of `statuses` for `job_id`; (all seen, seconds)."""
    t0 = time.monotonic()
    while True:
        _scan(conns)
        if all(any((job_id, s) in c.seen for s in statuses) for c in conns):
            return True, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return False, time.monotonic() - t0
        await asyncio.sleep(0.02)


async def _lag_monitor(samples: list[float], stop: asyncio.Event) -> None:
    """Event-loop lag of the client: how late a 5 ms sleep wakes up."""
    while not stop.is_set():
        t0 = time.monotonic()
        await asyncio.sleep(0.005)
        samples.append(time.monotonic() - t0 - 0.005)


_TS_CACHE: dict[str, float] = {}


def parse_ts(value: Any) -> float | None:
    """Unix seconds of an ISO-8601 timestamp (naive means UTC); None if unparsable."""
    if not isinstance(value, str):
        return None
    cached = _TS_CACHE.get(value)
    if cached is not None:
        return cached
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    _TS_CACHE[value] = dt.timestamp()
    return _TS_CACHE[value]


def dist_ms(values: list[float]) -> dict[str, Any]:
    """count, p50, p90, p99, max (ms) of latencies in seconds."""
    if not values:
        return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    arr = np.asarray(values) * 1000
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {
        "count": len(values),
        "p50_ms": round(float(p50), 2),
        "p90_ms": round(float(p90), 2),
        "p99_ms": round(float(p99), 2),
        "max_ms": round(float(arr.max()), 2),
        "min_ms": round(float(arr.min()), 2),
    }


async def _open_raw(
    port: int, job_ids: list[str], compression: str | None, sem: asyncio.Semaphore
) -> WsConn:
    """The raw client: connect, read the ack, subscribe to `job_ids`, read the subscribed ack."""
    conn = WsConn()
    key = base64.b64encode(os.urandom(16)).decode()
    loop = asyncio.get_running_loop()
    async with sem:
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: RawWsProtocol(key, conn.frames), "127.0.0.1", port), 10
        )
        conn.raw = proto
        try:
            assert proto.transport is not None
            request = (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n"
            )
            if compression:
                request += (
                    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                )
            proto.transport.write((request + "\r\n").encode())
            headers = await asyncio.wait_for(proto.handshake, 10)
            if " 101 " not in headers[":status"] + " ":
                raise BenchError(f"upgrade refused: {headers[':status']}")
            accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            if headers.get("sec-websocket-accept") != accept:
                raise BenchError("bad Sec-WebSocket-Accept")
            ack = await _next_message(proto, 0, 5)
            if json.loads(ack).get("type") != "connection_ack":
                raise BenchError(f"first message is not connection_ack: {ack[:100]!r}")
            proto.send(0x1, json.dumps({"type": "subscribe", "data": {"jobIds": job_ids}}).encode())
            index = 1
            deadline = time.monotonic() + 5
            while (
                json.loads(await _next_message(proto, index, deadline - time.monotonic())).get(
                    "type"
                )
                != "connection_ack"
            ):
                index += 1
        except BaseException:
            await proto.close(0.5)
            raise
    del conn.frames[:]
    return conn


async def _next_message(proto: RawWsProtocol, index: int, timeout: float) -> bytes:
    """The message at `index` of the raw client's list, waiting for it up to `timeout`."""
    deadline = time.monotonic() + timeout
    while len(proto.frames) <= index:
        if proto.closed.done():
            raise BenchError("connection closed during setup")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no message from the server")
        proto.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proto.arrived.wait(), left)
    return proto.frames[index][2]


async def _open_lib(
    url: str, job_ids: list[str], compression: str | None, sem: asyncio.Semaphore
) -> WsConn:
    """The websockets client: connect, read the ack, subscribe, read the subscribed ack."""
    async with sem:
        ws = await ws_connect(
            url,
            compression=compression,
            proxy=None,
            ping_interval=None,
            create_connection=StampedConnection,
            max_queue=4096,
            max_size=2**22,
            open_timeout=10,
            close_timeout=2,
        )
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if first.get("type") != "connection_ack":
                raise BenchError(f"first message is {first.get('type')!r}, not connection_ack")
            await ws.send(json.dumps({"type": "subscribe", "data": {"jobIds": job_ids}}))
            deadline = time.monotonic() + 5
            while True:
                msg = json.loads(
                    await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
                )
                if msg.get("type") == "connection_ack":
                    break
        except BaseException:
            await ws.close()
            raise
    assert isinstance(ws, StampedConnection)
    ws.rx_stamps.clear()  # the two acks were read with recv() above
    conn = WsConn(ws=ws)
    conn.task = asyncio.create_task(_reader(conn))
    return conn


async def ws_fanout(
    ref: EmbeddedTarget, args: argparse.Namespace, deadline_s: float
) -> dict[str, Any]:
    """Open the connections, run the trials, close everything; the raw material for the report."""
    t_phase = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    kinds = ["complete" if i % 2 == 0 else "cancel" for i in range(args.ws_trials)]
    job_ids = [f"wsb-{run_id}-{i}" for i in range(len(kinds))]
    compression = None if args.ws_compression == "none" else "deflate"
    sem = asyncio.Semaphore(64)
    ref_pid = reference_pid(ref)
    conns: list[WsConn] = []
    connect_errors: dict[str, int] = {}
    t0 = time.monotonic()
    if args.ws_client == "raw":
        opens = [_open_raw(ref.port, job_ids, compression, sem) for _ in range(args.ws_connections)]
    else:
        opens = [
            _open_lib(ref.ws_url, job_ids, compression, sem) for _ in range(args.ws_connections)
        ]
    results = await asyncio.gather(*opens, return_exceptions=True)
    for res in results:
        if isinstance(res, WsConn):
            conns.append(res)
        else:
            key = f"{type(res).__name__}: {res}"[:160]
            connect_errors[key] = connect_errors.get(key, 0) + 1
    connect_s = time.monotonic() - t0
    print(
        f"  websocket: {len(conns)}/{args.ws_connections} connected and subscribed in "
        f"{connect_s:.1f} s",
        flush=True,
    )
    trials: list[dict[str, Any]] = []
    lag: list[float] = []
    stop = asyncio.Event()
    lag_task = asyncio.create_task(_lag_monitor(lag, stop))
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, w0 = cpu_seconds(ref_pid), time.monotonic()
    wait0 = runq_wait_seconds(ref_pid)
    try:
        if not conns:
            raise BenchError(f"no WebSocket connection could be opened: {connect_errors}")
        async with httpx.AsyncClient(base_url=ref.base_url, trust_env=False, timeout=10.0) as http:
            for job_id, kind in zip(job_ids, kinds, strict=True):
                remaining = deadline_s - (time.monotonic() - t_phase)
                if remaining < 8:
                    trials.append({"job_id": job_id, "kind": kind, "skipped": "time budget"})
                    continue
                trials.append(await _trial(http, conns, job_id, kind, min(remaining - 3, 20.0)))
                print(f"  websocket trial {job_id} ({kind}): {trials[-1]['outcome']}", flush=True)
        await asyncio.sleep(0.3)  # late duplicates
    finally:
        wall = time.monotonic() - w0
        server_cpu = 100 * (cpu_seconds(ref_pid) - cpu0) / wall if wall else float("nan")
        server_wait = 100 * (runq_wait_seconds(ref_pid) - wait0) / wall if wall else float("nan")
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        stop.set()
        await lag_task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(c.close() for c in conns), return_exceptions=True), 10
            )
    client_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return {
        "connections_requested": args.ws_connections,
        "connections_open": len(conns),
        "connect_errors": connect_errors,
        "connect_seconds": round(connect_s, 2),
        "compression": args.ws_compression,
        "client": args.ws_client,
        "trials": trials,
        "server_cpu_pct": round(server_cpu, 1),
        "server_runq_wait_pct": round(server_wait, 1),
        "client_cpu_pct": round(100 * client_cpu / wall, 1) if wall else None,
        "client_loop_lag": dist_ms(lag),
        "analysis": analyse_ws(conns, trials),
    }


async def _trial(
    http: httpx.AsyncClient, conns: list[WsConn], job_id: str, kind: str, timeout: float
) -> dict[str, Any]:
    """One job: create it, wait for `running` everywhere, cancel it or let it finish."""
    profile = COMPLETE_JOB if kind == "complete" else CANCEL_JOB
    trial: dict[str, Any] = {"job_id": job_id, "kind": kind, "profile": profile}
    t_start = time.monotonic()
    resp = await http.post(
        "/api/jobs",
        json={
            "type": "EXTRACT",
            "source_config": profile,
            "target_config": "bench",
            "job_id": job_id,
        },
    )
    trial["create_status"] = resp.status_code
    if resp.status_code not in (200, 201):
        trial["outcome"] = f"create failed: HTTP {resp.status_code} {resp.text[:200]}"
        return trial
    ok, waited = await _wait_for(conns, job_id, frozenset({"running"}) | TERMINAL, timeout / 2)
    trial["running_everywhere_s"] = round(waited, 3)
    if kind == "cancel":
        trial["put_sent_at"] = time.time()
        put = await http.put(f"/api/jobs/{job_id}", json={"status": "cancelled"})
        trial["put_status"] = put.status_code
        trial["put_rtt_ms"] = round(1000 * (time.time() - trial["put_sent_at"]), 2)
    left = max(1.0, timeout - (time.monotonic() - t_start))
    ok, waited = await _wait_for(conns, job_id, TERMINAL, left)
    trial["terminal_everywhere"] = ok
    trial["terminal_wait_s"] = round(waited, 3)
    seen_terminal = sum(1 for c in conns if any((job_id, s) in c.seen for s in TERMINAL))
    trial["outcome"] = f"terminal status at {seen_terminal}/{len(conns)} connections" + (
        f", PUT {trial['put_status']}" if "put_status" in trial else ""
    )
    return trial


def analyse_ws(conns: list[WsConn], trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Latencies, missing, duplicate and out-of-order transitions, from the raw frames."""
    put_sent = {
        t["job_id"]: t["put_sent_at"]
        for t in trials
        if t.get("put_status") == 200 and "put_sent_at" in t
    }
    jobs = {t["job_id"] for t in trials if "skipped" not in t}
    lat_ts: list[float] = []
    lat_ts_app: list[float] = []
    lat_put: list[float] = []
    lat_progress: list[float] = []
    per_conn: list[dict[str, list[str]]] = []
    counts: dict[str, int] = {}
    bad_ts = 0
    for conn in conns:
        sequences: dict[str, list[str]] = {job: [] for job in jobs}
        for t_recv, t_app, raw in conn.frames:
            try:
                msg = json.loads(raw)
                mtype = str(msg.get("type"))
                counts[mtype] = counts.get(mtype, 0) + 1
                data = msg.get("data") or {}
                job = str(data.get("jobId"))
            except (ValueError, AttributeError):
                counts["unparsable"] = counts.get("unparsable", 0) + 1
                continue
            if job not in jobs:
                continue
            ts = parse_ts(data.get("timestamp")) or parse_ts(msg.get("timestamp"))
            if mtype == "job_status_update":
                status = str(data.get("status"))
                sequences[job].append(status)
                if ts is None:
                    bad_ts += 1
                else:
                    lat_ts.append(t_recv - ts)
                    lat_ts_app.append(t_app - ts)
                if status == "cancelled" and job in put_sent:
                    lat_put.append(t_recv - put_sent[job])
            elif mtype == "job_progress_update" and ts is not None:
                lat_progress.append(t_recv - ts)
        per_conn.append(sequences)
    expected: dict[str, set[str]] = {job: set() for job in jobs}
    for sequences in per_conn:
        for job, seq in sequences.items():
            expected[job].update(seq)
    missing = duplicates = out_of_order = 0
    for sequences in per_conn:
        for job, seq in sequences.items():
            missing += len(expected[job] - set(seq))
            duplicates += len(seq) - len(set(seq))
            ranks = [STATUS_RANK.get(s, -1) for s in seq]
            out_of_order += sum(1 for a, b in itertools.pairwise(ranks) if b <= a)
    no_terminal = sum(1 for job in jobs if not expected[job] & TERMINAL)
    return {
        "status_latency_from_server_timestamp": dist_ms(lat_ts),
        "status_latency_to_app_recv": dist_ms(lat_ts_app),
        "cancel_latency_from_put_send": dist_ms(lat_put),
        "progress_latency_from_server_timestamp": dist_ms(lat_progress),
        "transitions_expected_per_job": {
            job: sorted(s, key=lambda x: STATUS_RANK.get(x, 9))
            for job, s in sorted(expected.items())
        },
        "missing": missing,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "jobs_without_terminal_status": no_terminal,
        "status_updates_without_timestamp": bad_ts,
        "messages_by_type": counts,
        "notes": "latencies end when the client read the bytes off the socket "
        "(websockets data_received), except status_latency_to_app_recv, which ends when "
        "recv() returned to the reader task (adds the client's task scheduling); "
        "server timestamps have millisecond resolution",
    }


def run_ws_phase(
    ref: EmbeddedTarget, args: argparse.Namespace, budget: Budget, placement: Placement
) -> dict[str, Any]:
    """The WebSocket phase on its own (uvloop) event loop, pinned to the client CPU."""
    deadline_s = max(10.0, budget.left() - args.reserve)
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
        loop_name = "uvloop"
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        loop_factory, loop_name = None, "asyncio"
    with affinity(placement.client), asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(asyncio.wait_for(ws_fanout(ref, args, deadline_s), deadline_s + 15))
    result["client_loop"] = loop_name
    return result


# --------------------------------------------------------------------------------------------
# report


def _fmt(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal with its value and whether it is met (None: not measured)."""
    http = report.get("http") or {}
    jobs = report.get("job_creation") or {}
    ws = (report.get("websocket") or {}).get("analysis") or {}
    ratio = http.get("ratio_ref_health_to_bare_median")
    rate = jobs.get("jobs_per_s_median")
    p99_ts = (ws.get("status_latency_from_server_timestamp") or {}).get("p99_ms")
    p99_put = (ws.get("cancel_latency_from_put_send") or {}).get("p99_ms")
    ws_clean = (
        (
            ws.get("missing", 1) == 0
            and ws.get("duplicates", 1) == 0
            and ws.get("jobs_without_terminal_status", 1) == 0
        )
        if ws
        else None
    )
    ws_p99 = max((p for p in (p99_ts, p99_put) if p is not None), default=None)
    return [
        {
            "goal": "ref GET /api/health >= 50% of bare",
            "value": ratio,
            "met": None if ratio is None else ratio >= GOAL_HEALTH_RATIO,
            "per_server_cpu_second": http.get("ratio_ref_health_to_bare_per_cpu_second_median"),
            "note": "value is the req/s ratio; per_server_cpu_second divides each side by the CPU "
            "time its server got, which is robust to other load on the server's CPU",
        },
        {
            "goal": "POST /api/jobs >= 300 jobs/s with 0 errors",
            "value": rate,
            "met": None
            if rate is None
            else (rate >= GOAL_JOBS_PER_S and jobs.get("errors_total") == 0),
        },
        {
            "goal": "WebSocket status push p99 < 100 ms, none missing or duplicated",
            "value": ws_p99,
            "met": None if ws_p99 is None else (ws_p99 < GOAL_WS_P99_MS and bool(ws_clean)),
        },
    ]


def print_table(report: dict[str, Any]) -> None:
    """The human-readable summary."""
    print("\n== reference throughput benchmark ==")
    print(f"date {report['date']}  cpu placement: {report['placement']}")
    http = report.get("http")
    if http:
        s = http["summary"]
        b, h, j = s["bare_health"], s["ref_health"], s["ref_jobs"]
        print(
            f"\n{'HTTP (median of rounds)':34s}{'req/s':>9s}{'p50 ms':>9s}{'p99 ms':>9s}"
            f"{'srv cpu%':>10s}{'cpu wait%':>10s}{'req/cpu-s':>11s}{'ratio':>8s}"
            f"{'errors':>8s}"
        )
        rows = [
            ("GET /api/health  bare Starlette", b, None),
            ("GET /api/health  reference", h, http["ratio_ref_health_to_bare_median"]),
            ("GET /api/jobs    reference", j, http["ratio_ref_jobs_to_bare_health_median"]),
        ]
        for name, d, ratio in rows:
            print(
                f"{name:34s}{_fmt(d['rps_median']):>9s}{_fmt(d['p50_ms_median'], '.2f'):>9s}"
                f"{_fmt(d['p99_ms_median'], '.2f'):>9s}"
                f"{_fmt(d['server_cpu_pct_median']):>10s}"
                f"{_fmt(d['server_runq_wait_pct_median']):>10s}"
                f"{_fmt(d['req_per_cpu_s_median']):>11s}{_fmt(ratio, '.2f'):>8s}"
                f"{d['socket_errors'] + d['non_2xx']:>8d}"
            )
        print(
            f"  (ratio = median over rounds of ref/bare-health req/s in the same round; "
            f"per server CPU-second: "
            f"{_fmt(http['ratio_ref_health_to_bare_per_cpu_second_median'], '.2f')}; "
            f"{report['settings']['jobs_listed']} jobs listed by GET /api/jobs)"
        )
    jobs = report.get("job_creation")
    if jobs:
        s = jobs["summary"]
        print(
            f"\nPOST /api/jobs: {_fmt(jobs['jobs_per_s_median'])} jobs/s accepted (median of "
            f"{len(jobs['rounds'])}; "
            f"{_fmt(jobs['jobs_done_per_s_incl_drain_median'])} jobs/s run to completion "
            f"counting the drain), p50 {_fmt(s['p50_ms_median'], '.2f')} ms, "
            f"p99 {_fmt(s['p99_ms_median'], '.2f')} ms, errors {jobs['errors_total']}, "
            f"server cpu {_fmt(s['server_cpu_pct_median'])}%"
        )
    ws = report.get("websocket")
    if ws:
        a = ws["analysis"]
        print(
            f"\nWebSocket fan-out: {ws['connections_open']}/{ws['connections_requested']} "
            f"connections, compression {ws['compression']}, server cpu "
            f"{ws['server_cpu_pct']}% (waited for CPU {ws['server_runq_wait_pct']}%), "
            f"client cpu {ws['client_cpu_pct']}%, client loop lag "
            f"p99 {ws['client_loop_lag']['p99_ms']} ms"
        )
        for name, key in (
            ("status push (server ts -> socket read)", "status_latency_from_server_timestamp"),
            ("cancel (PUT send -> socket read)", "cancel_latency_from_put_send"),
            ("progress push (server ts -> socket read)", "progress_latency_from_server_timestamp"),
            ("status push (server ts -> app recv())", "status_latency_to_app_recv"),
        ):
            d = a[key]
            print(
                f"  {name:42s} n={d['count']:<6d} p50 {_fmt(d['p50_ms'], '.1f'):>7s} ms  "
                f"p99 {_fmt(d['p99_ms'], '.1f'):>7s} ms  max {_fmt(d['max_ms'], '.1f'):>7s} ms"
            )
        print(
            f"  missing {a['missing']}, duplicates {a['duplicates']}, out of order "
            f"{a['out_of_order']}, jobs without terminal status "
            f"{a['jobs_without_terminal_status']}"
        )
    print("\nGoals:")
    for g in report["goals"]:
        mark = {True: "MET", False: "NOT MET", None: "not measured"}[g["met"]]
        extra = (
            f" (per server CPU-second: {g['per_server_cpu_second']})"
            if g.get("per_server_cpu_second") is not None
            else ""
        )
        print(f"  [{mark:12s}] {g['goal']}: {g['value']}{extra}")
    for name, reason in report["skipped"].items():
        print(f"  skipped {name}: {reason}")


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line; --quick shrinks every phase for a ~30 s smoke run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=float, default=None, help="seconds per wrk run (default 5)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument(
        "--ws-connections", type=int, default=None, help="WebSocket connections (default 500)"
    )
    p.add_argument(
        "--ws-trials",
        type=int,
        default=None,
        help="jobs watched over WebSocket, alternately completed and cancelled (default 4)",
    )
    p.add_argument(
        "--ws-compression",
        choices=("deflate", "none"),
        default="deflate",
        help="permessage-deflate offered by the clients, as browsers and the suite's "
        "client do (default deflate)",
    )
    p.add_argument(
        "--ws-client",
        choices=("raw", "websockets"),
        default="raw",
        help="raw: a minimal client that costs a few microseconds per message "
        "(default); websockets: the websockets library",
    )
    p.add_argument(
        "--jobs-listed",
        type=int,
        default=50,
        help="jobs created before GET /api/jobs is measured (default 50)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="wall-clock budget in seconds (default 170, --quick 45)",
    )
    p.add_argument(
        "--phases",
        default="http,jobs,ws",
        help="comma-separated subset of http,jobs,ws (default all)",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin servers and clients")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    p.add_argument("--quick", action="store_true", help="1 round of 2 s, fewer WS trials")
    args = p.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 3)
    args.duration = args.duration or (2.0 if quick else 5.0)
    args.ws_connections = args.ws_connections or 500
    args.ws_trials = args.ws_trials or (2 if quick else 4)
    args.budget = args.budget or (45.0 if quick else 170.0)
    args.reserve = 12.0 if quick else 20.0  # kept back for the WS phase and shutdown
    args.phases = {x.strip() for x in args.phases.split(",") if x.strip()}
    unknown = args.phases - {"http", "jobs", "ws"}
    if unknown:
        p.error(f"unknown phase(s) {sorted(unknown)}; choose from http, jobs, ws")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every phase within the budget, print the table, write the JSON; exit 0 unless broken."""
    args = parse_args(argv)
    budget = Budget(args.budget)
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    fd_limit = raise_fd_limit()
    placement = plan_placement(not args.no_pin)
    report: dict[str, Any] = {
        "benchmark": "reference_throughput",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            "fd_limit": fd_limit,
        },
        "placement": placement.note,
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "wrk": f"wrk -t1 -c{args.connections} -d{args.duration:g}s --timeout 5s",
            "ws_connections": args.ws_connections,
            "ws_trials": args.ws_trials,
            "jobs_listed": args.jobs_listed,
            "budget_s": args.budget,
            "reference_overrides": BENCH_OVERRIDES,
            "profiles": {"cheap": CHEAP_JOB, "complete": COMPLETE_JOB, "cancel": CANCEL_JOB},
        },
        "skipped": {},
    }
    work = tempfile.TemporaryDirectory(prefix="etlplus-bench-")
    bare = BareServer(Path(work.name))
    ref = EmbeddedTarget(config_overrides=BENCH_OVERRIDES, startup_timeout=30.0)
    wrk = Wrk(Path(work.name), args.connections, placement)
    try:
        try:
            with affinity(placement.server):
                bare.start()
                ref.start()
        except (BenchError, EmbeddedTargetError) as exc:
            print(f"cannot start the servers: {exc}", file=sys.stderr)
            return 1
        pin_process(bare.pid, placement.server)
        pin_process(reference_pid(ref), placement.server)
        print(
            f"bare app pid {bare.pid} at {bare.base_url}; reference pid {reference_pid(ref)} "
            f"at {ref.base_url}; {placement.note}",
            flush=True,
        )
        listed = 0
        if "http" in args.phases:
            listed = create_jobs(ref.base_url, args.jobs_listed, f"list{uuid.uuid4().hex[:6]}")
        report["settings"]["jobs_listed"] = listed
        report["settings"]["jobs_listed_idle"] = wait_jobs_idle(ref.base_url, 15.0)
        phases: tuple[tuple[str, Callable[[], dict[str, Any]]], ...] = (
            ("http", lambda: http_phase(wrk, bare, ref, args, budget)),
            ("job_creation", lambda: jobs_phase(wrk, ref, args, budget)),
            ("websocket", lambda: run_ws_phase(ref, args, budget, placement)),
        )
        wanted = {"http": "http", "job_creation": "jobs", "websocket": "ws"}
        for name, phase in phases:
            if wanted[name] not in args.phases:
                continue
            if name == "websocket":
                idle = wait_jobs_idle(ref.base_url, min(20.0, max(1.0, budget.left() - 15)))
                report["websocket_preconditions"] = idle
            if budget.left() < 8:
                report["skipped"][name] = f"time budget ({args.budget:.0f} s) used up"
                continue
            print(f"-- {name} ({budget.elapsed():.0f} s elapsed)", flush=True)
            try:
                report[name] = phase()
            except (BenchError, TimeoutError, OSError, httpx.HTTPError, WebSocketException) as exc:
                report["skipped"][name] = f"{type(exc).__name__}: {exc}"
                print(f"  {name} failed: {exc}", flush=True)
    finally:
        bare.stop()
        ref.stop()
        work.cleanup()
    report["elapsed_s"] = round(budget.elapsed(), 1)
    report["goals"] = goals(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print_table(report)
    print(f"\nJSON: {args.out}  (total {report['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
