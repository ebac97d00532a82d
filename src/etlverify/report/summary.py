"""`summary.json`: the machine-readable twin of the sign-off report (schema, writer, loader).

One file per run, written by the pytest plugin (``kind: "pytest"``) beside the HTML reports, read by
`etlverify gate` (which also reads the Locust summary) and by the sign-off renderer. The schema is
documented field by field in ``docs/report-schema.md``; `SCHEMA_VERSION` changes whenever a field
is removed or changes meaning (adding an optional field does not).

Key order in the file is fixed: ``verdict`` first (a person running ``head summary.json`` sees it),
then the reasons, items, metrics, fingerprint, and ``schema_version`` last.

Every summary (pytest, Locust, and any later source the gate reads) carries a ``run`` block, its
identity: run id, pipeline run id (``ETLPLUS_PIPELINE_RUN_ID``), start and end time, target URL and
target fingerprint, and the tool that wrote it. `run_identity()` builds the block (the Locust side
imports it), `RunIdentity.from_json()` / `parse_run()` read it back; `etlverify gate` refuses a
summary whose identity is missing, partial, too old, or from another pipeline run or target.

Everything here is plain data: dataclasses with ``to_json()``/``from_json()``; the verdict rules
live in `etlverify.report.verdict`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from etlverify.errors import EtlVerifyError
from etlverify.report.causes import Cause

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = [
    "EXIT_CODES",
    "PIPELINE_RUN_ENV",
    "SCHEMA_VERSION",
    "TOOLS",
    "Finding",
    "ItemRecord",
    "MetricRecord",
    "PromotionVerdict",
    "RunIdentity",
    "Status",
    "Summary",
    "SummaryError",
    "TestRecord",
    "TriggerRecord",
    "load_summary",
    "normalize_url",
    "parse_run",
    "parse_time",
    "pipeline_run_id",
    "run_identity",
    "target_facts",
    "target_fingerprint",
    "utc_now",
    "write_summary",
]

SCHEMA_VERSION = 1
KINDS = ("pytest", "locust", "merged")
#: the environment variable CI sets once for all steps of one pipeline run
PIPELINE_RUN_ENV = "ETLPLUS_PIPELINE_RUN_ID"
#: the tools that write summaries (``run.tool``)
TOOLS = ("pytest", "locust", "watch", "rollout")
#: exit codes a pytest summary may record: the run's own (docs/exit-codes.md), 5 for a run that
#: selected nothing; 4 was INCOMPLETE before 11 took its place, and such summaries are still read
EXIT_CODES = frozenset({0, 1, 2, 3, 4, 5, 11})


class SummaryError(EtlVerifyError, ValueError):
    """A summary file is missing, not JSON, or not in the schema; ``str()`` names the file."""


class PromotionVerdict(StrEnum):
    """The answer to "may we promote?"; severity order PROMOTE < INCOMPLETE < DO NOT PROMOTE."""

    PROMOTE = "PROMOTE"
    INCOMPLETE = "INCOMPLETE"
    DO_NOT_PROMOTE = "DO NOT PROMOTE"

    @property
    def rank(self) -> int:
        """0 for PROMOTE, 1 for INCOMPLETE, 2 for DO NOT PROMOTE."""
        return ("PROMOTE", "INCOMPLETE", "DO NOT PROMOTE").index(self.value)


class Status(StrEnum):
    """The status of one checklist item in a run (docs/report-schema.md, "Item statuses")."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    INCONCLUSIVE = "inconclusive"
    NOT_RUN = "not-run"
    MANUAL = "manual"
    NOT_APPLICABLE = "n/a"


def _opt_float(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number or null, got {value!r}")
    return float(value)


def _str(data: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"field {key!r}: expected a string, got {value!r}")
    return value


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"field {key!r}: expected a list, got {type(value).__name__}")
    return value


def _dict(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"field {key!r}: expected an object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class TestRecord:
    """One test behind an item: its outcome and the evidence a reviewer reads.

    `outcome` is pytest's vocabulary (passed, failed, error, skipped, xfailed, xpassed) plus
    ``inconclusive`` (a performance verdict that could not decide) and ``not-run`` (selected, but
    the run ended before it). `evidence` blocks are already redacted.
    """

    __test__ = False  # not a pytest test class despite its name

    nodeid: str
    outcome: str
    reason: str = ""
    duration_s: float = 0.0
    evidence: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "nodeid": self.nodeid,
            "outcome": self.outcome,
            "reason": self.reason,
            "duration_s": round(self.duration_s, 3),
            "evidence": list(self.evidence),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TestRecord:
        """Inverse of `to_json()`."""
        return cls(
            nodeid=_str(data, "nodeid"),
            outcome=_str(data, "outcome"),
            reason=_str(data, "reason", ""),
            duration_s=_opt_float(data.get("duration_s", 0.0)) or 0.0,
            evidence=tuple(str(e) for e in _list(data, "evidence")),
        )


@dataclass(frozen=True)
class ItemRecord:
    """One checklist item with its status in this run and the tests behind it.

    `in_scope` is True when this run selected at least one test for the item: only in-scope
    automated items count towards the verdict (items outside a ``-m``/``-k`` selection are
    reported as not-run, never as passed).
    """

    id: str
    section: str
    heading: str
    text: str
    automation: str
    status: Status
    reason: str = ""
    signed_by: str = ""
    in_scope: bool = False
    tests: tuple[TestRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "id": self.id,
            "section": self.section,
            "heading": self.heading,
            "text": self.text,
            "automation": self.automation,
            "status": self.status.value,
            "reason": self.reason,
            "signed_by": self.signed_by,
            "in_scope": self.in_scope,
            "tests": [t.to_json() for t in self.tests],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ItemRecord:
        """Inverse of `to_json()`."""
        return cls(
            id=_str(data, "id"),
            section=_str(data, "section", ""),
            heading=_str(data, "heading", ""),
            text=_str(data, "text", ""),
            automation=_str(data, "automation", "automated"),
            status=Status(_str(data, "status")),
            reason=_str(data, "reason", ""),
            signed_by=_str(data, "signed_by", ""),
            in_scope=bool(data.get("in_scope", False)),
            tests=tuple(TestRecord.from_json(t) for t in _list(data, "tests")),
        )


@dataclass(frozen=True)
class MetricRecord:
    """One statistic of one metric against its baseline (from `MetricVerdict.to_json()`)."""

    source: str
    metric: str
    stat: str
    verdict: str  # PASS, FAIL, INCONCLUSIVE
    reason: str = ""
    baseline: float | None = None
    current: float | None = None
    unit: str = ""
    change_pct: float | None = None
    tolerance: str = ""
    p_value: float | None = None
    test: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "source": self.source,
            "metric": self.metric,
            "stat": self.stat,
            "verdict": self.verdict,
            "reason": self.reason,
            "baseline": self.baseline,
            "current": self.current,
            "unit": self.unit,
            "change_pct": self.change_pct,
            "tolerance": self.tolerance,
            "p_value": self.p_value,
            "test": self.test,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str | None = None) -> MetricRecord:
        """From our own form or from `MetricVerdict.to_json()` (`source` fills a missing one)."""
        verdict = _str(data, "verdict")
        if verdict not in ("PASS", "FAIL", "INCONCLUSIVE"):
            raise ValueError(f"metric verdict must be PASS, FAIL or INCONCLUSIVE, got {verdict!r}")
        test = data.get("test")
        return cls(
            source=str(data.get("source") or source or "pytest"),
            metric=_str(data, "metric"),
            stat=_str(data, "stat"),
            verdict=verdict,
            reason=_str(data, "reason", ""),
            baseline=_opt_float(data.get("baseline")),
            current=_opt_float(data.get("current")),
            unit=_str(data, "unit", ""),
            change_pct=_opt_float(data.get("change_pct")),
            tolerance=_str(data, "tolerance", ""),
            p_value=_opt_float(data.get("p_value")),
            test=None if test is None else str(test),
        )


#: compare/triggers names -> the checklist item of "Critical Rollback Triggers"
TRIGGER_ITEMS: dict[str, str] = {
    "unavailability": "rollback.critical_rollback.crashes_unavailability_5",
    "error_rate_increase": "rollback.critical_rollback.error_rate_increases",
    "response_time_degradation": "rollback.critical_rollback.response_time_degradation",
    "memory_sustained": "rollback.critical_rollback.memory_usage_95",
    "database_connection_failures": "rollback.critical_rollback.database_connection_failures",
}


@dataclass(frozen=True)
class TriggerRecord:
    """One rollback trigger evaluated over a measured run (`TriggerResult.to_json()`)."""

    source: str
    name: str
    state: str  # CLEAR, FIRED, UNKNOWN
    reason: str = ""
    value: float | None = None
    threshold: float | None = None

    @property
    def item_id(self) -> str:
        """The checklist item this trigger belongs to ('' when unknown)."""
        return TRIGGER_ITEMS.get(self.name, "")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "source": self.source,
            "name": self.name,
            "item": self.item_id,
            "state": self.state,
            "reason": self.reason,
            "value": self.value,
            "threshold": self.threshold,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str | None = None) -> TriggerRecord:
        """From our own form or from `TriggerResult.to_json()`."""
        state = _str(data, "state")
        if state not in ("CLEAR", "FIRED", "UNKNOWN"):
            raise ValueError(f"trigger state must be CLEAR, FIRED or UNKNOWN, got {state!r}")
        return cls(
            source=str(data.get("source") or source or "pytest"),
            name=_str(data, "name"),
            state=state,
            reason=_str(data, "reason", ""),
            value=_opt_float(data.get("value")),
            threshold=_opt_float(data.get("threshold")),
        )


@dataclass(frozen=True)
class Finding:
    """One reason behind the verdict: a blocking one or one a person must decide.

    `kind` is ``item``, ``test``, ``metric``, ``trigger``, ``environment``, ``error`` or ``run``;
    `ref` is the item id, node id, ``metric stat`` or trigger name it is about.
    """

    kind: str
    ref: str
    text: str
    source: str = "pytest"

    def line(self) -> str:
        """One line for people."""
        prefix = "" if self.source == "pytest" else f"[{self.source}] "
        return f"{prefix}{self.kind} {self.ref}: {self.text}" if self.ref else prefix + self.text

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {"kind": self.kind, "ref": self.ref, "text": self.text, "source": self.source}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Finding:
        """Inverse of `to_json()`."""
        return cls(
            kind=_str(data, "kind"),
            ref=_str(data, "ref", ""),
            text=_str(data, "text", ""),
            source=_str(data, "source", "pytest"),
        )


# -- run identity ------------------------------------------------------------------------------


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second (``2025-01-31T12:00:00Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> datetime | None:
    """An ISO 8601 time (``Z`` or an offset; none means UTC), or None when it is not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_url(url: str | None) -> str | None:
    """A base URL in one spelling: scheme and host lower case, no credentials, no default port,
    no trailing slash (``HTTP://Ops:pw@Staging:80/`` -> ``http://staging``); None stays None."""
    if url is None or not url.strip():
        return None
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return text.rstrip("/")
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/")
    return f"{scheme}://{host}{path}" if scheme else text.rstrip("/")


def _known(value: object) -> str | None:
    """A fact of the target, or None when it is unknown (``?``, empty, absent)."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in ("", "?") else text


def target_facts(status: Mapping[str, Any] | None) -> dict[str, str | None]:
    """What identifies a deployment, read from its ``/api/health/status`` body (contract section 3).

    The one reader of those facts for every source (the pytest plugin, Locust, the watch, the
    rollout), so the same deployment gets the same fingerprint whoever verified it:
    ``target_version`` (``version``), ``build_commit`` (``build.commit``) and ``config_sha256``
    (``config.sha256``). ``flags_sha256`` (``feature_flags.sha256``) is read for the record but is
    not part of the fingerprint: flags are what a rollout changes between the pipeline's steps.
    Unknown facts are None.
    """
    body = status if isinstance(status, dict) else {}

    def part(name: str, key: str) -> str | None:
        value = body.get(name)
        return _known(value.get(key)) if isinstance(value, dict) else None

    return {
        "target_version": _known(body.get("version")),
        "build_commit": part("build", "commit"),
        "config_sha256": part("config", "sha256"),
        "flags_sha256": part("feature_flags", "sha256"),
    }


def target_fingerprint(
    *,
    target_url: str | None,
    embedded: bool = False,
    version: str | None = None,
    build_commit: str | None = None,
    config_sha256: str | None = None,
) -> str | None:
    """A short stable hash (16 hex digits) of what identifies the target; None when nothing does.

    A deployed target is its normalized base URL, version, build commit and the sha256 of its loaded
    config (each where known). Its flags are not part of it: the staged rollout changes them while
    the same deployment is verified, watched and rolled out. The embedded reference is started by
    each run on a free port from the same defaults, so it is identified by ``embedded``, version and
    build commit: a pytest run and a Locust run of the same reference agree.
    """
    facts: dict[str, str | None] = {
        "target": "embedded" if embedded else normalize_url(target_url),
        "version": _known(version),
        "build_commit": _known(build_commit),
        "config_sha256": None if embedded else _known(config_sha256),
    }
    if embedded and facts["version"] is None and facts["build_commit"] is None:
        return None  # an embedded reference that never started: nothing identifies it
    if facts["target"] is None:
        return None
    blob = json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class RunIdentity:
    """The ``run`` block of a summary: which run wrote it, when, against what, with which tool.

    Missing fields are empty strings (``id``, ``started_at``, ``tool``) or None; `missing()` names
    the ones a gate needs. Readers ignore keys they do not know (a Locust summary's ``run`` also
    holds its load layout and counters).
    """

    id: str = ""
    pipeline_run_id: str | None = None
    started_at: str = ""
    finished_at: str | None = None
    target_url: str | None = None
    target_fingerprint: str | None = None
    tool: str = ""

    def missing(self) -> list[str]:
        """The fields a gate needs that are absent or not a time (``run.id``, ...)."""
        out = []
        if not self.id:
            out.append("run.id")
        if parse_time(self.started_at) is None:
            out.append("run.started_at")
        if parse_time(self.finished_at) is None:
            out.append("run.finished_at")
        if self.tool not in TOOLS:
            out.append("run.tool")
        return out

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form, in the documented key order."""
        return {
            "id": self.id,
            "pipeline_run_id": self.pipeline_run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "target_url": self.target_url,
            "target_fingerprint": self.target_fingerprint,
            "tool": self.tool,
        }

    @classmethod
    def from_json(cls, data: Any) -> RunIdentity:
        """Read a ``run`` block; `ValueError` when it is not an object or a field has a wrong type
        (absent fields are allowed here: `missing()` names them)."""
        if not isinstance(data, dict):
            raise ValueError(f"field 'run': expected an object, got {type(data).__name__}")
        values: dict[str, str | None] = {}
        for key in (
            "id",
            "pipeline_run_id",
            "started_at",
            "finished_at",
            "target_url",
            "target_fingerprint",
            "tool",
        ):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"field 'run.{key}': expected a string or null, got {value!r}")
            values[key] = value or None
        return cls(
            id=values["id"] or "",
            pipeline_run_id=values["pipeline_run_id"],
            started_at=values["started_at"] or "",
            finished_at=values["finished_at"],
            target_url=values["target_url"],
            target_fingerprint=values["target_fingerprint"],
            tool=values["tool"] or "",
        )


def parse_run(summary: Any) -> RunIdentity | None:
    """The identity of a summary document (any tool's), or None when it has no ``run`` block;
    `ValueError` when the block is malformed."""
    if not isinstance(summary, dict) or summary.get("run") is None:
        return None
    return RunIdentity.from_json(summary["run"])


def pipeline_run_id(env: Mapping[str, str] | None = None) -> str | None:
    """``ETLPLUS_PIPELINE_RUN_ID`` of `env` (default: the process environment), None if unset."""
    environ = os.environ if env is None else env
    value = environ.get(PIPELINE_RUN_ENV, "").strip()
    return value or None


def run_identity(
    *,
    tool: str,
    run_id: str | None = None,
    started_at: str | None = None,
    finished_at: str | None = None,
    target_url: str | None = None,
    embedded: bool = False,
    facts: Mapping[str, Any] | None = None,
    pipeline_run: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``run`` block of a summary, as JSON (docs/report-schema.md, "run").

    `facts` are the target's, as `target_facts()` reads them from ``/api/health/status`` (every
    source passes them the same way: that is what makes one deployment one fingerprint).
    `pipeline_run` defaults to ``ETLPLUS_PIPELINE_RUN_ID`` of `env` (the process environment when
    `env` is None); `run_id` to a fresh random id; `started_at` to now. The target URL is written
    without credentials. Call it when the run ends, with the facts of the target it verified.
    """
    if tool not in TOOLS:
        raise ValueError(f"tool must be one of {', '.join(TOOLS)}, got {tool!r}")
    url = normalize_url(target_url)
    known = dict(facts or {})
    identity = RunIdentity(
        id=run_id or secrets.token_hex(8),
        pipeline_run_id=pipeline_run if pipeline_run is not None else pipeline_run_id(env),
        started_at=started_at or utc_now(),
        finished_at=finished_at,
        target_url=url,
        target_fingerprint=target_fingerprint(
            target_url=url,
            embedded=embedded,
            version=known.get("target_version"),
            build_commit=known.get("build_commit"),
            config_sha256=known.get("config_sha256"),
        ),
        tool=tool,
    )
    return identity.to_json()


@dataclass(frozen=True)
class Summary:
    """Everything the sign-off report shows and the gate decides on, as one JSON document."""

    verdict: PromotionVerdict
    exit_code: int
    blocking: tuple[Finding, ...] = ()
    undecided: tuple[Finding, ...] = ()
    items: tuple[ItemRecord, ...] = ()
    metrics: tuple[MetricRecord, ...] = ()
    triggers: tuple[TriggerRecord, ...] = ()
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "pytest"
    inconclusive_blocks: bool = False
    started_at: str = ""
    finished_at: str = ""
    signoff: tuple[tuple[str, str], ...] = ()
    performance: Mapping[str, Any] = field(default_factory=dict)
    locust: Mapping[str, Any] | None = None
    error: Mapping[str, Any] | None = None
    unmapped_tests: tuple[TestRecord, ...] = ()
    run: RunIdentity | None = None
    #: the run's primary findings, root cause first (`etlverify.report.causes.diagnose`)
    primary: tuple[Cause, ...] = ()
    #: the target's health through the run (`etlverify.health.TargetHealth.summary()`)
    health: Mapping[str, Any] = field(default_factory=dict)
    #: what the suite had to pace to stay within the target's rate limits, one line each
    pacing: tuple[str, ...] = ()
    #: what this run selected (``markexpr``, ``keyword``, ``args``, test counts) and the scope it
    #: was meant to cover (``required_scope``, ``missing_items``); the gate adds ``partial`` (its
    #: line) when ``--allow-partial`` accepted a narrower run (docs/report-schema.md)
    selection: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def counts(self) -> dict[str, int]:
        """Items per status (every status present, zeros included)."""
        out = {s.value: 0 for s in Status}
        for item in self.items:
            out[item.status.value] += 1
        return out

    @property
    def coverage(self) -> dict[str, int]:
        """Automated items: how many this run selected, and how many it did not."""
        automated = [i for i in self.items if i.automation == "automated"]
        in_scope = sum(1 for i in automated if i.in_scope)
        return {
            "automated": len(automated),
            "in_scope": in_scope,
            "outside_selection": len(automated) - in_scope,
        }

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form, in the documented key order."""
        return {
            "verdict": self.verdict.value,
            "exit_code": self.exit_code,
            "primary_findings": [c.to_json() for c in self.primary],
            "blocking": [f.to_json() for f in self.blocking],
            "undecided": [f.to_json() for f in self.undecided],
            "kind": self.kind,
            "inconclusive_blocks": self.inconclusive_blocks,
            "run": None if self.run is None else self.run.to_json(),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "counts": self.counts,
            "coverage": self.coverage,
            "selection": dict(self.selection),
            "items": [i.to_json() for i in self.items],
            "unmapped_tests": [t.to_json() for t in self.unmapped_tests],
            "metrics": [m.to_json() for m in self.metrics],
            "triggers": [t.to_json() for t in self.triggers],
            "performance": dict(self.performance),
            "locust": None if self.locust is None else dict(self.locust),
            "signoff": [{"role": role, "name": name} for role, name in self.signoff],
            "error": None if self.error is None else dict(self.error),
            "health": dict(self.health),
            "pacing": list(self.pacing),
            "fingerprint": dict(self.fingerprint),
            "schema_version": self.schema_version,
        }

    @classmethod
    def from_json(cls, data: Any) -> Summary:
        """Validate and load; `ValueError` with the first problem."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {version!r} is not supported (expected 1)")
        verdict = data.get("verdict")
        try:
            parsed = PromotionVerdict(str(verdict))
        except ValueError:
            raise ValueError(
                f"verdict must be PROMOTE, DO NOT PROMOTE or INCOMPLETE, got {verdict!r}"
            ) from None
        kind = _str(data, "kind", "pytest")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        code = data.get("exit_code")
        if isinstance(code, bool) or not isinstance(code, int) or code not in EXIT_CODES:
            codes = ", ".join(str(c) for c in sorted(EXIT_CODES))
            raise ValueError(f"exit_code must be one of {codes}, got {code!r}")
        locust = data.get("locust")
        error = data.get("error")
        signoff = []
        for entry in _list(data, "signoff"):
            if not isinstance(entry, dict):
                raise ValueError("signoff entries must be objects")
            signoff.append((_str(entry, "role"), _str(entry, "name", "")))
        return cls(
            verdict=parsed,
            exit_code=code,
            blocking=tuple(Finding.from_json(f) for f in _list(data, "blocking")),
            undecided=tuple(Finding.from_json(f) for f in _list(data, "undecided")),
            items=tuple(ItemRecord.from_json(i) for i in _list(data, "items")),
            metrics=tuple(MetricRecord.from_json(m) for m in _list(data, "metrics")),
            triggers=tuple(TriggerRecord.from_json(t) for t in _list(data, "triggers")),
            fingerprint=_dict(data, "fingerprint"),
            kind=kind,
            inconclusive_blocks=bool(data.get("inconclusive_blocks", False)),
            started_at=_str(data, "started_at", ""),
            finished_at=_str(data, "finished_at", ""),
            signoff=tuple(signoff),
            performance=_dict(data, "performance"),
            locust=dict(locust) if isinstance(locust, dict) else None,
            error=dict(error) if isinstance(error, dict) else None,
            unmapped_tests=tuple(TestRecord.from_json(t) for t in _list(data, "unmapped_tests")),
            run=parse_run(data),
            primary=tuple(
                Cause.from_json(c) for c in _list(data, "primary_findings") if isinstance(c, dict)
            ),
            health=_dict(data, "health"),
            pacing=tuple(str(p) for p in _list(data, "pacing")),
            selection=_dict(data, "selection"),
        )


def write_summary(path: Path, summary: Summary) -> None:
    """Write `summary` atomically (temporary file, then `os.replace`), indent 2, key order kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """Parsed JSON of `path`; `SummaryError` naming the file when unreadable or not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SummaryError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SummaryError(f"{path}: cannot read: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SummaryError(f"{path}: invalid JSON: {exc}") from None


def load_summary(path: Path) -> Summary:
    """Load and validate a pytest summary; `SummaryError` names the file and the problem."""
    data = read_json(path)
    try:
        return Summary.from_json(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise SummaryError(f"{path}: not a summary.json (schema 1): {exc}") from None
