"""Fault injection (only with `create_app(..., enable_faults=True)`): misbehaviour on demand.

The verification suite has to prove that it notices latency, error bursts, lost WebSocket pushes,
memory growth, a failing database, ignored config/flag changes and a crash. `GET/POST/DELETE
/api/_faults` read, merge and clear the settings below; the gateway, the database, the WebSocket hub
and the file watchers consult them.

The `hostile` section imitates a misbehaving real (C++) ETL Plus build, so the project's tests can
prove the suite copes with a target that stops answering rather than one that answers wrongly. It
is set at runtime through `/api/_faults` or at start-up with `serve --enable-faults --hostile MODE`:

- `connection_cap: N` - from the (N+1)-th TCP connection accepted after the setting took effect
  (after the start for `--hostile`), the server reads and ignores every byte and never answers or
  closes (leaked connection slots). WebSocket connections count. Connections 1..N keep working.
- `hang_after_error` - once an error response (status >= 400) was sent on a keep-alive connection,
  nothing more is answered on that connection (no bytes, no close); new connections work.
- `non_json_errors` - every error response keeps its status but gets an HTML body, not JSON.
- `ws_handshake_hang` - a WebSocket upgrade on `/ws` is read, and the 101 is never sent.
- `exit_after_first_job_s: S` - the process exits (status 70) S seconds after the first job that
  `POST /api/jobs` creates (that POST is answered normally).
- `query_string_400` - any request with a query string gets 400 with a non-contract body,
  `{"error": "bad query"}`.

The connection-level modes live in the HTTP protocol (`httpproto.py`), so their hangs are real: the
socket stays open and silent, no task sleeps. Without `--enable-faults` none of this code runs.

**Delayed faults.** A POST with a top-level `"after_s": S` (0 < S <= 604800, a week) next to an
ordinary patch is validated at once and merged S seconds later, by one timer on the server's event
loop (so a long watch sees a healthy start, then the regression). Several pending patches merge in
the order they fall due (equal times: in the order they were posted); GET lists them under
`scheduled`, DELETE cancels them. `serve --hostile MODE --fault-after S` delays the start-up
hostile modes the same way.

`memory_limit_mb` makes the reference report that limit instead of the real one (cgroup or RAM), as
if it ran in a container that size: `memory_percent` in the health routes is RSS over it, so a
test can take the process past 95% without filling the host. `database_failures_per_min: N` makes
the pool fail N times a minute (the first within a second), traffic or not, each failure a real
failed database operation counted in `database.connection_failures` of `/api/health/metrics`;
`database_failures` fails that fraction of the operations something makes.

**Cohort faults.** `{"cohorts": {"<component>": {"latency_ms": MS, "errors": {"fraction": F,
"status": S}}}}` makes one component bad for exactly the users who get its new version: a request
is touched only when its `X-User-Id` is inside that component's flag cohort at that moment (the
flag on and `fnv1a_bucket(user_id) < rollout_percentage`, the rule of `X-Feature-Flags`). Such a
request sleeps `latency_ms` more (the sum over every cohort it is inside) and fails with `status`
for a `fraction` of requests, on the routes the plain `latency` / `errors` faults touch by default
(`/api/...` except `/api/health*` and `/api/_faults`). Requests without `X-User-Id` or outside the
cohort are untouched. A component's patch merges field by field into its current one; `null`
removes it; one with nothing left to inject (0 ms, fraction 0) is dropped.

**WebSocket cohort faults.** `{"cohorts": {"<component>": {"ws_delay_ms": MS, "ws_drop": F}}}`
(next to or instead of `latency_ms` / `errors`, validated the same way: 400 naming the field,
`ws_delay_ms` in 0-60000, `ws_drop` in 0-1) touch the WebSocket pushes of the jobs CREATED by a
user inside that component's cohort: inside at creation time, by the `X-User-Id` of the job's
`POST /api/jobs` (the job keeps the id and the flags then active for it). Every push of such a
job reaches each connection `ws_delay_ms` later (the sum over the cohorts the creator was in;
a delayed push holds back no other job's pushes, and a job's pushes keep their order), and a
fraction `ws_drop` of them is silently lost per connection (inside several cohorts, a push
survives only if it survives each). The pushes of jobs created without `X-User-Id` or by a user
outside the cohort are untouched, as is everything not about a job (acks, system notifications).
The settings are read at each push, so changing or clearing them applies to later pushes of
jobs already running. `websocket.delay_ms` / `drop_fraction` still apply to every push on top.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import itertools
import math
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from etlplus_reference.errors import STATUS_CODE, ApiError, iso_ms
from etlplus_reference.root import COMPONENT_FLAGS

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

    from etlplus_reference.metrics import ProcessSampler

__all__ = [
    "EXIT_AFTER_JOB_STATUS",
    "FAULT_PATH",
    "HOSTILE_DEFAULT_EXIT_S",
    "MAX_AFTER_S",
    "QUERY_400_BODY",
    "Faults",
    "hostile_defaults",
    "non_json_error_body",
    "parse_after_s",
    "parse_hostile_mode",
]

FAULT_PATH = "/api/_faults"
_ERROR_STATUSES = tuple(s for s in STATUS_CODE if s != 405)  # 405 would need a real Allow set

#: the exit status of `exit_after_first_job_s` (like `crash`: EX_SOFTWARE)
EXIT_AFTER_JOB_STATUS = 70
#: `--hostile exit-after-first-job` without `=SECONDS`
HOSTILE_DEFAULT_EXIT_S = 1.0
#: the smallest real delay of that exit, so that the job's POST is answered first even with 0
_MIN_EXIT_DELAY_S = 0.05
_MAX_CONNECTION_CAP = 1_000_000
_MAX_EXIT_S = 86_400.0
#: the longest delay of a scheduled patch (`after_s`): a week, the longest watch
MAX_AFTER_S = 604_800.0
#: the largest `memory_limit_mb` (1 TiB)
_MAX_MEMORY_LIMIT_MB = 1_048_576.0
#: the largest `database_failures_per_min` (100 a second)
_MAX_DB_FAILURES_PER_MIN = 6000.0
#: the largest `latency_ms` / `ws_delay_ms` of a cohort fault (a minute)
_MAX_COHORT_LATENCY_MS = 60_000.0
#: the fields of a component's cohort fault
_COHORT_FIELDS = ("latency_ms", "errors", "ws_delay_ms", "ws_drop")

#: what `query_string_400` answers: a 400 whose body is not the contract's error shape
QUERY_400_BODY = b'{"error": "bad query"}'


def hostile_defaults() -> dict[str, Any]:
    """The `hostile` section with every mode off."""
    return {
        "connection_cap": None,
        "hang_after_error": False,
        "non_json_errors": False,
        "ws_handshake_hang": False,
        "exit_after_first_job_s": None,
        "query_string_400": False,
    }


def non_json_error_body(status: int) -> bytes:
    """The HTML body `non_json_errors` puts in place of the contract's JSON error."""
    return b"<html><body><h1>%d Internal error</h1></body></html>" % status


def _defaults() -> dict[str, Any]:
    return {
        "hostile": hostile_defaults(),
        "latency": {
            "ms": 0.0,
            "jitter_ms": 0.0,
            "fraction": 1.0,
            "route_prefix": None,
            # per-route added latency, ms: {"GET /api/jobs": 1.3, "/api/health": 1.2}; the longest
            # matching "METHOD /prefix" or "/prefix" key applies, on top of `ms`, slept precisely
            "routes": {},
        },
        "errors": {"fraction": 0.0, "status": 500, "route_prefix": None},
        "websocket": {"drop_fraction": 0.0, "delay_ms": 0.0},
        "memory_growth_mb_per_s": 0.0,
        # the memory limit the health routes report (MiB), as if in a container that size
        "memory_limit_mb": None,
        "database_failures": 0.0,
        # connection failures a minute in the pool, traffic or not (the first within a second)
        "database_failures_per_min": 0.0,
        "ignore_config_changes": False,
        "ignore_flag_changes": False,
        "crash": False,
        # component -> {"latency_ms", "errors": {"fraction", "status"}, "ws_delay_ms", "ws_drop"},
        # for the users inside the component's flag cohort only (the WebSocket ones: for the
        # pushes of jobs such a user created)
        "cohorts": {},
    }


def _cohort_defaults() -> dict[str, Any]:
    """A component's cohort fault before its patch: nothing injected."""
    return {
        "latency_ms": 0.0,
        "errors": {"fraction": 0.0, "status": 500},
        "ws_delay_ms": 0.0,
        "ws_drop": 0.0,
    }


def _injects(entry: Mapping[str, Any]) -> bool:
    """A cohort fault with something left to inject."""
    return bool(
        entry["latency_ms"] > 0
        or entry["errors"]["fraction"] > 0
        or entry["ws_delay_ms"] > 0
        or entry["ws_drop"] > 0
    )


def _bad(field: str, what: str) -> ApiError:
    return ApiError.field("INVALID_INPUT", field, f"{field} must be {what}")


def _number(value: Any, field: str, lo: float, hi: float | None = None) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < lo
        or (hi is not None and value > hi)
    ):
        raise ApiError.field(
            "INVALID_RANGE" if isinstance(value, int | float) else "INVALID_INPUT",
            field,
            f"{field} must be a number {'>= ' + str(lo) if hi is None else f'in {lo}-{hi}'}",
        )
    return float(value)


def _status(value: Any, field: str) -> int:
    """An injected error status: one the contract knows, except 405."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in _ERROR_STATUSES:
        raise _bad(field, f"one of {', '.join(map(str, _ERROR_STATUSES))}")
    return value


def _merge_cohorts(current: Mapping[str, Any], patch: Any) -> dict[str, Any]:
    """`cohorts` after `patch` (validated: ApiError, 400, naming the field); `current` untouched."""
    if not isinstance(patch, dict):
        raise _bad(
            "cohorts", "an object of component -> {latency_ms, errors, ws_delay_ms, ws_drop}"
        )
    out = copy.deepcopy(dict(current))
    for name, spec in patch.items():
        field = f"cohorts.{name}"
        if name not in COMPONENT_FLAGS:
            raise _bad(field, f"keyed by a component, one of {', '.join(COMPONENT_FLAGS)}")
        if spec is None:
            out.pop(name, None)
            continue
        if not isinstance(spec, dict):
            raise _bad(field, f"an object with some of {', '.join(_COHORT_FIELDS)}, or null")
        entry = out.get(name) or _cohort_defaults()
        for sub, value in spec.items():
            sub_field = f"{field}.{sub}"
            if sub in ("latency_ms", "ws_delay_ms"):
                entry[sub] = _number(value, sub_field, 0, _MAX_COHORT_LATENCY_MS)
            elif sub == "ws_drop":
                entry[sub] = _number(value, sub_field, 0, 1)
            elif sub == "errors":
                if not isinstance(value, dict):
                    raise _bad(sub_field, "an object with fraction and/or status")
                for err_sub, err_value in value.items():
                    err_field = f"{sub_field}.{err_sub}"
                    if err_sub == "fraction":
                        entry[sub][err_sub] = _number(err_value, err_field, 0, 1)
                    elif err_sub == "status":
                        entry[sub][err_sub] = _status(err_value, err_field)
                    else:
                        raise _bad(err_field, "one of fraction, status (unknown field)")
            else:
                raise _bad(sub_field, f"one of {', '.join(_COHORT_FIELDS)} (unknown field)")
        if _injects(entry):
            out[name] = entry
        else:
            out.pop(name, None)  # nothing left to inject
    return out


def _prefix(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise _bad(field, "a path prefix starting with '/' or null")
    return value


def _hostile_value(sub: str, value: Any, field: str) -> Any:
    if sub == "connection_cap":
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 <= value <= _MAX_CONNECTION_CAP
        ):
            raise _bad(field, f"an integer in 0-{_MAX_CONNECTION_CAP} or null")
        return value
    if sub == "exit_after_first_job_s":
        return None if value is None else _number(value, field, 0, _MAX_EXIT_S)
    if not isinstance(value, bool):
        raise _bad(field, "true or false")
    return value


def parse_after_s(value: Any) -> float:
    """`after_s` of a scheduled patch in seconds: 0 < after_s <= a week; else ApiError (400)."""
    what = f"after_s must be a number of seconds, 0 < after_s <= {MAX_AFTER_S:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError.field("INVALID_INPUT", "after_s", what)
    if not 0 < value <= MAX_AFTER_S:  # NaN and the infinities fail this too; big ints compare
        raise ApiError.field("INVALID_RANGE", "after_s", what)
    return float(value)


@dataclass
class _Scheduled:
    """A validated patch waiting for its time."""

    seq: int
    after_s: float
    #: when it falls due, on the event loop's clock (monotonic)
    due: float
    #: the same moment as a wall-clock timestamp, for people
    at: float
    patch: dict[str, Any]
    on_apply: Callable[[dict[str, Any]], None] | None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.seq,
            "after_s": self.after_s,
            "at": iso_ms(self.at),
            "due_in_s": round(max(0.0, self.at - time.time()), 3),
            "patch": self.patch,
        }


def parse_hostile_mode(text: str) -> tuple[str, Any]:
    """One `--hostile MODE` of the command line as a (`hostile` key, value) pair.

    MODE is `connection-cap=N`, `hang-after-error`, `non-json-errors`, `ws-handshake-hang`,
    `exit-after-first-job[=SECONDS]` or `query-string-400`; ValueError (one line) otherwise.
    """
    name, eq, raw = text.strip().partition("=")
    key = name.strip().replace("-", "_")
    if key == "exit_after_first_job":
        key = "exit_after_first_job_s"
    known = hostile_defaults()
    if key not in known:
        modes = "connection-cap=N, hang-after-error, non-json-errors, ws-handshake-hang, "
        modes += "exit-after-first-job[=SECONDS], query-string-400"
        raise ValueError(f"unknown hostile mode {text!r} (one of {modes})")
    if key == "connection_cap":
        if not eq:
            raise ValueError("connection-cap needs a value: connection-cap=N")
        try:
            value: Any = int(raw)
        except ValueError:
            raise ValueError(f"connection-cap must be an integer, got {raw!r}") from None
    elif key == "exit_after_first_job_s":
        try:
            value = float(raw) if eq else HOSTILE_DEFAULT_EXIT_S
        except ValueError:
            raise ValueError(f"exit-after-first-job must be a number, got {raw!r}") from None
    else:
        if eq:
            raise ValueError(f"hostile mode {name.strip()} takes no value")
        value = True
    try:
        return key, _hostile_value(key, value, key)
    except ApiError as exc:
        raise ValueError(exc.message) from None


class Faults:
    """The current fault settings and the cheap questions the request path asks of them.

    The hostile modes are also kept as plain attributes (`hostile_on`, `connection_cap`, ...), set
    whenever the settings change, because the HTTP protocol asks them on every connection.
    """

    def __init__(
        self, hostile: Mapping[str, Any] | None = None, *, hostile_after_s: float | None = None
    ) -> None:
        """`hostile`: the start-up hostile modes; with `hostile_after_s` they are scheduled that
        many seconds after `start()` (the server's startup) instead of being on at once."""
        self.state: dict[str, Any] = _defaults()
        self.ballast: list[bytearray] = []
        self.active = False
        #: TCP connections accepted since `connection_cap` took effect (counted by the protocol)
        self.connections_seen = 0
        self._exit_timer: asyncio.TimerHandle | None = None
        #: scheduled patches, in the order they fall due; one timer for the first of them
        self._scheduled: list[_Scheduled] = []
        self._schedule_timer: asyncio.TimerHandle | None = None
        self._seq = itertools.count(1)
        self._startup_patch: tuple[float, dict[str, Any]] | None = None
        self._real_memory_limit: int | None = None
        #: `database_failures_per_min`: failures earned but not yet due, since when, and the ones
        #: due that the next database operation must take (the database threads consume them)
        self._db_credit = 0.0
        self._db_credit_at: float | None = None
        self._db_forced = 0
        self._db_lock = threading.Lock()
        self._apply_hostile()
        if hostile and hostile_after_s is not None:
            patch = {"hostile": dict(hostile)}
            self._merged(patch)  # validated now, like a POST with after_s
            self._startup_patch = (parse_after_s(hostile_after_s), patch)
        elif hostile:
            self.merge({"hostile": dict(hostile)})

    def start(self, on_apply: Callable[[dict[str, Any]], None] | None = None) -> None:
        """At the server's startup (on its event loop): schedule the delayed start-up modes."""
        if self._startup_patch is not None:
            after_s, patch = self._startup_patch
            self._startup_patch = None
            self.schedule({"after_s": after_s, **patch}, on_apply)

    def snapshot(self) -> dict[str, Any]:
        """GET body: the settings, what has grown so far and the patches still to come."""
        return {
            **self.state,
            "active": self.active,
            "ballast_mb": round(sum(len(b) for b in self.ballast) / 2**20, 1),
            "scheduled": [entry.view() for entry in self._scheduled],
        }

    def clear(self) -> None:
        """DELETE: everything off, ballast released, a pending hostile exit and every scheduled
        patch called off."""
        self.state = _defaults()
        self.ballast.clear()
        self.active = False
        self.connections_seen = 0
        if self._exit_timer is not None:
            self._exit_timer.cancel()
            self._exit_timer = None
        with self._db_lock:
            self._db_forced = 0
        self._scheduled.clear()
        if self._schedule_timer is not None:
            self._schedule_timer.cancel()
            self._schedule_timer = None
        self._apply_hostile()

    def schedule(
        self, body: Any, on_apply: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """POST with `after_s`: validate the patch now, merge it `after_s` seconds from now.

        Returns the entry as GET lists it (`id`, `after_s`, `at`, `due_in_s`, `patch`). When it
        is merged, `on_apply(entry)` is called (the app logs it and carries out a `crash`).
        Needs the running event loop.
        """
        if not isinstance(body, dict):
            raise ApiError.field("INVALID_INPUT", "body", "body must be a JSON object")
        after_s = parse_after_s(body.get("after_s"))
        patch = {k: v for k, v in body.items() if k != "after_s"}
        if not patch:
            raise _bad("body", "a fault setting next to after_s (nothing to schedule)")
        self._merged(patch)
        loop = asyncio.get_running_loop()
        entry = _Scheduled(
            seq=next(self._seq),
            after_s=after_s,
            due=loop.time() + after_s,
            at=time.time() + after_s,
            patch=copy.deepcopy(patch),
            on_apply=on_apply,
        )
        bisect.insort(self._scheduled, entry, key=lambda e: (e.due, e.seq))
        self._arm(loop)
        return entry.view()

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._schedule_timer is not None:
            self._schedule_timer.cancel()
            self._schedule_timer = None
        if self._scheduled:
            self._schedule_timer = loop.call_at(self._scheduled[0].due, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        """The timer: merge every patch that is due, in order, then wait for the next one."""
        self._schedule_timer = None
        now = loop.time() + 0.001  # a timer may run a clock tick early
        while self._scheduled and self._scheduled[0].due <= now:
            entry = self._scheduled.pop(0)
            self.merge(entry.patch)  # validated when scheduled; validation is state-independent
            if entry.on_apply is not None:
                entry.on_apply(entry.view())
        self._arm(loop)

    def merge(self, body: Any) -> None:
        """POST: validate the whole body first, then merge it into the settings (all or nothing)."""
        new = self._merged(body)
        hostile = body.get("hostile")
        if isinstance(hostile, dict) and "connection_cap" in hostile:
            self.connections_seen = 0  # the cap counts from the connections after this one
        self.state = new
        self.active = new != _defaults()
        self._apply_hostile()

    def _merged(self, body: Any) -> dict[str, Any]:
        """The settings `body` would give, validated (ApiError, 400, naming the field)."""
        if not isinstance(body, dict):
            raise ApiError.field("INVALID_INPUT", "body", "body must be a JSON object")
        new = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.state.items()}
        for key, value in body.items():
            if key == "cohorts":
                new[key] = _merge_cohorts(new[key], value)
            elif key == "hostile":
                if not isinstance(value, dict):
                    raise _bad(key, "an object")
                section = new[key]
                for sub, subval in value.items():
                    field = f"{key}.{sub}"
                    if sub not in section:
                        raise _bad(field, f"one of {', '.join(section)} (unknown field)")
                    section[sub] = _hostile_value(sub, subval, field)
            elif key in ("latency", "errors", "websocket"):
                if not isinstance(value, dict):
                    raise _bad(key, "an object")
                section = new[key]
                for sub, subval in value.items():
                    field = f"{key}.{sub}"
                    if sub not in section:
                        raise _bad(field, f"one of {', '.join(section)} (unknown field)")
                    section[sub] = self._validate(key, sub, subval, field)
            elif key == "memory_growth_mb_per_s":
                new[key] = _number(value, key, 0, 1024)
            elif key == "memory_limit_mb":
                new[key] = None if value is None else _number(value, key, 1, _MAX_MEMORY_LIMIT_MB)
            elif key == "database_failures_per_min":
                new[key] = _number(value, key, 0, _MAX_DB_FAILURES_PER_MIN)
            elif key == "database_failures":
                new[key] = (
                    (1.0 if value else 0.0)
                    if isinstance(value, bool)
                    else _number(value, key, 0, 1)
                )
            elif key in ("ignore_config_changes", "ignore_flag_changes", "crash"):
                if not isinstance(value, bool):
                    raise _bad(key, "true or false")
                new[key] = value
            else:
                raise _bad(str(key), "a known fault setting")
        return new

    def _apply_hostile(self) -> None:
        h = self.state["hostile"]
        self.connection_cap: int | None = h["connection_cap"]
        self.hang_after_error: bool = h["hang_after_error"]
        self.non_json_errors: bool = h["non_json_errors"]
        self.ws_handshake_hang: bool = h["ws_handshake_hang"]
        self.exit_after_first_job_s: float | None = h["exit_after_first_job_s"]
        self.query_string_400: bool = h["query_string_400"]
        #: any hostile mode on: the one question asked on every connection and request
        self.hostile_on = h != hostile_defaults()

    def count_connection(self) -> bool:
        """Count a newly accepted connection; True when it is over the cap (to be ignored)."""
        cap = self.connection_cap
        if cap is None:
            return False
        self.connections_seen += 1
        return self.connections_seen > cap

    def job_created(self, on_exit: Callable[[float], None] | None = None) -> None:
        """After `POST /api/jobs` created a job: arm the hostile exit, once.

        `on_exit(delay_s)` is called when the exit is armed (for the log line).
        """
        delay = self.exit_after_first_job_s
        if delay is None or self._exit_timer is not None:
            return
        if on_exit is not None:
            on_exit(delay)
        self._exit_timer = asyncio.get_running_loop().call_later(
            max(delay, _MIN_EXIT_DELAY_S), os._exit, EXIT_AFTER_JOB_STATUS
        )

    @staticmethod
    def _validate(section: str, sub: str, value: Any, field: str) -> Any:
        if sub == "route_prefix":
            return _prefix(value, field)
        if sub == "routes":
            if not isinstance(value, dict):
                raise _bad(field, "an object of 'METHOD /prefix' or '/prefix' -> ms")
            out: dict[str, float] = {}
            for key, ms in value.items():
                method, _, prefix = str(key).rpartition(" ")
                if not prefix.startswith("/") or (method and not method.isalpha()):
                    raise _bad(f"{field}.{key}", "keyed 'METHOD /prefix' or '/prefix'")
                out[f"{method.upper()} {prefix}" if method else prefix] = _number(
                    ms, f"{field}.{key}", 0, 600_000
                )
            return out
        if sub == "status":
            return _status(value, field)
        if sub in ("fraction", "drop_fraction"):
            return _number(value, field, 0, 1)
        return _number(value, field, 0, 600_000)

    @staticmethod
    def _applies(path: str, prefix: str | None) -> bool:
        if path.startswith(FAULT_PATH):
            return False
        if prefix is None:
            return path.startswith("/api/") and not path.startswith("/api/health")
        return path.startswith(prefix)

    def route_latency_s(self, path: str, method: str) -> float:
        """The per-route added latency (`latency.routes`) of this request, in seconds."""
        routes: dict[str, float] = self.state["latency"]["routes"]
        if not routes or path.startswith(FAULT_PATH):
            return 0.0
        best, best_len = 0.0, -1
        for key, ms in routes.items():
            want, _, prefix = key.rpartition(" ")
            if (not want or want == method.upper()) and path.startswith(prefix):
                rank = len(prefix) * 2 + (1 if want else 0)
                if rank > best_len:
                    best, best_len = ms, rank
        return best / 1000

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` precisely: the event loop's timers round to whole milliseconds (uvloop's
        libuv timers round a 0.48 ms sleep to 0, so +50% of a 1 ms route vanished on a fast host
        and a CI run missed an injected regression), so sleep to within 2 ms of the deadline,
        then yield until it passes."""
        if seconds <= 0:
            return
        deadline = time.perf_counter() + seconds
        if seconds > 0.002:
            await asyncio.sleep(seconds - 0.002)
        while time.perf_counter() < deadline:
            await asyncio.sleep(0)

    def latency_s(self, path: str, method: str = "") -> float:
        """Injected delay for this request, in seconds (0 when none)."""
        lat = self.state["latency"]
        if lat["ms"] <= 0 and lat["jitter_ms"] <= 0:
            return self.route_latency_s(path, method)
        extra = self.route_latency_s(path, method)
        if not self._applies(path, lat["route_prefix"]) or random.random() >= lat["fraction"]:
            return extra
        return extra + float(lat["ms"] + random.uniform(0, lat["jitter_ms"])) / 1000

    def error_status(self, path: str) -> int | None:
        """Injected error status for this request, or None."""
        err = self.state["errors"]
        if err["fraction"] <= 0 or not self._applies(path, err["route_prefix"]):
            return None
        return int(err["status"]) if random.random() < err["fraction"] else None

    def _cohorts_of(
        self, path: str, active_flags: Collection[str]
    ) -> list[tuple[str, dict[str, Any]]]:
        """The cohort faults whose component's flag is active for this request's user."""
        cohorts: dict[str, dict[str, Any]] = self.state["cohorts"]
        if not cohorts or not active_flags or not self._applies(path, None):
            return []
        return [(n, spec) for n, spec in cohorts.items() if COMPONENT_FLAGS[n] in active_flags]

    def cohort_latency_s(self, path: str, active_flags: Collection[str]) -> float:
        """Added delay for a request whose user has `active_flags` (`X-Feature-Flags`), in
        seconds: the sum of the `latency_ms` of every cohort the user is inside."""
        ms = sum(float(spec["latency_ms"]) for _, spec in self._cohorts_of(path, active_flags))
        return ms / 1000

    def cohort_error(self, path: str, active_flags: Collection[str]) -> tuple[int, str] | None:
        """(status, component) of an injected cohort error for this request, or None."""
        for name, spec in self._cohorts_of(path, active_flags):
            fraction: float = spec["errors"]["fraction"]
            if fraction > 0 and random.random() < fraction:
                return int(spec["errors"]["status"]), name
        return None

    def ws_cohort(self, creator_flags: Collection[str]) -> tuple[float, float]:
        """(delay in seconds, drop fraction) of a push of a job whose creator had
        `creator_flags` active at creation: the sum of the `ws_delay_ms` of every cohort the
        creator was inside, and the chance that a push is lost to at least one `ws_drop`."""
        cohorts: dict[str, dict[str, Any]] = self.state["cohorts"]
        if not cohorts or not creator_flags:
            return 0.0, 0.0
        delay_ms, survive = 0.0, 1.0
        for name, spec in cohorts.items():
            if COMPONENT_FLAGS[name] in creator_flags:
                delay_ms += float(spec["ws_delay_ms"])
                survive *= 1.0 - float(spec["ws_drop"])
        return delay_ms / 1000, 1.0 - survive

    def db_fails(self) -> bool:
        """True when this database operation must fail (called on the database threads)."""
        if self._db_forced > 0:
            with self._db_lock:
                if self._db_forced > 0:
                    self._db_forced -= 1
                    return True
        p: float = self.state["database_failures"]
        return p > 0 and random.random() < p

    def db_failures_due(self) -> int:
        """`database_failures_per_min`: how many connection failures are due now (the server asks
        once a second and runs that many database pings, each of which then fails and counts)."""
        rate: float = self.state["database_failures_per_min"]
        now = time.monotonic()
        if rate <= 0:
            self._db_credit, self._db_credit_at = 0.0, None
            return 0
        if self._db_credit_at is None:
            self._db_credit = 1.0  # the first failure at the first tick after the fault is on
        else:
            self._db_credit += (now - self._db_credit_at) * rate / 60
        self._db_credit_at = now
        due = int(self._db_credit)
        self._db_credit -= due
        with self._db_lock:
            self._db_forced += due
        return due

    def ws_drop(self) -> bool:
        """True when this WebSocket push must be silently lost."""
        p: float = self.state["websocket"]["drop_fraction"]
        return p > 0 and random.random() < p

    @property
    def ws_delay_s(self) -> float:
        """Delay before each WebSocket push, in seconds."""
        return float(self.state["websocket"]["delay_ms"]) / 1000

    @property
    def ignore_config(self) -> bool:
        """The config watcher stops applying changes."""
        return bool(self.state["ignore_config_changes"])

    @property
    def ignore_flags(self) -> bool:
        """The flags watcher stops applying changes."""
        return bool(self.state["ignore_flag_changes"])

    def limit_memory(self, sampler: ProcessSampler) -> None:
        """Make `sampler` report the `memory_limit_mb` limit, or its real one when that is off."""
        if self._real_memory_limit is None:
            self._real_memory_limit = sampler.limit_bytes
        limit_mb = self.state["memory_limit_mb"]
        sampler.limit_bytes = self._real_memory_limit if limit_mb is None else int(limit_mb * 2**20)

    @property
    def growth_mb_per_s(self) -> float:
        """Ballast to add per second."""
        return float(self.state["memory_growth_mb_per_s"])
