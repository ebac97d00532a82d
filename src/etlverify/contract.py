"""The ETL Plus contract's fixed facts (docs/etlplus-contract.md), in one place for the suites.

The verification suites and the project's tests of the reference import these instead of keeping
copies. The reference target keeps its own implementation on purpose: a check written from the
same table as the server it checks could not catch the server's copy being wrong.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "CODE_STATUS",
    "CORRELATION_ID_RE",
    "ERROR_FIELDS",
    "FLAG_BY_COMPONENT",
    "FLAG_NAMES",
    "KNOWN_BUCKETS",
    "LOG_LEVELS",
    "TERMINAL_STATUSES",
    "TEXT_LOG_LINE_RE",
    "fnv1a_bucket",
]

#: section 2: symbolic error code -> HTTP status
CODE_STATUS: Final[dict[str, int]] = {
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

#: section 2: an error body has exactly these fields, of these types
ERROR_FIELDS: Final[dict[str, type]] = {
    "status": str,
    "code": str,
    "message": str,
    "correlationId": str,
    "timestamp": str,
    "context": dict,
}

#: section 2: a correlation id is 8-32 hex characters
CORRELATION_ID_RE: Final = re.compile(r"[0-9a-fA-F]{8,32}")

#: section 4: a job in one of these never changes again
TERMINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})

#: section 11: rollback component name -> feature flag (section 7)
FLAG_BY_COMPONENT: Final[dict[str, str]] = {
    "logger": "new_logger_system",
    "exception": "new_exception_system",
    "request_handler": "new_request_handler",
    "websocket": "new_websocket_manager",
    "concurrency": "new_concurrency_patterns",
    "types": "new_type_system",
}
FLAG_NAMES: Final[tuple[str, ...]] = tuple(FLAG_BY_COMPONENT.values())

#: section 7: buckets the contract states, to check `fnv1a_bucket` itself against
KNOWN_BUCKETS: Final[dict[str, float]] = {
    "user1": 64.51,
    "user2": 46.62,
    "alice": 63.25,
    "bob": 54.58,
    "": 56.03,
}

#: section 9
LOG_LEVELS: Final[tuple[str, ...]] = ("DEBUG", "INFO", "WARN", "ERROR", "FATAL")
#: section 9, TEXT line: `[YYYY-MM-DD HH:MM:SS.mmm] [LEVEL] [Component] message | k=v ...`
TEXT_LOG_LINE_RE: Final = re.compile(
    r"^\[(?P<ts>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3})\] "
    r"\[(?P<level>DEBUG|INFO|WARN|ERROR|FATAL)\] "
    r"\[(?P<component>[^\]]+)\] (?P<message>.*)$"
)

_FNV_OFFSET: Final = 1469598103934665603
_FNV_PRIME: Final = 1099511628211
_MASK64: Final = (1 << 64) - 1


def fnv1a_bucket(user_id: str) -> float:
    """Section 7's rollout bucket: FNV-1a 64 over the UTF-8 bytes, `(hash % 10000) / 100`."""
    h = _FNV_OFFSET
    for byte in user_id.encode("utf-8"):
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return (h % 10000) / 100
