"""Baseline files: versioned, reviewed JSON under `baselines/<name>.json`.

A baseline holds one or more recorded runs of the same load against the same kind of environment.
Each metric keeps the trial windows of every run (tagged with the run index), so the comparison can
pool windows across runs. Files are written with sorted keys and indent 2 (readable diffs in review)
through a temporary file and `os.replace` (a crash never leaves half a baseline). `load()` validates
strictly and raises `BaselineError` with one line naming the file and the problem.

File layout (schema_version 1)::

    {"schema_version": 1, "name": "...", "recorded_at": "<last recording, UTC>",
     "environment": {<fingerprint of the first run>},
     "runs": [{"index": 0, "recorded_at", "started_at", "duration_s", "late", "unsent",
               "longest_outage_s", "environment": {...}}, ...],
     "metrics": {"GET /api/jobs": {"windows": [{"run": 0, "index": 0, "start_s", "duration_s",
               "count", "errors", "error_kinds", "late", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
               "max_ms", "mean_ms", "throughput_rps", "histogram"}, ...]}, ...}}
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import sys
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etlverify import __version__
from etlverify.baseline.machine import cpu_model
from etlverify.errors import EtlVerifyError
from etlverify.measure.results import LoadParameters, MetricResult, RunResult, WindowStats

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "SCHEMA_VERSION",
    "Baseline",
    "BaselineError",
    "Fingerprint",
    "Mismatch",
    "RecordedRun",
    "Severity",
    "baseline_path",
    "compare_fingerprints",
    "load",
    "record",
]

SCHEMA_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class BaselineError(EtlVerifyError, ValueError):
    """A baseline file is missing, broken or does not fit; `str()` is one line naming the file."""


class Severity(StrEnum):
    """How much an environment difference matters for a comparison."""

    INFO = "info"  # expected to differ (the build under test) or unknown
    WARNING = "warning"  # comparable, but numbers may shift (runtime, flags)
    ERROR = "error"  # not comparable (another workload)
    #: not comparable: recorded on other hardware (CPU model, core count) or under another target
    #: configuration; `compare()` turns every metric verdict into INCONCLUSIVE naming it
    FOREIGN = "foreign"


@dataclass(frozen=True)
class Fingerprint:
    """Where and how a run was measured; stored with every baseline run."""

    target_version: str | None = None
    build_commit: str | None = None
    flags_sha256: str | None = None
    flags: Mapping[str, Any] = field(default_factory=dict)
    suite_version: str = __version__
    cpu_count: int | None = None
    python_version: str = ""
    platform: str = ""
    load: Mapping[str, Any] = field(default_factory=dict)
    #: the CPU model name (`/proc/cpuinfo`); None in files recorded before it was stored
    cpu_model: str | None = None
    #: what the target was configured with, when the suite knows it (the embedded reference: its
    #: version and the suite's config overrides, as a short digest); None when unknown
    target_config: str | None = None

    @classmethod
    def collect(
        cls,
        *,
        load: LoadParameters | None = None,
        status: Mapping[str, Any] | None = None,
        flags: Mapping[str, Any] | None = None,
        target_config: str | None = None,
    ) -> Fingerprint:
        """Fingerprint this host, plus the target from `/api/health/status` and `/api/flags` bodies.

        Flag states keep only the two maps (`flags`, `rollout_percentages`): `loaded_at` changes on
        every reload and would make every run look different.
        """
        status = status or {}
        build = status.get("build") if isinstance(status.get("build"), dict) else {}
        ff = status.get("feature_flags") if isinstance(status.get("feature_flags"), dict) else {}
        flag_states = {
            k: (flags or {})[k] for k in ("flags", "rollout_percentages") if k in (flags or {})
        }
        sha = (flags or {}).get("sha256") or (ff or {}).get("sha256")
        return cls(
            target_version=_opt_str(status.get("version")),
            build_commit=_opt_str((build or {}).get("commit")),
            flags_sha256=_opt_str(sha),
            flags=flag_states,
            cpu_count=os.cpu_count(),
            python_version=platform.python_version(),
            platform=f"{sys.platform}-{platform.machine()}",
            load=load.to_json() if load is not None else {},
            cpu_model=cpu_model(),
            target_config=target_config,
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "target_version": self.target_version,
            "build_commit": self.build_commit,
            "flags_sha256": self.flags_sha256,
            "flags": dict(self.flags),
            "suite_version": self.suite_version,
            "cpu_count": self.cpu_count,
            "python_version": self.python_version,
            "platform": self.platform,
            "load": dict(self.load),
            "cpu_model": self.cpu_model,
            "target_config": self.target_config,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fingerprint:
        """Inverse of `to_json()`; unknown keys are a ValueError."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown environment field {sorted(unknown)[0]!r}")
        if "cpu_count" in data and not isinstance(data["cpu_count"], int | None):
            raise ValueError("environment.cpu_count is not an integer")
        for key in ("cpu_model", "target_config"):
            if key in data and not isinstance(data[key], str | None):
                raise ValueError(f"environment.{key} is not a string")
        for key in ("flags", "load"):
            if key in data and not isinstance(data[key], dict):
                raise ValueError(f"environment.{key} is not an object")
        return cls(**data)


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Mismatch:
    """One difference between two fingerprints."""

    field: str
    baseline: Any
    current: Any
    severity: Severity

    def __str__(self) -> str:
        if self.severity is Severity.FOREIGN:
            return f"not comparable: {self.describe()}"
        return (
            f"{self.severity.value}: {self.field} differs "
            f"(baseline {self.baseline!r}, current {self.current!r})"
        )

    def describe(self) -> str:
        """For people: what differs, e.g. `baseline recorded on another CPU ('X', this run 'Y')`."""
        if self.field in _HARDWARE_FIELDS and self.baseline is None:
            return f"the baseline does not record its {self.field} (this run: {self.current!r})"
        what = {
            "cpu_model": "on another CPU",
            "cpu_count": "with another core count",
            "target_config": "under another target configuration",
        }.get(self.field, f"with another {self.field}")
        return f"baseline recorded {what} ({self.baseline!r}; this run {self.current!r})"


_WARN_FIELDS = ("platform", "python_version", "suite_version", "flags_sha256")
_INFO_FIELDS = ("target_version", "build_commit")
#: Hardware: a baseline from another CPU model or core count does not describe this machine.
_HARDWARE_FIELDS = ("cpu_model", "cpu_count")


def compare_fingerprints(baseline: Fingerprint, current: Fingerprint) -> tuple[Mismatch, ...]:
    """List the differences: load parameters are errors (another workload is not comparable);
    other hardware (CPU model, core count, including a baseline that does not say which CPU it was
    recorded on) and another target configuration are FOREIGN (not comparable); runtime and flag
    differences warnings; target version and commit info (they are what a deployment changes)."""
    out: list[Mismatch] = []
    for key in sorted(set(baseline.load) | set(current.load)):
        b, c = baseline.load.get(key), current.load.get(key)
        if b != c:
            out.append(Mismatch(f"load.{key}", b, c, Severity.ERROR))
    for key in _HARDWARE_FIELDS:
        b, c = getattr(baseline, key), getattr(current, key)
        # Unknown on this side: nothing to compare. Unknown in the baseline: it cannot vouch.
        if c is not None and b != c:
            out.append(Mismatch(key, b, c, Severity.FOREIGN))
    b_cfg, c_cfg = baseline.target_config, current.target_config
    if b_cfg != c_cfg:
        known = b_cfg is not None and c_cfg is not None
        out.append(
            Mismatch("target_config", b_cfg, c_cfg, Severity.FOREIGN if known else Severity.INFO)
        )
    for key in _WARN_FIELDS:
        b, c = getattr(baseline, key), getattr(current, key)
        if b != c:
            unknown = b is None or c is None
            out.append(Mismatch(key, b, c, Severity.INFO if unknown else Severity.WARNING))
    for name in sorted(set(baseline.flags) | set(current.flags)):
        b, c = baseline.flags.get(name), current.flags.get(name)
        if b != c:
            out.append(Mismatch(f"flags.{name}", b, c, Severity.WARNING))
    for key in _INFO_FIELDS:
        b, c = getattr(baseline, key), getattr(current, key)
        if b != c:
            out.append(Mismatch(key, b, c, Severity.INFO))
    return tuple(out)


@dataclass(frozen=True)
class RecordedRun:
    """Run-level facts of one recorded run."""

    index: int
    recorded_at: str
    started_at: str
    duration_s: float
    environment: Fingerprint
    late: int = 0
    unsent: int = 0
    longest_outage_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "index": self.index,
            "recorded_at": self.recorded_at,
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "environment": self.environment.to_json(),
            "late": self.late,
            "unsent": self.unsent,
            "longest_outage_s": self.longest_outage_s,
        }


@dataclass(frozen=True)
class Baseline:
    """A loaded baseline: every run's facts and, per metric, the windows of all runs."""

    name: str
    environment: Fingerprint
    recorded_at: str
    runs: tuple[RecordedRun, ...]
    metrics: Mapping[str, MetricResult]
    schema_version: int = SCHEMA_VERSION
    path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form, as written to the file."""
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "recorded_at": self.recorded_at,
            "environment": self.environment.to_json(),
            "runs": [r.to_json() for r in self.runs],
            "metrics": {name: self.metrics[name].to_json() for name in sorted(self.metrics)},
        }


def baseline_path(directory: str | os.PathLike[str], name: str) -> Path:
    """`<directory>/<name>.json`, refusing names that are not plain file names."""
    if not _NAME_RE.match(name):
        raise BaselineError(f"{name!r}: a baseline name is letters, digits, '.', '_', '-'")
    return Path(directory) / f"{name}.json"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _write_atomic(path: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def record(
    path: str | os.PathLike[str],
    run: RunResult,
    *,
    environment: Fingerprint | None = None,
    append: bool = True,
    name: str | None = None,
    allow_mismatch: bool = False,
) -> Baseline:
    """Record `run` into the baseline at `path` and return the stored baseline.

    With `append` and an existing file, the run is added as a further run (its windows join each
    metric's windows); a run whose fingerprint has error-level differences (another load) is refused
    unless `allow_mismatch`. Without `append` the file is replaced.
    """
    target = Path(path)
    env = environment if environment is not None else Fingerprint.collect(load=run.load)
    now = _now()
    existing = load(target) if append and target.exists() else None
    if existing is not None and not allow_mismatch:
        errors = [
            m for m in compare_fingerprints(existing.environment, env) if m.severity == "error"
        ]
        if errors:
            raise BaselineError(
                f"{target}: refusing to append a run from another environment ({errors[0]}); "
                "record a new baseline or pass allow_mismatch"
            )
    index = len(existing.runs) if existing else 0
    new_run = RecordedRun(
        index=index,
        recorded_at=now,
        started_at=run.started_at,
        duration_s=run.duration_s,
        environment=env,
        late=run.late,
        unsent=run.unsent,
        longest_outage_s=run.longest_outage_s,
    )
    metrics: dict[str, MetricResult] = dict(existing.metrics) if existing else {}
    for metric_name, result in run.metrics.items():
        tagged = tuple(replace(w, run=index) for w in result.windows)
        old = metrics.get(metric_name)
        metrics[metric_name] = MetricResult(
            name=metric_name, windows=(old.windows if old else ()) + tagged
        )
    baseline = Baseline(
        name=name or (existing.name if existing else target.stem),
        environment=existing.environment if existing else env,
        recorded_at=now,
        runs=(existing.runs if existing else ()) + (new_run,),
        metrics=metrics,
        path=target,
    )
    _write_atomic(target, baseline.to_json())
    return baseline


# --- strict loading -------------------------------------------------------------------------

_TOP_KEYS = {"schema_version", "name", "recorded_at", "environment", "runs", "metrics"}
_RUN_KEYS = {
    "index",
    "recorded_at",
    "started_at",
    "duration_s",
    "environment",
    "late",
    "unsent",
    "longest_outage_s",
}
_WINDOW_REQUIRED = {
    "index",
    "run",
    "start_s",
    "duration_s",
    "count",
    "errors",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "mean_ms",
    "histogram",
}
_WINDOW_OPTIONAL = {"error_kinds", "late", "throughput_rps"}


class _Invalid(Exception):
    """Internal: a validation problem, turned into a BaselineError with the file name."""


def _need(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise _Invalid(f"{where}: missing field {key!r}")
    value = data[key]
    # bool is an int subclass; a count of `true` is a mistake, not a 1.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _Invalid(f"{where}.{key}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _Invalid(f"{where}.{key}: expected {names}, got {type(value).__name__}")
    return value


def _check_window(win: Any, where: str, n_runs: int) -> WindowStats:
    if not isinstance(win, dict):
        raise _Invalid(f"{where}: expected an object")
    missing = sorted(_WINDOW_REQUIRED - set(win))
    if missing:
        raise _Invalid(f"{where}: missing field {missing[0]!r}")
    unknown = sorted(set(win) - _WINDOW_REQUIRED - _WINDOW_OPTIONAL)
    if unknown:
        raise _Invalid(f"{where}: unknown field {unknown[0]!r}")
    for key in ("index", "run", "count", "errors"):
        value = _need(win, key, int, where)
        if value < 0:
            raise _Invalid(f"{where}.{key}: must be >= 0, got {value}")
    if win["run"] >= n_runs:
        raise _Invalid(f"{where}.run: {win['run']} but the file has {n_runs} run(s)")
    if _need(win, "duration_s", (int, float), where) <= 0:
        raise _Invalid(f"{where}.duration_s: must be > 0")
    _need(win, "start_s", (int, float), where)
    for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms"):
        value = win[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise _Invalid(f"{where}.{key}: expected a number or null")
    kinds = win.get("error_kinds", {})
    if not isinstance(kinds, dict) or not all(isinstance(v, int) for v in kinds.values()):
        raise _Invalid(f"{where}.error_kinds: expected an object of counts")
    if kinds and sum(kinds.values()) != win["errors"]:
        raise _Invalid(f"{where}: error_kinds add up to {sum(kinds.values())}, not {win['errors']}")
    stats = WindowStats.from_json(win)
    try:
        hist = stats.decoded()
    except ValueError as exc:
        raise _Invalid(f"{where}.histogram: {exc}") from None
    if hist.count != stats.count:
        raise _Invalid(f"{where}: histogram holds {hist.count} values but count is {stats.count}")
    return stats


def _parse(data: Any, path: Path) -> Baseline:
    if not isinstance(data, dict):
        raise _Invalid(f"top level is {type(data).__name__}, expected an object")
    if "schema_version" not in data:
        raise _Invalid("missing field 'schema_version'")
    version = data["schema_version"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise _Invalid(
            f"unknown schema_version {version!r} (this etlverify reads {SCHEMA_VERSION})"
        )
    missing = sorted(_TOP_KEYS - set(data))
    if missing:
        raise _Invalid(f"missing field {missing[0]!r}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise _Invalid(f"unknown field {unknown[0]!r}")
    name = _need(data, "name", str, "baseline")
    recorded_at = _need(data, "recorded_at", str, "baseline")
    try:
        environment = Fingerprint.from_json(_need(data, "environment", dict, "baseline"))
    except (TypeError, ValueError) as exc:
        raise _Invalid(f"environment: {exc}") from None
    runs_raw = _need(data, "runs", list, "baseline")
    if not runs_raw:
        raise _Invalid("runs: empty (a baseline needs at least one recorded run)")
    runs = []
    for i, raw in enumerate(runs_raw):
        where = f"runs[{i}]"
        if not isinstance(raw, dict):
            raise _Invalid(f"{where}: expected an object")
        missing = sorted(_RUN_KEYS - set(raw))
        if missing:
            raise _Invalid(f"{where}: missing field {missing[0]!r}")
        try:
            env = Fingerprint.from_json(_need(raw, "environment", dict, where))
        except (TypeError, ValueError) as exc:
            raise _Invalid(f"{where}.environment: {exc}") from None
        runs.append(
            RecordedRun(
                index=_need(raw, "index", int, where),
                recorded_at=_need(raw, "recorded_at", str, where),
                started_at=_need(raw, "started_at", str, where),
                duration_s=float(_need(raw, "duration_s", (int, float), where)),
                environment=env,
                late=_need(raw, "late", int, where),
                unsent=_need(raw, "unsent", int, where),
                longest_outage_s=float(_need(raw, "longest_outage_s", (int, float), where)),
            )
        )
    metrics_raw = _need(data, "metrics", dict, "baseline")
    metrics: dict[str, MetricResult] = {}
    for metric_name, body in metrics_raw.items():
        where = f"metrics[{metric_name!r}]"
        if not isinstance(body, dict):
            raise _Invalid(f"{where}: expected an object")
        windows_raw = _need(body, "windows", list, where)
        if not windows_raw:
            raise _Invalid(f"{where}.windows: empty")
        windows = tuple(
            _check_window(w, f"{where}.windows[{j}]", len(runs)) for j, w in enumerate(windows_raw)
        )
        metrics[metric_name] = MetricResult(name=metric_name, windows=windows)
    return Baseline(
        name=name,
        environment=environment,
        recorded_at=recorded_at,
        runs=tuple(runs),
        metrics=metrics,
        schema_version=SCHEMA_VERSION,
        path=path,
    )


def load(path: str | os.PathLike[str]) -> Baseline:
    """Read and strictly validate a baseline; BaselineError (one line, naming the file) if bad."""
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(f"{target}: no such baseline file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"{target}: cannot read ({type(exc).__name__}: {exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(
            f"{target}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    try:
        return _parse(data, target)
    except _Invalid as exc:
        raise BaselineError(f"{target}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:  # anything the checks above did not foresee
        raise BaselineError(f"{target}: malformed ({type(exc).__name__}: {exc})") from None
