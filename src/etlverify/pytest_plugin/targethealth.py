"""The target's health through the run, failures classified, order of checks, check time limits.

- **Health.** Every client reports to one `etlverify.health.TargetHealth` per target; this module
  tells it which check is running, so its events say "first seen in test_x".
- **Failures classified.** `failure_fact` turns a failed check's exception into a
  `FailureFact` (blocked, transport, http, contract, not-json, rate-limited, section-blocked,
  timeout, error) tied to the health event behind it; `PlainFailure` text for every failure, never
  a traceback, an exception group or an object repr. The sign-off folds the facts into the
  primary findings. A `TargetError` that reports an HTTP answer (``POST /api/jobs answered 400``)
  is ``http``, never ``transport``: the target answered. A `SectionBlocked` (a request a whole
  section needs was refused) ties every check of that section to one finding.
- **Order.** Cheap, decisive checks first (``smoke``: health, routes, the error contract), then
  the performance measurements, then the other checks, and the heavy ones last (``heavy``: load,
  fuzzing, hundreds of connections), so a target that a heavy check exhausts has already been
  judged on the rest.
- **Out of time.** pytest-timeout stays the last guard, but its expiry is reported like any other
  failure (what the check was waiting for, for how long), without its stack dumps.
"""

from __future__ import annotations

import http.client
import re
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from etlverify.errors import CheckFailed, TargetError
from etlverify.health import (
    TargetBlocked,
    TargetHealth,
    health_for,
    log_error_lines,
    plain_reason,
    reset_health,
)
from etlverify.pytest_plugin.target import get_run
from etlverify.report.causes import FailureFact, http_answer

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = [
    "CheckTimedOut",
    "SectionBlocked",
    "current_health",
    "failure_fact",
    "failure_text",
    "tier",
]

FACT_PROPERTY = "etl_failure"
_TIERS = {"smoke": 0, "perf_uses": 1, "heavy": 3}
_OBJECT_REPR = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")
#: the word boundaries of a CamelCase name (``JSONDecodeError`` -> ``JSON Decode Error``)
_WORDS = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


class SectionBlocked(TargetError):
    """A request a whole section needs was refused with an HTTP answer (job creation answered
    400): every check of the section fails with this, and the run's findings lead with it.

    `event` is the finding's plain data (``kind`` ``section-blocked``, the section, the request,
    status, error code and message, the check that met it and when), the same for every check.
    """

    def __init__(self, message: str, event: dict[str, Any]) -> None:
        super().__init__(message, "section-blocked")
        self.event = dict(event)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.event))


class CheckTimedOut(TargetError):
    """A check ran out of its time (pytest-timeout's limit, capped by the run timeout)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "timeout")


def current_health(config: pytest.Config) -> TargetHealth | None:
    """The health view of the run's target in this process (None before it is known); with a
    deployment root it also reads the target's log for its last ERROR/FATAL lines."""
    run = get_run(config)
    if run.target is None:
        return None
    health = health_for(run.target.base_url)
    root = run.target.deploy_root
    if health.log_reader is None and root is not None:
        health.log_reader = lambda: log_error_lines(Path(root))
    return health


def pytest_configure(config: pytest.Config) -> None:
    """Markers, and a clean health registry for this run (pytester runs share the process)."""
    config.addinivalue_line(
        "markers", "smoke: a cheap, decisive check (health, routes, error contract): runs first"
    )
    config.addinivalue_line(
        "markers", "heavy: load, fuzzing or many connections: runs after every other check"
    )
    reset_health()


def tier(item: pytest.Item) -> int:
    """0 smoke, 1 performance measurement, 2 the rest, 3 heavy."""
    for name, rank in _TIERS.items():
        if item.get_closest_marker(name) is not None:
            return rank
    return 2


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> Generator[None]:
    """After every other plugin has ordered and selected: a stable sort by tier."""
    result = yield
    items.sort(key=tier)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """Tell the health view which check is running."""
    health = current_health(item.config)
    if health is not None:
        health.check = item.name
    try:
        return (yield)
    finally:
        if health is not None:
            health.check = ""


# -- time limits --------------------------------------------------------------------------------


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """Arm pytest-timeout's limit with a handler that fails the check with a plain message."""
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own thread method (it ends the process)
    limit = float(settings.timeout)
    started = time.time()

    def handler(signum: int, frame: Any) -> None:
        raise CheckTimedOut(_timeout_message(item, limit, started))

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, limit)
    return True


def _timeout_message(item: pytest.Item, limit: float, started: float) -> str:
    health = current_health(item.config)
    waiting = ""
    if health is not None and health.in_flight:
        what, since = min(health.in_flight.values(), key=lambda v: v[1])
        waiting = f"; it was waiting for {what} (sent {time.time() - since:.0f} s earlier)"
    return (
        f"ran out of time: no result within {limit:g} s (the per-check limit, capped by the run "
        f"timeout){waiting}"
    )


# -- failures -----------------------------------------------------------------------------------


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def _location(excinfo: pytest.ExceptionInfo[BaseException], root: Path | None = None) -> str:
    """`` (verification/x/test_y.py:12)``: the innermost place in the project's own code, never a
    library's file (site-packages, the standard library)."""
    try:
        entries = list(excinfo.traceback)
    except (AttributeError, TypeError):
        return ""
    for entry in reversed(entries):
        path = Path(str(entry.path))
        if any(part in ("site-packages", "dist-packages") for part in path.parts):
            continue
        if root is not None:
            try:
                shown = path.resolve().relative_to(root.resolve())
            except (ValueError, OSError):
                continue
            return f" ({shown}:{entry.lineno + 1})"
    return ""


def _request_of(exc: BaseException) -> str:
    """``GET /api/jobs`` for an httpx error that knows its request, else ""."""
    try:
        request = exc.request  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return ""
    if isinstance(request, httpx.Request):
        return f"{request.method} {request.url.path}"
    return ""


def transport_failure(exc: BaseException) -> tuple[str, str] | None:
    """(health kind, plain text) for a transport failure a library raised inside a check (an
    httpx timeout, a refused or dropped connection, a WebSocket closed or never opened), else None.
    The text names the request and what happened, never the exception class or a library file."""
    what = _request_of(exc)
    prefix = f"{what}: " if what else ""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout", f"{prefix}no response in time (the check's own HTTP client timed out)"
    if isinstance(exc, httpx.ConnectError):
        text = str(exc).lower()
        if "refused" in text:
            return "refused", f"{prefix}connection refused"
        return "dropped", f"{prefix}could not connect ({plain_reason(exc)})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "dropped", f"{prefix}the connection was dropped or the answer was broken"
    if isinstance(exc, httpx.TransportError):
        return "dropped", f"{prefix}the connection failed ({plain_reason(exc)})"
    if isinstance(exc, ConnectionClosed):
        return "dropped", "the WebSocket connection was closed by the server"
    if isinstance(exc, InvalidHandshake):
        return "dropped", "the WebSocket handshake was refused or invalid"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(exc, TimeoutError):
        return "timeout", "no answer in time"
    if isinstance(exc, (ConnectionError, http.client.HTTPException)):
        return "dropped", plain_reason(exc)
    return None


def _clean(text: str) -> str:
    return _OBJECT_REPR.sub(lambda m: f"<{m.group(1).rsplit('.', 1)[-1]}>", text)


def _leaf_text(exc: BaseException) -> str:
    if isinstance(exc, (CheckFailed, TargetError)):
        return str(exc)
    if isinstance(exc, pytest.fail.Exception):
        return str(exc.msg or "failed")
    transport = transport_failure(exc)
    if transport is not None:
        return transport[1]
    text = str(exc).strip()
    # an internal error of the suite: its kind in words, with the message when there is one
    kind = _WORDS.sub(" ", type(exc).__name__).lower()
    return f"{kind}: {text}" if text else f"{kind} (no message)"


def failure_text(
    item: pytest.Item, excinfo: pytest.ExceptionInfo[BaseException], header: str
) -> str:
    """The failure as people read it: our message for our exceptions, one line with the place for
    anything else, each leaf of an exception group once; never a traceback or an object repr."""
    leaves = _leaves(excinfo.value)
    texts: list[str] = []
    for leaf in leaves:
        if isinstance(leaf, (CheckFailed, TargetError, pytest.fail.Exception)):
            text = _leaf_text(leaf)
        elif transport_failure(leaf) is not None:
            text = f"the target did not answer usably: {_leaf_text(leaf)}"
        else:
            where = _location(excinfo, item.config.rootpath)
            text = f"the check itself broke: {_leaf_text(leaf)}{where}"
        if text not in texts:
            texts.append(text)
    body = "\n".join(texts)
    if header and not body.startswith(item.name):
        body = f"{header}\n{body}"
    return _clean(body)


def _kind(exc: BaseException) -> str:
    if isinstance(exc, TargetBlocked) or getattr(exc, "kind", "") == "blocked":
        return "blocked"
    if isinstance(exc, CheckTimedOut):
        return "timeout"
    if isinstance(exc, SectionBlocked):
        return "section-blocked"
    if isinstance(exc, TargetError):
        kind = exc.kind
        if kind == "not-json":
            return "not-json"
        if not kind and http_answer(str(exc)) is not None:
            return "http"  # the target answered: a refusal, not a lost connection
        return "transport"
    if isinstance(exc, CheckFailed):
        if exc.expected == "a JSON body" or "expected a JSON body" in exc.what:
            return "not-json"
        if "HTTP 429" in exc.got:
            return "rate-limited"
        return "contract"
    if isinstance(exc, pytest.fail.Exception):
        return "contract"
    if transport_failure(exc) is not None:
        return "transport"  # a library's timeout or lost connection: a finding on the target
    return "error"


def _event_for(
    exc: BaseException, item: pytest.Item, health: TargetHealth | None
) -> dict[str, Any] | None:
    if isinstance(exc, TargetBlocked):
        return dict(exc.event.to_json())
    if isinstance(exc, SectionBlocked):
        return dict(exc.event)
    if health is not None and not isinstance(exc, TargetError):
        transport = transport_failure(exc)
        if transport is None:
            return None
        # a library's own client met it: ask the health view (one probe) whether the target is
        # down, as `EtlClient` does for its requests
        what = _request_of(exc) or f"a request of {item.name}"
        event = health.on_no_answer(what, transport[0], started=time.time())
        if event is not None and event.kind.value in ("not-answering", "gone"):
            return dict(event.to_json())
        down = health.down
        return dict(down.to_json()) if down is not None else None
    if health is None or not isinstance(exc, TargetError):
        return None
    # the check whose own request found the target down, or a handshake that never completed
    for event in reversed(health.events):
        if event.check == item.name and event.kind.value in (
            "not-answering",
            "gone",
            "ws-handshake",
            "keepalive-hang",
        ):
            return dict(event.to_json())
    down = health.down or health.ws_down
    if down is not None and exc.kind in ("timeout", "refused", "dropped", "ws-handshake"):
        return dict(down.to_json())
    return None


def failure_fact(
    item: pytest.Item, excinfo: pytest.ExceptionInfo[BaseException], items: tuple[str, ...]
) -> FailureFact:
    """The classified failure of `item` (its first leaf decides the kind)."""
    leaves = _leaves(excinfo.value)
    kinds = [_kind(leaf) for leaf in leaves]
    # a group's most telling leaf: a health-tied one, else the first
    health = current_health(item.config)
    index, event = 0, None
    for i, leaf in enumerate(leaves):
        event = _event_for(leaf, item, health)
        if event is not None:
            index = i
            break
    leaf = leaves[index]
    line = _clean(_first_line(_leaf_text(leaf)))
    if line.startswith(item.name + ":"):
        line = line[len(item.name) + 1 :].strip()
    if kinds[index] == "error":
        line = f"{line}{_location(excinfo, item.config.rootpath)}"
    if isinstance(leaf, CheckFailed) and (leaf.expected or leaf.got):
        line = f"{line} (expected {leaf.expected or '?'}, got {leaf.got or '?'})"
    curl = leaf.curl if isinstance(leaf, CheckFailed) else ""
    if not curl and isinstance(leaf, TargetError) and "Reproduce with: " in str(leaf):
        curl = str(leaf).split("Reproduce with: ", 1)[1].splitlines()[0]
    return FailureFact(
        curl=curl,
        nodeid=item.nodeid,
        check=item.name,
        kind=kinds[index],
        line=line[:300],
        at=time.time(),
        event=event,
        items=items,
    )
