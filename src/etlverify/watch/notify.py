"""The watch's notifier: apprise URLs, delivered off the caller's thread, retried, and redacted.

What it owns:

- `redact()`: the one form of a notification URL that may reach a log, a report or a notification.
- `Notifier`: validates every URL with apprise up front (`NotifyError`, one line, on a URL apprise
  cannot use), then delivers each `Notification` to each URL on a daemon thread of that URL, in send
  order, retrying with exponential backoff and recording every `Delivery`. `send()` never blocks on
  the network and never raises; a URL that keeps failing only delays its own later notifications.

apprise reports a failure by returning False and logging the reason on the ``apprise`` logger.
While a notifier thread talks to apprise, the records that thread produces (and urllib3's) are
taken off the logging tree by a filter: they are read for the one-line reason, scrubbed of every
secret of the notifier's URLs, and never reach a handler of the caller (the watch owns the
terminal; apprise's own "privacy" form still shows the first and last character of a secret).
Records of other threads pass as they would have without the filter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import apprise

from etlverify.errors import EtlVerifyError
from etlverify.report.evidence import scrub

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from apprise.plugins.base import NotifyBase

__all__ = ["Delivery", "Notification", "Notifier", "NotifyError", "redact"]

_MASK = "***"
#: query keys whose values are secrets whatever the service (``+Authorization`` is a JSON header)
_SECRET_KEY = re.compile(
    r"(?i)pass|pwd|token|secret|key|auth|webhook|credential|session|cookie|signature"
)
#: what apprise's ``url(privacy=True)`` makes of a secret: ``****``, ``a...z``, ``...wxyz``
_APPRISE_MASKED = re.compile(r"\*{4}|.\.\.\..|\.\.\..{1,4}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_HOST_PORT = re.compile(r"(?P<host>.*?)(?::(?P<port>\d+))?")
#: transport failures, as apprise's debug records (requests / smtplib exceptions) word them
_REASONS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), reason)
    for pattern, reason in (
        (r"connection refused|errno 111\b|winerror 10061", "connection refused"),
        (r"timed? ?out", "timed out"),
        (
            r"name or service not known|nodename nor servname|name resolution|getaddrinfo",
            "host name not resolved",
        ),
        (r"connection reset", "connection reset by the server"),
        (
            r"remotedisconnected|connection aborted|remote end closed|server disconnected",
            "connection closed by the server",
        ),
        (r"no route to host", "no route to host"),
        (r"network is unreachable", "network unreachable"),
        (r"certificate|\bssl\b|\btls\b", "TLS error"),
    )
)
#: "Failed to send JSON POST notification: Internal server error., error=500."
_HTTP_STATUS = re.compile(r"(?:(?P<text>[A-Za-z][A-Za-z' -]*[a-z])\.?,\s*)?error=(?P<code>\d{3})\b")
_LEVELS = {
    "info": apprise.NotifyType.INFO,
    "success": apprise.NotifyType.SUCCESS,
    "warning": apprise.NotifyType.WARNING,
    "failure": apprise.NotifyType.FAILURE,
}
_REASON_LIMIT = 200


class NotifyError(EtlVerifyError):
    """A notification URL apprise cannot use; the message is one line naming the redacted URL."""


@dataclass(frozen=True)
class Notification:
    """One message of the watch: what happened, in a title line and a few lines of facts."""

    kind: str  # "start" | "status" | "trigger" | "rollback" | "recovery" | "completion"
    key: str  # idempotency key, unique per watch ("start", "status-3", "trigger-error_rate")
    title: str
    body: str
    level: str = "info"  # "info" | "warning" | "failure"


@dataclass
class Delivery:
    """One notification to one URL: how many attempts, whether it arrived, the last error."""

    key: str
    kind: str
    url: str  # redacted
    attempts: int
    delivered: bool
    first_attempt_at: str  # ISO-8601 UTC, "" until the first attempt
    last_attempt_at: str
    error: str | None  # the last error (one line, no secrets) while not delivered

    def to_json(self) -> dict[str, Any]:
        """The delivery as plain JSON values (for ``watch.json`` and the report)."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# redaction


@dataclass(frozen=True)
class _Redacted:
    url: str
    secrets: frozenset[str]


def redact(url: str) -> str:
    """The URL with every secret replaced by '***': userinfo password, tokens in the path of
    known services (apprise's own privacy form where it has one: look at apprise's
    `url(privacy=True)`), and query values of keys like pass/password/token/secret/key/apikey/
    webhook. Used for everything that reaches logs, reports or notifications."""
    return _redact(url, _instantiate(url)[0]).url


def _redact(url: str, plugin: NotifyBase | None) -> _Redacted:
    """`redact` with the secrets it removed (to scrub texts that quote them).

    A part of the URL is a secret when apprise's privacy form of the URL does not show it (so
    apprise masked it: host, user and path tokens of Slack, Discord, Telegram, ...), when it looks
    like a token (a path segment of 8+ characters mixing letters and digits, or of 32+), or when it
    is the password or the value of a secret-named query key. A URL apprise cannot use keeps only
    its scheme: nothing is known about what the rest holds.
    """
    scheme, sep, rest = url.strip().partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return _Redacted(_MASK, frozenset({url.strip()}) if url.strip() else frozenset())
    if plugin is None:
        return _Redacted(f"{scheme}://{_MASK}" if rest else f"{scheme}://", frozenset({rest}))
    privacy = unquote(_privacy_url(plugin)).lower()
    secrets: set[str] = set()

    def hide(value: str, is_secret: bool) -> str:
        if not value or not is_secret:
            return value
        secrets.update({value, unquote(value)})
        return _MASK

    def shown(value: str) -> bool:
        return unquote(value).lower() in privacy

    head, qsep, query = rest.partition("?")
    netloc, slash, path = head.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    host_match = _HOST_PORT.fullmatch(hostport)
    host, port = (host_match["host"], host_match["port"]) if host_match else (hostport, None)

    out = [scheme, "://"]
    if at:
        out += [hide(user, not shown(user)), colon, hide(password, True), "@"]
    # a host with a dot is a domain or an address; one apprise hides is a token (Telegram, Discord)
    out.append(hide(host, not shown(host) and "." not in host and not host.startswith("[")))
    if port:
        out.append(f":{port}")
    out.append(slash)
    out.append(
        "/".join(
            hide(seg, _looks_like_token(unquote(seg)) or not shown(seg)) for seg in path.split("/")
        )
    )
    if qsep:
        masked = _apprise_masked_keys(_privacy_url(plugin))
        pairs = []
        for pair in query.split("&"):
            key, eq, value = pair.partition("=")
            name = unquote(key).lower()
            pairs.append(key + eq + hide(value, bool(_SECRET_KEY.search(name)) or name in masked))
        out += ["?", "&".join(pairs)]
    return _Redacted("".join(out), frozenset(s for s in secrets if s))


def _privacy_url(plugin: NotifyBase) -> str:
    """apprise's own privacy form of the plugin's URL (`url` is not annotated in apprise)."""
    url: Callable[..., object] = plugin.url
    return str(url(privacy=True))


def _looks_like_token(segment: str) -> bool:
    if len(segment) >= 32:
        return True
    return (
        len(segment) >= 8
        and any(c.isdigit() for c in segment)
        and any(c.isalpha() for c in segment)
        and not segment.startswith("#")  # a Slack/Discord channel name, not a credential
    )


def _apprise_masked_keys(privacy_url: str) -> set[str]:
    """The query keys whose values apprise masks in its privacy form."""
    _, _, query = privacy_url.partition("?")
    keys = set()
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if _APPRISE_MASKED.fullmatch(unquote(value)):
            keys.add(unquote(key).lower())
    return keys


def _instantiate(url: str) -> tuple[NotifyBase | None, list[str]]:
    """apprise's plugin for `url` (None if it cannot use it) and the warnings it logged on the way
    (unscrubbed: the caller scrubs them)."""
    with _captured() as records:
        plugin = apprise.Apprise.instantiate(url.strip()) if url.strip() else None
    warnings = [
        _message(r) for r in records if logging.WARNING <= r.levelno < logging.ERROR and _message(r)
    ]
    return plugin, warnings


# --------------------------------------------------------------------------------------------------
# apprise's log records: taken off the logging tree for the threads that are talking to apprise


class _Tap(logging.Filter):
    """Captures the records logged by registered threads (and drops them from the tree); lets the
    others through as the logger's own level (`floor`, None: the parent's) would have."""

    def __init__(self, floor: int | None = None) -> None:
        super().__init__()
        self.buffers: dict[int, list[logging.LogRecord]] = {}
        self.floor = floor

    def filter(self, record: logging.LogRecord) -> bool:
        buffer = self.buffers.get(record.thread) if record.thread is not None else None
        if buffer is not None:
            buffer.append(record)
            return False
        if self.floor is None:
            return True
        if self.floor == logging.NOTSET:
            parent = logging.getLogger(apprise.LOGGER_NAME).parent
            return record.levelno >= (parent.getEffectiveLevel() if parent else logging.WARNING)
        return record.levelno >= self.floor


_TAP_LOCK = threading.Lock()
_TAPS: list[_Tap] = []
#: urllib3 logs through its module loggers; a filter applies only to records of its own logger
_QUIET_LOGGERS = (
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.response",
    "urllib3.util.retry",
)


def _taps() -> list[_Tap]:
    """The filters on apprise's logger (first) and urllib3's, installed once."""
    with _TAP_LOCK:
        main = logging.getLogger(apprise.LOGGER_NAME)
        if not _TAPS:
            _TAPS.append(_Tap(main.level))
            main.addFilter(_TAPS[0])
            for name in _QUIET_LOGGERS:
                _TAPS.append(_Tap())
                logging.getLogger(name).addFilter(_TAPS[-1])
        if main.level != logging.DEBUG:
            # apprise words the reason (the socket exception) at DEBUG: let those records be
            # created (again, if someone set another level since); the tap keeps other threads'
            # records to the level the logger had
            _TAPS[0].floor = main.level
            main.setLevel(logging.DEBUG)
        return list(_TAPS)


@contextlib.contextmanager
def _captured() -> Iterator[list[logging.LogRecord]]:
    """The apprise records this thread logs inside the block (and none reach a handler)."""
    taps = _taps()
    ident = threading.get_ident()
    existing = taps[0].buffers.get(ident)
    if existing is not None:  # nested: the outer block collects
        yield existing
        return
    buffer: list[logging.LogRecord] = []
    dropped: list[logging.LogRecord] = []
    taps[0].buffers[ident] = buffer
    for tap in taps[1:]:
        tap.buffers[ident] = dropped
    try:
        yield buffer
    finally:
        for tap in taps:
            tap.buffers.pop(ident, None)


def _message(record: logging.LogRecord) -> str:
    try:
        return " ".join(record.getMessage().split())
    except (TypeError, ValueError):  # a record whose arguments do not fit its format
        return " ".join(str(record.msg).split())


def _reason(records: Iterable[logging.LogRecord]) -> str:
    """Why apprise's delivery failed, in a few words, from what it logged."""
    # debug records also carry the payload (the notification's own words): read only complaints
    # and the exceptions apprise caught
    messages = [
        (r.levelno, _message(r))
        for r in records
        if r.levelno >= logging.WARNING or _message(r).startswith("Socket Exception")
    ]
    for level, text in reversed(messages):
        status = _HTTP_STATUS.search(text) if level >= logging.WARNING else None
        if status:
            words = (status["text"] or "").strip()
            return f"HTTP {status['code']}" + (f" {words}" if words else "")
    for _, text in reversed(messages):
        for pattern, reason in _REASONS:
            if pattern.search(text):
                return reason
    complaints = [text for level, text in messages if level >= logging.WARNING and text]
    if complaints:
        return complaints[-1].rstrip(".")
    return "apprise reported a failure without a reason"


def _one_line(text: str, limit: int = _REASON_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _set_timeouts(plugin: NotifyBase, url: str, timeout_s: float) -> None:
    """Every network call of the plugin times out after `timeout_s`, unless the URL sets apprise's
    own ``cto`` (connect) / ``rto`` (read) timeouts."""
    _, _, query = url.partition("?")
    keys = {unquote(pair.partition("=")[0]).lower() for pair in query.split("&")}
    if "cto" not in keys:
        plugin.socket_connect_timeout = timeout_s
    if "rto" not in keys:
        plugin.socket_read_timeout = timeout_s


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------------
# the notifier


@dataclass
class _Job:
    note: Notification
    delivery: Delivery
    done: bool = False


@dataclass
class _Channel:
    url: _Redacted
    plugin: NotifyBase
    queue: deque[_Job] = dataclasses.field(default_factory=deque)
    thread: threading.Thread | None = None


class Notifier:
    """Delivers notifications to apprise URLs on daemon threads (one per URL), in send order, with
    retries and exponential backoff; records every delivery. See the module docstring.

    `on_event` is called from those threads, with one redacted line per failed attempt and per
    give-up; an exception it raises is ignored. A network call times out after `timeout_s` unless
    the URL sets apprise's own ``cto``/``rto``.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        on_event: Callable[[str], None] | None = None,
        attempts: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 10.0,
    ) -> None:
        self._on_event = on_event
        self._attempts = max(1, attempts)
        self._backoff_s = max(0.0, backoff_s)
        self._max_backoff_s = max(0.0, max_backoff_s)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._jobs: list[_Job] = []
        self._keys: set[str] = set()
        self._pending = 0
        self._closed = False
        self._channels: list[_Channel] = []
        redacted: list[_Redacted] = []
        for url in urls:
            plugin, warnings = _instantiate(url)
            red = _redact(url, plugin)
            redacted.append(red)
            if plugin is None:
                why = _one_line(scrub(warnings[0], red.secrets)) if warnings else ""
                raise NotifyError(
                    f"unsupported or malformed notification URL '{red.url}'"
                    + (f": {why.rstrip('.')}" if why else "")
                )
            self._channels.append(_Channel(red, plugin))
        self._secrets: frozenset[str] = frozenset().union(*(r.secrets for r in redacted))
        for url, channel in zip(urls, self._channels, strict=True):
            _set_timeouts(channel.plugin, url, timeout_s)
        for number, channel in enumerate(self._channels, 1):
            channel.thread = threading.Thread(
                target=self._run, args=(channel,), name=f"etlverify-notify-{number}", daemon=True
            )
            channel.thread.start()

    # ---- the caller's side

    def send(self, note: Notification) -> None:
        """Queue `note` for every URL and return at once; a key already sent is ignored."""
        with self._cond:
            if note.key in self._keys:
                return
            self._keys.add(note.key)
            for channel in self._channels:
                job = _Job(
                    note, Delivery(note.key, note.kind, channel.url.url, 0, False, "", "", None)
                )
                self._jobs.append(job)
                if self._closed:
                    job.delivery.error = "not sent: the notifier was already closed"
                    job.done = True
                    continue
                channel.queue.append(job)
                self._pending += 1
            self._cond.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued notification is delivered or given up, at most `timeout_s`;
        True if nothing is left."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout=max(0.0, timeout_s))

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush (at most `timeout_s`), then stop the threads; what is still queued is recorded as
        not sent."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        for channel in self._channels:
            if channel.thread is not None:
                # a thread waiting out a backoff wakes at once; one inside a network call may not
                channel.thread.join(max(0.2, deadline - time.monotonic()))
        with self._cond:
            for channel in self._channels:
                for job in channel.queue:
                    if job.done:
                        continue
                    job.done = True
                    self._pending -= 1
                    if job.delivery.attempts == 0:
                        job.delivery.error = "not sent: the notifier closed first"
                    else:
                        job.delivery.error = (
                            f"{job.delivery.error or 'not delivered'} (still retrying when the "
                            "notifier closed)"
                        )
                channel.queue.clear()
            self._cond.notify_all()

    def deliveries(self) -> list[Delivery]:
        """A snapshot of every delivery, in send order (then URL order)."""
        with self._cond:
            return [dataclasses.replace(job.delivery) for job in self._jobs]

    @property
    def failed(self) -> int:
        """Deliveries given up (or abandoned at close)."""
        with self._cond:
            return sum(1 for job in self._jobs if job.done and not job.delivery.delivered)

    # ---- the delivery threads

    def _run(self, channel: _Channel) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(channel.queue) or self._closed)
                if not channel.queue or self._stop.is_set():
                    return
                job = channel.queue[0]
            self._deliver(channel, job)
            with self._cond:
                if channel.queue and channel.queue[0] is job:
                    channel.queue.popleft()
                if not job.done:
                    job.done = True
                    self._pending -= 1
                self._cond.notify_all()

    def _deliver(self, channel: _Channel, job: _Job) -> None:
        delivery = job.delivery
        url = channel.url.url
        for attempt in range(1, self._attempts + 1):
            now = _utc_now()
            with self._cond:
                delivery.attempts = attempt
                delivery.first_attempt_at = delivery.first_attempt_at or now
                delivery.last_attempt_at = now
            error = self._attempt(channel, job.note)
            with self._cond:
                delivery.delivered = error is None
                delivery.error = error
            if error is None:
                return
            if attempt == self._attempts:
                self._event(
                    f"notify: {url} gave up on {job.note.kind} '{job.note.key}' after "
                    f"{attempt} attempts: {error}"
                )
                return
            delay = min(self._backoff_s * 2 ** (attempt - 1), self._max_backoff_s)
            self._event(
                f"notify: {url} failed (attempt {attempt} of {self._attempts}): {error}; "
                f"retrying in {delay:g} s"
            )
            if self._stop.wait(delay):
                with self._cond:
                    delivery.error = f"{error} (retries cut short: the notifier closed)"
                return

    def _attempt(self, channel: _Channel, note: Notification) -> str | None:
        """One delivery attempt; None on success, else the reason (one line, scrubbed)."""
        with _captured() as records:
            try:
                ok = channel.plugin.notify(
                    body=self._scrub(note.body) or self._scrub(note.title),
                    title=self._scrub(note.title),
                    notify_type=_LEVELS.get(note.level, apprise.NotifyType.INFO),
                    body_format=apprise.NotifyFormat.TEXT,
                )
            except Exception as exc:  # a plugin bug must not end the thread
                text = str(exc).strip() or "it failed without a message"
                return _one_line(self._scrub(f"apprise plugin error: {text}"))
        if ok:
            return None
        return _one_line(self._scrub(_reason(records)))

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    def _event(self, line: str) -> None:
        if self._on_event is None:
            return
        with contextlib.suppress(Exception):  # a broken listener must not stop deliveries
            self._on_event(_one_line(self._scrub(line), 1000))
