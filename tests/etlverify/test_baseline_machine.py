"""Machine baselines: where the cache lives and what its key separates."""

from __future__ import annotations

from pathlib import Path

from etlverify.baseline import Fingerprint, record
from etlverify.baseline.machine import (
    CACHE_ENV,
    cache_dir,
    cpu_model,
    host_identity,
    machine_baseline_path,
    machine_key,
    recorded_runs,
)
from etlverify.measure import LatencyRecorder, LoadParameters, RunResult

HOST = {"cpu_model": "AMD EPYC", "cpu_count": 2, "platform": "linux-x86_64", "python": "3.11.7"}
CFG = {"target": "embedded reference", "overrides": "abc"}
LOAD = {"routes": {"rate_rps": 100.0}}


def test_cache_dir_env_override_then_xdg_then_home(tmp_path: Path) -> None:
    assert cache_dir({CACHE_ENV: str(tmp_path / "c")}) == tmp_path / "c"
    xdg = cache_dir({"XDG_CACHE_HOME": str(tmp_path / "x")})
    assert xdg == tmp_path / "x" / "etlverify" / "baselines"
    assert cache_dir({}) == Path.home() / ".cache" / "etlverify" / "baselines"


def test_key_separates_hardware_configuration_and_load() -> None:
    key = machine_key(HOST, CFG, LOAD)
    assert key.startswith("amd-epyc-2cpu-")
    assert machine_key(dict(HOST), dict(CFG), dict(LOAD)) == key  # stable
    assert machine_key({**HOST, "cpu_model": "Intel Xeon"}, CFG, LOAD) != key
    assert machine_key({**HOST, "cpu_count": 4}, CFG, LOAD) != key
    assert machine_key(HOST, {**CFG, "overrides": "def"}, LOAD) != key
    assert machine_key(HOST, CFG, {"routes": {"rate_rps": 50.0}}) != key


def test_this_machine(tmp_path: Path) -> None:
    ident = host_identity()
    assert ident["cpu_count"]
    assert ident["cpu_model"] == cpu_model()
    path = machine_baseline_path(CFG, LOAD, env={CACHE_ENV: str(tmp_path)})
    assert path.parent == tmp_path
    assert path.suffix == ".json"


def _group_run(metric: str) -> RunResult:
    """One first-use measurement of one group: as the performance plugin records it."""
    rec = LatencyRecorder(windows=5, window_s=1.0)
    for w in range(5):
        for i in range(20):
            rec.record(metric, 0.002 + i * 1e-5, window=w)
    load = LoadParameters(model="open", duration_s=5.0, windows=5, rate_rps=100.0, routes=())
    return RunResult(
        metrics=rec.results(), load=load, started_at="2026-12-07T10:00:00Z", duration_s=5.0
    )


def test_recorded_runs_counts_runs_not_the_entries_of_each_group(tmp_path: Path) -> None:
    """Three first-use runs of four groups leave twelve entries in the file: three runs."""
    path = tmp_path / "machine.json"
    env = Fingerprint(cpu_count=2, platform="linux-x86_64", load=dict(LOAD))
    groups = ("GET /api/health", "users: mixed reads", "pool: POST /api/jobs", "ws: push")
    for run in range(1, 4):
        for metric in groups:
            stored = record(path, _group_run(metric), environment=env, append=True)
        assert len(stored.runs) == 4 * run  # what the sign-off page used to show
        assert recorded_runs(stored) == run
        assert recorded_runs(stored, lambda m: m.startswith("users:")) == run
    assert recorded_runs(stored, lambda m: m == "no such metric") == 0
