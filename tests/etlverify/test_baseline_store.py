"""Baseline files: round trip, appending runs, atomic writes, strict one-line errors."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest

from etlverify.baseline import (
    SCHEMA_VERSION,
    BaselineError,
    Fingerprint,
    Severity,
    baseline_path,
    compare_fingerprints,
    load,
    record,
)
from etlverify.measure import LatencyRecorder, LoadParameters, RunResult

if TYPE_CHECKING:
    from pathlib import Path

LOAD = LoadParameters(model="open", duration_s=5.0, windows=5, rate_rps=100.0, routes=("GET /a",))


def make_run(scale: float = 1.0, load: LoadParameters = LOAD) -> RunResult:
    rec = LatencyRecorder(windows=5, window_s=1.0)
    for w in range(5):
        for i in range(100):
            rec.record("GET /a", scale * (0.002 + i * 1e-5), window=w)
        rec.record("GET /b", 0.010, window=w)
    rec.record_error("GET /a", "http_503", window=3)
    return RunResult(
        metrics=rec.results(), load=load, started_at="2026-11-29T17:00:00Z", duration_s=5.0
    )


ENV = Fingerprint(
    target_version="1.2.0",
    build_commit="abc123",
    flags_sha256="f" * 64,
    flags={"flags": {"new_logger_system": False}},
    cpu_count=8,
    python_version="3.11.9",
    platform="linux-x86_64",
    load=LOAD.to_json(),
)


def test_record_then_load_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "baselines" / "jobs.json"
    run = make_run()
    stored = record(path, run, environment=ENV)
    loaded = load(path)
    assert loaded.schema_version == SCHEMA_VERSION
    assert loaded.name == "jobs"
    assert loaded.environment == ENV
    assert loaded.metrics == run.metrics == stored.metrics
    assert len(loaded.runs) == 1
    assert loaded.runs[0].environment == ENV
    text = path.read_text()
    # Sorted keys and indent 2: the file diffs cleanly in review.
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    window = json.loads(text)["metrics"]["GET /a"]["windows"][3]
    assert window["errors"] == 1
    assert window["error_kinds"] == {"http_503": 1}
    assert isinstance(window["histogram"], str)


def test_append_pools_windows_of_several_runs(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    record(path, make_run(), environment=ENV)
    record(path, make_run(1.1), environment=ENV)
    loaded = load(path)
    assert [r.index for r in loaded.runs] == [0, 1]
    windows = loaded.metrics["GET /a"].windows
    assert len(windows) == 10
    assert [w.run for w in windows] == [0] * 5 + [1] * 5
    assert loaded.metrics["GET /a"].count == 1000
    record(path, make_run(), environment=ENV, append=False)
    assert len(load(path).runs) == 1


def test_append_refuses_another_load_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    record(path, make_run(), environment=ENV)
    other = LoadParameters(model="open", duration_s=5.0, windows=5, rate_rps=200.0)
    other_env = Fingerprint(**{**ENV.__dict__, "load": other.to_json()})
    with pytest.raises(BaselineError) as info:
        record(path, make_run(load=other), environment=other_env)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert "load.rate_rps" in message
    record(path, make_run(load=other), environment=other_env, allow_mismatch=True)
    assert len(load(path).runs) == 2


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "b.json"
    record(path, make_run(), environment=ENV)
    before = path.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        record(path, make_run(2.0), environment=ENV)
    assert path.read_bytes() == before  # the old baseline is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]  # no temp file left


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _error(path: Path) -> str:
    with pytest.raises(BaselineError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


def test_broken_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, '{\n  "schema_version": 1,\n  "name": oops\n}\n')
    assert "invalid JSON at line 3 column 11" in _error(path)


def test_wrong_schema_version(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    record(good, make_run(), environment=ENV)
    data = json.loads(good.read_text())
    data["schema_version"] = 99
    assert "unknown schema_version 99 (this etlverify reads 1)" in _error(_write(tmp_path, data))
    del data["schema_version"]
    assert "missing field 'schema_version'" in _error(_write(tmp_path, data))
    assert "top level is list" in _error(_write(tmp_path, [1, 2]))


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d["metrics"]["GET /a"]["windows"][0].pop("count"), "windows[0]: missing field"),
        (
            lambda d: d["metrics"]["GET /a"]["windows"][1].update(count=7),
            "windows[1]: histogram holds 100 values but count is 7",
        ),
        (
            lambda d: d["metrics"]["GET /a"]["windows"][2].update(histogram="xx"),
            "windows[2].histogram: not an encoded HDR histogram",
        ),
        (lambda d: d["metrics"]["GET /a"]["windows"][0].update(count="100"), "expected int"),
        (lambda d: d["metrics"]["GET /a"]["windows"][0].update(run=3), "the file has 1 run(s)"),
        (lambda d: d["metrics"]["GET /a"]["windows"][0].update(extra=1), "unknown field 'extra'"),
        (lambda d: d["metrics"]["GET /a"].update(windows=[]), "windows: empty"),
        (lambda d: d.update(runs=[]), "runs: empty"),
        (lambda d: d.update(surprise=True), "unknown field 'surprise'"),
        (lambda d: d["environment"].update(cpu_count="8"), "environment: environment.cpu_count"),
        (lambda d: d["environment"].update(colour="red"), "unknown environment field 'colour'"),
        (lambda d: d.pop("environment"), "missing field 'environment'"),
    ],
)
def test_strict_validation_one_line_errors(tmp_path: Path, mutate: object, fragment: str) -> None:
    good = tmp_path / "good.json"
    record(good, make_run(), environment=ENV)
    data = json.loads(good.read_text())
    mutate(data)  # type: ignore[operator]
    message = _error(_write(tmp_path, data))
    assert fragment in message
    if "windows[" in fragment:
        assert "metrics['GET /a']" in message


def test_missing_file(tmp_path: Path) -> None:
    assert "no such baseline file" in _error(tmp_path / "nope.json")


def test_fingerprint_mismatches_are_graded() -> None:
    other = Fingerprint(
        **{
            **ENV.__dict__,
            "cpu_count": 2,
            "target_version": "1.3.0",
            "flags": {"flags": {"new_logger_system": True}},
            "load": {**LOAD.to_json(), "rate_rps": 50.0},
        }
    )
    found = {m.field: m.severity for m in compare_fingerprints(ENV, other)}
    assert found == {
        "load.rate_rps": Severity.ERROR,
        "cpu_count": Severity.FOREIGN,
        "flags.flags": Severity.WARNING,
        "target_version": Severity.INFO,
    }
    assert compare_fingerprints(ENV, ENV) == ()
    line = str(compare_fingerprints(ENV, other)[0])
    assert line == "error: load.rate_rps differs (baseline 100.0, current 50.0)"


def test_other_hardware_or_target_config_is_foreign() -> None:
    here = Fingerprint(**{**ENV.__dict__, "cpu_model": "AMD EPYC", "target_config": "embedded:a"})
    other_cpu = Fingerprint(**{**here.__dict__, "cpu_model": "Intel Xeon"})
    found = compare_fingerprints(other_cpu, here)
    assert [(m.field, m.severity) for m in found] == [("cpu_model", Severity.FOREIGN)]
    assert "recorded on another CPU ('Intel Xeon'; this run 'AMD EPYC')" in str(found[0])
    # a baseline from before cpu_model was stored cannot vouch for its hardware
    old = Fingerprint(**{**here.__dict__, "cpu_model": None})
    (m,) = compare_fingerprints(old, here)
    assert m.severity is Severity.FOREIGN
    assert "does not record its cpu_model" in m.describe()
    # another target configuration: foreign when both are known, information when one is not
    other_cfg = Fingerprint(**{**here.__dict__, "target_config": "embedded:b"})
    assert [m.severity for m in compare_fingerprints(other_cfg, here)] == [Severity.FOREIGN]
    unknown_cfg = Fingerprint(**{**here.__dict__, "target_config": None})
    assert [m.severity for m in compare_fingerprints(unknown_cfg, here)] == [Severity.INFO]


def test_fingerprint_collect_reads_status_and_flags_bodies() -> None:
    status = {"version": "2.0.1", "build": {"commit": "deadbeef"}, "feature_flags": {"sha256": "s"}}
    flags = {"flags": {"new_type_system": True}, "rollout_percentages": {"new_type_system": 25}}
    fp = Fingerprint.collect(load=LOAD, status=status, flags={**flags, "loaded_at": "now"})
    assert (fp.target_version, fp.build_commit, fp.flags_sha256) == ("2.0.1", "deadbeef", "s")
    assert fp.flags == flags  # loaded_at is left out: it changes on every reload
    assert fp.cpu_count == os.cpu_count()
    assert fp.load == LOAD.to_json()
    assert Fingerprint.from_json(fp.to_json()) == fp


def test_baseline_path_validates_names(tmp_path: Path) -> None:
    assert baseline_path(tmp_path, "jobs-open_50rps") == tmp_path / "jobs-open_50rps.json"
    with pytest.raises(BaselineError, match="a baseline name is"):
        baseline_path(tmp_path, "../etc/passwd")
