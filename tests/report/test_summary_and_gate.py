"""summary.json's schema, and `etlverify gate`: merge, verdict, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from etlverify.cli import main
from etlverify.gate import merge, resolve_options, run_gate
from etlverify.report.summary import (
    SCHEMA_VERSION,
    PromotionVerdict,
    RunIdentity,
    Summary,
    SummaryError,
    load_summary,
    run_identity,
    write_summary,
)

from .conftest import ERRORS_ITEM, FAILURE, JOBS_ITEM, locust_summary, make_summary

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

TARGET = "http://127.0.0.1:1"


def _iso(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) - delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def identified(summary: Summary, **run: Any) -> Summary:
    """`summary` with a fresh run block (this pipeline's, against `TARGET`)."""
    block = run_identity(
        tool="pytest",
        started_at=_iso(timedelta(minutes=5)),
        finished_at=_iso(),
        target_url=TARGET,
        facts={"target_version": "2.4.0-reference"},
        pipeline_run="",
    )
    block.update(run)
    return replace(summary, run=RunIdentity.from_json(block))


def fresh_locust(verdict: str | None = "PASS", exit_code: int = 0, **extra: Any) -> dict[str, Any]:
    """A Locust summary in the new shape: the identity block merged into its ``run``."""
    data = locust_summary(verdict, exit_code, **extra)
    data["run"].update(
        run_identity(
            tool="locust",
            started_at=_iso(timedelta(minutes=2)),
            finished_at=_iso(),
            target_url=TARGET,
            facts={"target_version": "2.4.0-reference"},
            pipeline_run="",
        )
    )
    return data


# -- the schema ------------------------------------------------------------------------------------


def test_key_order_verdict_first_schema_version_last(tmp_path: Path, promote: Summary) -> None:
    path = tmp_path / "summary.json"
    write_summary(path, promote)
    keys = list(json.loads(path.read_text()))
    assert keys[0] == "verdict"
    assert keys[-1] == "schema_version"
    assert keys.index("items") < keys.index("metrics") < keys.index("fingerprint")
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION == 1


def test_roundtrip(tmp_path: Path) -> None:
    summary = identified(
        make_summary(
            {ERRORS_ITEM: [("failed", FAILURE)], JOBS_ITEM: [("skipped", "why")]},
            full_scope=False,
        )
    )
    path = tmp_path / "summary.json"
    write_summary(path, summary)
    loaded = load_summary(path)
    assert loaded.to_json() == summary.to_json()
    assert loaded.verdict is PromotionVerdict.DO_NOT_PROMOTE
    assert loaded.counts["failed"] == 1
    assert loaded.coverage["in_scope"] == 2
    assert loaded.run is not None
    assert loaded.run.tool == "pytest"
    assert loaded.run.target_url == TARGET


def test_older_summary_without_run_is_read(tmp_path: Path, promote: Summary) -> None:
    data = promote.to_json()
    del data["run"]
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(data))
    assert load_summary(path).run is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
        (lambda d: d.update(verdict="MAYBE"), "verdict must be PROMOTE, DO NOT PROMOTE or"),
        (lambda d: d.update(exit_code=7), "exit_code must be one of 0, 1, 2, 3, 4, 5, 11"),
        (lambda d: d.update(run={"id": 5}), "field 'run.id': expected a string"),
        (lambda d: d["items"][0].update(status="great"), "'great' is not a valid Status"),
    ],
)
def test_loader_names_the_file_and_the_problem(
    tmp_path: Path, promote: Summary, mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    data = promote.to_json()
    mutate(data)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SummaryError, match=message) as exc:
        load_summary(path)
    assert str(exc.value).startswith(str(path))


# -- merging -----------------------------------------------------------------------------------


def test_merge_worst_verdict_and_locust_findings(promote: Summary) -> None:
    merged = merge(promote, locust_summary("FAIL", 1))
    assert merged.verdict is PromotionVerdict.DO_NOT_PROMOTE
    assert merged.exit_code == 1
    assert merged.kind == "merged"
    assert [f.source for f in merged.blocking] == ["locust"]
    assert "HTTP Aggregated" in merged.blocking[0].line()
    assert {m.source for m in merged.metrics} == {"locust"}


@pytest.mark.parametrize(
    ("locust", "blocks", "verdict", "code"),
    [
        (locust_summary("PASS"), None, "PROMOTE", 0),
        (locust_summary("INCONCLUSIVE"), None, "INCOMPLETE", 0),
        (locust_summary("INCONCLUSIVE"), True, "INCOMPLETE", 11),
        (locust_summary(None), True, "INCOMPLETE", 11),
        (locust_summary(None, 3, error="etlverify: target unreachable"), None, "DO NOT PROMOTE", 3),
        (locust_summary(None, 2, error="bad --etl-windows"), None, "DO NOT PROMOTE", 2),
        (locust_summary("PASS", 1, messages=["refusing to record"]), None, "DO NOT PROMOTE", 1),
    ],
)
def test_locust_verdicts(
    promote: Summary, locust: dict[str, Any], blocks: bool | None, verdict: str, code: int
) -> None:
    merged = merge(promote, locust, inconclusive_blocks=blocks)
    assert (merged.verdict.value, merged.exit_code) == (verdict, code)


def test_usage_error_wins_over_unreachable() -> None:
    pytest_part = make_summary()
    unreachable = Summary(
        verdict=PromotionVerdict.DO_NOT_PROMOTE,
        exit_code=3,
        error={"exit_code": 3, "message": "unreachable"},
    )
    assert merge(unreachable, locust_summary(None, 2)).exit_code == 2
    assert merge(unreachable, locust_summary("PASS")).exit_code == 3
    assert merge(pytest_part, None).exit_code == 0


# -- the command (exit codes: docs/exit-codes.md) ------------------------------------------------


def _gate(directory: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    import os

    environ = {k: v for k, v in os.environ.items() if not k.startswith("ETLPLUS_")}
    environ.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "etlverify.cli", "gate", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environ,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_gate_command_promote_and_block(tmp_path: Path, promote: Summary) -> None:
    write_summary(tmp_path / "summary.json", identified(promote))
    code, out, err = _gate(tmp_path)
    assert code == 0, out + err
    assert out.splitlines()[0] == "etlverify gate: PROMOTE (exit code 0)"
    assert (tmp_path / "signoff.html").exists()
    assert "Exit code 0" in (tmp_path / "signoff.html").read_text()
    failed = identified(make_summary({ERRORS_ITEM: [("failed", FAILURE)]}))
    write_summary(tmp_path / "summary.json", failed)
    code, out, _ = _gate(tmp_path, "--no-html")
    assert code == 10
    assert out.splitlines()[0] == "etlverify gate: DO NOT PROMOTE (exit code 10)"
    assert f"item {ERRORS_ITEM}: failed - Validate error handling" in out


def test_gate_inconclusive_blocks_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    skipped = identified(make_summary({JOBS_ITEM: [("skipped", "why")]}))
    write_summary(tmp_path / "summary.json", skipped)
    for var in ("ETLPLUS_INCONCLUSIVE_BLOCKS", "ETLPLUS_PIPELINE_RUN_ID", "ETLPLUS_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    assert main(["gate", str(tmp_path), "--no-html"]) == 11
    assert main(["gate", str(tmp_path), "--no-html", "--inconclusive-blocks"]) == 11
    capsys.readouterr()
    assert main(["gate", str(tmp_path), "--no-html", "--no-inconclusive-blocks"]) == 0
    assert "warning: INCOMPLETE does not block (exit 0)" in capsys.readouterr().out
    monkeypatch.setenv("ETLPLUS_INCONCLUSIVE_BLOCKS", "0")
    assert main(["gate", str(tmp_path), "--no-html"]) == 0
    assert main(["gate", str(tmp_path), "--no-html", "--inconclusive-blocks"]) == 11
    monkeypatch.setenv("ETLPLUS_INCONCLUSIVE_BLOCKS", "maybe")
    assert main(["gate", str(tmp_path), "--no-html"]) == 14
    assert "env ETLPLUS_INCONCLUSIVE_BLOCKS: expected a boolean" in capsys.readouterr().err


def test_gate_missing_summary_is_one_line_exit_12(tmp_path: Path) -> None:
    code, out, err = _gate(tmp_path)
    assert code == 12
    assert err == ""
    assert out.splitlines()[0] == "etlverify gate: DO NOT PROMOTE (exit code 12)"
    refused = [ln for ln in out.splitlines() if "REFUSED" in ln]
    assert len(refused) == 1
    assert f"REFUSED {tmp_path / 'summary.json'} (pytest, required): missing" in refused[0]
    assert "Traceback" not in out
    code, out, _ = _gate(tmp_path / "nope")
    assert code == 12
    assert "there is no folder" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--max-age", "soon"), "--max-age: expected a duration such as 90s"),
        (("--target", "staging"), "--target: expected an http(s) URL"),
        (("--require", "nose"), "invalid choice: 'nose'"),
        (("--bogus",), "unrecognized arguments: --bogus"),
    ],
)
def test_gate_usage_errors_exit_14(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    code, out, err = _gate(tmp_path, *args)
    assert code == 14, out + err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["summary.json", "locust_summary.json"])
def test_gate_broken_json_names_the_file(tmp_path: Path, promote: Summary, name: str) -> None:
    write_summary(tmp_path / "summary.json", identified(promote))
    (tmp_path / name).write_text('{"verdict": "PROMOTE",')
    code, out, _ = _gate(tmp_path)
    assert code == 12
    refused = [ln for ln in out.splitlines() if "REFUSED" in ln]
    assert len(refused) == 1
    assert str(tmp_path / name) in refused[0]
    assert "unreadable: invalid JSON" in refused[0]


def test_gate_merges_locust_and_links_its_report(
    tmp_path: Path, promote: Summary, write_json: Callable[[Path, Any], Path]
) -> None:
    write_summary(tmp_path / "summary.json", identified(promote))
    write_json(tmp_path / "locust_summary.json", fresh_locust("FAIL", 1))
    (tmp_path / "locust.html").write_text("<html>locust</html>")
    result = run_gate(tmp_path, env={})
    assert result.exit_code == 10
    assert any(f"used {tmp_path / 'locust_summary.json'}" in ln for ln in result.lines)
    assert any(ln.endswith(": FAIL") for ln in result.lines)
    html = (tmp_path / "signoff.html").read_text()
    assert 'id="locust-link" href="locust.html"' in html
    assert "HTTP Aggregated" in html


def test_gate_refuses_a_locust_summary_of_another_run(
    tmp_path: Path, promote: Summary, write_json: Callable[[Path, Any], Path]
) -> None:
    write_summary(tmp_path / "summary.json", identified(promote, pipeline_run_id="ci-2-1"))
    old = fresh_locust("PASS")
    old["run"]["pipeline_run_id"] = "ci-1-1"
    old["run"]["finished_at"] = _iso(timedelta(hours=1))
    write_json(tmp_path / "locust_summary.json", old)
    result = run_gate(tmp_path, env={}, render=False)
    assert result.exit_code == 12
    assert [e.path.name for e in result.refused] == ["locust_summary.json"]
    assert "from pipeline run ci-1-1" in result.refused[0].problem


def test_gate_locust_only_when_only_locust_is_required(
    tmp_path: Path, write_json: Callable[[Path, Any], Path]
) -> None:
    write_json(tmp_path / "locust_summary.json", fresh_locust("PASS"))
    options = resolve_options(require=["locust"], env={})
    result = run_gate(tmp_path, options=options)
    assert (result.verdict, result.exit_code) == (PromotionVerdict.PROMOTE, 0)
    assert not (tmp_path / "signoff.html").exists()
    # the default still requires the pytest summary: a Locust PASS alone never promotes
    result = run_gate(tmp_path, env={})
    assert result.exit_code == 12
    assert result.verdict is PromotionVerdict.DO_NOT_PROMOTE
