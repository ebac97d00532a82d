"""`config/config.json` (contract section 8): strict validation into a typed, frozen Config.

Missing keys take their defaults from `root.default_config()` (so an older, shorter file keeps
working); present keys are checked for type and range, and the first problem becomes a one-line
ConfigError naming the file and the key, e.g.
`config/config.json: logging.level must be one of DEBUG, INFO, WARN, ERROR, FATAL, got 'LOUD'`.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from etlplus_reference.errors import ConfigError
from etlplus_reference.flags import Flags, display_name, load_flags
from etlplus_reference.logs import LEVELS
from etlplus_reference.root import default_config

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "AuthUser",
    "Config",
    "ConfigError",
    "Flags",
    "load_config",
    "load_flags",
    "parse_config",
    "redacted",
]

# Keys whose value replaces the default wholesale (a user removing a rule must lose it).
_REPLACE_KEYS = {("rate_limits", "rules"), ("auth", "users")}
_LEVEL_ALIASES = {"WARNING": "WARN", "CRITICAL": "FATAL"}


@dataclass(frozen=True)
class AuthUser:
    """One `auth.users` entry."""

    username: str
    password_hash: str
    roles: tuple[str, ...]
    user_id: str


@dataclass(frozen=True)
class Config:
    """One accepted version of the config file, typed; `raw` is the merged JSON."""

    raw: dict[str, Any]
    sha256: str
    loaded_at: float
    host: str
    port: int
    max_body_bytes: int
    db_path: str
    db_pool_size: int
    db_timeout_s: float
    log_level: str
    log_format: str
    log_file: str
    log_max_file_size: int
    log_max_backup_files: int
    ws_max_connections: int
    ws_max_queue: int
    ws_ping_interval_s: float
    ws_ping_misses: int
    rate_limits_enabled: bool
    rate_window_s: float
    trusted_proxies: tuple[str, ...]
    rate_rules: dict[str, int]
    auth_enabled: bool
    token_ttl_s: float
    users: dict[str, AuthUser] = field(default_factory=dict)
    config_reload_interval_s: float = 5.0
    flags_reload_interval_s: float = 5.0
    jobs_max_concurrent: int = 8


class _Reader:
    """Typed getters over the merged dict that raise one-line ConfigErrors."""

    def __init__(self, source: str, data: dict[str, Any]) -> None:
        self.source = source
        self.data = data

    def fail(self, key: str, what: str, value: Any) -> ConfigError:
        return ConfigError(f"{self.source}: {key} must be {what}, got {_short(value)}")

    def get(self, key: str) -> Any:
        node: Any = self.data
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict):
                prefix = ".".join(parts[:i])
                raise self.fail(prefix, "an object", node)
            if part not in node:
                raise ConfigError(f"{self.source}: missing {key}")
            node = node[part]
        return node

    def section(self, key: str) -> dict[str, Any]:
        value = self.get(key)
        if not isinstance(value, dict):
            raise self.fail(key, "an object", value)
        return value

    def integer(self, key: str, lo: int, hi: int | None = None) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "an integer", value)
        if value < lo or (hi is not None and value > hi):
            rng = f">= {lo}" if hi is None else f"in {lo}-{hi}"
            raise self.fail(key, f"an integer {rng}", value)
        return value

    def number(self, key: str, *, positive: bool = True, lo: float = 0.0) -> float:
        value = self.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or (value <= lo if positive else value < lo)
        ):
            what = f"a number > {lo:g}" if positive else f"a number >= {lo:g}"
            raise self.fail(key, what, value)
        return float(value)

    def string(self, key: str, *, empty: bool = False) -> str:
        value = self.get(key)
        if not isinstance(value, str) or (not empty and not value):
            raise self.fail(key, "a non-empty string" if not empty else "a string", value)
        return value

    def boolean(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def choice(self, key: str, choices: tuple[str, ...], aliases: dict[str, str]) -> str:
        value = self.get(key)
        if isinstance(value, str):
            upper = aliases.get(value.upper(), value.upper())
            if upper in choices:
                return upper
        raise self.fail(key, f"one of {', '.join(choices)}", value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _merge(base: dict[str, Any], override: dict[str, Any], path: tuple[str, ...] = ()) -> None:
    for key, value in override.items():
        here = (*path, key)
        if (
            isinstance(value, dict)
            and isinstance(base.get(key), dict)
            and here not in _REPLACE_KEYS
        ):
            _merge(base[key], value, here)
        else:
            base[key] = copy.deepcopy(value)


def parse_config(data: bytes, source: str) -> Config:
    """Validate config file bytes; `source` names the file in the ConfigError message."""
    try:
        loaded = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{source}: not valid JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{source}: top level must be an object, got {type(loaded).__name__}")
    merged = default_config()
    for key, value in loaded.items():
        if isinstance(merged.get(key), dict) and not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be an object, got {_short(value)}")
    _merge(merged, loaded)
    r = _Reader(source, merged)

    proxies_raw = r.get("rate_limits.trusted_proxies")
    if not isinstance(proxies_raw, list):
        raise r.fail("rate_limits.trusted_proxies", "a list of IP addresses", proxies_raw)
    for i, item in enumerate(proxies_raw):
        try:
            if not isinstance(item, str):
                raise ValueError(item)
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise r.fail(
                f"rate_limits.trusted_proxies[{i}]", "an IP address or network", item
            ) from None

    rules: dict[str, int] = {}
    for prefix in r.section("rate_limits.rules"):
        if not prefix.startswith("/"):
            raise ConfigError(f"{source}: rate_limits.rules key {prefix!r} must start with '/'")
        rules[prefix] = r.integer(f"rate_limits.rules.{prefix}", 1)

    users: dict[str, AuthUser] = {}
    for name, entry in r.section("auth.users").items():
        key = f"auth.users.{name}"
        if not name:
            raise ConfigError(f"{source}: auth.users keys must be non-empty user names")
        if not isinstance(entry, dict):
            raise r.fail(key, "an object", entry)
        pw = entry.get("password", entry.get("password_hash"))
        if not isinstance(pw, str) or not pw.startswith("pbkdf2_sha256$"):
            raise r.fail(f"{key}.password", "a 'pbkdf2_sha256$...' hash", "<redacted>")
        roles = entry.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(x, str) for x in roles):
            raise r.fail(f"{key}.roles", "a list of strings", roles)
        uid = entry.get("user_id", name)
        if not isinstance(uid, str) or not uid:
            raise r.fail(f"{key}.user_id", "a non-empty string", uid)
        users[name] = AuthUser(name, pw, tuple(roles), uid)

    return Config(
        raw=merged,
        sha256=hashlib.sha256(data).hexdigest(),
        loaded_at=time.time(),
        host=r.string("server.host"),
        port=r.integer("server.port", 0, 65535),
        max_body_bytes=r.integer("server.max_body_bytes", 1),
        db_path=r.string("database.path"),
        db_pool_size=r.integer("database.pool_size", 1, 64),
        db_timeout_s=r.number("database.timeout_s"),
        log_level=r.choice("logging.level", tuple(LEVELS), _LEVEL_ALIASES),
        log_format=r.choice("logging.format", ("TEXT", "JSON"), {}),
        log_file=r.string("logging.log_file"),
        log_max_file_size=r.integer("logging.max_file_size", 1),
        log_max_backup_files=r.integer("logging.max_backup_files", 0, 1000),
        ws_max_connections=r.integer("websocket.max_connections", 1),
        ws_max_queue=r.integer("websocket.max_queue", 1),
        ws_ping_interval_s=r.number("websocket.ping_interval_s"),
        ws_ping_misses=r.integer("websocket.ping_misses", 1),
        rate_limits_enabled=r.boolean("rate_limits.enabled"),
        rate_window_s=r.number("rate_limits.window_s"),
        trusted_proxies=tuple(proxies_raw),
        rate_rules=rules,
        auth_enabled=r.boolean("auth.enabled"),
        token_ttl_s=r.number("auth.token_ttl_s"),
        users=users,
        config_reload_interval_s=r.number("config.reload_interval_s"),
        flags_reload_interval_s=r.number("feature_flags.reload_interval_s"),
        jobs_max_concurrent=r.integer("jobs.max_concurrent", 1, 256),
    )


def load_config(path: Path) -> Config:
    """Read and validate a config file; ConfigError (one line) when it is invalid."""
    source = display_name(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    return parse_config(data, source)


def redacted(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of the merged config with password hashes replaced by '<redacted>'."""
    out = copy.deepcopy(raw)
    users = out.get("auth", {}).get("users", {})
    if isinstance(users, dict):
        for entry in users.values():
            if isinstance(entry, dict):
                for key in ("password", "password_hash", "password_sha256"):
                    if key in entry:
                        entry[key] = "<redacted>"
    return out
