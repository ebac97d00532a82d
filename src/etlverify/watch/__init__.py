"""`etlverify watch`: hours-long post-deployment monitoring against the rollback triggers.

- `state`: the state folder (fsync'd JSON lines) that lets a killed watcher resume the same watch;
- `probe`: what the watch does to the target (health probes, metrics samples, a synthetic job over
  WebSocket, the log error scan), recorded per window;
- `sources`: users' signals per window (Prometheus, the target's request counters, its log, the
  watch's own probes); `signals`: which one decides the error-rate and response-time triggers,
  and whether users' experience was observable at all; `progress`: one line per window for people;
- `engine`: the loop, the triggers judged over sliding windows (`etlverify.baseline.triggers`, the
  gate's own rules), notifications, the rollback run once, the recovery;
- `report`: the verdict and the evidence (`watch.json`, `watch_summary.json`, `watch.html`);
- `notify`: notifications through apprise, retried with backoff, secrets redacted;
- `exporter`: the watch's figures for Prometheus (`--prometheus-port`).

Plain Python: no pytest, no locust.
"""
