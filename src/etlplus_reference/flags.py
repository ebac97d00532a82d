"""Feature flags (contract section 7): the file model, user buckets and activation."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from etlplus_reference.errors import ConfigError
from etlplus_reference.root import FLAG_NAMES

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "Flags",
    "active_names",
    "display_name",
    "fnv1a_bucket",
    "is_active",
    "load_flags",
    "parse_flags",
]

_FNV_OFFSET = 1469598103934665603
_FNV_PRIME = 1099511628211
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Flags:
    """One accepted version of `config/feature_flags.json`."""

    flags: dict[str, bool]
    rollout_percentages: dict[str, float]
    raw: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    loaded_at: float = 0.0


def fnv1a_bucket(user_id: str) -> float:
    """The user's rollout bucket: (FNV-1a 64 over UTF-8) mod 10000 / 100, in [0, 100)."""
    h = _FNV_OFFSET
    for byte in user_id.encode("utf-8"):
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return (h % 10000) / 100


def is_active(flags: Flags, name: str, user_id: str) -> bool:
    """A flag is active for a user when it is on and the user's bucket is below its percentage."""
    if not flags.flags.get(name, False):
        return False
    return fnv1a_bucket(user_id) < flags.rollout_percentages.get(name, 0.0)


def active_names(flags: Flags, user_id: str) -> list[str]:
    """The names of the flags active for `user_id`, in file order."""
    bucket = fnv1a_bucket(user_id)
    return [
        name
        for name, on in flags.flags.items()
        if on and bucket < flags.rollout_percentages.get(name, 0.0)
    ]


def display_name(path: Path) -> str:
    """`config/<file>` for a file in a deployment's config folder, else the full path."""
    return f"config/{path.name}" if path.parent.name == "config" else str(path)


def parse_flags(data: bytes, source: str) -> Flags:
    """Validate flags file bytes; `source` names the file in the ConfigError message."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{source}: not valid JSON: {_one_line(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be an object, got {type(raw).__name__}")
    if "flags" not in raw:
        raise ConfigError(f"{source}: missing 'flags' object")
    flags_raw = raw["flags"]
    if not isinstance(flags_raw, dict):
        raise ConfigError(f"{source}: flags must be an object, got {type(flags_raw).__name__}")
    flags: dict[str, bool] = dict.fromkeys(FLAG_NAMES, False)
    for name, value in flags_raw.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: flags.{name} must be true or false, got {value!r}")
        flags[name] = value
    pct_raw = raw.get("rollout_percentages", {})
    if not isinstance(pct_raw, dict):
        raise ConfigError(
            f"{source}: rollout_percentages must be an object, got {type(pct_raw).__name__}"
        )
    rollout: dict[str, float] = dict.fromkeys(FLAG_NAMES, 0.0)
    for name, value in pct_raw.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 <= value <= 100
        ):
            raise ConfigError(
                f"{source}: rollout_percentages.{name} must be a number in 0-100, got {value!r}"
            )
        rollout[name] = float(value)
    return Flags(
        flags=flags,
        rollout_percentages=rollout,
        raw=raw,
        sha256=hashlib.sha256(data).hexdigest(),
        loaded_at=time.time(),
    )


def load_flags(path: Path) -> Flags:
    """Read and validate a feature flags file; ConfigError (one line) when it is invalid."""
    source = display_name(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    return parse_flags(data, source)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
