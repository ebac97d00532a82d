"""Baselines: reviewed, versioned measurements (`store`), tolerance specs (`spec`), verdicts
(`compare`, where the 10% rule is decided) and the checklist's rollback triggers (`triggers`).

Import direction: `spec` and `store` know `etlverify.measure`; `triggers` knows `measure`; `compare`
knows all three. Nothing here imports pytest or locust.
"""

from __future__ import annotations

from etlverify.baseline.compare import Comparison, MetricVerdict, Verdict, compare, min_p_value
from etlverify.baseline.spec import (
    DEFAULT_SPECS,
    SpecError,
    ToleranceSpec,
    parse_spec,
    parse_specs,
    resolve_spec,
)
from etlverify.baseline.store import (
    SCHEMA_VERSION,
    Baseline,
    BaselineError,
    Fingerprint,
    Mismatch,
    RecordedRun,
    Severity,
    baseline_path,
    compare_fingerprints,
    load,
    record,
)
from etlverify.baseline.triggers import (
    TriggerConfig,
    TriggerResult,
    TriggerState,
    evaluate_triggers,
)

__all__ = [
    "DEFAULT_SPECS",
    "SCHEMA_VERSION",
    "Baseline",
    "BaselineError",
    "Comparison",
    "Fingerprint",
    "MetricVerdict",
    "Mismatch",
    "RecordedRun",
    "Severity",
    "SpecError",
    "ToleranceSpec",
    "TriggerConfig",
    "TriggerResult",
    "TriggerState",
    "Verdict",
    "baseline_path",
    "compare",
    "compare_fingerprints",
    "evaluate_triggers",
    "load",
    "min_p_value",
    "parse_spec",
    "parse_specs",
    "record",
    "resolve_spec",
]
