"""`--profile`: the header says what the checks send, production skips fuzzing and lowers budgets.

Every inner run is a subprocess with no target: the checks here use `etl_settings` (which needs
none) and a `fuzz_budget` fixture or `@given` of their own, the way the fuzz checks of
verification/post_deploy/ do; the real ones are checked at collection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
USAGE_ERROR = 2

CHECKS = """
import os

import pytest
from hypothesis import given, settings, strategies as st


@pytest.fixture
def fuzz_budget():
    return 1


def test_fuzz_with_budget(etl_settings, fuzz_budget):
    pass


@settings(max_examples=2, database=None)
@given(st.integers())
def test_generated(etl_settings, n):
    pass


@given(st.integers())
def test_own_property(n):
    '''A hypothesis test that is not a check of the target: never skipped.'''


@pytest.mark.fuzz
def test_marked():
    pass


def test_budgets_reach_the_checks(etl_settings):
    print("BUDGETS", os.environ.get("ETLPLUS_CONNECTIONS"), os.environ.get(
        "ETLPLUS_CONNECTIONS_BUDGET_S"), os.environ.get("ETLPLUS_FUZZ_EXAMPLES"))
"""

SKIP_REASON = (
    "fuzzing skipped: profile production (--profile) sends no generated, malformed requests to "
    "the target; run it against staging (--profile staging)"
)


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "ETLPLUS_PROFILE",
        "ETLPLUS_CONNECTIONS",
        "ETLPLUS_CONNECTIONS_BUDGET_S",
        "ETLPLUS_CONNECTION_TIMEOUT_S",
        "ETLPLUS_FUZZ_BUDGET_S",
        "ETLPLUS_FUZZ_EXAMPLES",
        "ETLPLUS_PERF_RATE",
        "ETLPLUS_BASE_URL",
    ):
        monkeypatch.delenv(var, raising=False)


def test_production_skips_fuzzing_and_hands_the_budgets_to_the_checks(
    pytester: pytest.Pytester, run_args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_env(monkeypatch)
    pytester.makepyfile(test_checks=CHECKS)
    result = pytester.runpytest_subprocess(*run_args, "--profile", "production", "-rs", "-s", "-v")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=2, skipped=3)
    out = result.stdout.str()
    for name in ("test_fuzz_with_budget", "test_generated", "test_marked"):
        assert f"test_checks.py::{name} SKIPPED" in out
    assert "test_checks.py::test_own_property PASSED" in out
    assert SKIP_REASON in out
    assert "BUDGETS 50 15 None" in out  # only what differs from the checks' own defaults
    header = [ln for ln in result.outlines if ln.startswith("etlverify: ")]
    sends = next(ln for ln in header if "the checks send" in ln)
    assert "(profile production [--profile])" in sends
    assert "~60 req/s for 40 s of measured load" in sends
    assert "50 fresh connections one after another (<= 15 s)" in sends
    assert "no fuzzing (skipped)" in sends
    assert not any("gentler" in ln for ln in header)
    assert "rate 60 rps" in out
    assert "  profile = production  [--profile]" in out
    assert "  connections = 50  [profile production]" in out
    assert "Traceback" not in out + result.stderr.str()


def test_default_profile_says_what_it_sends_and_names_the_gentler_one(
    pytester: pytest.Pytester, run_args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_env(monkeypatch)
    pytester.makepyfile(test_checks=CHECKS)
    result = pytester.runpytest_subprocess(*run_args, "-s")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=5)
    out = result.stdout.str()
    assert "BUDGETS None None None" in out  # the staging defaults are the checks' own
    result.stdout.fnmatch_lines(
        [
            "etlverify: the checks send, when selected (profile staging [[]default[]]): ~100 req/s "
            "for 40 s of measured load on 4 key routes (~1000 of them create jobs), *; "
            "300 fresh connections one after another (<= 30 s); hypothesis fuzzing, "
            "<= 100 requests or 20 s a check",
            "etlverify: destructive checks on (the embedded reference*); gentler: "
            "--profile production (~60 req/s of measured load, 50 fresh connections, no fuzzing)",
        ]
    )


def test_explicit_values_win_over_the_profile(
    pytester: pytest.Pytester, run_args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("ETLPLUS_PROFILE", "production")
    monkeypatch.setenv("ETLPLUS_CONNECTIONS", "120")
    pytester.makepyfile(test_checks=CHECKS)
    result = pytester.runpytest_subprocess(
        *run_args, "--perf-rate", "80", "--base-url", "http://127.0.0.1:9", "-s"
    )
    assert result.ret == 0, result.stdout.str()
    out = result.stdout.str()
    assert "BUDGETS 120 15 None" in out
    assert "rate 80 rps" in out
    result.stdout.fnmatch_lines(
        [
            "etlverify: the checks send, when selected (profile production "
            "[[]env ETLPLUS_PROFILE[]]): ~80 req/s *; 120 fresh connections *",
            "etlverify: destructive checks off (--allow-destructive: *)",
        ]
    )


def test_bad_profile_is_one_line_usage_error(
    pytester: pytest.Pytester, run_args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    _clean_env(monkeypatch)
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess(*run_args, "--profile", "prod")
    assert result.ret == USAGE_ERROR
    errors = [line for line in result.errlines if line.strip()]
    assert errors == [
        "ERROR: --profile: expected staging or production, got 'prod'; did you mean 'production'?"
    ]


def test_the_suites_fuzz_checks_are_skipped_under_production(
    pytester: pytest.Pytester, run_args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real fuzz checks (a `fuzz_budget` fixture, `@given`) are recognised at collection."""
    _clean_env(monkeypatch)
    skipped: dict[str, str | None] = {}

    class Recorder:
        def pytest_collection_finish(self, session: pytest.Session) -> None:
            for item in session.items:
                mark = item.get_closest_marker("skip")
                skipped[item.name] = mark.kwargs.get("reason") if mark else None

    pytester.chdir()
    pytester.inline_run(
        *run_args,
        str(ROOT / "verification" / "post_deploy" / "test_post_fuzz.py"),
        str(ROOT / "verification" / "component" / "test_types.py"),
        "--collect-only",
        "--profile",
        "production",
        "--allow-destructive",
        "--base-url",
        "http://127.0.0.1:9",
        plugins=[Recorder()],
    )
    # the in-process run took the budgets it put into the environment out again
    assert "ETLPLUS_CONNECTIONS" not in os.environ
    fuzz = {name for name, reason in skipped.items() if reason and "fuzzing skipped" in reason}
    assert fuzz == {
        "test_malformed_requests_never_give_5xx",
        "test_malformed_job_bodies_never_give_5xx",
        "test_typed_inputs_never_cause_5xx",
    }, skipped
