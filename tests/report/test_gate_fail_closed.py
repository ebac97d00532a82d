"""The gate fails closed (issue 9): real pytest runs of a tiny verification suite, the real
`etlverify gate` command, and Locust summaries in the new shape (with their identity block).

- A pytest step that stops on a usage error leaves summary.json INCOMPLETE with the reason (and
  removes the reports of the run before it); the gate refuses it, names it, and exits 12 even when
  the Locust step passed.
- A summary.json of an earlier run (another pipeline run, older than --max-age, no or a partial
  identity) is refused as such, never promoted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from etlverify.gate import run_gate
from etlverify.report.summary import (
    PIPELINE_RUN_ENV,
    RunIdentity,
    load_summary,
    normalize_url,
    run_identity,
    target_facts,
    target_fingerprint,
    write_summary,
)

from .conftest import ROOT, Run, _env, locust_summary, make_summary, run_suite

if TYPE_CHECKING:
    from pathlib import Path

#: a verification-like suite: one checklist item, checked against the embedded reference
SUITE = """
import pytest

@pytest.mark.checklist("post.1_functional_testing.validate_error_handling")
def test_target_answers(etl_target, etl_settings):
    assert etl_settings.request_timeout > 0
    assert etl_target.version != "?"
"""
PLUGIN = ("-p", "etlverify.pytest_plugin")
STALE_FILES = ("signoff.html", "checklist_results.json")


def _iso(ago: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) - ago).strftime("%Y-%m-%dT%H:%M:%SZ")


def locust_step(
    reports: Path,
    pipeline: str | None,
    *,
    verdict: str = "PASS",
    target: str | None = "http://127.0.0.1:1",
    embedded: bool = False,
    version: str = "2.4.0-reference",
    build_commit: str | None = None,
) -> Path:
    """What the Locust step writes: a schema-valid summary whose ``run`` holds the identity block
    (`run_identity`, as `etlverify.locust_support` writes it) beside Locust's own run facts."""
    data = locust_summary(verdict, 1 if verdict == "FAIL" else 0)
    data["run"].update(
        run_identity(
            tool="locust",
            started_at=_iso(timedelta(minutes=3)),
            finished_at=_iso(),
            target_url=target,
            embedded=embedded,
            facts={"target_version": version, "build_commit": build_commit},
            pipeline_run=pipeline or "",
        )
    )
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / "locust_summary.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def same_target_locust(reports: Path, pipeline: str) -> Path:
    """A Locust step against the same embedded reference as the pytest summary in `reports`."""
    fingerprint = json.loads((reports / "summary.json").read_text())["fingerprint"]
    assert fingerprint["embedded"] is True
    return locust_step(
        reports,
        pipeline,
        target="http://127.0.0.1:40999",  # its own embedded reference, on its own port
        embedded=True,
        version=fingerprint["target_version"],
        build_commit=fingerprint["build_commit"],
    )


def gate(reports: Path, *args: str, pipeline: str | None = None) -> tuple[int, str]:
    """The real `etlverify gate` command (the console script when installed)."""
    exe = shutil.which("etlverify")
    cmd = [exe] if exe else [sys.executable, "-m", "etlverify.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETLPLUS_")}
    if pipeline:
        env[PIPELINE_RUN_ENV] = pipeline
    proc = subprocess.run(
        [*cmd, "gate", str(reports), "--no-html", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    return proc.returncode, out


def pytest_step(folder: Path, *args: str, pipeline: str, **env: str) -> Run:
    (folder / "test_suite.py").write_text(textwrap.dedent(SUITE))
    return run_suite(folder, *PLUGIN, *args, env=_env(**{PIPELINE_RUN_ENV: pipeline}, **env))


def refused_lines(out: str) -> list[str]:
    return [ln.strip() for ln in out.splitlines() if "REFUSED" in ln]


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A real, passing verification run of pipeline run ci-1-1 (its reports are the "earlier"
    evidence the other tests start from)."""
    run = pytest_step(tmp_path_factory.mktemp("earlier"), pipeline="ci-1-1")
    assert run.ret == 0, run.out
    return run


def _copy_reports(run: Run, folder: Path) -> Path:
    reports = folder / "reports"
    shutil.copytree(run.reports, reports)
    return reports


def test_earlier_run_is_identified(earlier_run: Run) -> None:
    summary = load_summary(earlier_run.reports / "summary.json")
    assert summary.verdict.value == "PROMOTE"
    assert summary.run is not None
    assert summary.run.missing() == []
    assert (summary.run.tool, summary.run.pipeline_run_id) == ("pytest", "ci-1-1")
    assert summary.run.id == summary.fingerprint["run_id"]
    for name in STALE_FILES:
        assert (earlier_run.reports / name).exists()
    assert summary.run.target_fingerprint
    # and the gate takes it when it is this pipeline run's (the control for the refusals below)
    same_target_locust(earlier_run.reports, "ci-1-1")
    both = ("--require", "pytest", "--require", "locust")
    # ... but scope is evidence: this run selected a handful of tests, not -m post_deploy
    code, out = gate(earlier_run.reports, *both, pipeline="ci-1-1")
    assert code == 12, out
    (line,) = refused_lines(out)
    assert "summary.json (pytest, required): partial scope: its run covered" in line
    assert "of 34 post-deployment checklist items" in line
    assert "post.1_functional_testing.job_types_create" in line  # names what is missing
    assert "--allow-partial" in line
    code, out = gate(earlier_run.reports, *both, "--allow-partial", pipeline="ci-1-1")
    assert code == 0, out
    assert out.splitlines()[0] == "etlverify gate: PROMOTE (exit code 0)"
    assert "  PARTIAL (--allow-partial): summary.json: its run covered" in out
    (earlier_run.reports / "locust_summary.json").unlink()


# -- the CI steps, replayed ---------------------------------------------------------------------


def test_ci_replay_usage_error_in_pytest_then_locust_passes(
    earlier_run: Run, tmp_path: Path
) -> None:
    reports = _copy_reports(earlier_run, tmp_path)
    # step 1: the pytest step stops on a usage error (exit 2), continue-on-error
    run = pytest_step(tmp_path, pipeline="ci-2-1", ETLPLUS_REQUEST_TIMEOUT="abc")
    assert run.ret == 2, run.out
    summary = run.summary
    assert summary["verdict"] == "INCOMPLETE"
    assert summary["exit_code"] == 2
    assert "ETLPLUS_REQUEST_TIMEOUT" in summary["error"]["message"]  # type: ignore[index]
    assert summary["run"]["pipeline_run_id"] == "ci-2-1"  # type: ignore[index]
    for name in STALE_FILES:  # the earlier run's reports are gone, not left beside this one's
        assert not (reports / name).exists(), name
    # step 2: the Locust step passes
    locust_step(reports, "ci-2-1")
    # step 3: the gate decides, and must not promote
    code, out = gate(reports, "--require", "pytest", "--require", "locust", pipeline="ci-2-1")
    assert code == 12, out
    assert out.splitlines()[0] == "etlverify gate: DO NOT PROMOTE (exit code 12)"
    (line,) = refused_lines(out)
    assert f"REFUSED {reports / 'summary.json'} (pytest, required): incomplete" in line
    assert "usage error: env ETLPLUS_REQUEST_TIMEOUT" in line
    assert f"used {reports / 'locust_summary.json'}" in out
    # and when the pytest step wrote nothing at all, the gate names it as missing
    (reports / "summary.json").unlink()
    code, out = gate(reports, "--require", "pytest", "--require", "locust", pipeline="ci-2-1")
    assert code == 12, out
    (line,) = refused_lines(out)
    assert f"REFUSED {reports / 'summary.json'} (pytest, required): missing" in line


def _edit_run(reports: Path, **changes: Any) -> None:
    path = reports / "summary.json"
    data = json.loads(path.read_text())
    if changes.pop("drop", False):
        del data["run"]
    else:
        for key, value in changes.items():
            if value is None:
                data["run"].pop(key, None)
            else:
                data["run"][key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("edit", "args", "pipeline", "expected"),
    [
        ({}, (), "ci-2-1", "stale: it is from another pipeline run: ci-1-1"),
        ({}, ("--run-id", "ci-2-1"), None, "stale: it is from another pipeline run: ci-1-1"),
        (
            {"finished_at": _iso(timedelta(days=2))},
            (),
            "ci-1-1",
            "longer ago than --max-age 24 h",
        ),
        (
            {"finished_at": _iso(timedelta(minutes=20))},
            ("--max-age", "10m"),
            "ci-1-1",
            # the time is fixed at collection: a slow run before this test makes it later
            "min ago, longer ago than --max-age 10 min",
        ),
        ({"drop": True}, (), "ci-1-1", "unidentified: it has no `run` block"),
        ({"finished_at": None}, (), "ci-1-1", "partial: its run block lacks run.finished_at"),
        ({"pipeline_run_id": None}, (), "ci-1-1", "ETLPLUS_PIPELINE_RUN_ID was not set"),
    ],
)
def test_stale_summary_of_an_earlier_run_is_refused(
    earlier_run: Run,
    tmp_path: Path,
    *,
    edit: dict[str, Any],
    args: tuple[str, ...],
    pipeline: str | None,
    expected: str,
) -> None:
    reports = _copy_reports(earlier_run, tmp_path)
    _edit_run(reports, **edit)
    code, out = gate(reports, *args, pipeline=pipeline)
    assert code == 12, out
    (line,) = refused_lines(out)
    assert f"REFUSED {reports / 'summary.json'} (pytest, required)" in line
    assert expected in line
    assert "PROMOTE (exit code 0)" not in out


def test_without_a_pipeline_id_the_older_pipeline_run_is_refused(
    earlier_run: Run, tmp_path: Path
) -> None:
    reports = _copy_reports(earlier_run, tmp_path)
    locust_step(reports, "ci-2-1")  # newer, another pipeline run
    code, out = gate(reports, "--require", "pytest", "--require", "locust")
    assert code == 12, out
    (line,) = refused_lines(out)
    assert "summary.json (pytest, required): stale: it is from pipeline run ci-1-1" in line


# -- runs that stop early leave a summary that says why ------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "ret", "reason"),
    [
        ((), {"ETLPLUS_REQUEST_TIMEOUT": "abc"}, 2, "usage error: env ETLPLUS_REQUEST_TIMEOUT"),
        (("--signoff", "QAA=Dana"), {}, 2, "usage error: --signoff: unknown role 'QAA'"),
        (("--no-such-option",), {}, 4, "unrecognized arguments: --no-such-option"),
        (("-k", "no_test_has_this_name"), {}, 5, "no test was collected or selected"),
    ],
)
def test_a_run_that_stops_early_leaves_an_incomplete_summary(
    earlier_run: Run,
    tmp_path: Path,
    *,
    args: tuple[str, ...],
    env: dict[str, str],
    ret: int,
    reason: str,
) -> None:
    reports = _copy_reports(earlier_run, tmp_path)
    run = pytest_step(tmp_path, *args, pipeline="ci-3-1", **env)
    assert run.ret == ret, run.out
    summary = load_summary(reports / "summary.json")
    assert summary.verdict.value == "INCOMPLETE"
    assert summary.error is not None
    assert reason in summary.error["message"]
    assert summary.error["exit_code"] == ret
    assert summary.run is not None
    assert summary.run.missing() == []
    assert summary.run.pipeline_run_id == "ci-3-1"
    for name in STALE_FILES:
        assert not (reports / name).exists(), name
    code, out = gate(reports, pipeline="ci-3-1")
    assert code == 12, out
    (line,) = refused_lines(out)
    assert "incomplete: the pytest run stopped before it could judge" in line
    assert reason in line


def test_a_broken_baseline_file_leaves_an_incomplete_summary(tmp_path: Path) -> None:
    """The issue's case: a broken --baseline stops the run at collection (UsageError)."""
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "summary.json").write_text('{"verdict": "PROMOTE"}')  # an older run's
    (reports / "checklist_results.json").write_text("{}")
    broken = tmp_path / "baseline.json"
    broken.write_text('{"schema_version":')
    run = run_suite(
        tmp_path,
        str(ROOT / "verification" / "performance"),
        "--baseline",
        str(broken),
        env=_env(**{PIPELINE_RUN_ENV: "ci-4-1"}),
        cwd=ROOT,
    )
    assert run.ret == 2, run.out
    summary = load_summary(reports / "summary.json")
    assert summary.verdict.value == "INCOMPLETE"
    assert summary.error is not None
    assert str(broken) in summary.error["message"]
    assert not (reports / "checklist_results.json").exists()
    code, out = gate(reports, pipeline="ci-4-1")
    assert code == 12, out
    assert str(broken) in refused_lines(out)[0]


# -- identity and the gate's checks, without processes -----------------------------------------


def test_run_identity_block() -> None:
    block = run_identity(
        tool="locust",
        run_id="r1",
        started_at="2026-01-01T00:00:00Z",
        finished_at="2026-01-01T00:01:00Z",
        target_url="HTTP://ops:secret@Staging.Example:80/",
        facts={"target_version": "2.4.0", "build_commit": "abc"},
        env={PIPELINE_RUN_ENV: "ci-9-2"},
    )
    assert list(block) == [
        "id",
        "pipeline_run_id",
        "started_at",
        "finished_at",
        "target_url",
        "target_fingerprint",
        "tool",
    ]
    assert block["pipeline_run_id"] == "ci-9-2"
    assert block["target_url"] == "http://staging.example"  # no credentials, one spelling
    assert len(block["target_fingerprint"]) == 16
    assert RunIdentity.from_json(block).missing() == []
    assert run_identity(tool="pytest", env={})["pipeline_run_id"] is None
    with pytest.raises(ValueError, match="tool must be one of"):
        run_identity(tool="k6")


def test_target_fingerprint() -> None:
    deployed = {"version": "2.4.0", "build_commit": "abc", "config_sha256": "c1"}
    a = target_fingerprint(target_url="http://staging:8080", **deployed)
    assert a == target_fingerprint(target_url="http://STAGING:8080/", **deployed)
    assert a != target_fingerprint(target_url="http://prod:8080", **deployed)
    assert a != target_fingerprint(
        target_url="http://staging:8080", **{**deployed, "version": "2.5"}
    )
    # the embedded reference: each run's own port, the same reference
    one = target_fingerprint(target_url="http://127.0.0.1:41000", embedded=True, version="2.4.0")
    two = target_fingerprint(target_url="http://127.0.0.1:42000", embedded=True, version="2.4.0")
    assert one == two is not None
    assert target_fingerprint(target_url=None, embedded=True) is None
    assert target_fingerprint(target_url=None) is None
    assert normalize_url("https://h:443/x/") == "https://h/x"


def _pytest_summary(folder: Path, **run: Any) -> None:
    block = run_identity(
        tool="pytest",
        started_at=_iso(timedelta(minutes=6)),
        finished_at=_iso(timedelta(minutes=4)),
        target_url="http://127.0.0.1:1",
        facts={"target_version": "2.4.0-reference"},
        pipeline_run="ci-5-1",
    )
    block.update(run)
    from dataclasses import replace

    write_summary(
        folder / "summary.json", replace(make_summary(), run=RunIdentity.from_json(block))
    )


def test_sources_must_agree_on_the_target(tmp_path: Path) -> None:
    env = {PIPELINE_RUN_ENV: "ci-5-1"}
    _pytest_summary(tmp_path)
    locust_step(tmp_path, "ci-5-1", target="http://127.0.0.1:2")
    result = run_gate(tmp_path, env=env, render=False)
    assert result.exit_code == 12
    (refused,) = result.refused
    assert refused.source == "locust"
    assert refused.status == "other target"
    assert "http://127.0.0.1:2" in refused.problem
    assert "http://127.0.0.1:1" in refused.problem
    # the expected target (ETLPLUS_BASE_URL / --target) refuses both
    locust_step(tmp_path, "ci-5-1", target="http://127.0.0.1:1")
    assert run_gate(tmp_path, env=env, render=False).exit_code == 0
    result = run_gate(tmp_path, env={**env, "ETLPLUS_BASE_URL": "http://staging:8080"})
    assert result.exit_code == 12
    assert {e.status for e in result.refused} == {"other target"}
    assert len(result.refused) == 2


def test_embedded_runs_of_the_same_reference_agree(tmp_path: Path) -> None:
    fp = target_fingerprint(target_url="http://127.0.0.1:40001", embedded=True, version="2.4.0")
    _pytest_summary(tmp_path, target_url="http://127.0.0.1:40001", target_fingerprint=fp)
    locust_step(tmp_path, "ci-5-1", target="http://127.0.0.1:40777", embedded=True, version="2.4.0")
    result = run_gate(tmp_path, env={PIPELINE_RUN_ENV: "ci-5-1"}, render=False)
    assert result.exit_code == 0, result.lines
    locust_step(tmp_path, "ci-5-1", target="http://127.0.0.1:40777", embedded=True, version="9")
    assert run_gate(tmp_path, env={PIPELINE_RUN_ENV: "ci-5-1"}, render=False).exit_code == 12


def test_exit_code_table(tmp_path: Path) -> None:
    env = {PIPELINE_RUN_ENV: "ci-5-1"}
    _pytest_summary(tmp_path)
    assert run_gate(tmp_path, env=env, render=False).exit_code == 0
    locust_step(tmp_path, "ci-5-1", verdict="FAIL")
    assert run_gate(tmp_path, env=env, render=False).exit_code == 10
    locust_step(tmp_path, "ci-5-1", verdict="INCONCLUSIVE")
    assert run_gate(tmp_path, env=env, render=False).exit_code == 11
    no = {**env, "ETLPLUS_INCONCLUSIVE_BLOCKS": "0"}
    assert run_gate(tmp_path, env=no, render=False).exit_code == 0
    # a watch step that is required but did not write its summary
    from etlverify.gate import resolve_options

    options = resolve_options(require=["pytest", "watch"], env=env)
    result = run_gate(tmp_path, options=options, render=False)
    assert result.exit_code == 12
    assert [e.path.name for e in result.refused] == ["watch_summary.json"]
    # a summary from the future is not trusted
    _pytest_summary(tmp_path, finished_at=_iso(-timedelta(hours=1)))
    (tmp_path / "locust_summary.json").unlink()
    result = run_gate(tmp_path, env=env, render=False)
    assert result.exit_code == 12
    assert "in the future" in result.refused[0].problem


def test_unreachable_target_is_13(tmp_path: Path) -> None:
    from dataclasses import replace

    from etlverify.report.summary import Finding, PromotionVerdict, Summary

    block = run_identity(
        tool="pytest", finished_at=_iso(), target_url="http://127.0.0.1:9", pipeline_run="p"
    )
    summary = Summary(
        verdict=PromotionVerdict.DO_NOT_PROMOTE,
        exit_code=3,
        blocking=(Finding("error", "", "target http://127.0.0.1:9 is unreachable"),),
        error={"exit_code": 3, "message": "target http://127.0.0.1:9 is unreachable"},
    )
    write_summary(tmp_path / "summary.json", replace(summary, run=RunIdentity.from_json(block)))
    result = run_gate(tmp_path, env={PIPELINE_RUN_ENV: "p"}, render=False)
    assert result.exit_code == 13, result.lines


# -- the shipped workflow and the command's help --------------------------------------------------


def test_ci_workflow_decides_only_on_the_gate() -> None:
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load((ROOT / "ci" / "promotion-gate.yml").read_text())
    job = workflow["jobs"]["verify"]
    assert job["env"][PIPELINE_RUN_ENV] == "${{ github.run_id }}-${{ github.run_attempt }}"
    steps = {step.get("id"): step for step in job["steps"] if step.get("id")}
    assert steps["suite"]["continue-on-error"] is True
    assert "pytest -m post_deploy" in steps["suite"]["run"]
    assert "--allow-destructive --baseline" in steps["suite"]["run"]  # staging: the whole scope
    assert steps["load"]["continue-on-error"] is True
    assert "--headless" in steps["load"]["run"]  # never the web UI in CI
    gate_step = steps["gate"]
    assert "continue-on-error" not in gate_step
    assert "etlverify gate reports/ --require pytest --require locust" in gate_step["run"]
    assert "--no-inconclusive-blocks" not in gate_step["run"].split("||")[0]
    decided = [s for s in job["steps"] if "run" in s and "continue-on-error" not in s]
    assert [s.get("id") for s in decided] == ["install", "gate"]
    for step in job["steps"]:
        assert PIPELINE_RUN_ENV not in step.get("env", {}), "set once, for the whole job"


def test_help_description_is_whole() -> None:
    from etlverify import cli

    proc = subprocess.run(
        [sys.executable, "-m", "etlverify.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0
    first = " ".join((cli.__doc__ or "").split("\n\n", 1)[0].split())
    assert first.endswith(".")
    assert first in " ".join(proc.stdout.split())


def test_a_rate_limited_locust_run_blocks_with_its_reason(tmp_path: Path) -> None:
    """A Locust run the target rate-limited (exit 5) judges nothing: the gate says why."""
    env = {PIPELINE_RUN_ENV: "ci-5-1"}
    _pytest_summary(tmp_path)
    path = locust_step(tmp_path, "ci-5-1", verdict="INCOMPLETE")
    data = json.loads(path.read_text())
    reason = "RATE LIMITED: 86.1% of requests were answered 429 (limit 30 per 60 s)"
    data.update(exit_code=5, reason=reason, metrics=[])
    path.write_text(json.dumps(data))
    result = run_gate(tmp_path, env=env, render=False)
    assert result.exit_code == 11, result.lines
    assert any(reason in line for line in result.lines), result.lines


def test_one_identity_for_every_source() -> None:
    """The pytest plugin, Locust, the watch and the rollout all read /api/health/status with
    `target_facts` and pass the facts to `run_identity`: one deployment, one fingerprint. The flags
    digest is recorded but left out: a rollout changes it between the pipeline's steps."""
    status = {
        "version": "2.4.0",
        "build": {"commit": "abc"},
        "config": {"sha256": "c1"},
        "feature_flags": {"sha256": "f1"},
    }
    facts = target_facts(status)
    assert facts == {
        "target_version": "2.4.0",
        "build_commit": "abc",
        "config_sha256": "c1",
        "flags_sha256": "f1",
    }
    blocks = {
        tool: run_identity(tool=tool, target_url="http://staging:8080", facts=facts, env={})
        for tool in ("pytest", "locust", "watch", "rollout")
    }
    assert len({b["target_fingerprint"] for b in blocks.values()}) == 1
    flags_rolled = target_facts({**status, "feature_flags": {"sha256": "f2"}})
    assert (
        run_identity(tool="rollout", target_url="http://staging:8080", facts=flags_rolled, env={})[
            "target_fingerprint"
        ]
        == blocks["pytest"]["target_fingerprint"]
    )
    other_config = target_facts({**status, "config": {"sha256": "c2"}})
    assert (
        run_identity(tool="watch", target_url="http://staging:8080", facts=other_config, env={})[
            "target_fingerprint"
        ]
        != blocks["pytest"]["target_fingerprint"]
    )
    assert target_facts(None) == dict.fromkeys(facts)
    assert target_facts({"version": "?", "build": "not an object"})["target_version"] is None


@pytest.mark.parametrize(
    ("source", "code", "status", "expected_exit"),
    [
        ("watch", 13, "", 13),  # the watch's "target unreachable" is the gate's 13
        ("rollout", 13, "", 13),
        ("watch", 14, "incomplete", 12),  # its usage error: stopped before it could judge
        ("locust", 3, "", 13),  # Locust keeps the verification run's 2/3
        ("locust", 2, "incomplete", 12),
    ],
)
def test_each_source_speaks_its_own_exit_codes(
    tmp_path: Path, source: str, code: int, status: str, expected_exit: int
) -> None:
    """The watch and the rollout use the gate's family (13 unreachable, 14 usage), Locust 2/3."""
    env = {PIPELINE_RUN_ENV: "ci-5-1"}
    _pytest_summary(tmp_path)
    data = locust_summary(None, code, error="the reason it stopped")
    data["run"] = run_identity(
        tool=source,
        started_at=_iso(timedelta(minutes=3)),
        finished_at=_iso(timedelta(minutes=1)),
        target_url="http://127.0.0.1:1",
        facts={"target_version": "2.4.0-reference"},
        pipeline_run="ci-5-1",
    )
    name = {"watch": "watch_summary.json", "rollout": "rollout_summary.json"}.get(
        source, "locust_summary.json"
    )
    (tmp_path / name).write_text(json.dumps(data), encoding="utf-8")
    result = run_gate(tmp_path, env=env, render=False)
    assert result.exit_code == expected_exit, result.lines
    ev = next(e for e in result.evidence if e.source == source)
    assert ev.status == status, result.lines
    if status:
        assert f"exit code {code}): the reason it stopped" in ev.problem
