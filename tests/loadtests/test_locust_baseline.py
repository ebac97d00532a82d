"""Which baseline judges a Locust run, in-process and without a target: the gate is put in the
state Locust's events leave it in, fed measurements built here, and judged.

- This machine's baseline (`--etl-baseline machine`, the default of locust.conf): the first
  `MACHINE_RUNS` runs of a load plan record into the per-user cache (INCOMPLETE, exit 0, one line
  says so), a run with errors, 429s or a fired absolute trigger is not recorded, and the run after
  them is judged (issue 14 item 3).
- A baseline that is not comparable (another load plan, another CPU) judges no relative check and
  no relative rollback trigger; the absolute triggers still count (issue 16).
- A web UI closed before any test started leaves the earlier summary alone (issue 14 item 3).

Every test builds the measurements it judges: none depends on how quiet the host is.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from locust.event import Events

from etlverify.baseline import Fingerprint, load
from etlverify.gate import locust_part
from etlverify.locust_support import (
    EXIT_FAIL,
    EXIT_INCOMPLETE,
    EXIT_PASS,
    EXIT_RATE_LIMITED,
    MACHINE_RUNS,
    RELATIVE_TRIGGERS,
    EtlGate,
    GateOptions,
    WindowedRecorder,
)
from etlverify.measure import ServerSample
from etlverify.report.summary import PromotionVerdict

#: The tolerance of these tests: the checklist's 10% with a floor, on a metric with enough samples.
TOLERANCE = "p50:10%,+0.5ms; error_rate:+1pp"
ROUTE = "/api/jobs"
METRIC = f"GET {ROUTE}"


class ApiUser:
    """Stands for a user class of the locustfile (its name and weights enter the load plan)."""

    weight = 5
    fixed_count = 0


class FakeEnvironment:
    """What the gate reads of Locust's `Environment` when it judges: user classes, no runner."""

    def __init__(self) -> None:
        self.runner = None
        self.user_classes = [ApiUser]
        self.parsed_options = None
        self.host = None


class Answer:
    """A response as the request listener sees it."""

    def __init__(self, status: int) -> None:
        self.status_code = status
        self.headers: dict[str, str] = {}


def namespace(**overrides: object) -> argparse.Namespace:
    """Locust's parsed options as `GateOptions` reads them (headless, 60 s, machine baseline)."""
    base: dict[str, object] = {
        "etl_baseline": "machine",
        "etl_tolerance": TOLERANCE,
        "etl_record": None,
        "etl_windows": "5",
        "etl_warmup": "2",
        "etl_window_seconds": "10",
        "etl_alpha": None,
        "etl_inconclusive_exit": False,
        "etl_summary": "summary.json",
        "etl_shape": "constant",
        "etl_embedded_faults": False,
        "etl_inject_latency_ms": None,
        "etl_ws_timeout": "5",
        "etl_response_time_trigger": None,
        "etl_worker_report_timeout": "10",
        "run_time": 60,
        "num_users": 12,
        "spawn_rate": 12,
        "host": None,
        "headless": True,
        "autostart": False,
    }
    base.update(overrides)
    return argparse.Namespace(**base)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty machine-baseline cache of this test's own (the variable is undone by
    monkeypatch)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("ETLPLUS_BASELINE_CACHE", str(path))
    return path


class Judged:
    """One judged run: exit code, the gate's printed lines, its summary."""

    def __init__(self, code: int, lines: list[str], summary_path: Path) -> None:
        self.code = code
        self.lines = lines
        self.summary: dict[str, Any] = json.loads(summary_path.read_text(encoding="utf-8"))


def judge_run(
    tmp_path: Path,
    *,
    seed: int,
    median_ms: float = 2.0,
    errors: int = 0,
    limited: int = 0,
    memory_percent: float | None = None,
    cpu_model: str | None = None,
    **overrides: object,
) -> Judged:
    """Judge one run of `METRIC` samples (`median_ms`, 300 per window) as Locust would at quit.

    `errors` failed and `limited` 429 answers are spread over the run; `memory_percent` gives
    the server samples of the whole run that value; `cpu_model` replaces this host's in the run's
    fingerprint (as if measured on another machine).
    """
    lines: list[str] = []
    gate = EtlGate(Events(), out=lines.append)  # type: ignore[no-untyped-call]
    gate.environment = FakeEnvironment()  # type: ignore[assignment]
    summary = tmp_path / "summary.json"
    gate.options = GateOptions.from_namespace(namespace(etl_summary=str(summary), **overrides))
    gate.summary_path = summary
    gate.superseded = True
    gate.host = "http://127.0.0.1:9"
    gate._load_baseline()  # what `init` does (a file baseline is read there)
    start = time.time() - 120.0
    layout = gate.options.layout(start)
    gate.rec = WindowedRecorder(layout)
    run_time = float(gate.options.run_time_s or 0.0)
    rng = np.random.default_rng(seed)
    n = 300 * layout.windows
    starts = start + layout.warmup_s + rng.uniform(0, run_time - layout.warmup_s, n)
    for at, ms in zip(starts, rng.lognormal(np.log(median_ms), 0.3, n), strict=True):
        gate.on_request(
            request_type="GET", name=ROUTE, response_time=float(ms), start_time=float(at)
        )
    for i in range(errors):
        gate.on_request(
            request_type="GET",
            name=ROUTE,
            response_time=1.0,
            start_time=float(starts[i]),
            response=Answer(503),
            exception=RuntimeError("HTTP 503"),
        )
    for i in range(limited):
        gate.on_request(
            request_type="GET",
            name=ROUTE,
            response_time=1.0,
            start_time=float(starts[i]),
            response=Answer(429),
            exception=RuntimeError("HTTP 429"),
        )
    if memory_percent is not None:
        gate.samples = [
            ServerSample(float(t), ok=True, memory_percent=memory_percent)
            for t in range(0, int(run_time) + 1, 2)
        ]
    gate.stopped_wall = start + run_time
    fingerprint = Fingerprint.collect(target_config=gate._target_config_id())
    if cpu_model is not None:
        fingerprint = replace(fingerprint, cpu_model=cpu_model)
    gate.fingerprint = replace(fingerprint, load=gate._load_json())
    code = gate.judge()
    return Judged(code, lines, summary)


def recording_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "recording this machine's baseline" in line]


# --- this machine's baseline -------------------------------------------------------------------


def test_first_runs_record_this_machines_baseline_and_the_next_is_judged(
    tmp_path: Path, cache: Path
) -> None:
    for k in range(1, MACHINE_RUNS + 1):
        run = judge_run(tmp_path, seed=k)
        assert run.code == EXIT_PASS, run.lines
        lines = recording_lines(run.lines)
        assert len(lines) == 1, run.lines
        assert lines[0].startswith(
            f"etlverify: recording this machine's baseline, run {k} of {MACHINE_RUNS} "
            f"(2 metrics, 4 checks measured; judged from run {MACHINE_RUNS + 1} on): {cache}/"
        ), lines[0]
        assert not any(line.startswith(("PASS", "FAIL", "INCONCLUSIVE")) for line in run.lines)
        summary = run.summary
        assert summary["verdict"] == "INCOMPLETE", "a recording run is never PASS"
        assert summary["exit_code"] == 0
        assert summary["reason"] == lines[0].removeprefix("etlverify: ")
        assert summary["metrics"] == []
        assert summary["baseline_source"] == "machine"
        assert summary["recorded"]["runs"] == k
        states = {t["name"]: t["state"] for t in summary["triggers"]}
        assert states["unavailability"] == "CLEAR", "absolute triggers are judged while recording"
        for name in RELATIVE_TRIGGERS:
            assert states[name] == "UNKNOWN"
        # the gate: INCOMPLETE, with the recording line for a person, not PASS
        promotion, blocking, undecided, error, _ = locust_part(summary)
        assert promotion is PromotionVerdict.INCOMPLETE
        assert (blocking, error) == ((), None)
        assert [f.text for f in undecided] == [summary["reason"]]
    files = list(cache.glob("*.json"))
    assert len(files) == 1, files
    assert len(load(files[0]).runs) == MACHINE_RUNS

    same = judge_run(tmp_path, seed=10)
    assert same.code == EXIT_PASS, same.lines
    assert same.summary["verdict"] == "PASS", same.lines
    assert not recording_lines(same.lines)
    assert len(load(files[0]).runs) == MACHINE_RUNS, "a judged run is not recorded"

    slower = judge_run(tmp_path, seed=11, median_ms=4.0)
    assert slower.code == EXIT_FAIL, slower.lines
    assert any(line.startswith(f"FAIL p50 {METRIC}: ") for line in slower.lines), slower.lines


def test_another_load_plan_records_a_baseline_of_its_own(tmp_path: Path, cache: Path) -> None:
    judge_run(tmp_path, seed=1)
    other = judge_run(tmp_path, seed=2, run_time=30)
    assert recording_lines(other.lines)[0].count("run 1 of") == 1, other.lines
    assert len(list(cache.glob("*.json"))) == 2


@pytest.mark.parametrize(
    ("kwargs", "code", "why"),
    [
        ({"errors": 3}, EXIT_INCOMPLETE, "3 failed requests and 0 user exceptions"),
        ({"limited": 3}, EXIT_RATE_LIMITED, "RATE LIMITED: "),
        ({"memory_percent": 99.0}, EXIT_FAIL, "FIRED rollback trigger memory_sustained"),
    ],
    ids=["errors", "429", "absolute trigger fired"],
)
def test_a_run_with_errors_is_not_recorded(
    tmp_path: Path, cache: Path, kwargs: dict[str, Any], code: int, why: str
) -> None:
    run = judge_run(tmp_path, seed=1, **kwargs)
    assert run.code == code, run.lines
    assert any(why in line for line in run.lines), run.lines
    assert not recording_lines(run.lines)
    assert not list(cache.glob("*.json")), "nothing recorded"
    assert run.summary["verdict"] == ("FAIL" if code == EXIT_FAIL else "INCOMPLETE")
    assert run.summary["recorded"] is None
    assert all("Traceback" not in line for line in run.lines)


def test_record_file_option_names_the_baseline(tmp_path: Path) -> None:
    target = tmp_path / "locust-staging.json"
    run = judge_run(tmp_path, seed=1, etl_record=str(target))
    assert run.code == EXIT_PASS, run.lines
    assert f"etlverify: recorded this run into {target} (run 1 of 1)" in run.lines
    assert run.summary["baseline"] == str(target)
    assert len(load(target).runs) == 1


@pytest.mark.parametrize(
    ("raw", "record", "baseline"),
    [
        (None, False, None),
        (True, True, None),
        ("true", True, None),
        ("0", False, None),
        ("baselines/locust-staging.json", True, "baselines/locust-staging.json"),
    ],
)
def test_record_option_values(raw: object, record: bool, baseline: str | None) -> None:
    opts = GateOptions.from_namespace(namespace(etl_record=raw))
    assert opts.record is record
    assert opts.baseline == (None if baseline is None else Path(baseline))
    assert opts.machine is (baseline is None)


def test_record_option_refuses_a_non_json_value() -> None:
    from etlverify.errors import SettingsError

    with pytest.raises(SettingsError, match=r"^--etl-record: expected a baseline file ending"):
        GateOptions.from_namespace(namespace(etl_record="EtlApiUser"))


# --- a baseline that is not comparable ---------------------------------------------------------


def file_baseline(tmp_path: Path, *, cpu_model: str | None = None, run_time: int = 60) -> Path:
    """A reviewed-file baseline of three runs, recorded with `--etl-record FILE`."""
    path = tmp_path / "locust-env.json"
    for seed in (1, 2, 3):
        run = judge_run(
            tmp_path, seed=seed, etl_record=str(path), cpu_model=cpu_model, run_time=run_time
        )
        assert run.code == EXIT_PASS, run.lines
    return path


def slow_and_failing(tmp_path: Path, baseline: Path, **overrides: Any) -> Judged:
    """A run 3x slower with 10% errors: both relative rollback triggers fire when comparable."""
    return judge_run(
        tmp_path, seed=20, median_ms=6.0, errors=150, etl_baseline=str(baseline), **overrides
    )


def test_relative_triggers_fire_on_a_comparable_baseline(tmp_path: Path) -> None:
    """The control of the tests below: the same run against a comparable baseline is FAIL."""
    run = slow_and_failing(tmp_path, file_baseline(tmp_path))
    assert run.code == EXIT_FAIL, run.lines
    states = {t["name"]: t["state"] for t in run.summary["triggers"]}
    assert {name: states[name] for name in RELATIVE_TRIGGERS} == dict.fromkeys(
        RELATIVE_TRIGGERS, "FIRED"
    )
    assert run.summary["comparable"] is True


@pytest.mark.parametrize(
    ("baseline_kwargs", "run_kwargs", "why"),
    [
        (
            {"run_time": 60},
            {"run_time": 30},
            "baseline recorded with another load plan (duration_s: baseline 60.0, this run 30.0)",
        ),
        ({"cpu_model": "Other CPU 9000"}, {}, "baseline recorded on another CPU ('Other CPU 9000'"),
    ],
    ids=["other load plan", "other hardware"],
)
@pytest.mark.parametrize("inconclusive_exit", [False, True])
def test_a_baseline_that_is_not_comparable_judges_nothing_relative(
    tmp_path: Path,
    baseline_kwargs: dict[str, Any],
    run_kwargs: dict[str, Any],
    why: str,
    inconclusive_exit: bool,
) -> None:
    baseline = file_baseline(tmp_path, **baseline_kwargs)
    run = slow_and_failing(
        tmp_path, baseline, etl_inconclusive_exit=inconclusive_exit, **run_kwargs
    )
    assert run.code == (EXIT_INCOMPLETE if inconclusive_exit else EXIT_PASS), run.lines
    assert run.code != EXIT_FAIL
    summary = run.summary
    assert summary["verdict"] == "INCONCLUSIVE"
    assert summary["comparable"] is False
    assert summary["reason"].startswith(f"not comparable: {why}"), summary["reason"]
    triggers = {t["name"]: t for t in summary["triggers"]}
    for name in RELATIVE_TRIGGERS:
        assert triggers[name]["state"] == "UNKNOWN"
        assert triggers[name]["reason"].startswith("NOT JUDGED: the baseline is not comparable: ")
    assert triggers["unavailability"]["state"] == "CLEAR"
    assert all(m["verdict"] == "INCONCLUSIVE" for m in summary["metrics"])
    assert any("as measured it would be FAIL" in m["reason"] for m in summary["metrics"])
    notes = [line for line in run.lines if line.startswith("etlverify: NOT COMPARABLE: ")]
    assert len(notes) == 1, run.lines
    assert why in notes[0]
    assert not any(line.startswith(("FAIL ", "FIRED ")) for line in run.lines), run.lines
    promotion, blocking, _, _, _ = locust_part(summary)
    assert promotion is PromotionVerdict.INCOMPLETE
    assert blocking == ()


def test_absolute_triggers_still_count_on_a_baseline_that_is_not_comparable(
    tmp_path: Path,
) -> None:
    baseline = file_baseline(tmp_path, run_time=60)
    run = judge_run(tmp_path, seed=5, etl_baseline=str(baseline), run_time=30, memory_percent=99.0)
    assert run.code == EXIT_FAIL, run.lines
    assert run.summary["verdict"] == "FAIL"
    assert any(line.startswith("FIRED rollback trigger memory_sustained") for line in run.lines)


# --- the web UI closed without a test ----------------------------------------------------------


@pytest.mark.parametrize("web_ui", [True, False], ids=["web UI", "headless"])
def test_no_test_started(tmp_path: Path, web_ui: bool) -> None:
    summary = tmp_path / "summary.json"
    earlier = {"schema_version": 1, "verdict": "PASS", "exit_code": 0, "run": {"id": "earlier"}}
    summary.write_text(json.dumps(earlier), encoding="utf-8")
    lines: list[str] = []
    gate = EtlGate(Events(), out=lines.append)  # type: ignore[no-untyped-call]
    gate.options = GateOptions.from_namespace(
        namespace(etl_summary=str(summary), headless=not web_ui)
    )
    gate.summary_path = summary
    if not web_ui:
        gate._supersede()  # what `init` does for a headless run
    assert gate.judge() == EXIT_INCOMPLETE
    assert lines[0].startswith("etlverify: INCOMPLETE: no test was started: nothing to judge")
    assert lines[-1] == f"etlverify: exit code {EXIT_INCOMPLETE}"
    data = json.loads(summary.read_text(encoding="utf-8"))
    if web_ui:
        assert data == earlier, "the earlier run's evidence stays"
        assert f"({summary} is left as it was" in lines[0]
    else:
        assert data["verdict"] == "INCOMPLETE"
        assert data["reason"] == "no test was started: nothing to judge"
        promotion, _, undecided, _, _ = locust_part(data)
        assert promotion is PromotionVerdict.INCOMPLETE
        assert [f.text for f in undecided] == ["no test was started: nothing to judge"]
