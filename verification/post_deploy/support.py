"""Plain helpers of the post-deployment suites: job lifecycle rules, the server log, uptime.

Nothing here imports the plugin: helpers take the fixtures' objects as arguments, or none at all.
The lifecycle rules are contract section 4, the log format section 9.
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from etlverify.health import TargetBlocked, health_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from pathlib import Path

__all__ = [
    "JOB_FIELDS",
    "TERMINAL",
    "TRANSITIONS",
    "AppLog",
    "LogLine",
    "UptimeSampler",
    "job_problems",
    "lifecycle_problems",
    "median_ms",
    "parse_time",
    "wait_until",
]

TERMINAL = frozenset({"completed", "failed", "cancelled"})
#: contract section 4: state -> the states it may move to (`scheduled` is an accepted first state)
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "cancelled", "scheduled"}),
    "scheduled": frozenset({"pending", "running", "cancelled"}),
    "running": frozenset({"completed", "failed", "cancelled"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
JOB_FIELDS = (
    "jobId",
    "type",
    "status",
    "createdAt",
    "startedAt",
    "completedAt",
    "progressPercent",
    "currentStep",
    "recordsProcessed",
    "recordsSuccessful",
    "recordsFailed",
    "executionTimeMs",
)
_EPOCH_TEXT = ("1970-01-01 00:00:00", "1970-01-01T00:00:00")


def parse_time(value: Any) -> datetime | None:
    """A contract timestamp as an aware UTC datetime; None when unset (null or the epoch).

    Raises ValueError for anything that is neither ISO-8601 nor `YYYY-MM-DD HH:MM:SS`.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp string: {value!r}")
    if value.startswith(_EPOCH_TEXT):
        return None
    text = value.strip().replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _num(doc: dict[str, Any], key: str) -> float | None:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def job_problems(doc: dict[str, Any], *, final: str) -> list[str]:
    """What is wrong with one job document that has reached the terminal state `final`."""
    problems = [f"field {k!r} missing" for k in JOB_FIELDS if k not in doc]
    if doc.get("status") != final:
        problems.append(f"status {doc.get('status')!r}, expected {final!r}")
    processed = _num(doc, "recordsProcessed")
    ok = _num(doc, "recordsSuccessful")
    failed = _num(doc, "recordsFailed")
    if None in (processed, ok, failed):
        problems.append(
            "record counters not all numbers: "
            f"processed={doc.get('recordsProcessed')!r} "
            f"successful={doc.get('recordsSuccessful')!r} "
            f"failed={doc.get('recordsFailed')!r}"
        )
    elif processed != (ok or 0) + (failed or 0):
        problems.append(f"recordsProcessed {processed:g} != successful {ok:g} + failed {failed:g}")
    progress = _num(doc, "progressPercent")
    if progress is None or not 0 <= progress <= 100:
        problems.append(f"progressPercent {doc.get('progressPercent')!r} not in 0-100")
    elif final == "completed" and progress != 100:
        problems.append(f"progressPercent {progress:g} at completion, expected 100")
    times: dict[str, datetime | None] = {}
    for key in ("createdAt", "startedAt", "completedAt"):
        try:
            times[key] = parse_time(doc.get(key))
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
            times[key] = None
    if times.get("createdAt") is None:
        problems.append(f"createdAt unset ({doc.get('createdAt')!r})")
    if final in ("completed", "failed"):
        for key in ("startedAt", "completedAt"):
            if times.get(key) is None:
                problems.append(f"{key} unset ({doc.get(key)!r}) on a {final} job")
    created, started, done = (
        times.get("createdAt"),
        times.get("startedAt"),
        times.get("completedAt"),
    )
    # Timestamps may have one-second resolution: compare with a second of slack.
    if created and started and (created - started).total_seconds() > 1:
        problems.append(f"startedAt {doc['startedAt']} before createdAt {doc['createdAt']}")
    if started and done and (started - done).total_seconds() > 1:
        problems.append(f"completedAt {doc['completedAt']} before startedAt {doc['startedAt']}")
    if final == "failed" and not (isinstance(doc.get("errorMessage"), str) and doc["errorMessage"]):
        problems.append(f"errorMessage {doc.get('errorMessage')!r} on a failed job")
    return problems


#: lifecycle order of polled states: polling may miss a state, but never sees one go back
_RANK = {"pending": 0, "scheduled": 0, "running": 1, "completed": 2, "failed": 2, "cancelled": 2}


def lifecycle_problems(history: Sequence[dict[str, Any]]) -> list[str]:
    """Problems in a sequence of polled job documents: a status going back (or leaving a terminal
    state), counters decreasing. Polls may skip a state; the WebSocket checks see every one."""
    problems: list[str] = []
    prev: dict[str, Any] | None = None
    for doc in history:
        if prev is not None:
            before, after = prev.get("status"), doc.get("status")
            if before != after and (
                before in TERMINAL or _RANK.get(str(after), -1) < _RANK.get(str(before), 99)
            ):
                problems.append(
                    f"status {before!r} -> {after!r} goes backwards or leaves a terminal state"
                )
            for key in ("progressPercent", "recordsProcessed"):
                a, b = _num(prev, key), _num(doc, key)
                if a is not None and b is not None and b < a:
                    problems.append(f"{key} went down: {a:g} -> {b:g}")
        prev = doc
    return problems


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Poll `pred()` until it returns something truthy or `timeout` passes; its last value."""
    deadline = time.monotonic() + timeout
    value = pred()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = pred()
    return value


def median_ms(samples: Iterable[float]) -> float:
    """The median of latencies in seconds, in milliseconds (nan when empty)."""
    values = list(samples)
    return statistics.median(values) * 1000 if values else float("nan")


# -- the server log (contract section 9) ----------------------------------------------------------
_TEXT_LINE = re.compile(
    r"^\[(?P<ts>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3})\] "
    r"\[(?P<level>DEBUG|INFO|WARN|ERROR|FATAL)\]"
    r" \[(?P<component>[^\]]*)\] (?P<message>.*)$"
)
_TEXT_CORRELATION = re.compile(r"\bcorrelationId=\"?(?P<id>[0-9A-Za-z_-]+)")
_TEXT_KV = re.compile(r"(?:^| )(?P<k>[A-Za-z_][\w.]*)=(?P<v>\"(?:[^\"\\]|\\.)*\"|\S+)")
_JSON_KEYS = ("timestamp", "level", "component", "message", "context")


@dataclass(frozen=True)
class LogLine:
    """One parsed server log line."""

    file: str
    number: int
    raw: str
    timestamp: datetime
    level: str
    component: str
    message: str
    context: dict[str, str]

    @property
    def correlation_id(self) -> str | None:
        """The `correlationId` context value, if the line has one."""
        return self.context.get("correlationId")


def parse_log_line(raw: str, file: str = "", number: int = 0) -> LogLine | None:
    """A TEXT or JSON log line; None when it has neither shape."""
    if raw.startswith("{"):
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(doc, dict) or any(k not in doc for k in _JSON_KEYS):
            return None
        try:
            ts = parse_time(doc["timestamp"])
        except ValueError:
            return None
        ctx = doc["context"] if isinstance(doc["context"], dict) else {}
        if ts is None or doc["level"] not in ("DEBUG", "INFO", "WARN", "ERROR", "FATAL"):
            return None
        return LogLine(
            file,
            number,
            raw,
            ts,
            str(doc["level"]),
            str(doc["component"]),
            str(doc["message"]),
            {str(k): str(v) for k, v in ctx.items()},
        )
    m = _TEXT_LINE.match(raw)
    if m is None:
        return None
    ts = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    message, _, tail = m["message"].partition(" | ")
    context: dict[str, str] = {}
    for kv in _TEXT_KV.finditer(tail):
        value = kv["v"]
        if value.startswith('"'):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        context[kv["k"]] = value
    cid = _TEXT_CORRELATION.search(m["message"])
    if cid and "correlationId" not in context:
        context["correlationId"] = cid["id"]
    return LogLine(file, number, raw, ts, m["level"], m["component"], message, context)


@dataclass
class AppLog:
    """The deployment's server log file and its size rotations (`name.1` is the newest backup)."""

    path: Path

    def files(self) -> list[Path]:
        """The rotations oldest first, then the current file (the order lines were written)."""
        rotated: list[tuple[int, Path]] = []
        if self.path.parent.is_dir():
            for p in self.path.parent.iterdir():
                suffix = p.name[len(self.path.name) + 1 :]
                if p.name.startswith(self.path.name + ".") and suffix.isdigit():
                    rotated.append((int(suffix), p))
        ordered = [p for _, p in sorted(rotated, reverse=True)]
        return [*ordered, self.path] if self.path.exists() else ordered

    def raw_lines(self) -> Iterator[tuple[Path, int, str, bool]]:
        """(file, line number, text, terminated) for every line of every file, in write order."""
        for path in self.files():
            try:
                data = path.read_bytes()
            except OSError:
                continue  # rotated away while we looked
            text = data.decode("utf-8", "replace")
            pieces = text.split("\n")
            for i, piece in enumerate(pieces[:-1], 1):
                yield path, i, piece, True
            if pieces[-1]:
                yield path, len(pieces), pieces[-1], False

    def lines(self, since: datetime | None = None) -> list[LogLine]:
        """Every parseable line, optionally only those stamped at or after `since`."""
        out = []
        for path, number, raw, _ in self.raw_lines():
            line = parse_log_line(raw, path.name, number)
            if line is not None and (since is None or line.timestamp >= since):
                out.append(line)
        return out

    def wait_for(
        self, pred: Any, *, timeout: float, since: datetime | None = None
    ) -> LogLine | None:
        """The first line matching `pred` (polled until `timeout`), or None."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines(since):
                if pred(line):
                    return line
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)


# -- health sampling over the run (success criterion "uptime > 99.9%") -----------------------------
@dataclass(frozen=True)
class Sample:
    """One health probe: when (monotonic s), whether it answered 200 quickly, and what came back."""

    at: float
    ok: bool
    detail: str
    planned: bool


@dataclass(eq=False)  # registered with pluggy, which needs it hashable
class UptimeSampler:
    """Polls `GET /api/health` in a thread; restarts the suite makes on purpose are marked planned.

    Registered with the plugin manager under `NAME` so that the rollback suites can announce a
    planned restart (`with sampler.planned("rollback full"): ...`) without importing this module.
    """

    base_url: str
    interval_s: float = 0.5
    timeout_s: float = 2.0
    samples: list[Sample] = field(default_factory=list)
    _planned: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    NAME = "etlverify-post-deploy-uptime"

    def start(self) -> None:
        """Start the probing thread."""
        self._thread = threading.Thread(target=self._run, name="uptime-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop probing (bounded: at most one probe timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1)

    def probe(self) -> Sample:
        """One probe, recorded. While the run's health view knows the target is down the probe is
        a failed sample at once (the view itself probes again every few seconds): the sampler
        never waits out its timeout against a target known to be down."""
        planned = bool(self._planned)
        health = health_for(self.base_url)
        try:
            health.before_request("GET /api/health (uptime probe)")
            with httpx.Client(timeout=self.timeout_s) as client:
                r = client.get(f"{self.base_url}/api/health")
            ok = r.status_code == 200
            detail = f"HTTP {r.status_code}"
        except TargetBlocked as exc:
            ok, detail = False, health.down_text(exc.event)
        except httpx.TimeoutException:
            ok, detail = False, f"no answer within {self.timeout_s:g} s"
        except httpx.HTTPError as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else str(exc)
            ok, detail = False, reason or "the request failed"
        sample = Sample(time.monotonic(), ok, detail, planned or bool(self._planned))
        with self._lock:
            self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.is_set():
            self.probe()
            self._stop.wait(self.interval_s)

    @contextlib.contextmanager
    def planned(self, reason: str) -> Iterator[None]:
        """Mark probes taken inside the block as planned downtime (a restart made by a test)."""
        self._planned.append(reason)
        try:
            with health_for(self.base_url).planned(reason):
                yield
        finally:
            self._planned.remove(reason)

    def snapshot(self) -> list[Sample]:
        """The samples so far."""
        with self._lock:
            return list(self.samples)
