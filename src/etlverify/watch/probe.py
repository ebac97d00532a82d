"""What a watch does to the target, at low cost: health probes, metrics samples, a synthetic job
followed over WebSocket now and then, and the log error scan.

Every call has a timeout; nothing here raises on a target problem: each outcome is recorded into
the current window (`WindowAccumulator`) as a latency or an error of a named kind.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import httpx
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from etlverify.jobs import DEFAULT_TARGET_CONFIG
from etlverify.measure.histogram import LatencyHistogram
from etlverify.measure.results import WindowStats
from etlverify.measure.sampler import METRICS_PATH, ServerSample, parse_metrics

if TYPE_CHECKING:
    from collections.abc import Iterator

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "HEALTH_METRIC",
    "JOB_METRIC",
    "SUBMIT_METRIC",
    "LogScanner",
    "Prober",
    "WatchSample",
    "WindowAccumulator",
]

#: metric names of a watch (their windows are what baselines and triggers compare)
HEALTH_METRIC = "watch GET /api/health"
SUBMIT_METRIC = "watch POST /api/jobs"
JOB_METRIC = "watch job end-to-end"
TERMINAL = ("completed", "failed", "cancelled")
_ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b")


def _kind(exc: BaseException) -> str:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(exc, httpx.ConnectError | ConnectionRefusedError):
        return "refused"
    return "transport"


@dataclass
class WindowAccumulator:
    """One window being observed: latencies and errors per metric, server samples, probes."""

    index: int
    start_s: float
    wall_start: str
    hists: dict[str, LatencyHistogram] = field(default_factory=dict)
    errors: dict[str, dict[str, int]] = field(default_factory=dict)
    server: list[ServerSample] = field(default_factory=list)
    probes: int = 0
    probe_failures: int = 0
    log_errors: int = 0
    log_samples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the watch's request count (`Prober.requests`) when the window opened
    requests_at_start: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _touch(self, metric: str) -> None:
        self.hists.setdefault(metric, LatencyHistogram())
        self.errors.setdefault(metric, {})

    def ok(self, metric: str, seconds: float) -> None:
        """A success and its latency."""
        with self.lock:
            self._touch(metric)
            self.hists[metric].record_s(seconds)

    def error(self, metric: str, kind: str) -> None:
        """A failure of `kind` (``http_500``, ``timeout``, ``refused``...)."""
        with self.lock:
            self._touch(metric)
            self.errors[metric][kind] = self.errors[metric].get(kind, 0) + 1

    def close(self, end_s: float) -> dict[str, Any]:
        """The window's record (JSON), with its real duration."""
        duration = max(0.0, end_s - self.start_s)
        with self.lock:
            metrics = {
                name: WindowStats.from_histogram(
                    hist,
                    index=self.index,
                    start_s=self.start_s,
                    duration_s=duration,
                    errors=self.errors.get(name),
                ).to_json()
                for name, hist in sorted(self.hists.items())
            }
        return {
            "index": self.index,
            "start_s": round(self.start_s, 3),
            "duration_s": round(duration, 3),
            "wall_start": self.wall_start,
            "metrics": metrics,
            "server": [s.to_json() for s in self.server],
            "probes": self.probes,
            "probe_failures": self.probe_failures,
            "log_errors": self.log_errors,
            "log_samples": self.log_samples[:5],
            "notes": self.notes,
        }


@dataclass(frozen=True)
class WatchSample(ServerSample):
    """A server sample plus the target's count of 5xx answers (`metrics.requests.server_errors`,
    which the reference has beside the contract's `errors`, every status >= 400), when it has one:
    the users' error rate is judged on server errors where they can be told from client ones."""

    requests_server_errors: float | None = None

    @classmethod
    def of(cls, sample: ServerSample, body: object) -> ServerSample:
        """`sample` with the 5xx counter of the metrics `body`, when it has one."""
        metrics = body.get("metrics") if isinstance(body, dict) else None
        requests = metrics.get("requests") if isinstance(metrics, dict) else None
        value = requests.get("server_errors") if isinstance(requests, dict) else None
        if not sample.ok or isinstance(value, bool) or not isinstance(value, int | float):
            return sample
        known = {f.name: getattr(sample, f.name) for f in fields(ServerSample)}
        return cls(**known, requests_server_errors=float(value))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (`ServerSample.from_json` reads it back without the extra counter)."""
        return {**super().to_json(), "requests_server_errors": self.requests_server_errors}


class Prober:
    """The watch's requests. `headers` carry a bearer token when the target needs one."""

    def __init__(
        self,
        base_url: str,
        ws_url: str,
        *,
        timeout_s: float = 5.0,
        headers: dict[str, str] | None = None,
        job_type: str = "FULL_ETL",
        job_source: str = "rows=200;batch=50;delay_ms=5",
        job_timeout_s: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.ws_url = ws_url
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self.job_type = job_type
        self.job_source = job_source
        self.job_timeout_s = job_timeout_s
        # One client, but a fresh connection per request (no keep-alive): a target that hangs a
        # reused socket cannot stall the watch, and each probe sees what a new user sees.
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout_s,
            headers=self.headers,
            limits=httpx.Limits(max_keepalive_connections=0),
            trust_env=False,
        )
        self._lock = threading.Lock()
        self.requests = 0

    @contextlib.contextmanager
    def _client(self) -> Iterator[httpx.Client]:
        yield self._http

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()

    def health(self, win: WindowAccumulator) -> bool:
        """GET /api/health: True when it answered 200."""
        self.requests += 1
        started = time.perf_counter()
        try:
            with self._client() as client:
                resp = client.get("/api/health")
        except httpx.HTTPError as exc:
            win.error(HEALTH_METRIC, _kind(exc))
            return False
        elapsed = time.perf_counter() - started
        if resp.status_code == 200:
            win.ok(HEALTH_METRIC, elapsed)
            return True
        win.error(HEALTH_METRIC, f"http_{resp.status_code}")
        return False

    def sample(self, t_s: float) -> ServerSample:
        """GET /api/health/metrics as a server sample (`ok` False with why on failure)."""
        self.requests += 1
        try:
            with self._client() as client:
                resp = client.get(METRICS_PATH)
            if resp.status_code != 200:
                return ServerSample(t_s, ok=False, error=f"HTTP {resp.status_code}")
            body = resp.json()
            return WatchSample.of(parse_metrics(t_s, body), body)
        except httpx.TimeoutException:
            return ServerSample(t_s, ok=False, error=f"no answer within {self.timeout_s:g} s")
        except ValueError:
            return ServerSample(t_s, ok=False, error="the answer was not JSON")
        except httpx.HTTPError as exc:
            # in people's words, never an exception's class name
            reason = "connection refused" if "refused" in str(exc).lower() else str(exc)
            return ServerSample(t_s, ok=False, error=(reason or "the request failed")[:200])

    def job(self, win: WindowAccumulator) -> str:
        """A quick synthetic job, followed over WebSocket to its end; one line on what happened.

        Records the submit latency (`SUBMIT_METRIC`) and the end-to-end time (`JOB_METRIC`); a
        job that fails, is not pushed, or does not end within `job_timeout_s` is an error there.
        """
        job_id = f"etlv_watch_{uuid.uuid4().hex[:12]}"
        body = {
            "type": self.job_type,
            "source_config": self.job_source,
            "target_config": DEFAULT_TARGET_CONFIG,
            "job_id": job_id,
        }
        headers = [(k, v) for k, v in self.headers.items()]
        started = time.perf_counter()
        self.requests += 2
        try:
            with connect(
                self.ws_url,
                open_timeout=self.timeout_s,
                close_timeout=2.0,
                additional_headers=headers,
            ) as ws:
                ws.send(json.dumps({"type": "subscribe", "data": {"jobIds": [job_id]}}))
                submitted = time.perf_counter()
                try:
                    with self._client() as client:
                        resp = client.post("/api/jobs", json=body)
                except httpx.HTTPError as exc:
                    win.error(SUBMIT_METRIC, _kind(exc))
                    return f"job {job_id}: submit failed ({_kind(exc)})"
                if resp.status_code not in (200, 201):
                    win.error(SUBMIT_METRIC, f"http_{resp.status_code}")
                    win.error(JOB_METRIC, "not_submitted")
                    return f"job {job_id}: POST /api/jobs answered {resp.status_code}"
                win.ok(SUBMIT_METRIC, time.perf_counter() - submitted)
                deadline = time.monotonic() + self.job_timeout_s
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        win.error(JOB_METRIC, "timeout")
                        return f"job {job_id}: no terminal status within {self.job_timeout_s:g} s"
                    raw = ws.recv(timeout=left)
                    try:
                        msg = json.loads(raw)
                    except ValueError:
                        continue
                    data = msg.get("data") if isinstance(msg, dict) else None
                    if (
                        isinstance(data, dict)
                        and msg.get("type") == "job_status_update"
                        and data.get("status") in TERMINAL
                    ):
                        status = str(data["status"])
                        if status == "completed":
                            win.ok(JOB_METRIC, time.perf_counter() - started)
                        else:
                            win.error(JOB_METRIC, f"job_{status}")
                        return f"job {job_id}: {status}"
        except TimeoutError:
            win.error(JOB_METRIC, "timeout")
            return f"job {job_id}: WebSocket timed out"
        except (OSError, WebSocketException) as exc:
            win.error(JOB_METRIC, "websocket")
            reason = (str(exc).splitlines() or ["connection lost"])[0][:120] or "connection lost"
            return f"job {job_id}: WebSocket failed: {reason}"


class LogScanner:
    """New ERROR/CRITICAL/FATAL lines in the deployment's log files since the last scan."""

    def __init__(self, deploy_root: Path | None) -> None:
        self.folder = deploy_root / "logs" if deploy_root is not None else None
        self.offsets: dict[Path, int] = {}
        if self.folder is not None and self.folder.is_dir():
            for path in self.folder.glob("*.log"):
                self.offsets[path] = path.stat().st_size  # what was there before the watch

    def scan(self) -> list[str]:
        """Error lines written since the last call (a rotated file is read from its start)."""
        if self.folder is None or not self.folder.is_dir():
            return []
        found: list[str] = []
        for path in sorted(self.folder.glob("*.log")):
            try:
                size = path.stat().st_size
                start = self.offsets.get(path, 0)
                if size < start:
                    start = 0  # rotated
                with path.open("rb") as fh:
                    fh.seek(start)
                    data = fh.read(min(size - start, 4 * 2**20))
                self.offsets[path] = start + len(data)
            except OSError:
                continue
            for line in data.decode("utf-8", errors="replace").splitlines():
                if _ERROR_LINE.search(line):
                    found.append(line.strip()[:300])
        return found
