"""Helpers of the reference target's contract tests: an HTTP client, WebSocket and log readers.

Everything here talks to the server over HTTP/WebSocket or reads its deployment folder: the tests
never import the server's own modules.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from etlplus_reference.passwords import hash_password
from etlplus_reference.root import FLAG_NAMES, write_json_atomic
from etlverify.contract import CODE_STATUS, CORRELATION_ID_RE
from etlverify.embedded import SUITE_CONFIG_OVERRIDES, EmbeddedTarget, deep_merge, free_port

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "ADMIN_PASSWORD",
    "ADMIN_USER",
    "CODE_STATUS",
    "FAILING_PROFILE",
    "FLAG_NAMES",
    "HTTP_TIMEOUT",
    "LONG_PROFILE",
    "QUICK_PROFILE",
    "REFERENCE_OVERRIDES",
    "TERMINAL",
    "Api",
    "LogReader",
    "TargetFactory",
    "assert_error",
    "assert_iso",
    "auth_overrides",
    "file_sha256",
    "is_int",
    "is_number",
    "poll_until",
    "recv_json",
    "recv_until",
    "start_target",
    "update_json_file",
    "ws_connect",
]

#: the `make_target` fixture: `(overrides=None, *, enable_faults=False, admin_password=None,
#: root=None) -> EmbeddedTarget`, a started server stopped at the test's teardown
TargetFactory = Callable[..., EmbeddedTarget]

#: the suite's overrides (fast hot reload, high rate limits), a little faster still for these tests
REFERENCE_OVERRIDES: dict[str, Any] = deep_merge(
    SUITE_CONFIG_OVERRIDES,
    {"config": {"reload_interval_s": 0.5}, "feature_flags": {"reload_interval_s": 0.5}},
)

ADMIN_USER = "admin"
ADMIN_PASSWORD = "s3cret-Test-pw"  # a throwaway password for a throwaway root

#: a default for every HTTP call: nothing in these tests may hang
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)

#: job profiles (the reference reads `source_config` as `key=value;...`)
QUICK_PROFILE = "rows=200;batch=50;delay_ms=5"
LONG_PROFILE = "rows=100000;batch=50;delay_ms=50"
FAILING_PROFILE = QUICK_PROFILE  # a job fails when its job_id contains "fail"
TARGET_CONFIG = "sink=memory"

TERMINAL = frozenset({"completed", "failed", "cancelled"})
#: the lifecycle of contract section 4: state -> the states it may move to
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "cancelled", "scheduled"}),
    "scheduled": frozenset({"pending", "running", "cancelled"}),
    "running": frozenset({"completed", "failed", "cancelled"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}

CORRELATION_RE = CORRELATION_ID_RE
_ISO_RE = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?")


def parse_iso(value: Any) -> datetime:
    """Parse a contract timestamp (ISO-8601 UTC, `YYYY-MM-DD HH:MM:SS` tolerated)."""
    assert isinstance(value, str), f"timestamp must be a string, got {value!r}"
    assert _ISO_RE.fullmatch(value), f"not an ISO-8601 timestamp: {value!r}"
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def is_number(value: Any) -> bool:
    """A JSON number (int or float, not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    """A JSON integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def assert_iso(value: Any) -> None:
    """Assert that `value` is a contract timestamp."""
    parse_iso(value)


def poll_until(
    fn: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Call `fn` until it returns a truthy value (returned) or `timeout` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout:.1f} s (last: {last!r})")
        time.sleep(interval)


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def update_json_file(path: Path, mutate: Callable[[dict[str, Any]], None]) -> None:
    """Load a JSON file, let `mutate` change it in place, and write it back atomically."""
    data = json.loads(path.read_text(encoding="utf-8"))
    mutate(data)
    write_json_atomic(path, data)


def assert_error(
    resp: httpx.Response,
    status: int,
    codes: str | set[str] | None = None,
    *,
    field: str | None = None,
) -> dict[str, Any]:
    """Assert a contract error answer (section 2) and return its body."""
    assert resp.status_code == status, (
        f"{resp.request.method} {resp.request.url.path}: expected HTTP {status}, "
        f"got {resp.status_code}: {resp.text[:300]}"
    )
    try:
        body = resp.json()
    except ValueError as exc:
        raise AssertionError(f"error body is not JSON: {resp.text[:300]!r}") from exc
    assert isinstance(body, dict), f"error body is not an object: {body!r}"
    assert body.get("status") == "error", body
    code = body.get("code")
    assert isinstance(code, str), f"code must be a string: {body!r}"
    assert CODE_STATUS.get(code) == status, f"code {code!r} is not a {status} code: {body!r}"
    if codes is not None:
        allowed = {codes} if isinstance(codes, str) else codes
        assert code in allowed, f"expected code in {sorted(allowed)}, got {code!r}: {body!r}"
    assert isinstance(body.get("message"), str), body
    assert body["message"], body
    cid = body.get("correlationId")
    assert isinstance(cid, str), body
    assert CORRELATION_RE.fullmatch(cid), f"correlationId is not 8-32 hex: {cid!r}"
    assert_iso(body.get("timestamp"))
    assert isinstance(body.get("context"), dict), body
    if field is not None:
        assert body["context"].get("field") == field, (
            f"expected context.field == {field!r}: {body!r}"
        )
    return body


class Api:
    """An httpx client bound to one target, with the job helpers the tests share."""

    def __init__(
        self, target: EmbeddedTarget, *, token: str | None = None, client_ip: str | None = None
    ) -> None:
        headers: dict[str, str] = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if client_ip:
            headers["X-Forwarded-For"] = client_ip
        self.target = target
        self.http = httpx.Client(base_url=target.base_url, timeout=HTTP_TIMEOUT, headers=headers)

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, **kw: Any) -> httpx.Response:
        """GET `path`."""
        return self.http.get(path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        """POST `path`."""
        return self.http.post(path, **kw)

    def put(self, path: str, **kw: Any) -> httpx.Response:
        """PUT `path`."""
        return self.http.put(path, **kw)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """Any method on `path`."""
        return self.http.request(method, path, **kw)

    def get_json(self, path: str) -> Any:
        """GET `path`, assert 200, return the body."""
        r = self.get(path)
        assert r.status_code == 200, f"GET {path}: HTTP {r.status_code}: {r.text[:300]}"
        return r.json()

    def create_job(
        self,
        job_type: str = "EXTRACT",
        source_config: str = QUICK_PROFILE,
        *,
        job_id: str | None = None,
        target_config: str = TARGET_CONFIG,
    ) -> str:
        """POST a job, assert it was accepted, return its id."""
        body: dict[str, Any] = {
            "type": job_type,
            "source_config": source_config,
            "target_config": target_config,
        }
        if job_id is not None:
            body["job_id"] = job_id
        r = self.post("/api/jobs", json=body)
        assert r.status_code in (200, 201), f"POST /api/jobs: HTTP {r.status_code}: {r.text[:300]}"
        data = r.json()
        assert isinstance(data.get("job_id"), str), data
        if job_id is not None:
            assert data["job_id"] == job_id, data
        return str(data["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /api/jobs/{id} (asserting 200)."""
        data = self.get_json(f"/api/jobs/{job_id}")
        assert isinstance(data, dict), data
        return data

    def wait_status(
        self, job_id: str, statuses: set[str] | frozenset[str], timeout: float = 20.0
    ) -> dict[str, Any]:
        """Poll the job until its status is in `statuses`; return the job."""

        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        result: dict[str, Any] = poll_until(
            reached, timeout=timeout, what=f"job {job_id} in {sorted(statuses)}"
        )
        return result

    def cancel(self, job_id: str) -> httpx.Response:
        """PUT {"status": "cancelled"}."""
        return self.put(f"/api/jobs/{job_id}", json={"status": "cancelled"})


def auth_overrides(admin_password: str) -> dict[str, Any]:
    """Config overrides that switch authentication on with one admin user of a known password."""
    user = {"password": hash_password(admin_password), "roles": ["admin"]}
    return {"auth": {"enabled": True, "users": {ADMIN_USER: user}}}


def start_target(
    root: Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    enable_faults: bool = False,
    admin_password: str | None = None,
) -> EmbeddedTarget:
    """Start a reference server with REFERENCE_OVERRIDES + `overrides` on a free port.

    The caller owns it and must `stop()` it. With no `root`, a temporary root is used.
    """
    merged = deep_merge(REFERENCE_OVERRIDES, overrides or {})
    if admin_password is not None:
        merged = deep_merge(merged, auth_overrides(admin_password))
    target = EmbeddedTarget(
        root, port=free_port(), enable_faults=enable_faults, config_overrides=merged
    )
    target.start()
    return target


# --- WebSocket -----------------------------------------------------------------------------------


@contextlib.contextmanager
def ws_connect(
    target: EmbeddedTarget, *, ack: bool = True, **kw: Any
) -> Iterator[ClientConnection]:
    """A WebSocket to the target's /ws; with `ack`, its connection_ack is read and checked first."""
    with connect(target.ws_url, open_timeout=5, close_timeout=2, **kw) as ws:
        if ack:
            msg = recv_json(ws, 5.0)
            assert msg["type"] == "connection_ack", msg
            assert msg["data"]["status"] == "connected", msg
        yield ws


def slow_socket(target: EmbeddedTarget, rcvbuf: int = 2048) -> socket.socket:
    """A TCP socket to the target with a tiny receive buffer, for a reader that stalls."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5.0)
    sock.connect(("127.0.0.1", target.port))
    sock.settimeout(None)
    return sock


def recv_json(ws: ClientConnection, timeout: float) -> dict[str, Any]:
    """Receive one message and parse it as a JSON object (TimeoutError when none comes)."""
    raw = ws.recv(timeout=timeout)
    msg = json.loads(raw)
    assert isinstance(msg, dict), f"WebSocket message is not an object: {raw!r}"
    return msg


def recv_until(
    ws: ClientConnection,
    stop: Callable[[dict[str, Any]], bool],
    *,
    timeout: float,
) -> list[dict[str, Any]]:
    """Collect messages until one satisfies `stop` (included); AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    out: list[dict[str, Any]] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(
                f"no matching WebSocket message within {timeout:.1f} s; got {len(out)}: "
                f"{[m.get('type') for m in out][-20:]}"
            )
        try:
            msg = recv_json(ws, left)
        except TimeoutError:
            continue
        out.append(msg)
        if stop(msg):
            return out


def drain(ws: ClientConnection, quiet: float = 0.3) -> list[dict[str, Any]]:
    """Every message that arrives until none has come for `quiet` seconds."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            out.append(recv_json(ws, quiet))
        except TimeoutError:
            return out
        except ConnectionClosed:
            return out


def is_status(job_id: str, *statuses: str) -> Callable[[dict[str, Any]], bool]:
    """A `recv_until` stop: a job_status_update of `job_id` to one of `statuses`."""

    def stop(msg: dict[str, Any]) -> bool:
        data = msg.get("data") or {}
        return (
            msg.get("type") == "job_status_update"
            and data.get("jobId") == job_id
            and data.get("status") in statuses
        )

    return stop


# --- logs ----------------------------------------------------------------------------------------

TEXT_LINE_RE = re.compile(
    r"\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\] \[(?P<level>DEBUG|INFO|WARN|ERROR|FATAL)\] "
    r"\[(?P<component>[^\]]+)\] (?P<rest>.*)"
)
LEVELS = ("DEBUG", "INFO", "WARN", "ERROR", "FATAL")


class LogReader:
    """Reads `logs/etlplus.log` (and its rotated backups) of a target's root."""

    def __init__(self, target: EmbeddedTarget) -> None:
        self.path = target.root / "logs" / "etlplus.log"
        self._mark = 0

    def text(self) -> str:
        """The current file's content (empty when it does not exist yet)."""
        try:
            return self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def mark(self) -> None:
        """Remember the current end of the file: `since_mark` reads from here."""
        try:
            self._mark = self.path.stat().st_size
        except FileNotFoundError:
            self._mark = 0

    def since_mark(self) -> str:
        """What was written since `mark` (assumes no rotation in between)."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._mark)
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, *, timeout: float, since_mark: bool = True) -> str:
        """Poll until a line matching the regex `pattern` appears; return that line."""
        rx = re.compile(pattern)

        def find() -> str | None:
            text = self.since_mark() if since_mark else self.text()
            for line in text.splitlines():
                if rx.search(line):
                    return line
            return None

        line: str = poll_until(find, timeout=timeout, what=f"log line matching {pattern!r}")
        return line

    def backups(self) -> list[Path]:
        """The rotated files that exist: `.1`, `.2`, ... in order, stopping at the first gap."""
        out = []
        i = 1
        while (p := self.path.with_name(f"{self.path.name}.{i}")).exists():
            out.append(p)
            i += 1
        return out

    def all_files_oldest_first(self) -> list[Path]:
        """Backups from the oldest to `.1`, then the current file."""
        return [*reversed(self.backups()), self.path]


def text_level(line: str) -> str | None:
    """The level of a TEXT log line, or None when the line is not in the TEXT format."""
    m = TEXT_LINE_RE.fullmatch(line)
    return m.group("level") if m else None
