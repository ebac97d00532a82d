"""summary.json's schema, and `etlverify gate`: merge, verdict, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from etlverify.cli import main
from etlverify.gate import merge, run_gate
from etlverify.report.summary import (
    SCHEMA_VERSION,
    PromotionVerdict,
    Summary,
    SummaryError,
    load_summary,
    write_summary,
)

from .conftest import ERRORS_ITEM, FAILURE, JOBS_ITEM, locust_summary, make_summary

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


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
    summary = make_summary({ERRORS_ITEM: [("failed", FAILURE)], JOBS_ITEM: [("skipped", "why")]})
    path = tmp_path / "summary.json"
    write_summary(path, summary)
    loaded = load_summary(path)
    assert loaded.to_json() == summary.to_json()
    assert loaded.verdict is PromotionVerdict.DO_NOT_PROMOTE
    assert loaded.counts["failed"] == 1
    assert loaded.coverage["in_scope"] == 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
        (lambda d: d.update(verdict="MAYBE"), "verdict must be PROMOTE, DO NOT PROMOTE or"),
        (lambda d: d.update(exit_code=7), "exit_code must be 0..4"),
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
        (locust_summary("INCONCLUSIVE"), True, "INCOMPLETE", 4),
        (locust_summary(None), True, "INCOMPLETE", 4),
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


# -- the command ---------------------------------------------------------------------------------


def _gate(directory: Path, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "etlverify.cli", "gate", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_gate_command_promote_and_block(tmp_path: Path, promote: Summary) -> None:
    write_summary(tmp_path / "summary.json", promote)
    code, out, err = _gate(tmp_path)
    assert code == 0, out + err
    assert out.splitlines()[0] == "etlverify gate: PROMOTE (exit code 0)"
    assert (tmp_path / "signoff.html").exists()
    failed = make_summary({ERRORS_ITEM: [("failed", FAILURE)]})
    write_summary(tmp_path / "summary.json", failed)
    code, out, _ = _gate(tmp_path, "--no-html")
    assert code == 1
    assert out.splitlines()[0] == "etlverify gate: DO NOT PROMOTE (exit code 1)"
    assert f"item {ERRORS_ITEM}: failed - Validate error handling" in out


def test_gate_inconclusive_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_summary(tmp_path / "summary.json", make_summary({JOBS_ITEM: [("skipped", "why")]}))
    monkeypatch.delenv("ETLPLUS_INCONCLUSIVE_BLOCKS", raising=False)
    assert main(["gate", str(tmp_path), "--no-html"]) == 0
    assert "warning: INCOMPLETE does not block (exit 0)" in capsys.readouterr().out
    assert main(["gate", str(tmp_path), "--no-html", "--inconclusive-blocks"]) == 4
    monkeypatch.setenv("ETLPLUS_INCONCLUSIVE_BLOCKS", "1")
    assert main(["gate", str(tmp_path), "--no-html"]) == 4
    assert main(["gate", str(tmp_path), "--no-html", "--no-inconclusive-blocks"]) == 0
    monkeypatch.setenv("ETLPLUS_INCONCLUSIVE_BLOCKS", "maybe")
    assert main(["gate", str(tmp_path), "--no-html"]) == 2
    assert "env ETLPLUS_INCONCLUSIVE_BLOCKS: expected a boolean" in capsys.readouterr().err


def test_gate_missing_both_is_one_line_exit_2(tmp_path: Path) -> None:
    code, out, err = _gate(tmp_path)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "neither summary.json" in err
    assert "Traceback" not in err
    code, _, err = _gate(tmp_path / "nope")
    assert code == 2
    assert "no such directory" in err


@pytest.mark.parametrize("name", ["summary.json", "locust_summary.json"])
def test_gate_broken_json_names_the_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text('{"verdict": "PROMOTE",')
    code, _, err = _gate(tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]
    assert str(tmp_path / name) in err
    assert "invalid JSON" in err


def test_gate_merges_locust_and_links_its_report(
    tmp_path: Path, promote: Summary, write_json: Callable[[Path, Any], Path]
) -> None:
    write_summary(tmp_path / "summary.json", promote)
    write_json(tmp_path / "locust_summary.json", locust_summary("FAIL", 1))
    (tmp_path / "locust.html").write_text("<html>locust</html>")
    result = run_gate(tmp_path, env={})
    assert result.exit_code == 1
    assert any("locust_summary.json (locust: FAIL)" in line for line in result.lines)
    html = (tmp_path / "signoff.html").read_text()
    assert 'id="locust-link" href="locust.html"' in html
    assert "HTTP Aggregated" in html


def test_gate_leaves_out_a_locust_summary_of_another_run(
    tmp_path: Path, promote: Summary, write_json: Callable[[Path, Any], Path]
) -> None:
    write_summary(tmp_path / "summary.json", promote)
    write_json(tmp_path / "locust_summary.json", locust_summary("FAIL", 1, "2025-01-20T12:00:00Z"))
    result = run_gate(tmp_path, env={})
    assert result.exit_code == 0
    assert any("left out" in line for line in result.lines)


def test_gate_locust_only(tmp_path: Path, write_json: Callable[[Path, Any], Path]) -> None:
    write_json(tmp_path / "locust_summary.json", locust_summary("PASS"))
    result = run_gate(tmp_path, env={})
    assert (result.summary.verdict, result.exit_code) == (PromotionVerdict.PROMOTE, 0)
    assert not (tmp_path / "signoff.html").exists()
