"""The reference server: `create_app(root)` builds the Starlette app that implements the contract.

Why Starlette: it is light and pure ASGI, so every byte of an answer is ours. There is no validation
layer that would answer malformed input with its own error shape (FastAPI/pydantic would), which
matters when the error bodies themselves are contract. The cross-cutting concerns live in one pure
ASGI middleware, `Gateway` (correlation ids, request counting, the body-size limit, faults, rate
limiting, authentication, feature-flag headers, error logging and the last-resort 500), because
BaseHTTPMiddleware costs a task and a stream per request and the health route must stay fast.

Everything with a lifetime starts in the lifespan (database, job runners, file watchers, the
process sampler) and stops there: runners are cancelled (their jobs resume on the next start),
WebSockets are closed with 1001, the database and then the log are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route, WebSocketRoute
from starlette.websockets import WebSocket

from etlplus_reference import __version__
from etlplus_reference.auth import TokenStore, bearer_token, is_open_path
from etlplus_reference.config import Config, ConfigError, load_config, parse_config, redacted
from etlplus_reference.db import Database
from etlplus_reference.errors import (
    STATUS_CODE,
    ApiError,
    DatabaseError,
    error_body,
    iso_ms,
    json_bytes,
    new_correlation_id,
    now_iso,
    valid_correlation_id,
)
from etlplus_reference.exporter import CONTENT_TYPE, METRICS_PATH, UNMATCHED, Exporter
from etlplus_reference.faults import (
    EXIT_AFTER_JOB_STATUS,
    FAULT_PATH,
    QUERY_400_BODY,
    Faults,
    non_json_error_body,
)
from etlplus_reference.flags import (
    Flags,
    active_names,
    display_name,
    fnv1a_bucket,
    load_flags,
    parse_flags,
)
from etlplus_reference.jobs import SCHEMA, STATUSES, JobManager
from etlplus_reference.logs import LEVELS, Logger
from etlplus_reference.metrics import ProcessSampler, RequestCounters
from etlplus_reference.ratelimit import RateLimiter
from etlplus_reference.root import FLAG_NAMES, DeploymentRoot
from etlplus_reference.wshub import Hub, uvicorn_ws_options

if TYPE_CHECKING:
    from pathlib import Path

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Server", "create_app", "uvicorn_ws_options"]

_DRAIN_CAP = 64 * 1024 * 1024  # read and discard at most this much of a refused body
_CID_KEY = "etlplus.cid"
_ERR_KEY = "etlplus.error"
_SESSION_KEY = "etlplus.session"
#: (X-User-Id, the flags active for it) of a request that sent one; POST /api/jobs stores them
_USER_KEY = "etlplus.user"
#: the longest creating user id a job keeps (a longer X-User-Id is cut; its cohort is decided on
#: the whole id)
_MAX_CREATED_BY = 256


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response encoded by the one project encoder."""
    return Response(json_bytes(data), status, headers, "application/json")


def error_response(scope: Scope, err: ApiError) -> Response:
    """The contract error body for `err`, remembered in the scope for the error log line."""
    cid = scope.get(_CID_KEY) or new_correlation_id()
    scope[_ERR_KEY] = (err.code, err.message)
    return json_response(
        error_body(err.code, err.message, cid, err.context), err.status, err.headers
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: Request) -> Any:
    """The request body as JSON; 400 INVALID_INPUT (field `body`) when it is not JSON."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError.field("INVALID_INPUT", "body", "Request body is empty (expected JSON)")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ApiError.field("INVALID_INPUT", "body", "Request body is not UTF-8") from None
    except (ValueError, RecursionError):
        raise ApiError.field("INVALID_INPUT", "body", "Request body is not valid JSON") from None
    if _SURROGATE_ESCAPE.search(raw):
        _reject_lone_surrogates(data)
    return data


#: A JSON escape of a UTF-16 surrogate; only bodies with one can decode to an unencodable string.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _encodable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reject_lone_surrogates(data: Any) -> None:
    """400 naming the field when a string holds a lone surrogate (`"\\ud800"`): valid JSON, but
    not text that SQLite, the log or a UTF-8 response could carry (it was a 500)."""
    if _encodable(data):
        return
    field = "body"
    if isinstance(data, dict):
        field = next(
            (str(k) for k, v in data.items() if not (_encodable(k) and _encodable(v))), "body"
        )
        if not _encodable(field):
            field = "body"
    raise ApiError.field(
        "INVALID_INPUT", field, "String contains a lone UTF-16 surrogate (not valid Unicode text)"
    )


class _FileWatch:
    """Polls one file by (mtime, size, inode) and hands changed bytes to a callback."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sig: tuple[int, int, int] | None = None
        self.last_bad_sha: str | None = None

    def changed(self) -> bytes | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if sig == self.sig:
            return None
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        self.sig = sig
        return data


class Server:
    """The state of one running server; routes and the gateway reach everything through it."""

    def __init__(
        self,
        root: Path,
        *,
        enable_faults: bool,
        hostile: Mapping[str, Any] | None = None,
        hostile_after_s: float | None = None,
    ) -> None:
        self.root = DeploymentRoot(root.resolve())
        self.config: Config = load_config(self.root.config_file)
        self.flags: Flags = load_flags(self.root.flags_file)
        cfg = self.config
        self.journal = Logger(
            self.root.resolve(cfg.log_file),
            level=cfg.log_level,
            fmt=cfg.log_format,
            max_file_size=cfg.log_max_file_size,
            max_backup_files=cfg.log_max_backup_files,
        )
        self.faults: Faults | None = (
            Faults(hostile, hostile_after_s=hostile_after_s) if enable_faults else None
        )
        self.db = Database(
            self.root.resolve(cfg.db_path),
            pool_size=cfg.db_pool_size,
            timeout_s=cfg.db_timeout_s,
            journal=self.journal,
            faults=self.faults,
        )
        self.hub = Hub(self.journal, self.faults, cfg.ws_max_connections, cfg.ws_max_queue)
        self.exporter = Exporter(self.hub)
        self.hub.push_delay = self.exporter.push_delay
        self.jobs = JobManager(
            self.db, self.hub, self.journal, max_concurrent=cfg.jobs_max_concurrent
        )
        self.tokens = TokenStore(cfg.users, cfg.token_ttl_s)
        self.limiter = RateLimiter(
            enabled=cfg.rate_limits_enabled,
            window_s=cfg.rate_window_s,
            rules=cfg.rate_rules,
            trusted=cfg.trusted_proxies,
        )
        self.counters = RequestCounters()
        self.sampler: ProcessSampler | None = None
        self.started_at = time.time()
        self.build_commit = os.environ.get("ETLPLUS_BUILD_COMMIT", "reference")
        self._tasks: list[asyncio.Task[None]] = []
        self._config_watch = _FileWatch(self.root.config_file)
        self._flags_watch = _FileWatch(self.root.flags_file)

    # ---- lifecycle ----------------------------------------------------------------------------

    async def startup(self) -> None:
        """Open the database, load and resume jobs, start the background tasks."""
        self.started_at = time.time()
        self.sampler = ProcessSampler()
        try:
            await asyncio.to_thread(self.db.open, SCHEMA)
            await self.jobs.start()
        except DatabaseError as exc:
            # Serve anyway: health says not ready, job routes answer 503 DATABASE_ERROR.
            self.journal.error("Database", "Database unavailable at startup", error=exc.message)
        loop = asyncio.get_running_loop()
        for coro in (self._watch_config(), self._watch_flags(), self._sample()):
            self._tasks.append(loop.create_task(coro))
        self.journal.info(
            "Server",
            "Server started",
            pid=os.getpid(),
            version=__version__,
            config_sha256=self.config.sha256[:12],
            faults=self.faults is not None,
        )
        if self.faults is not None:  # `--fault-after`: the hostile modes are scheduled now
            self.faults.start(lambda applied: _faults_applied(self, applied))
        if self.faults is not None and self.faults.hostile_on:
            on = {k: v for k, v in self.faults.state["hostile"].items() if v not in (None, False)}
            self.journal.warn(
                "Faults", "Hostile modes on", modes=",".join(f"{k}={v}" for k, v in on.items())
            )

    async def shutdown(self) -> None:
        """Stop tasks and runners, close WebSockets, the database and the log."""
        self.journal.info("Server", "Server stopping")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.hub.close_all(1001)
        await self.jobs.stop()
        await asyncio.to_thread(self.db.close)
        self.journal.info("Server", "Server stopped")
        self.journal.close()

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.sampler is not None:
                self.sampler.sample()
            faults = self.faults
            if faults is not None and faults.growth_mb_per_s > 0:
                # Touched bytes (not calloc'd zeros) so the growth shows in RSS.
                faults.ballast.append(bytearray(b"\x5a") * int(faults.growth_mb_per_s * 2**20))
            # `database_failures_per_min`: the pool's connection failures, traffic or not
            for _ in range(faults.db_failures_due() if faults is not None else 0):
                await self.db.ping(0.5)

    # ---- hot reload ---------------------------------------------------------------------------

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(min(max(self.config.config_reload_interval_s / 2, 0.05), 2.5))
            if self.faults is not None and self.faults.ignore_config:
                continue
            data = self._config_watch.changed()
            if data is not None:
                self._reload_config(data)

    def _reload_config(self, data: bytes) -> None:
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        if sha == self.config.sha256:
            return
        source = display_name(self.root.config_file)
        try:
            new = parse_config(data, source)
        except ConfigError as exc:
            if self._config_watch.last_bad_sha != sha:
                self._config_watch.last_bad_sha = sha
                self.journal.error("Config", f"Configuration reload rejected: {exc}", file=source)
                self.hub.system_notification(
                    "config_reload_failed", file=source, error=str(exc), sha256=sha
                )
            return
        old = self.config
        self.config = new
        self.journal.reconfigure(
            level=new.log_level,
            fmt=new.log_format,
            max_file_size=new.log_max_file_size,
            max_backup_files=new.log_max_backup_files,
        )
        self.limiter.configure(
            enabled=new.rate_limits_enabled,
            window_s=new.rate_window_s,
            rules=new.rate_rules,
            trusted=new.trusted_proxies,
        )
        self.hub.max_connections = new.ws_max_connections
        self.hub.max_queue = new.ws_max_queue
        # Authentication applies live too: on/off (read per request), users, and the lifetime of
        # tokens issued from now on (tokens already out keep the expiry they were given).
        self.tokens.users = new.users
        self.tokens.ttl_s = new.token_ttl_s
        restart = [
            key for key in ("server", "database", "jobs") if old.raw.get(key) != new.raw.get(key)
        ]
        self.journal.always(
            "INFO",
            "Config",
            "Configuration reloaded",
            sha256=sha,
            log_level=new.log_level,
            restart_required=",".join(restart) or "none",
        )
        self.hub.system_notification("config_reloaded", file=source, sha256=sha)

    async def _watch_flags(self) -> None:
        while True:
            await asyncio.sleep(min(max(self.config.flags_reload_interval_s / 2, 0.05), 2.5))
            if self.faults is not None and self.faults.ignore_flags:
                continue
            data = self._flags_watch.changed()
            if data is not None:
                self._reload_flags(data)

    def _reload_flags(self, data: bytes) -> None:
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        if sha == self.flags.sha256:
            return
        source = display_name(self.root.flags_file)
        try:
            new = parse_flags(data, source)
        except ConfigError as exc:
            if self._flags_watch.last_bad_sha != sha:
                self._flags_watch.last_bad_sha = sha
                self.journal.error(
                    "FeatureFlags", f"Feature flags reload rejected: {exc}", file=source
                )
                self.hub.system_notification(
                    "feature_flags_reload_failed", file=source, error=str(exc), sha256=sha
                )
            return
        self.flags = new
        on = [n for n, v in new.flags.items() if v]
        self.journal.always(
            "INFO", "FeatureFlags", "Feature flags reloaded", sha256=sha, enabled=",".join(on)
        )
        self.hub.system_notification(
            "feature_flags_reloaded",
            file=source,
            sha256=sha,
            flags=new.flags,
            rollout_percentages=new.rollout_percentages,
        )

    # ---- health snapshots ---------------------------------------------------------------------

    def process(self) -> ProcessSampler:
        """The process sampler (created lazily for an app used without its lifespan)."""
        if self.sampler is None:
            self.sampler = ProcessSampler()
        if self.faults is not None:
            self.faults.limit_memory(self.sampler)  # the `memory_limit_mb` fault
        return self.sampler

    async def refresh_db(self) -> None:
        """After a failure, ping again so that health shows recovery without other traffic."""
        if self.db.opened and not self.db.last_ok:
            await self.db.ping(0.5)

    def db_connected(self) -> bool:
        """The database is open and its last operation succeeded."""
        return self.db.opened and self.db.last_ok

    def db_block(self) -> dict[str, Any]:
        """Database detail for the health routes."""
        return {
            "connected": self.db_connected(),
            "pool_healthy": self.db.opened and self.db.connection_timeouts == 0,
            "pool_size": self.db.pool_size,
            **self.db.counters(),
            "operations": self.db.operations,
            "last_error": self.db.last_error,
            "path": str(self.db.path),
        }


# ---- the gateway middleware ---------------------------------------------------------------------


class Gateway:
    """Pure ASGI middleware: everything every request goes through, in one pass over the headers.

    It also counts every answered request for `/metrics` (its own answers too: an injected fault,
    a 413, 429 or 401 is what a user saw), by the template of the route it is for.
    """

    def __init__(self, app: ASGIApp, server: Server, routes: list[BaseRoute]) -> None:
        self.app = app
        self.server = server
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        srv = self.server
        faults = srv.faults
        if faults is not None and faults.query_string_400 and scope.get("query_string"):
            scope[_ERR_KEY] = ("-", "hostile query_string_400: any query string refused")
            bad_query = Response(QUERY_400_BODY, 400, media_type="application/json")
            await _deny(WebSocket(scope, receive, send), bad_query)
            return
        if srv.config.auth_enabled:
            headers = dict(scope["headers"])
            token = None
            auth = headers.get(b"authorization")
            try:
                if auth is not None:
                    token = bearer_token(auth.decode("latin-1"))
                else:
                    query = scope.get("query_string", b"").decode("latin-1")
                    for part in query.split("&"):
                        key, _, value = part.partition("=")
                        if key == "token" and value:
                            token = value
                    if token is None:
                        raise ApiError("UNAUTHORIZED", "Missing token for /ws")
                scope[_SESSION_KEY] = srv.tokens.check(token)
            except ApiError as err:
                scope[_CID_KEY] = new_correlation_id()
                ws = WebSocket(scope, receive, send)
                await _deny(ws, error_response(scope, err), srv.faults)
                srv.journal.warn(
                    "WebSocket", f"Upgrade refused: {err.code}", correlationId=scope[_CID_KEY]
                )
                return
        await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        srv = self.server
        srv.counters.total += 1
        t0 = time.perf_counter()
        cid = uid = xff = auth = None
        length = -1
        for name, value in scope["headers"]:
            if name == b"x-correlation-id":
                cid = value.decode("latin-1")
            elif name == b"x-user-id":
                uid = value
            elif name == b"x-forwarded-for":
                xff = value.decode("latin-1")
            elif name == b"authorization":
                auth = value.decode("latin-1")
            elif name == b"content-length":
                length = int(value) if value.isdigit() else -1
        if cid is None or not valid_correlation_id(cid):
            cid = new_correlation_id()
        scope[_CID_KEY] = cid
        extra: list[tuple[bytes, bytes]] = [(b"x-correlation-id", cid.encode())]
        names: list[str] = []  # the flags active for X-User-Id (decides the cohort faults too)
        if uid is not None:
            user = uid.decode("utf-8", "replace")
            names = active_names(srv.flags, user)
            scope[_USER_KEY] = (user, names)
            extra.append((b"x-feature-flags", ",".join(names).encode()))
        path: str = scope["path"]
        counted = path != METRICS_PATH  # a scrape does not count itself
        answered = 0  # the status once the answer has started (0: not yet)
        # hostile non_json_errors: 0 off, else the error status whose HTML body replaces the
        # JSON one (-1 once sent: the rest of the original body is dropped)
        mangle = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal answered, mangle
            if message["type"] == "http.response.start":
                status = answered = message["status"]
                message["headers"] = [*message.get("headers", []), *extra]
                if status >= 400:
                    self._log_error(scope, status, cid, path)
                    if srv.faults is not None and srv.faults.non_json_errors:
                        mangle = status
                        _non_json_error_start(message)
                elif srv.journal.enabled("DEBUG"):
                    srv.journal.debug(
                        "HTTP",
                        f"{scope['method']} {path} -> {status}",
                        correlationId=cid,
                        ms=round((time.perf_counter() - t0) * 1000, 2),
                    )
            elif mangle:
                if mangle < 0:
                    return
                message = {
                    "type": "http.response.body",
                    "body": non_json_error_body(mangle),
                    "more_body": False,
                }
                mangle = -1
            await send(message)
            if (
                counted
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
            ):
                self._count(scope, answered, t0)

        limit = srv.config.max_body_bytes
        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body", False):
                        await _drain(receive)
                    raise ApiError(
                        "PAYLOAD_TOO_LARGE",
                        f"Request body exceeds {limit} bytes",
                        context={"limit": limit},
                    )
            return message

        try:
            if length > limit:
                await _drain(receive)
                raise ApiError(
                    "PAYLOAD_TOO_LARGE",
                    f"Request body of {length} bytes exceeds {limit} bytes",
                    context={"limit": limit, "contentLength": length},
                )
            faults = srv.faults
            if faults is not None and faults.active:
                if (
                    faults.query_string_400
                    and scope.get("query_string")
                    and not path.startswith(FAULT_PATH)
                ):
                    await _query_string_400(scope, send_wrapper)
                    return
                delay = faults.latency_s(path, scope["method"])
                if names:
                    delay += faults.cohort_latency_s(path, names)
                if delay > 0:
                    await faults.sleep(delay)
                status = faults.error_status(path)
                context: dict[str, Any] = {"injected": True}
                if status is None and names:
                    cohort_error = faults.cohort_error(path, names)
                    if cohort_error is not None:
                        status, context["cohort"] = cohort_error
                if status is not None:
                    raise ApiError(
                        STATUS_CODE[status],
                        f"Injected fault: HTTP {status}",
                        status=status,
                        context=context,
                        headers={"Retry-After": "1"} if status in (429, 503) else None,
                    )
            limiter = srv.limiter
            if limiter.enabled:
                client = scope.get("client")
                peer = client[0] if client else "unknown"
                decision = limiter.check(limiter.client_id(peer, xff), path)
                if decision is not None:
                    extra.extend(decision.headers())
                    if not decision.allowed:
                        raise ApiError(
                            "RATE_LIMIT_EXCEEDED",
                            f"Rate limit of {decision.limit} requests per "
                            f"{limiter.window_s:g}s exceeded",
                            context={"limit": decision.limit, "retryAfter": decision.retry_after},
                        )
            if (
                srv.config.auth_enabled
                and not is_open_path(path)
                and not path.startswith(FAULT_PATH)
                and path != METRICS_PATH  # open, like health: scrapers carry no token
            ):
                scope[_SESSION_KEY] = srv.tokens.check(bearer_token(auth))
            await self.app(scope, receive_wrapper, send_wrapper)
        except ApiError as err:
            if answered:
                raise
            await error_response(scope, err)(scope, receive, send_wrapper)
        except Exception as exc:
            # The last resort: an unexpected exception still becomes a contract 500, never a
            # dropped connection, and its traceback goes to the log under the correlation id.
            srv.journal.error(
                "HTTP",
                f"Unhandled {type(exc).__name__}: {exc}",
                correlationId=cid,
                path=path,
                traceback=" / ".join(traceback.format_exception(exc)[-3:]).replace("\n", " "),
            )
            if answered:
                raise
            internal = ApiError("INTERNAL_ERROR", "Internal server error", status=500)
            await error_response(scope, internal)(scope, receive, send_wrapper)

    def _count(self, scope: Scope, status: int, t0: float) -> None:
        """`/metrics`: one answered request, under its route's template."""
        template = getattr(scope.get("route"), "path", None) or self._template(scope)
        self.server.exporter.observe_request(
            scope["method"], template, status, time.perf_counter() - t0
        )

    def _template(self, scope: Scope) -> str:
        """The template of the route a request answered before routing (by a fault, a 413, 429
        or 401) is for, as the router would choose it (a full match, else the first partial
        one); `UNMATCHED` when no route knows the path."""
        partial: str | None = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return str(getattr(route, "path", UNMATCHED))
            if match is Match.PARTIAL and partial is None:
                partial = str(getattr(route, "path", UNMATCHED))
        return partial or UNMATCHED

    def _log_error(self, scope: Scope, status: int, cid: str, path: str) -> None:
        srv = self.server
        srv.counters.errors += 1
        if status >= 500:
            srv.counters.server_errors += 1
        code, message = scope.get(_ERR_KEY, (STATUS_CODE.get(status, "ERROR"), ""))
        srv.journal.log(
            "ERROR" if status >= 500 else "WARN",
            "HTTP",
            f"{scope['method']} {path} -> {status} {code}: {message}",
            correlationId=cid,
            status=status,
            code=code,
        )


def _non_json_error_start(message: Message) -> None:
    """hostile non_json_errors: the error's headers, re-typed for the HTML body that replaces it."""
    status = message["status"]
    body_len = len(non_json_error_body(status))
    message["headers"] = [
        *(
            (k, v)
            for k, v in message["headers"]
            if k.lower() not in (b"content-type", b"content-length")
        ),
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(body_len).encode("ascii")),
    ]


async def _query_string_400(scope: Scope, send: Send) -> None:
    """hostile query_string_400: a 400 whose body is not the contract's error shape."""
    scope[_ERR_KEY] = ("-", "hostile query_string_400: any query string refused")
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(QUERY_400_BODY)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": QUERY_400_BODY, "more_body": False})


async def _drain(receive: Receive) -> None:
    # Read the rest of a refused body so the client can finish sending and then read our answer.
    total = 0
    while total < _DRAIN_CAP:
        message = await receive()
        if message["type"] != "http.request":
            return
        total += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _deny(ws: WebSocket, response: Response, faults: Faults | None = None) -> None:
    """Refuse a WebSocket upgrade with an HTTP answer (or a plain close where unsupported).

    With the hostile `non_json_errors` mode, the answer keeps its status with an HTML body.
    """
    if faults is not None and faults.non_json_errors:
        status = response.status_code
        response = Response(non_json_error_body(status), status, media_type="text/html")
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(response)
    else:
        await ws.close(code=1013)


# ---- routes ------------------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def _srv(request: Request) -> Server:
    server: Server = request.app.state.server
    return server


def _health_routes() -> list[Route]:
    async def health(request: Request) -> Response:
        srv = _srv(request)
        await srv.refresh_db()
        status = "healthy" if srv.db_connected() and srv.hub.running else "degraded"
        return json_response({"status": status, "timestamp": now_iso(), "version": __version__})

    async def live(request: Request) -> Response:
        srv = _srv(request)
        p = srv.process()
        return json_response(
            {
                "status": "alive",
                "timestamp": now_iso(),
                "pid": os.getpid(),
                "uptime_seconds": round(time.time() - srv.started_at, 3),
                "memory": {"used_bytes": p.rss_bytes, "cpu_percent": p.cpu_percent},
            }
        )

    async def ready(request: Request) -> Response:
        srv = _srv(request)
        db_ok = await srv.db.ping(1.0)
        body: dict[str, Any] = {
            "status": "ready" if db_ok and srv.hub.running else "not_ready",
            "timestamp": now_iso(),
            "database": {**srv.db_block(), "connected": db_ok},
            "websocket": {"running": srv.hub.running, "connections": len(srv.hub.connections)},
        }
        if body["status"] == "ready":
            return json_response(body)
        # 503 carries both the section 3 shape ("status": "not_ready") and the section 2 fields.
        code = "DATABASE_ERROR" if not db_ok else "COMPONENT_UNAVAILABLE"
        message = "Database is not usable" if not db_ok else "WebSocket hub is not running"
        err = error_body(code, message, request.scope[_CID_KEY], {"component": "database"})
        request.scope[_ERR_KEY] = (code, message)
        return json_response({**err, **body}, 503)

    async def status(request: Request) -> Response:
        srv = _srv(request)
        await srv.refresh_db()
        p = srv.process()
        return json_response(
            {
                "status": "healthy" if srv.db_connected() else "degraded",
                "timestamp": now_iso(),
                "version": __version__,
                "uptime_seconds": round(time.time() - srv.started_at, 3),
                "build": {"commit": srv.build_commit, "python": sys.version.split()[0]},
                "config": {
                    "sha256": srv.config.sha256,
                    "loaded_at": iso_ms(srv.config.loaded_at),
                    "log_level": srv.journal.level,
                },
                "feature_flags": {
                    "sha256": srv.flags.sha256,
                    "loaded_at": iso_ms(srv.flags.loaded_at),
                },
                "components": {
                    "database": {
                        "connected": srv.db_connected(),
                        "pool_healthy": srv.db_block()["pool_healthy"],
                    },
                    "websocket": {
                        "running": srv.hub.running,
                        "connections": len(srv.hub.connections),
                    },
                    "system": {
                        "cpu_usage": p.cpu_percent,
                        "memory_usage": p.rss_bytes,
                        "memory_percent": p.memory_percent,
                    },
                },
            }
        )

    async def metrics(request: Request) -> Response:
        srv = _srv(request)
        await srv.refresh_db()
        p = srv.process()
        counts = srv.jobs.status_counts()
        return json_response(
            {
                "status": "healthy" if srv.db_connected() else "degraded",
                "timestamp": now_iso(),
                "metrics": {
                    "cpu_usage": p.cpu_percent,
                    "memory_usage": p.rss_bytes,
                    "memory_percent": p.memory_percent,
                    "memory_limit_bytes": p.limit_bytes,
                    "database": srv.db.counters(),
                    "websocket": {
                        "connections": len(srv.hub.connections),
                        "messages_sent": srv.hub.messages_sent,
                        "messages_queued": srv.hub.messages_queued,
                    },
                    "jobs": counts,
                    "requests": {
                        "total": srv.counters.total,
                        "errors": srv.counters.errors,
                        "server_errors": srv.counters.server_errors,
                    },
                    "rate_limit": {"refused": srv.limiter.refused},
                    "uptime_seconds": round(time.time() - srv.started_at, 3),
                },
            }
        )

    async def component(request: Request) -> Response:
        srv = _srv(request)
        name = request.url.path.rsplit("/", 1)[-1]
        p = srv.process()
        detail: dict[str, Any]
        if name == "database":
            detail = srv.db_block()
        elif name == "websocket":
            detail = srv.hub.stats()
        elif name == "memory":
            detail = {
                "used_bytes": p.rss_bytes,
                "limit_bytes": p.limit_bytes,
                "memory_percent": p.memory_percent,
            }
            if srv.faults is not None:
                detail["fault_ballast_mb"] = srv.faults.snapshot()["ballast_mb"]
        elif name == "system":
            detail = {
                "cpu_usage": p.cpu_percent,
                "system_cpu_percent": p.system_cpu_percent,
                "cpu_count": os.cpu_count(),
                "pid": os.getpid(),
                "uptime_seconds": round(time.time() - srv.started_at, 3),
                "python": sys.version.split()[0],
            }
        else:
            detail = {**srv.jobs.status_counts(), "max_concurrent": srv.jobs.max_concurrent}
        ok = srv.db_connected() if name in ("database", "jobs") else True
        return json_response(
            {"status": "healthy" if ok else "degraded", "timestamp": now_iso(), name: detail}
        )

    routes = [
        Route("/api/health", health, methods=["GET"]),
        Route("/api/health/live", live, methods=["GET"]),
        Route("/api/health/ready", ready, methods=["GET"]),
        Route("/api/health/status", status, methods=["GET"]),
        Route("/api/health/metrics", metrics, methods=["GET"]),
    ]
    routes += [
        Route(f"/api/health/{n}", component, methods=["GET"])
        for n in ("database", "websocket", "memory", "system", "jobs")
    ]
    return routes


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise ApiError.field("INVALID_RANGE", name, f"{name} must be an integer in {lo}-{hi}")
    return int(raw)


def _require_db(srv: Server) -> None:
    if not srv.db.opened:
        raise DatabaseError("database is not available")


def _job_routes() -> list[Route]:
    async def jobs(request: Request) -> Response:
        srv = _srv(request)
        if request.method == "POST":
            _require_db(srv)
            body = await read_json(request)
            # the creating user (X-User-Id) and the cohorts it is inside now: the WebSocket
            # cohort faults of the job's pushes follow them
            user, names = request.scope.get(_USER_KEY, (None, ()))
            job = await srv.jobs.create(
                body,
                created_by=None if user is None else user[:_MAX_CREATED_BY],
                creator_flags=frozenset(names),
            )
            if srv.faults is not None and srv.faults.exit_after_first_job_s is not None:
                srv.faults.job_created(
                    lambda delay: srv.journal.fatal(
                        "Faults",
                        f"Hostile exit armed: exiting with status {EXIT_AFTER_JOB_STATUS} in "
                        f"{delay:g} s (first job {job.job_id})",
                    )
                )
            return json_response(
                {"job_id": job.job_id, "status": job.status, "type": job.type}, 201
            )
        status = request.query_params.get("status")
        if status is not None and status not in STATUSES:
            raise ApiError.field(
                "INVALID_INPUT", "status", f"status must be one of {', '.join(STATUSES)}"
            )
        limit = _int_param(request, "limit", 0, 0, 1_000_000)
        offset = _int_param(request, "offset", 0, 0, 100_000_000)
        if status is None:  # a page costs O(offset + limit), not O(every job ever created)
            total = len(srv.jobs.jobs)
            stop = offset + limit if limit else None
            items = list(itertools.islice(srv.jobs.jobs.values(), offset, stop))
        else:
            items = [j for j in srv.jobs.jobs.values() if j.status == status]
            total = len(items)
            items = items[offset : offset + limit] if limit else items[offset:]
        return json_response({"jobs": [j.summary() for j in items], "total": total})

    async def job(request: Request) -> Response:
        srv = _srv(request)
        job_id = request.path_params["job_id"]
        if request.method == "PUT":
            srv.jobs.get(job_id)  # 404 before looking at the body
            _require_db(srv)
            body = await read_json(request)
            j = await srv.jobs.cancel(job_id, body)
            return json_response({"job_id": j.job_id, "status": j.status})
        return json_response(srv.jobs.get(job_id).detail())

    async def job_status(request: Request) -> Response:
        return json_response(_srv(request).jobs.get(request.path_params["job_id"]).detail())

    async def job_metrics(request: Request) -> Response:
        return json_response(_srv(request).jobs.get(request.path_params["job_id"]).metrics())

    async def monitor_status(request: Request) -> Response:
        srv = _srv(request)
        return json_response(
            {
                "db_connected": srv.db_connected(),
                "etl_manager_running": srv.db.opened,
                "server_status": "running",
                "timestamp": now_iso(),
            }
        )

    async def monitor_metrics(request: Request) -> Response:
        c = _srv(request).jobs.status_counts()
        return json_response(
            {
                "total_jobs": c["total"],
                "running_jobs": c["running"],
                "completed_jobs": c["completed"],
                "failed_jobs": c["failed"],
                "pending_jobs": c["pending"],
                "cancelled_jobs": c["cancelled"],
            }
        )

    async def monitor_jobs(request: Request) -> Response:
        items = list(_srv(request).jobs.jobs.values())
        return json_response({"jobs": [j.summary() for j in items], "total": len(items)})

    return [
        Route("/api/jobs", jobs, methods=["GET", "POST"]),
        Route("/api/jobs/{job_id}", job, methods=["GET", "PUT"]),
        Route("/api/jobs/{job_id}/status", job_status, methods=["GET"]),
        Route("/api/jobs/{job_id}/metrics", job_metrics, methods=["GET"]),
        Route("/api/monitor/status", monitor_status, methods=["GET"]),
        Route("/api/monitor/metrics", monitor_metrics, methods=["GET"]),
        Route("/api/monitor/jobs", monitor_jobs, methods=["GET"]),
    ]


def _misc_routes() -> list[Route]:
    async def login(request: Request) -> Response:
        srv = _srv(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiError.field("INVALID_INPUT", "body", "Request body must be a JSON object")
        for name in ("username", "password"):
            if name not in body or body[name] is None:
                raise ApiError.field("MISSING_FIELD", name, f"Missing required field: {name}")
            if not isinstance(body[name], str):
                raise ApiError.field("INVALID_INPUT", name, f"{name} must be a string")
        token, session = await srv.tokens.login(body["username"], body["password"])
        srv.journal.info("Auth", "Login", user=session.username)
        return json_response(
            {
                "token": token,
                "token_type": "Bearer",
                "expires_in": int(srv.tokens.ttl_s),
                "user_id": session.user_id,
                "username": session.username,
                "roles": list(session.roles),
            }
        )

    async def logout(request: Request) -> Response:
        srv = _srv(request)
        token = bearer_token(request.headers.get("authorization"))
        session = srv.tokens.check(token)
        srv.tokens.revoke(token)
        srv.journal.info("Auth", "Logout", user=session.username)
        return json_response({"status": "logged_out", "username": session.username})

    async def profile(request: Request) -> Response:
        srv = _srv(request)
        session = request.scope.get(_SESSION_KEY) or srv.tokens.check(
            bearer_token(request.headers.get("authorization"))
        )
        return json_response(
            {"user_id": session.user_id, "username": session.username, "roles": list(session.roles)}
        )

    async def flags(request: Request) -> Response:
        f = _srv(request).flags
        return json_response(
            {
                "flags": f.raw.get("flags", f.flags),
                "rollout_percentages": f.raw.get("rollout_percentages", f.rollout_percentages),
                "sha256": f.sha256,
                "loaded_at": iso_ms(f.loaded_at),
            }
        )

    async def user_flags(request: Request) -> Response:
        f = _srv(request).flags
        user_id = request.path_params["user_id"]
        names = set(active_names(f, user_id))
        return json_response(
            {
                "user_id": user_id,
                "bucket": fnv1a_bucket(user_id),
                "active": {name: name in names for name in (*FLAG_NAMES, *f.flags)},
            }
        )

    async def config(request: Request) -> Response:
        srv = _srv(request)
        return json_response(
            {
                "config": redacted(srv.config.raw),
                "sha256": srv.config.sha256,
                "loaded_at": iso_ms(srv.config.loaded_at),
                "file": display_name(srv.root.config_file),
            }
        )

    async def logs(request: Request) -> Response:
        srv = _srv(request)
        lines = _int_param(request, "lines", 100, 1, 2000)
        level = request.query_params.get("level")
        if level is not None:
            level = {"WARNING": "WARN"}.get(level.upper(), level.upper())
            if level not in LEVELS:
                raise ApiError.field(
                    "INVALID_INPUT", "level", f"level must be one of {', '.join(LEVELS)}"
                )
        entries = srv.journal.recent(lines, level)
        return json_response(
            {"logs": entries, "total": len(entries), "file": str(srv.journal.path), "level": level}
        )

    return [
        Route("/api/auth/login", login, methods=["POST"]),
        Route("/api/auth/logout", logout, methods=["POST"]),
        Route("/api/auth/profile", profile, methods=["GET"]),
        Route("/api/flags", flags, methods=["GET"]),
        Route("/api/flags/users/{user_id}", user_flags, methods=["GET"]),
        Route("/api/config", config, methods=["GET"]),
        Route("/api/logs", logs, methods=["GET"]),
    ]


def _fault_routes() -> list[Route]:
    async def faults(request: Request) -> Response:
        srv = _srv(request)
        state = srv.faults
        if state is None:  # pragma: no cover - the route exists only with faults on
            raise ApiError("NOT_FOUND", "Route not found")
        if request.method == "POST":
            body = await read_json(request)
            if isinstance(body, dict) and "after_s" in body:
                # a delayed patch: validated now, merged when due (202 Accepted)
                entry = state.schedule(body, lambda applied: _faults_applied(srv, applied))
                keys = ",".join(sorted(entry["patch"]))
                srv.journal.warn(
                    "Faults", "Fault settings scheduled", after_s=entry["after_s"], keys=keys
                )
                return json_response({"scheduled": entry, "faults": state.snapshot()}, 202)
            state.merge(body)
            _faults_applied(srv, None, keys=sorted(body))
        elif request.method == "DELETE":
            state.clear()
            srv.journal.warn("Faults", "Fault settings cleared (scheduled ones cancelled)")
        return json_response(state.snapshot())

    return [Route(FAULT_PATH, faults, methods=["GET", "POST", "DELETE"])]


def _faults_applied(
    srv: Server, scheduled: dict[str, Any] | None, keys: list[str] | None = None
) -> None:
    """After fault settings were merged (now, or a `scheduled` entry fell due): log it, and carry
    out an injected crash."""
    if scheduled is not None:
        keys = sorted(scheduled["patch"])
        srv.journal.warn("Faults", "Scheduled fault settings applied", id=scheduled["id"])
    srv.journal.warn("Faults", "Fault settings changed", keys=",".join(keys or ()))
    if srv.faults is not None and srv.faults.state["crash"]:
        srv.journal.fatal("Faults", "Crash injected: exiting with status 70")
        asyncio.get_running_loop().call_later(0.2, os._exit, 70)


async def _ws_endpoint(ws: WebSocket) -> None:
    srv: Server = ws.app.state.server
    if not srv.hub.has_room():
        cid = new_correlation_id()
        ws.scope[_CID_KEY] = cid
        err = ApiError(
            "COMPONENT_UNAVAILABLE",
            f"Too many WebSocket connections (max {srv.hub.max_connections})",
            status=503,
            context={"max_connections": srv.hub.max_connections},
            headers={"Retry-After": "1"},
        )
        srv.journal.warn("WebSocket", "Upgrade refused: max connections reached", correlationId=cid)
        await _deny(ws, error_response(ws.scope, err), srv.faults)
        return
    await srv.hub.serve(ws)


async def _prometheus(request: Request) -> Response:
    """`GET /metrics`: the Prometheus exposition (`exporter.py`)."""
    body = _srv(request).exporter.render()
    return Response(body, headers={"Content-Type": CONTENT_TYPE})


# ---- exception handlers (inside Starlette's ExceptionMiddleware) -------------------------------


async def _api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request.scope, exc)


async def _http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    method, path = request.method, request.url.path
    if exc.status_code == 404:
        err = ApiError(
            "NOT_FOUND", f"Route not found: {method} {path[:200]}", context={"path": path[:200]}
        )
    elif exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        err = ApiError(
            "METHOD_NOT_ALLOWED",
            f"Method {method[:20]} not allowed on {path[:200]}",
            context={"allowed": [m.strip() for m in allow.split(",") if m.strip()]},
            headers={"Allow": allow},
        )
    else:
        code = STATUS_CODE.get(exc.status_code, "INVALID_INPUT")
        err = ApiError(code, str(exc.detail), status=exc.status_code)
    return error_response(request.scope, err)


def create_app(
    root: Path,
    *,
    enable_faults: bool = False,
    hostile: Mapping[str, Any] | None = None,
    hostile_after_s: float | None = None,
) -> Starlette:
    """The ASGI app for deployment `root`; raises ConfigError (one line) for bad config/flags.

    `hostile` (only with `enable_faults`) is the initial `hostile` section of the fault settings
    (`serve --hostile`), applied `hostile_after_s` seconds after the start when that is given
    (`serve --fault-after`); ValueError when a mode is given without `enable_faults`.
    """
    if hostile and not enable_faults:
        raise ValueError("hostile modes need enable_faults=True")
    server = Server(
        root, enable_faults=enable_faults, hostile=hostile, hostile_after_s=hostile_after_s
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await server.startup()
        try:
            yield
        finally:
            await server.shutdown()

    routes: list[Route | WebSocketRoute] = [
        *_health_routes(),
        Route(METRICS_PATH, _prometheus, methods=["GET"]),
        *_job_routes(),
        *_misc_routes(),
        WebSocketRoute("/ws", _ws_endpoint),
    ]
    if enable_faults:
        routes += _fault_routes()
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error_handler, HTTPException: _http_exception_handler},
    )
    app.state.server = server
    app.add_middleware(Gateway, server=server, routes=app.router.routes)
    return app
