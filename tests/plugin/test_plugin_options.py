"""Bad settings stop the run with one line; an unreachable target ends it with exit code 3."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

pytest_plugins = ["pytester"]

USAGE_ERROR = 2  # the gate's usage error: the plugin maps pytest.UsageError (pytest: 4) to 2


def test_bad_option_is_one_line_usage_error(
    pytester: pytest.Pytester, run_args: tuple[str, ...]
) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess(*run_args, "--request-timeout", "abc")
    assert result.ret == USAGE_ERROR
    errors = [line for line in result.errlines if line.strip()]
    assert errors == ["ERROR: --request-timeout: expected seconds > 0, got 'abc'"]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_bad_env_value_names_the_variable(
    pytester: pytest.Pytester, run_args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    monkeypatch.setenv("ETLPLUS_RUN_TIMEOUT", "soon")
    result = pytester.runpytest_subprocess(*run_args)
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: env ETLPLUS_RUN_TIMEOUT: expected seconds > 0, got 'soon'"]
    )


def test_bad_ini_value_names_the_key(pytester: pytest.Pytester, run_args: tuple[str, ...]) -> None:
    pytester.makeini("[pytest]\netlplus_base_url = localhost:8080\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess(*run_args)
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini etlplus_base_url: expected a URL starting with*"])


def test_unreachable_target_ends_the_run(
    pytester: pytest.Pytester, run_args: tuple[str, ...]
) -> None:
    pytester.makepyfile(
        "def test_health(etl_api):\n    etl_api.get('/api/health')\n"
        "def test_other(etl_api):\n    pass\n"
    )
    start = time.monotonic()
    result = pytester.runpytest_subprocess(*run_args, "--base-url", "http://127.0.0.1:9")
    elapsed = time.monotonic() - start
    assert result.ret == 3
    assert elapsed < 30
    line = (
        "etlverify: target http://127.0.0.1:9 is unreachable: connection refused "
        "(curl -sS -m 5 http://127.0.0.1:9/api/health)"
    )
    output = result.stdout.str() + result.stderr.str()
    assert line in output
    assert sum(line in out for out in result.outlines + result.errlines) == 1
    assert "Traceback" not in output
    assert "passed" not in output
    assert "failed" not in output


def test_no_target_needed_no_probe(pytester: pytest.Pytester, run_args: tuple[str, ...]) -> None:
    """Tests that use no target fixture run even when the target is unreachable."""
    pytester.makepyfile("def test_x(etl_settings):\n    assert etl_settings.base_url\n")
    result = pytester.runpytest_subprocess(*run_args, "--base-url", "http://127.0.0.1:9")
    assert result.ret == 0


def test_run_timeout_leaves_tests_that_never_touch_the_target_alone(
    pytester: pytest.Pytester, run_args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project's own tests, in an environment where the plugin is merely installed, are not cut
    by the verification run's timeout (nor given its per-check limit)."""
    pytester.makepyfile(
        "import time\ndef test_slow():\n    time.sleep(1.5)\ndef test_after():\n    pass\n"
    )
    monkeypatch.setenv("ETLPLUS_RUN_TIMEOUT", "1")
    result = pytester.runpytest_subprocess(*run_args, "--base-url", "http://127.0.0.1:9")
    result.assert_outcomes(passed=2)
    assert "run timeout" not in result.stdout.str()


def test_markers_are_registered_with_signatures(
    pytester: pytest.Pytester, run_args: tuple[str, ...]
) -> None:
    result = pytester.runpytest_subprocess(*run_args, "--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.post_deploy:*",
            "@pytest.mark.destructive:*",
            "@pytest.mark.checklist(*item_ids): *",
        ]
    )


def test_help_lists_every_option(pytester: pytest.Pytester, run_args: tuple[str, ...]) -> None:
    """`pytest --help` renders (a stray % in a help text once broke it) and lists the settings."""
    result = pytester.runpytest_subprocess(*run_args, "--help")
    assert result.ret == 0
    out = result.stdout.str()
    for option in ("--base-url", "--no-embedded-faults", "--tolerance", "--baseline-record"):
        assert option in out
