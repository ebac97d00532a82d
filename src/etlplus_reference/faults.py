"""Fault injection (only with `create_app(..., enable_faults=True)`): misbehaviour on demand.

The verification suite has to prove that it notices latency, error bursts, lost WebSocket pushes,
memory growth, a failing database, ignored config/flag changes and a crash. `GET/POST/DELETE
/api/_faults` read, merge and clear the settings below; the gateway, the database, the WebSocket hub
and the file watchers consult them.
"""

from __future__ import annotations

import math
import random
from typing import Any

from etlplus_reference.errors import STATUS_CODE, ApiError

__all__ = ["FAULT_PATH", "Faults"]

FAULT_PATH = "/api/_faults"
_ERROR_STATUSES = tuple(s for s in STATUS_CODE if s != 405)  # 405 would need a real Allow set


def _defaults() -> dict[str, Any]:
    return {
        "latency": {"ms": 0.0, "jitter_ms": 0.0, "fraction": 1.0, "route_prefix": None},
        "errors": {"fraction": 0.0, "status": 500, "route_prefix": None},
        "websocket": {"drop_fraction": 0.0, "delay_ms": 0.0},
        "memory_growth_mb_per_s": 0.0,
        "database_failures": 0.0,
        "ignore_config_changes": False,
        "ignore_flag_changes": False,
        "crash": False,
    }


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


def _prefix(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise _bad(field, "a path prefix starting with '/' or null")
    return value


class Faults:
    """The current fault settings and the cheap questions the request path asks of them."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = _defaults()
        self.ballast: list[bytearray] = []
        self.active = False

    def snapshot(self) -> dict[str, Any]:
        """GET body: the settings plus what has grown so far."""
        return {
            **self.state,
            "active": self.active,
            "ballast_mb": round(sum(len(b) for b in self.ballast) / 2**20, 1),
        }

    def clear(self) -> None:
        """DELETE: everything off, ballast released."""
        self.state = _defaults()
        self.ballast.clear()
        self.active = False

    def merge(self, body: Any) -> None:
        """POST: validate the whole body first, then merge it into the settings (all or nothing)."""
        if not isinstance(body, dict):
            raise ApiError.field("INVALID_INPUT", "body", "body must be a JSON object")
        new = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.state.items()}
        for key, value in body.items():
            if key in ("latency", "errors", "websocket"):
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
        self.state = new
        self.active = new != _defaults()

    @staticmethod
    def _validate(section: str, sub: str, value: Any, field: str) -> Any:
        if sub == "route_prefix":
            return _prefix(value, field)
        if sub == "status":
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value not in _ERROR_STATUSES
            ):
                raise _bad(field, f"one of {', '.join(map(str, _ERROR_STATUSES))}")
            return value
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

    def latency_s(self, path: str) -> float:
        """Injected delay for this request, in seconds (0 when none)."""
        lat = self.state["latency"]
        if lat["ms"] <= 0 and lat["jitter_ms"] <= 0:
            return 0.0
        if not self._applies(path, lat["route_prefix"]) or random.random() >= lat["fraction"]:
            return 0.0
        return float(lat["ms"] + random.uniform(0, lat["jitter_ms"])) / 1000

    def error_status(self, path: str) -> int | None:
        """Injected error status for this request, or None."""
        err = self.state["errors"]
        if err["fraction"] <= 0 or not self._applies(path, err["route_prefix"]):
            return None
        return int(err["status"]) if random.random() < err["fraction"] else None

    def db_fails(self) -> bool:
        """True when this database operation must fail."""
        p: float = self.state["database_failures"]
        return p > 0 and random.random() < p

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

    @property
    def growth_mb_per_s(self) -> float:
        """Ballast to add per second."""
        return float(self.state["memory_growth_mb_per_s"])
