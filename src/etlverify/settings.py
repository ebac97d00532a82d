"""The suite's settings, resolved once per run: command line -> environment -> ini -> default.

Every value remembers where it came from (`Settings.source_of`), so the report header can print
what is needed to reproduce a run and an error can name the place to fix. A bad value raises
`SettingsError` with one line such as ``--request-timeout: expected seconds > 0, got 'abc'``.

Credentials (`ETLPLUS_USERNAME`, `ETLPLUS_PASSWORD`, `ETLPLUS_TOKEN`) come only from the environment
and never appear in `repr`, `describe()` or any report.

`profile` (`--profile`, `ETLPLUS_PROFILE`, ini `etlplus_profile`) says what kind of target this is
and so what the heavy checks may send it (`PROFILES`): ``staging`` (the default) the full load,
connection churn and fuzzing; ``production`` a gentler run. It gives the defaults of the heavy
checks' budgets (environment only: `ETLPLUS_CONNECTIONS`, ...) and of the performance section's
load rate; a budget set in the environment wins, and its source says which it was.

This module knows nothing of pytest: the plugin hands it plain mappings of raw values.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from etlverify.errors import SettingsError

__all__ = [
    "DEFAULT_JOB_PROFILES",
    "DEFAULT_JOB_TYPES",
    "PROFILES",
    "SETTINGS",
    "Profile",
    "SettingSpec",
    "Settings",
    "resolve_settings",
]

DEFAULT_JOB_TYPES: Final = ("EXTRACT", "TRANSFORM", "LOAD", "FULL_ETL")
#: name -> source_config. "failing" is a quick job: what makes it fail is its job id (contains
#: "fail", contract section 4), which `JobHelper` adds for that profile.
DEFAULT_JOB_PROFILES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "quick": "rows=200;batch=50;delay_ms=5",
        "long": "rows=100000;batch=100;delay_ms=50",
        "failing": "rows=200;batch=50;delay_ms=5",
    }
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Profile:
    """What the heavy checks send to one kind of target by default (`--profile NAME`)."""

    name: str
    #: default of `--perf-rate`: the performance section's open-model load, requests/s over the
    #: four key routes (a quarter of them POST /api/jobs), for `--perf-duration` (40 s)
    perf_rate_rps: float
    #: fresh connections the connection-hygiene check opens one after another, and its time limit
    connections: int
    connections_budget_s: float
    #: whether the fuzz checks (hypothesis: generated, malformed requests) run
    fuzz: bool

    def describe(self) -> str:
        """What the profile sends, in a few words (help text, report header)."""
        fuzz = "hypothesis fuzzing" if self.fuzz else "no fuzzing"
        return (
            f"~{self.perf_rate_rps:g} req/s of measured load, {self.connections} fresh "
            f"connections, {fuzz}"
        )


#: The profiles. Production keeps every check that proves the deployment works and sends less of
#: what can hurt it: at 60 requests/s each key route's 8 s trial window still holds 120 samples
#: (a p95 verdict needs 100: 5 beyond the percentile), 50 connections are above the 20 below which
#: the connection check proves nothing about a pool, and no generated input is sent at all.
PROFILES: Final[Mapping[str, Profile]] = MappingProxyType(
    {
        "staging": Profile(
            "staging",
            perf_rate_rps=100.0,
            connections=300,
            connections_budget_s=30.0,
            fuzz=True,
        ),
        "production": Profile(
            "production",
            perf_rate_rps=60.0,
            connections=50,
            connections_budget_s=15.0,
            fuzz=False,
        ),
    }
)
DEFAULT_PROFILE: Final = "staging"
#: settings whose default comes from the profile (the attribute of `Profile` of the same name)
_PROFILE_DEFAULTS: Final = ("connections", "connections_budget_s")


@dataclass(frozen=True)
class SettingSpec:
    """How one setting is named in each source and how its raw text becomes a value."""

    name: str
    cli: str | None
    env: str
    ini: str | None
    help: str
    #: "url", "ws_url", "dir", "cmd", "seconds", "count", "list", "profiles", "bool", "profile"
    kind: str


SETTINGS: Final[tuple[SettingSpec, ...]] = (
    SettingSpec(
        "base_url",
        "--base-url",
        "ETLPLUS_BASE_URL",
        "etlplus_base_url",
        "URL of the ETL Plus target; none starts the embedded reference",
        "url",
    ),
    SettingSpec(
        "ws_url",
        "--ws-url",
        "ETLPLUS_WS_URL",
        "etlplus_ws_url",
        "WebSocket URL (default: base URL with ws scheme + /ws)",
        "ws_url",
    ),
    SettingSpec(
        "deploy_root",
        "--deploy-root",
        "ETLPLUS_DEPLOY_ROOT",
        "etlplus_deploy_root",
        "the deployment folder (config/, logs/, deployment/, monitoring/)",
        "dir",
    ),
    SettingSpec(
        "monitor_cmd",
        "--monitor-cmd",
        "ETLPLUS_MONITOR_CMD",
        "etlplus_monitor_cmd",
        "monitoring command (default <root>/monitoring/monitor.sh)",
        "cmd",
    ),
    SettingSpec(
        "rollback_cmd",
        "--rollback-cmd",
        "ETLPLUS_ROLLBACK_CMD",
        "etlplus_rollback_cmd",
        "rollback command (default <root>/deployment/rollback.sh)",
        "cmd",
    ),
    SettingSpec(
        "request_timeout",
        "--request-timeout",
        "ETLPLUS_REQUEST_TIMEOUT",
        "etlplus_request_timeout",
        "seconds for one HTTP request (default 10)",
        "seconds",
    ),
    SettingSpec(
        "run_timeout",
        "--run-timeout",
        "ETLPLUS_RUN_TIMEOUT",
        "etlplus_run_timeout",
        "seconds for the whole run (default 600)",
        "seconds",
    ),
    SettingSpec(
        "reload_timeout",
        "--reload-timeout",
        "ETLPLUS_RELOAD_TIMEOUT",
        "etlplus_reload_timeout",
        "seconds to wait for a hot reload (default 15)",
        "seconds",
    ),
    SettingSpec(
        "job_types",
        "--job-types",
        "ETLPLUS_JOB_TYPES",
        "etlplus_job_types",
        "comma-separated job types (default EXTRACT,TRANSFORM,LOAD,FULL_ETL)",
        "list",
    ),
    SettingSpec(
        "job_profiles",
        "--job-profile",
        "ETLPLUS_JOB_PROFILES",
        "etlplus_job_profiles",
        "NAME=SOURCE_CONFIG job profile (repeatable; env: ';;'-separated)",
        "profiles",
    ),
    SettingSpec(
        "allow_destructive",
        "--allow-destructive",
        "ETLPLUS_ALLOW_DESTRUCTIVE",
        "etlplus_allow_destructive",
        "run tests that change deployment state (implied for the embedded target)",
        "bool",
    ),
    SettingSpec(
        "embedded_faults",
        "--embedded-faults",
        "ETLPLUS_EMBEDDED_FAULTS",
        None,
        "start the embedded reference with its fault switches (default on: the monitoring and"
        " trigger checks induce faults on it; --no-embedded-faults to start it without)",
        "bool",
    ),
    # The profile before the budgets: their defaults depend on it.
    SettingSpec(
        "profile",
        "--profile",
        "ETLPLUS_PROFILE",
        "etlplus_profile",
        "what the heavy checks may send: staging (default; "
        + PROFILES["staging"].describe()
        + ") or production ("
        + PROFILES["production"].describe()
        + ")",
        "profile",
    ),
    # The heavy checks' budgets: environment only (verification/post_deploy/test_post_connections.py
    # and test_post_fuzz.py read these variables themselves; the plugin sets, for the run, those the
    # environment lacks whose value differs from the checks' own defaults: the staging profile's).
    SettingSpec(
        "connections",
        None,
        "ETLPLUS_CONNECTIONS",
        None,
        "fresh connections the connection-hygiene check opens one after another (profile)",
        "count",
    ),
    SettingSpec(
        "connection_timeout_s",
        None,
        "ETLPLUS_CONNECTION_TIMEOUT_S",
        None,
        "connect and read timeout of each of those connections (default 2)",
        "seconds",
    ),
    SettingSpec(
        "connections_budget_s",
        None,
        "ETLPLUS_CONNECTIONS_BUDGET_S",
        None,
        "time limit of the whole connection sequence (profile)",
        "seconds",
    ),
    SettingSpec(
        "fuzz_budget_s",
        None,
        "ETLPLUS_FUZZ_BUDGET_S",
        None,
        "time budget of each hypothesis fuzzing check (default 20)",
        "seconds",
    ),
    SettingSpec(
        "fuzz_examples",
        None,
        "ETLPLUS_FUZZ_EXAMPLES",
        None,
        "example (request) budget of each fuzzing check (default 100)",
        "count",
    ),
)
_SPECS: Final = {s.name: s for s in SETTINGS}
_SECRETS: Final = ("username", "password", "token")

_DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "base_url": None,
        "ws_url": None,
        "deploy_root": None,
        "monitor_cmd": None,
        "rollback_cmd": None,
        "request_timeout": 10.0,
        "run_timeout": 600.0,
        "reload_timeout": 15.0,
        "job_types": DEFAULT_JOB_TYPES,
        "job_profiles": DEFAULT_JOB_PROFILES,
        "allow_destructive": False,
        "embedded_faults": True,
        "profile": DEFAULT_PROFILE,
        "connection_timeout_s": 2.0,
        "fuzz_budget_s": 20.0,
        "fuzz_examples": 100,
    }
)


@dataclass(frozen=True)
class Settings:
    """Every setting of one run, each with the source it came from (see `source_of`)."""

    base_url: str | None = None
    ws_url: str | None = None
    deploy_root: Path | None = None
    monitor_cmd: tuple[str, ...] | None = None
    rollback_cmd: tuple[str, ...] | None = None
    request_timeout: float = 10.0
    run_timeout: float = 600.0
    reload_timeout: float = 15.0
    job_types: tuple[str, ...] = DEFAULT_JOB_TYPES
    job_profiles: Mapping[str, str] = field(default_factory=lambda: DEFAULT_JOB_PROFILES)
    allow_destructive: bool = False
    embedded_faults: bool = True
    profile: str = DEFAULT_PROFILE
    connections: int = 300
    connection_timeout_s: float = 2.0
    connections_budget_s: float = 30.0
    fuzz_budget_s: float = 20.0
    fuzz_examples: int = 100
    # Secrets: environment only, never in repr.
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def embedded(self) -> bool:
        """True when no target was given: the suite starts the reference itself."""
        return self.base_url is None

    @property
    def destructive_allowed(self) -> bool:
        """Destructive tests run with --allow-destructive, and always against the embedded one."""
        return self.allow_destructive or self.embedded

    @property
    def load_profile(self) -> Profile:
        """The profile's defaults (`PROFILES`): what the heavy checks send unless told otherwise."""
        return PROFILES[self.profile]

    @property
    def fuzz_allowed(self) -> bool:
        """Whether the fuzz checks run (not under ``--profile production``)."""
        return self.load_profile.fuzz

    @property
    def token_env_ref(self) -> str | None:
        """`$ETLPLUS_TOKEN` when a token came from that variable (curl lines use the reference)."""
        return "$ETLPLUS_TOKEN" if self.token else None

    def source_of(self, name: str) -> str:
        """Where `name` came from: ``--base-url``, ``env ETLPLUS_BASE_URL``, ``ini ...``, default"""
        return self.sources.get(name, "default")

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, printable value, source) for every setting; secrets show as ``***``."""
        rows: list[tuple[str, str, str]] = []
        for spec in SETTINGS:
            rows.append((spec.name, _show(getattr(self, spec.name)), self.source_of(spec.name)))
        for name in _SECRETS:
            value = getattr(self, name)
            if value:
                shown = value if name == "username" else "***"
                rows.append((name, shown, self.source_of(name)))
        return rows


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, tuple):
        return " ".join(value) if value and "/" in value[0] else ",".join(value)
    if isinstance(value, Mapping):
        return "; ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# -- parsers: each takes the raw text and the origin label, returns the value or raises ----------


def _fail(origin: str, expected: str, raw: object) -> SettingsError:
    return SettingsError(f"{origin}: expected {expected}, got {raw!r}")


def _parse_url(raw: str, origin: str, schemes: tuple[str, ...]) -> str:
    text = raw.strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in schemes or not rest or rest.startswith("/"):
        raise _fail(origin, f"a URL starting with {' or '.join(s + '://' for s in schemes)}", raw)
    return text.rstrip("/")


def _parse_seconds(raw: str, origin: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise _fail(origin, "seconds > 0", raw) from None
    if not value > 0 or value == float("inf"):
        raise _fail(origin, "seconds > 0", raw)
    return value


def _parse_dir(raw: str, origin: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise _fail(origin, "an existing directory", raw)
    return path.resolve()


def _parse_cmd(raw: str, origin: str) -> tuple[str, ...]:
    try:
        parts = tuple(shlex.split(raw))
    except ValueError:
        raise _fail(origin, "a command line", raw) from None
    if not parts:
        raise _fail(origin, "a command line", raw)
    return parts


def _parse_count(raw: str, origin: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise _fail(origin, "a whole number > 0", raw) from None
    if value <= 0:
        raise _fail(origin, "a whole number > 0", raw)
    return value


def _parse_profile(raw: str, origin: str) -> str:
    text = raw.strip().lower()
    if text in PROFILES:
        return text
    close = [name for name in PROFILES if text and name.startswith(text)]
    close = close or difflib.get_close_matches(text, list(PROFILES), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise SettingsError(f"{origin}: expected {' or '.join(PROFILES)}, got {raw!r}{hint}")


def _parse_list(raw: str, origin: str) -> tuple[str, ...]:
    items = tuple(p.strip().upper() for p in raw.split(",") if p.strip())
    if not items:
        raise _fail(origin, "a comma-separated list of job types", raw)
    return items


def _parse_bool(raw: str, origin: str) -> bool:
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _fail(origin, "true/false (1/0, yes/no, on/off)", raw)


def _parse_profiles(entries: Sequence[str], origin: str) -> Mapping[str, str]:
    profiles = dict(DEFAULT_JOB_PROFILES)
    for entry in entries:
        name, sep, source = entry.partition("=")
        name, source = name.strip(), source.strip()
        if not sep or not name or not source or not 1 <= len(source) <= 1024:
            raise _fail(origin, "NAME=SOURCE_CONFIG (source 1-1024 characters)", entry)
        profiles[name] = source
    return MappingProxyType(profiles)


_PARSERS: Final[dict[str, Callable[[str, str], Any]]] = {
    "url": lambda raw, origin: _parse_url(raw, origin, ("http", "https")),
    "ws_url": lambda raw, origin: _parse_url(raw, origin, ("ws", "wss")),
    "dir": _parse_dir,
    "cmd": _parse_cmd,
    "seconds": _parse_seconds,
    "count": _parse_count,
    "profile": _parse_profile,
    "list": _parse_list,
    "bool": _parse_bool,
}


def _profile_entries(spec_source: str, raw: str | Sequence[str]) -> list[str]:
    """Split the raw profile text of one source into NAME=SOURCE entries."""
    if not isinstance(raw, str):
        return [e for e in raw if e.strip()]
    if spec_source == "env":
        return [e for e in raw.split(";;") if e.strip()]
    # ini: one entry per line, or ';;'-separated on one line
    return [e for line in raw.splitlines() for e in line.split(";;") if e.strip()]


def resolve_settings(
    cli: Mapping[str, str | Sequence[str] | bool | None] | None = None,
    env: Mapping[str, str] | None = None,
    ini: Mapping[str, str | Sequence[str] | None] | None = None,
) -> Settings:
    """Resolve every setting from `cli` (keyed by setting name), `env` (keyed by variable) and
    `ini` (keyed by ini name), first non-empty wins, and validate it.

    Raises `SettingsError` naming the source of the first bad value.
    """
    cli = cli or {}
    env = env or {}
    ini = ini or {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SETTINGS:
        candidates: list[tuple[str, str, Any]] = []
        if spec.cli:
            candidates.append(("cli", spec.cli, cli.get(spec.name)))
        candidates.append(("env", f"env {spec.env}", env.get(spec.env)))
        if spec.ini:
            candidates.append(("ini", f"ini {spec.ini}", ini.get(spec.ini)))
        for kind, origin, raw in candidates:
            if raw is None or raw in ("", [], ()):
                continue
            if isinstance(raw, bool):  # a store_true CLI flag
                values[spec.name] = raw
            elif spec.kind == "profiles":
                values[spec.name] = _parse_profiles(_profile_entries(kind, raw), origin)
            else:
                text = raw if isinstance(raw, str) else ",".join(raw)
                values[spec.name] = _PARSERS[spec.kind](text, origin)
            sources[spec.name] = origin
            break
        else:
            if spec.name in _PROFILE_DEFAULTS:
                profile = PROFILES[values["profile"]]
                values[spec.name] = getattr(profile, spec.name)
                sources[spec.name] = f"profile {profile.name}"
            else:
                values[spec.name] = _DEFAULTS[spec.name]
                sources[spec.name] = "default"
    if values["ws_url"] is None and values["base_url"] is not None:
        base: str = values["base_url"]
        values["ws_url"] = "ws" + base[len("http") :] + "/ws"
        sources["ws_url"] = "derived from base_url"
    for name, var in (
        ("username", "ETLPLUS_USERNAME"),
        ("password", "ETLPLUS_PASSWORD"),
        ("token", "ETLPLUS_TOKEN"),
    ):
        secret = env.get(var) or None
        values[name] = secret
        if secret:
            sources[name] = f"env {var}"
    if bool(values["username"]) != bool(values["password"]):
        missing = "ETLPLUS_PASSWORD" if values["username"] else "ETLPLUS_USERNAME"
        raise SettingsError(
            f"env {missing}: expected it to be set together with "
            f"{'ETLPLUS_USERNAME' if values['username'] else 'ETLPLUS_PASSWORD'}, got nothing"
        )
    return Settings(**values, sources=MappingProxyType(sources))
