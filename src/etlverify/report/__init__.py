"""Sign-off evidence: the summary.json schema, the promotion verdict, the HTML sign-off report.

One module each, plain Python (no pytest, no locust), importable on their own:

- `summary`   the versioned summary.json schema: dataclasses, writer, loader (docs/report-schema.md)
- `verdict`   item statuses, PROMOTE / DO NOT PROMOTE / INCOMPLETE, exit codes (docs/exit-codes.md)
- `evidence`  redaction and bounded excerpts of what tests saw
- `perfdata`  the performance section: verdicts, triggers, plot series from one measured run
- `plots`     matplotlib (Agg) PNGs as data URIs
- `signoff`   the self-contained HTML report (jinja2 template in ``templates/``)
- `fingerprint` the environment fingerprint (target, suite commit, operator)

The pytest side lives in `etlverify.pytest_plugin.signoff`; the gate that merges the pytest and
Locust summaries in `etlverify.gate`.
"""

from __future__ import annotations
