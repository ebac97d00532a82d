"""One view of the target's health through a run: answering, slow, not answering, gone, recovered.

Every client of the suite (`EtlClient`, `WsSession`) reports what happened to each request to the
`TargetHealth` of its base URL (one per URL and process, `health_for`). The view decides two things:

- **Fail fast.** Once a request got no answer and a probe on a fresh connection got none either,
  the target is *not answering* (or *gone*, when connections are refused). Later requests do not
  each wait the full request timeout: `before_request` raises `TargetBlocked` at once ("blocked:
  the target has not answered since 06:31:12 ..."), except that every `probe_interval` seconds one
  request probes the target again (a fresh connection, `probe_timeout` seconds); when it answers
  the target is *recovered* and requests go through again.
- **Root cause.** Each change of state is an `Event` (when, which check, after how many requests and
  connections). The sign-off turns the events into the run's primary findings
  (`etlverify.report.causes`): the failures that follow from one event are counted under it, not
  repeated.

Two narrower conditions are told apart from "not answering", because the fix differs:

- a request that hangs on a *reused* keep-alive connection after an error response, while a fresh
  connection answers: the target hangs on reused sockets (`keepalive_hang`); clients then use a
  fresh connection per request (`fresh_connections`);
- a WebSocket handshake that never completes while HTTP answers (`ws_handshake`): later WebSocket
  connects are blocked the same way, HTTP checks are not.

**Last moments.** The view keeps the last requests the target answered (method, path, status,
the job a ``POST /api/jobs`` created). When the target stops answering or goes away, the event
says what it did last and how long before the first failure ("the target went away about 1.1 s
after POST /api/jobs created job_...; the first failure after it: ..."), and, when a `log_reader`
is set (the pytest plugin sets one with ``--deploy-root``), the last ERROR/FATAL lines of its log.

Plain Python and thread-safe (the uptime sampler, the measurements and load threads report too).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from etlverify.errors import TargetError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

__all__ = [
    "Event",
    "EventKind",
    "TargetBlocked",
    "TargetHealth",
    "clock",
    "health_for",
    "log_error_lines",
    "plain_reason",
    "reset_health",
]

#: seconds a fresh-connection probe may take before the target counts as not answering
PROBE_TIMEOUT = 1.5
#: at most one probe this often while the target is down; other requests fail at once
PROBE_INTERVAL = 5.0
#: an answer slower than this is noted as "slow" (once per episode)
SLOW_S = 2.0
#: answered requests kept for the "last moments" of a target that goes away
RECENT = 6
#: ERROR/FATAL lines of the target's log an event quotes
LOG_LINES = 3


def clock(at: float) -> str:
    """``06:31:12`` (local time) for an event's wall-clock time."""
    return time.strftime("%H:%M:%S", time.localtime(at))


class EventKind(StrEnum):
    """What changed."""

    NOT_ANSWERING = "not-answering"
    GONE = "gone"
    RECOVERED = "recovered"
    SLOW = "slow"
    KEEPALIVE_HANG = "keepalive-hang"
    WS_HANDSHAKE = "ws-handshake"
    WS_RECOVERED = "ws-recovered"


@dataclass(frozen=True)
class Answered:
    """One request the target answered (for the last moments of a target that went away)."""

    at: float
    what: str
    status: int
    #: the job a ``POST /api/jobs`` created ("" otherwise)
    job: str = ""

    def text(self) -> str:
        """``POST /api/jobs 201 (created job_1a2b)``."""
        return f"{self.what} {self.status}" + (f" (created {self.job})" if self.job else "")

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict."""
        return {"at_epoch": round(self.at, 3), "request": self.what, "status": self.status} | (
            {"job_id": self.job} if self.job else {}
        )


@dataclass(frozen=True)
class Event:
    """One change in the target's state, as the suite saw it."""

    kind: EventKind
    at: float
    check: str
    detail: str
    requests: int
    connections: int
    #: for a target that went away or stopped answering: what it did last (one sentence)
    moments: str = ""
    #: the last requests it answered before the event, oldest first
    last_requests: tuple[Answered, ...] = ()
    #: the last ERROR/FATAL lines of its log (with a deployment root)
    log: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict (summary.json's ``health`` timeline)."""
        data: dict[str, object] = {
            "kind": self.kind.value,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
            "at_epoch": round(self.at, 3),
            "check": self.check,
            "detail": self.detail,
            "requests": self.requests,
            "connections": self.connections,
        }
        if self.moments:
            data["moments"] = self.moments
            data["last_requests"] = [a.to_json() for a in self.last_requests]
        if self.log:
            data["log"] = list(self.log)
        return data


class TargetBlocked(TargetError):
    """A request was not sent: the target has not answered since an earlier event."""

    def __init__(self, message: str, event: Event) -> None:
        super().__init__(message, "blocked")
        self.event = event

    def __reduce__(self) -> tuple[object, ...]:
        return (TargetError, (str(self), "blocked"))


@dataclass
class _Channel:
    """HTTP or WebSocket: down since which event, when it was last probed."""

    down: Event | None = None
    last_probe: float = 0.0
    blocked: int = 0


@dataclass
class TargetHealth:
    """The health view of one target (see the module docstring)."""

    base_url: str
    probe_timeout: float = PROBE_TIMEOUT
    probe_interval: float = PROBE_INTERVAL
    slow_s: float = SLOW_S
    #: the check running now (the pytest plugin sets it; "" outside a check)
    check: str = ""
    requests: int = 0
    answered: int = 0
    connections: int = 0
    events: list[Event] = field(default_factory=list)
    #: clients open a fresh connection per request (set after a keep-alive hang)
    fresh_connections: bool = False
    #: what is in flight now, for a check that runs out of time: (description, started)
    in_flight: dict[int, tuple[str, float]] = field(default_factory=dict)
    #: route prefix -> `etlverify.client.Pacing`: what clients waited for the target's rate limits
    pacing: dict[str, Any] = field(default_factory=dict)
    #: the last ERROR/FATAL lines of the target's log, when it can be read (see `log_error_lines`)
    log_reader: Callable[[], Sequence[str]] | None = None
    recent: deque[Answered] = field(default_factory=lambda: deque(maxlen=RECENT))
    #: jobs the target created in this run (answers to POST /api/jobs), the first and the last
    jobs_created: int = 0
    first_job: Answered | None = None
    last_job: Answered | None = None
    _http: _Channel = field(default_factory=_Channel)
    _ws: _Channel = field(default_factory=_Channel)
    _slow_noted: bool = False
    _planned: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- state --------------------------------------------------------------------------------

    @property
    def down(self) -> Event | None:
        """The event since which HTTP has not answered, or None."""
        return self._http.down

    @property
    def ws_down(self) -> Event | None:
        """The event since which WebSocket handshakes do not complete, or None."""
        return self._ws.down

    def state(self) -> str:
        """``answering``, ``slow``, ``not answering since T``, ``gone since T`` or ``recovered``."""
        down = self._http.down
        if down is not None:
            word = "gone" if down.kind is EventKind.GONE else "not answering"
            return f"{word} since {clock(down.at)}"
        last = self.events[-1] if self.events else None
        if last is not None and last.kind is EventKind.RECOVERED:
            return "recovered"
        return "slow" if self._slow_noted else "answering"

    def _event(
        self, kind: EventKind, detail: str, at: float | None = None, *, failure: str = ""
    ) -> Event:
        when = time.time() if at is None else at
        moments = ""
        last: tuple[Answered, ...] = ()
        log: tuple[str, ...] = ()
        if kind in (EventKind.GONE, EventKind.NOT_ANSWERING):
            last = tuple(a for a in self.recent if a.at <= when + 0.5)
            jobs = (self.first_job, self.last_job, self.jobs_created)
            moments = last_moments(kind, last, failure or detail, when, jobs)
            log = self._log_lines()
        event = Event(
            kind,
            when,
            self.check,
            detail,
            self.requests,
            self.connections,
            moments=moments,
            last_requests=last,
            log=log,
        )
        self.events.append(event)
        return event

    def _log_lines(self) -> tuple[str, ...]:
        if self.log_reader is None:
            return ()
        try:
            return tuple(self.log_reader())[-LOG_LINES:]
        except (OSError, ValueError):
            return ()

    @contextlib.contextmanager
    def planned(self, reason: str) -> Iterator[None]:
        """Inside the block the target may be down on purpose (a restart made by a check): no
        request is blocked and no failure to answer changes the state."""
        with self._lock:
            self._planned.append(reason)
        try:
            yield
        finally:
            with self._lock:
                self._planned.remove(reason)

    # -- what clients call ----------------------------------------------------------------------

    def before_request(self, what: str, *, websocket: bool = False) -> None:
        """Called before sending `what`: raises `TargetBlocked` while the target is down (a probe
        every `probe_interval` seconds may find it recovered, and then the request goes ahead)."""
        channels: tuple[_Channel, ...] = (self._http, self._ws) if websocket else (self._http,)
        if self._planned:
            channels = ()
        for channel in channels:
            with self._lock:
                down = channel.down
                if down is None:
                    continue
                due = time.monotonic() - channel.last_probe >= self.probe_interval
                if due:
                    channel.last_probe = time.monotonic()
            if down is None:
                continue
            if due and self._probe_channel(channel):
                continue
            with self._lock:
                channel.blocked += 1
            raise TargetBlocked(self.blocked_message(what, down), down)
        with self._lock:
            self.requests += 1

    def _probe_channel(self, channel: _Channel) -> bool:
        """Probe the channel that is down; on an answer record the recovery."""
        ok = self.probe_ws() if channel is self._ws else self.probe() is None
        if ok:
            with self._lock:
                if channel.down is not None:
                    kind = EventKind.WS_RECOVERED if channel is self._ws else EventKind.RECOVERED
                    was = channel.down
                    channel.down = None
                    self._event(kind, f"answering again (down since {clock(was.at)})")
        return ok

    def on_connection(self) -> None:
        """A client opened a new connection to the target."""
        with self._lock:
            self.connections += 1

    def on_answer(self, seconds: float, what: str = "", status: int = 0, job: str = "") -> None:
        """A response arrived after `seconds` (`what` ``METHOD /path``, its status, the job a
        ``POST /api/jobs`` created)."""
        self.note_answered(what, status, job)
        with self._lock:
            if seconds >= self.slow_s and not self._slow_noted:
                self._slow_noted = True
                self._event(EventKind.SLOW, f"an answer took {seconds:.1f} s")

    def note_answered(self, what: str, status: int, job: str = "") -> None:
        """An answer arrived (the measurements call this: their latencies are judged elsewhere,
        so a slow one under load is not a health event)."""
        with self._lock:
            self.answered += 1
            if what:
                answer = Answered(time.time(), what, status, job)
                self.recent.append(answer)
                if job:
                    self.jobs_created += 1
                    self.last_job = answer
                    if self.first_job is None:
                        self.first_job = answer

    def note_request(self) -> None:
        """A request was sent without `before_request` (a measurement that checked `down`)."""
        with self._lock:
            self.requests += 1

    def on_no_answer(
        self,
        what: str,
        kind: str,
        *,
        started: float,
        reused_after_error: int | None = None,
    ) -> Event | None:
        """A request got no answer. `kind` is ``timeout``, ``refused`` or ``dropped``.

        Probes a fresh connection to tell a dead target from one slow route; returns the event
        recorded (None when the target itself still answers and nothing is wrong beyond `what`).
        `reused_after_error` is the status of the error response that preceded `what` on the same
        keep-alive connection, when there was one.
        """
        if self._planned:
            return None
        with self._lock:
            if self._http.down is not None:
                return self._http.down  # known down: no second probe
        reason = self.probe()
        if reason is None:
            if reused_after_error is not None and kind in ("timeout", "dropped"):
                with self._lock:
                    first = not self.fresh_connections
                    self.fresh_connections = True
                    if first:
                        return self._event(
                            EventKind.KEEPALIVE_HANG,
                            f"{what} on a keep-alive connection reused after an HTTP "
                            f"{reused_after_error} answer got no answer; a fresh connection "
                            "answers",
                            started,
                        )
            return None
        with self._lock:
            if self._http.down is not None:
                return self._http.down
            self._http.last_probe = time.monotonic()
            if kind == "refused" or "refused" in reason:
                event = self._event(
                    EventKind.GONE,
                    f"{what}: connection refused (the process exited or closed its port)",
                    started,
                    failure=f"{what}: connection refused"
                    if kind == "refused"
                    else f"{what}: {_KIND_WORDS.get(kind, kind)}, and a fresh connection was "
                    "refused",
                )
            else:
                event = self._event(
                    EventKind.NOT_ANSWERING,
                    f"{what} got no answer ({_KIND_WORDS.get(kind, kind)}) and a fresh connection "
                    f"got none within {self.probe_timeout:g} s ({reason})",
                    started,
                    failure=f"{what}: {_KIND_WORDS.get(kind, kind)}",
                )
            self._http.down = event
            return event

    def on_ws_handshake_failed(self, what: str, *, started: float) -> Event | None:
        """A WebSocket handshake did not complete in time: HTTP down too, or only WebSocket?"""
        event = self.on_no_answer(what, "timeout", started=started)
        if event is not None:
            return event
        with self._lock:
            if self._ws.down is not None:
                return self._ws.down
            self._ws.last_probe = time.monotonic()
            event = self._event(
                EventKind.WS_HANDSHAKE,
                f"{what}: the WebSocket handshake did not complete while HTTP answers",
                started,
            )
            self._ws.down = event
            return event

    # -- messages -------------------------------------------------------------------------------

    def blocked_message(self, what: str, down: Event) -> str:
        """One line for a request not sent because of `down`."""
        verb = "not tried" if down.kind is EventKind.WS_HANDSHAKE else "not sent"
        return f"blocked: {what} {verb}: {self.down_text(down)}"

    def down_text(self, down: Event) -> str:
        """``the target has not answered since 06:31:12 (after ...; first seen in test_x)``."""
        if down.kind is EventKind.WS_HANDSHAKE:
            return (
                f"WebSocket handshakes on this target have not completed since {clock(down.at)} "
                f"(first seen in {down.check or 'the run'})"
            )
        word = "refused connections" if down.kind is EventKind.GONE else "not answered"
        return (
            f"the target has {word} since {clock(down.at)} (after {down.requests} requests over "
            f"{down.connections} connections; first seen in {down.check or 'the run'})"
        )

    # -- probes ---------------------------------------------------------------------------------

    def probe(self) -> str | None:
        """GET /api/health on a fresh connection: None if any HTTP answer came, else why not."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        conn_cls: Callable[..., http.client.HTTPConnection] = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        conn = conn_cls(host, port, timeout=self.probe_timeout)
        try:
            conn.request("GET", (parts.path.rstrip("/") or "") + "/api/health")
            conn.getresponse().read(0)
        except ConnectionRefusedError:
            return "connection refused"
        except TimeoutError:
            return f"no answer within {self.probe_timeout:g} s"
        except (OSError, http.client.HTTPException) as exc:
            return plain_reason(exc)
        finally:
            conn.close()
        return None

    def probe_ws(self) -> bool:
        """A WebSocket handshake on the target's /ws completes within the probe timeout."""
        from websockets.exceptions import InvalidHandshake
        from websockets.sync.client import connect

        url = "ws" + self.base_url.removeprefix("http").rstrip("/") + "/ws"
        try:
            with connect(url, open_timeout=self.probe_timeout, close_timeout=0.5):
                return True
        except (OSError, TimeoutError, InvalidHandshake):
            return False

    # -- for reports -----------------------------------------------------------------------------

    def summary(self) -> dict[str, object]:
        """JSON-ready: state, counters and the event timeline."""
        with self._lock:
            return {
                "state": self.state(),
                "requests": self.requests,
                "answered": self.answered,
                "connections": self.connections,
                "blocked": self._http.blocked + self._ws.blocked,
                "fresh_connections": self.fresh_connections,
                "events": [e.to_json() for e in self.events],
            }


_KIND_WORDS = {
    "timeout": "no answer in time",
    "dropped": "the connection was dropped",
    "refused": "connection refused",
}


def plain_reason(exc: BaseException) -> str:
    """Why a connection or request failed, in words: never an exception class name or a path."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ConnectionResetError):
        return "the connection was reset"
    if isinstance(exc, (BrokenPipeError, http.client.RemoteDisconnected)):
        return "the connection was closed without an answer"
    if isinstance(exc, http.client.HTTPException):
        return "the answer was not valid HTTP"
    text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    return text or "the connection failed"


def _counted(texts: Sequence[str]) -> list[str]:
    """``["GET /a 200", "GET /a 200", "POST /b 201"]`` -> ``["GET /a 200 (x2)", "POST /b 201"]``."""
    out: list[tuple[str, int]] = []
    for text in texts:
        if out and out[-1][0] == text:
            out[-1] = (text, out[-1][1] + 1)
        else:
            out.append((text, 1))
    return [f"{text} (x{n})" if n > 1 else text for text, n in out]


def _ago(seconds: float) -> str:
    return f"{max(seconds, 0.0):.1f} s"


def last_moments(
    kind: EventKind,
    last: Sequence[Answered],
    failure: str,
    at: float,
    jobs: tuple[Answered | None, Answered | None, int] = (None, None, 0),
) -> str:
    """One sentence: the job the target created last, what it answered last, how long before the
    first failure, and that failure.

    ``the target went away about 1.1 s after POST /api/jobs created job_1a2b (the first job of
    the run); its last answer: GET /api/jobs/job_1a2b 200, 0.3 s before; the first failure after
    it: GET /api/health: connection refused``. With many jobs created it names the last one and
    when the first was created (a build that dies some time after its first job shows there).
    """
    verb = "went away" if kind is EventKind.GONE else "stopped answering"
    first_job, last_job, created = jobs
    latest = last[-1] if last else None
    if last_job is not None:
        text = (
            f"the target {verb} about {_ago(at - last_job.at)} after {last_job.what} created "
            f"{last_job.job}"
        )
        if created <= 1:
            text += " (the first job of the run)"
        elif first_job is not None:
            text += (
                f" ({created} jobs created in this run; the first, {first_job.job}, "
                f"{_ago(at - first_job.at)} before)"
            )
        if latest is not None and latest is not last_job:
            text += (
                f"; its last answer: {latest.what} {latest.status}, {_ago(at - latest.at)} before"
            )
    elif latest is not None:
        text = (
            f"the target {verb} about {_ago(at - latest.at)} after its last answer "
            f"({latest.what} {latest.status})"
        )
    else:
        return (
            f"the target {verb} before answering any request of this run; first failure: {failure}"
        )
    earlier = _counted([a.text() for a in last[:-1] if a is not last_job][-4:])
    if earlier:
        text += f"; the requests answered just before: {', '.join(earlier)}"
    return f"{text}; the first failure after it: {failure}"


#: TEXT ``[2026-12-07 22:58:01.123] [FATAL] [Faults] message`` or a JSON line with ``level``
_LOG_LEVEL = re.compile(r"^\[[^\]]*\]\s*\[(ERROR|FATAL)\]")


def log_error_lines(root: Path, limit: int = LOG_LINES, tail_bytes: int = 256 * 1024) -> list[str]:
    """The last `limit` ERROR/FATAL lines of the target's log under deployment `root`.

    The log file is ``config/config.json``'s ``logging.log_file`` (relative to `root`), else
    ``logs/etlplus.log``; TEXT and JSON lines are read, only the last `tail_bytes` of the file.
    Lines are cut to 240 characters. An unreadable log gives no lines.
    """
    name = "logs/etlplus.log"
    with contextlib.suppress(OSError, ValueError, AttributeError):
        config = json.loads((root / "config" / "config.json").read_text(encoding="utf-8"))
        configured = config.get("logging", {}).get("log_file")
        if isinstance(configured, str) and configured:
            name = configured
    path = root / name
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            data = f.read()
    except OSError:
        return []
    found: list[str] = []
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if _LOG_LEVEL.match(line):
            found.append(line[:240])
        elif line.startswith("{"):
            with contextlib.suppress(ValueError, AttributeError):
                record = json.loads(line)
                level = str(record.get("level", "")).upper()
                if level in ("ERROR", "FATAL"):
                    stamp = record.get("timestamp", "")
                    found.append(
                        f"[{stamp}] [{level}] [{record.get('component', '')}] "
                        f"{record.get('message', '')}"[:240]
                    )
    return found[-limit:]


_REGISTRY: dict[str, TargetHealth] = {}
_REGISTRY_LOCK = threading.Lock()


def health_for(base_url: str) -> TargetHealth:
    """The process's `TargetHealth` for `base_url` (made on first use)."""
    key = base_url.rstrip("/")
    with _REGISTRY_LOCK:
        health = _REGISTRY.get(key)
        if health is None:
            health = _REGISTRY[key] = TargetHealth(key)
        return health


def reset_health() -> None:
    """Forget every target's health (a new run in the same process, e.g. pytester)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
