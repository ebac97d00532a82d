"""`etlverify rollout`: the staged feature-flag rollout, judged live against its own control cohort.

- `plan`: the plan (TOML, or the checklist's default);
- `cohort`: the cohort judge (the same traffic as users inside and outside a flag's cohort,
  interleaved, compared with `etlverify.baseline.compare`);
- `traffic`: what the judge sends for each component (the routes it lives on);
- `pushes`: the WebSocket manager's part of it (job status pushes per side: latency, loss);
- `conductor`: flags, checks, holds, partial rollback, the journal that `--resume` continues;
- `report`: `rollout.json`, `rollout_summary.json` (for `etlverify gate`), `rollout.html`.

Plain Python: no pytest, no locust.
"""
