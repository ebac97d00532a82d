"""The connection-hygiene and fuzzing checks against a hostile reference (issue 8, items 3 and 4).

Each test runs the real checks of `verification/post_deploy/test_post_connections.py` or
`test_post_fuzz.py` in a subprocess (`python -m pytest ... --base-url URL`) against a reference
started with `--enable-faults`, whose hostile mode is switched on through `POST /api/_faults
{"hostile": {...}}`. The connection cap leaves the target unusable for good, so that test gets a
target of its own; the other modes share one and are switched off after each test.

What is proven: the sequential check names the connection at which a capped target stopped
answering; the reuse check names the hang on a keep-alive connection after an error; a healthy
reference passes both; fuzzing reports each distinct violation as one line with its curl line, stops
at the first request without an answer, ends within its time budget, and nothing in the output or
the reports shows a traceback, an exception group or an object repr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fault_support import REPO, parse_junit

from etlverify.embedded import SUITE_CONFIG_OVERRIDES, EmbeddedTarget

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path

    from fault_support import CheckOutcome

pytestmark = pytest.mark.slow

CONNECTIONS = "verification/post_deploy/test_post_connections.py"
FUZZ = "verification/post_deploy/test_post_fuzz.py"
SEQUENTIAL = f"{CONNECTIONS}::test_fresh_connections_are_released"
REUSE = f"{CONNECTIONS}::test_keep_alive_connection_survives_an_error"
FUZZ_REQUESTS = f"{FUZZ}::test_malformed_requests_never_give_5xx"
FUZZ_JOBS = f"{FUZZ}::test_malformed_job_bodies_never_give_5xx"
#: what must never reach a person, in the output or the reports
FORBIDDEN = ("Traceback", "Exception Group", "object at 0x")
#: one finding of a fuzz failure: "  3. error body not JSON: /api/jobs/* answered HTTP 404, ..."
FINDING = re.compile(r"^\s*(?:got:\s+)?(\d+)\. (.+?): (\S+) answered HTTP (\d{3})\b", re.MULTILINE)
#: the inner runs wait 3 s for an answer, not the default 10 s
FAST = ("--request-timeout", "3")


@dataclass
class InnerRun:
    """One run of real checks: exit code, output, each check's outcome and duration."""

    args: list[str]
    returncode: int
    output: str
    seconds: float
    checks: dict[str, CheckOutcome]
    durations: dict[str, float]
    reports: dict[str, str]

    def describe(self) -> str:
        """The command line and the output's tail, for an assertion message."""
        return f"$ {' '.join(self.args)}\n(exit {self.returncode})\n{self.output[-6000:]}"

    def outcome(self, nodeid: str, expected: str) -> CheckOutcome:
        """The check `nodeid`, which must have ended `expected` (passed / failed / skipped)."""
        check = self.checks.get(nodeid)
        assert check is not None, f"{nodeid} did not run\n{self.describe()}"
        assert check.outcome == expected, (
            f"{nodeid}: {check.outcome}, expected {expected}: {check.full_text[:3000]}\n"
            f"{self.describe()}"
        )
        return check

    def assert_clean(self) -> None:
        """No traceback, exception group or object repr in the output or the reports."""
        for where, text in {"output": self.output, **self.reports}.items():
            for bad in FORBIDDEN:
                assert bad not in text, f"{bad!r} in {where}:\n{_around(text, bad)}"


def _around(text: str, needle: str, width: int = 600) -> str:
    at = text.find(needle)
    return text[max(0, at - width) : at + width]


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without settings that would change the inner run, plus `extra`."""
    drop = ("ETLPLUS_", "PYTEST_XDIST", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


def _durations(junit: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        nodeid = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name', '')}"
        out.setdefault(nodeid, float(case.get("time", "0") or 0))
    return out


def run_checks(
    target: EmbeddedTarget,
    selection: Sequence[str],
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 150,
) -> InnerRun:
    """Run `selection` of the real suite against `target`, reports in `workdir`, bounded."""
    workdir.mkdir(parents=True, exist_ok=True)
    junit = workdir / "junit.xml"
    args = [
        sys.executable,
        "-m",
        "pytest",
        "--rootdir",
        str(REPO),
        "-p",
        "no:randomly",
        "-p",
        "no:xdist",
        "-q",
        "-rA",
        "--base-url",
        target.base_url,
        "--html",
        str(workdir / "report.html"),
        "--junitxml",
        str(junit),
        *FAST,
        *selection,
    ]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            args,
            cwd=REPO,
            env=_child_env(env or {}),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise AssertionError(f"inner run exceeded {timeout:g} s: {args}\n{out[-4000:]}") from None
    output = proc.stdout + proc.stderr
    assert junit.exists(), f"no JUnit XML written\n{output[-4000:]}"
    reports = {
        name: (workdir / name).read_text(encoding="utf-8")
        for name in ("summary.json", "signoff.html", "junit.xml")
        if (workdir / name).exists()
    }
    return InnerRun(
        args,
        proc.returncode,
        output,
        time.monotonic() - started,
        parse_junit(junit),
        _durations(junit),
        reports,
    )


def set_hostile(target: EmbeddedTarget, **modes: Any) -> None:
    """Switch hostile modes on (`POST /api/_faults {"hostile": modes}`)."""
    resp = httpx.post(f"{target.base_url}/api/_faults", json={"hostile": modes}, timeout=5)
    assert resp.status_code == 200, f"hostile {modes}: HTTP {resp.status_code} {resp.text}"
    state = resp.json()["hostile"]
    assert all(state[k] == v for k, v in modes.items()), state


def _new_target() -> EmbeddedTarget:
    return EmbeddedTarget(enable_faults=True, config_overrides=SUITE_CONFIG_OVERRIDES)


@pytest.fixture(scope="module")
def shared_target() -> Iterator[EmbeddedTarget]:
    """One reference with fault switches for the modes that can be switched off again."""
    server = _new_target().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def target(shared_target: EmbeddedTarget) -> Iterator[EmbeddedTarget]:
    """The shared reference with no fault before the test and none left after it."""
    httpx.delete(f"{shared_target.base_url}/api/_faults", timeout=5).raise_for_status()
    try:
        yield shared_target
    finally:
        httpx.delete(f"{shared_target.base_url}/api/_faults", timeout=5).raise_for_status()


@pytest.fixture
def own_target() -> Iterator[EmbeddedTarget]:
    """A reference of its own, for a mode that leaves it unusable (the connection cap)."""
    server = _new_target().start()
    try:
        yield server
    finally:
        server.stop()


def _findings(check: CheckOutcome) -> list[tuple[str, str, str]]:
    """(kind, route, status) of every numbered finding line of a fuzz failure."""
    return [(m[2], m[3], m[4]) for m in FINDING.finditer(check.full_text)]


# -- connection hygiene ----------------------------------------------------------------------------


def test_healthy_reference_passes_both_connection_checks(
    target: EmbeddedTarget, tmp_path: Path
) -> None:
    """Control: 300 fresh connections are answered and the reused connection answers after a 404;
    fuzzing with a 3 s budget and no example limit to speak of stops on time and passes."""
    budget = {"ETLPLUS_FUZZ_BUDGET_S": "3", "ETLPLUS_FUZZ_EXAMPLES": "100000"}
    run = run_checks(target, [SEQUENTIAL, REUSE, FUZZ_REQUESTS], tmp_path / "inner", env=budget)
    for nodeid in (SEQUENTIAL, REUSE, FUZZ_REQUESTS):
        run.outcome(nodeid, "passed")
    assert "measured connections: 300 fresh connections answered" in run.output, run.describe()
    assert "GET /api/health on the same connection answered HTTP 200" in run.output
    assert "time budget of 3 s spent" in run.output, run.describe()
    assert run.durations[SEQUENTIAL] < 10, run.durations
    assert run.durations[FUZZ_REQUESTS] < 3 + 3, run.durations  # budget + one request's latency
    assert run.returncode == 0, run.describe()
    run.assert_clean()


def test_connection_cap_fails_naming_the_connection(
    own_target: EmbeddedTarget, tmp_path: Path
) -> None:
    """After a lifetime cap of 40 connections the sequential check fails at once, naming the
    connection that got no answer (the connections the run used before it count too), with a
    curl loop that repeats it; no traceback anywhere."""
    set_hostile(own_target, connection_cap=40)
    run = run_checks(own_target, [SEQUENTIAL], tmp_path / "inner")
    check = run.outcome(SEQUENTIAL, "failed")
    text = check.full_text
    found = re.search(
        r"the target stopped answering after (\d+) connections \(connection (\d+) got no answer "
        r"within 2 s; connections are never released\?\)",
        text,
    )
    assert found, text
    answered, failed_at = int(found[1]), int(found[2])
    assert failed_at == answered + 1, text
    assert 0 < answered <= 40, text
    assert "blocks checklist: post.2_performance_validation.concurrent_user_load" in text
    assert "Reproduce with: for i in $(seq 1 300); do curl -sS -o /dev/null -m 2" in text
    assert own_target.base_url + "/api/health" in text
    assert "got:      connections 1-" in text
    # stops at the first hang: one 2 s timeout and the health view's probe, not 300 of them
    assert run.durations[SEQUENTIAL] < 10, run.durations
    assert run.returncode == 1, run.describe()
    assert "DO NOT PROMOTE" in run.output, run.describe()
    run.assert_clean()


def test_hang_after_error_fails_the_reuse_check(target: EmbeddedTarget, tmp_path: Path) -> None:
    """A connection that never answers again after an error: the reuse check fails naming the
    hang on the reused socket and that it is the error answer that causes it (reuse after a 200
    works), with a curl line that reuses one connection; fresh connections still all answer."""
    set_hostile(target, hang_after_error=True)
    run = run_checks(target, [SEQUENTIAL, REUSE], tmp_path / "inner")
    run.outcome(SEQUENTIAL, "passed")
    check = run.outcome(REUSE, "failed")
    text = check.full_text
    for snippet in (
        "the second request on a keep-alive connection after an HTTP 404 got no answer within 2 s",
        "it is the error answer that breaks the connection",
        "blocks checklist: post.2_performance_validation.concurrent_user_load",
        f"Reproduce with: curl -sS -i -m 2 {target.base_url}/api/etlverify-no-such-route --next",
    ):
        assert snippet in text, f"{snippet!r} not in:\n{text}"
    assert run.durations[REUSE] < 10, run.durations
    run.assert_clean()


# -- fuzzing with a budget -------------------------------------------------------------------------


def _fuzz(target: EmbeddedTarget, tmp_path: Path, selection: Sequence[str]) -> InnerRun:
    budget = {"ETLPLUS_FUZZ_BUDGET_S": "15", "ETLPLUS_FUZZ_EXAMPLES": "150"}
    return run_checks(target, selection, tmp_path / "inner", env=budget)


def _assert_one_line_each(check: CheckOutcome) -> list[tuple[str, str, str]]:
    findings = _findings(check)
    assert findings, check.full_text
    assert len(findings) == len(set(findings)), f"a finding is repeated:\n{check.full_text}"
    lines = [ln for ln in check.full_text.splitlines() if re.match(r"^\s*(got:\s+)?\d+\. ", ln)]
    for line in lines:
        if "... and" in line:
            continue
        assert "expected " in line, line
        assert ", got " in line, line
        assert "Reproduce with: curl -sS -i -m 3" in line, line
    return findings


def test_fuzz_reports_non_json_errors_one_line_each(target: EmbeddedTarget, tmp_path: Path) -> None:
    """Error bodies that are not JSON: both fuzz checks fail with one line per distinct (kind,
    status, route), each with expected/got and its curl line, within the budget, no traceback."""
    set_hostile(target, non_json_errors=True)
    run = _fuzz(target, tmp_path, [FUZZ_REQUESTS, FUZZ_JOBS])
    for nodeid in (FUZZ_REQUESTS, FUZZ_JOBS):
        check = run.outcome(nodeid, "failed")
        findings = _assert_one_line_each(check)
        assert {kind for kind, _, _ in findings} == {"error body not JSON"}, check.full_text
        assert "distinct contract violation" in check.full_text
        assert "blocks checklist: post.1_functional_testing.validate_error_handling" in (
            check.full_text
        )
        assert run.durations[nodeid] < 15 + 3, run.durations
    jobs = _findings(run.checks[FUZZ_JOBS])
    assert ("error body not JSON", "/api/jobs", "400") in jobs, jobs
    # the evidence reaches summary.json as text a person can read
    assert "error body not JSON: /api/jobs answered HTTP 400" in run.reports["summary.json"]
    assert run.returncode == 1, run.describe()
    run.assert_clean()


def test_fuzz_reports_query_string_400_one_line_each(
    target: EmbeddedTarget, tmp_path: Path
) -> None:
    """A 400 with a non-contract body for any query string: the request fuzzer reports it per
    route, one line each, showing the body and a curl line with the query string."""
    set_hostile(target, query_string_400=True)
    run = _fuzz(target, tmp_path, [FUZZ_REQUESTS])
    check = run.outcome(FUZZ_REQUESTS, "failed")
    findings = _assert_one_line_each(check)
    assert all(kind == "error body not the contract's" for kind, _, _ in findings), findings
    assert all(status == "400" for _, _, status in findings), findings
    assert "bad query" in check.full_text
    assert re.search(r"Reproduce with: curl [^\n]*\?", check.full_text), check.full_text
    assert run.durations[FUZZ_REQUESTS] < 15 + 3, run.durations
    run.assert_clean()


def test_fuzz_stops_at_the_first_request_without_an_answer(
    target: EmbeddedTarget, tmp_path: Path
) -> None:
    """A keep-alive connection that hangs after an error answer: the fuzzer stops at the first
    request that gets no answer (no shrinking, no waiting out the other examples) and reports it
    as one line with the request's curl line and where in the run it happened."""
    set_hostile(target, hang_after_error=True)
    run = _fuzz(target, tmp_path, [FUZZ_REQUESTS])
    check = run.outcome(FUZZ_REQUESTS, "failed")
    text = check.full_text
    # the client names the hang on the reused connection; a plain drop would read differently
    found = re.search(r"\d+\. (keep-alive hang|dropped connection): ", text)
    assert found, text
    # a hang (3 s request timeout) or, if the target closed the poisoned connection, a drop
    assert re.search(r"no response within 3 s|connection dropped", text), text
    assert "a fresh connection answers" in text, text
    assert re.search(r"\(request \d+, [\d.]+ s into the fuzzing", text), text
    line = next(ln for ln in text.splitlines() if found[1] + ": " in ln)
    assert "Reproduce with: curl" in line, line
    assert "stopped by a request that got no answer" in run.output, run.describe()
    # one request timeout (3 s) and one health probe, not 150 examples nor a shrink
    assert run.durations[FUZZ_REQUESTS] < 10, run.durations
    assert "Falsifying example" not in run.output
    run.assert_clean()
