"""The etlverify pytest plugin: the only part of etlverify that imports pytest.

One feature per module, each a plugin of its own (pytest's style), registered here:

- `options`   command line options, ini keys, the resolved `Settings` (bad value -> UsageError)
- `markers`   marker registration, `checklist(...)` parsing and validation at collection
- `xdist_groups` the `@group` node-id suffix `--dist loadgroup` needs on pytest >= 9.2
- `target`    the target's lifecycle: probe a given URL or start the embedded reference once per
              run, run timeout, xdist hand-over and grouping of destructive tests
- `targethealth` one view of the target's health, failures classified for the root-cause view,
              cheap decisive checks first and heavy ones last, check timeouts without stack dumps
- `fixtures`  the fixtures of docs/suite-api.md
- `performance` the performance section: load plan, baseline options, collect -> judge once
- `reporting` report header, failures without tracebacks, checklist summary, default reports
- `signoff`   evidence -> reports/summary.json and reports/signoff.html, the promotion verdict and
              the gate's exit code (0 promote, 1 failed, 2 usage, 3 unreachable, 11 inconclusive
              when it blocks)

Load it with ``pytest_plugins = ["etlverify.pytest_plugin"]`` (the repository's root conftest) or
``-p etlverify.pytest_plugin``.
"""

from __future__ import annotations

pytest_plugins = [
    "etlverify.pytest_plugin.options",
    "etlverify.pytest_plugin.markers",
    "etlverify.pytest_plugin.xdist_groups",
    "etlverify.pytest_plugin.target",
    "etlverify.pytest_plugin.targethealth",
    "etlverify.pytest_plugin.fixtures",
    "etlverify.pytest_plugin.performance",
    "etlverify.pytest_plugin.reporting",
    "etlverify.pytest_plugin.signoff",
]
