"""Contract error bodies (section 2), correlation ids and timestamps.

Exception tree::

    Exception
     +-- ApiError              an HTTP error answer: status, symbolic code, message, context
     |    +-- DatabaseError    503 DATABASE_ERROR (the database is not usable)
     +-- ConfigError           a config or flags file is invalid (one line: file and problem)

Every 4xx/5xx answer is built by `error_body` so that its shape is the contract's in one place.
"""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any

__all__ = [
    "CODE_STATUS",
    "STATUS_CODE",
    "ApiError",
    "ConfigError",
    "DatabaseError",
    "error_body",
    "iso_ms",
    "json_bytes",
    "new_correlation_id",
    "now_iso",
    "valid_correlation_id",
]

#: symbolic code -> HTTP status (contract section 2)
CODE_STATUS: dict[str, int] = {
    "INVALID_INPUT": 400,
    "MISSING_FIELD": 400,
    "INVALID_RANGE": 400,
    "UNAUTHORIZED": 401,
    "TOKEN_EXPIRED": 401,
    "FORBIDDEN": 403,
    "ACCESS_DENIED": 403,
    "JOB_NOT_FOUND": 404,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "INVALID_JOB_STATE": 409,
    "JOB_ALREADY_RUNNING": 409,
    "CONSTRAINT_VIOLATION": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "RATE_LIMIT_EXCEEDED": 429,
    "INTERNAL_ERROR": 500,
    "PROCESSING_FAILED": 500,
    "COMPONENT_UNAVAILABLE": 503,
    "DATABASE_ERROR": 503,
    "THREAD_POOL_EXHAUSTED": 503,
}

#: HTTP status -> the default code for an answer with that status
STATUS_CODE: dict[int, str] = {
    400: "INVALID_INPUT",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONSTRAINT_VIOLATION",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    503: "COMPONENT_UNAVAILABLE",
}

_CID_RE = re.compile(r"[0-9a-fA-F]{8,32}")


class ApiError(Exception):
    """An error answer. Raised anywhere below the gateway; rendered by it as contract JSON."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        context: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else CODE_STATUS.get(code, 500)
        self.context: dict[str, Any] = context or {}
        self.headers: dict[str, str] = headers or {}

    @classmethod
    def field(cls, code: str, field: str, message: str) -> ApiError:
        """A 400 naming the offending field in `context.field`."""
        return cls(code, message, context={"field": field})


class DatabaseError(ApiError):
    """The database is not usable (a failed statement, an exhausted pool, an injected fault)."""

    def __init__(self, message: str, *, code: str = "DATABASE_ERROR") -> None:
        super().__init__(code, message, status=503)


class ConfigError(Exception):
    """A config or flags file is invalid; the message is one line naming the file and problem."""


_second_cache: tuple[int, str] = (-1, "")


def iso_ms(ts: float | None) -> str | None:
    """UTC ISO-8601 with milliseconds and 'Z'; None (and the epoch) stay unset."""
    global _second_cache  # noqa: PLW0603 - a one-entry cache, replaced whole (no torn reads)
    if ts is None or ts <= 0:
        return None
    secs = int(ts)
    ms = int((ts - secs) * 1000)
    # strftime+gmtime was a third of `GET /api/jobs` in a profile; most calls share a second.
    cached_secs, text = _second_cache
    if cached_secs != secs:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
        _second_cache = (secs, text)
    return f"{text}.{ms:03d}Z"


def now_iso() -> str:
    """The current time as `iso_ms` gives it."""
    return iso_ms(time.time()) or ""


def new_correlation_id() -> str:
    """A fresh 16-hex-character correlation id (unique enough to find a line; not a secret).

    Not os.urandom: that system call releases the GIL on every request, and the event loop then
    waits to get it back from the database threads (11% of `POST /api/jobs` in a profile).
    """
    return f"{random.getrandbits(64):016x}"


def valid_correlation_id(value: str) -> bool:
    """True for 8-32 hex characters (an incoming id we may echo)."""
    return _CID_RE.fullmatch(value) is not None


def json_bytes(data: Any) -> bytes:
    """Compact UTF-8 JSON; the one encoder of HTTP bodies and WebSocket messages."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def error_body(
    code: str, message: str, correlation_id: str, context: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The contract's error JSON object."""
    return {
        "status": "error",
        "code": code,
        "message": message,
        "correlationId": correlation_id,
        "timestamp": now_iso(),
        "context": context or {},
    }
