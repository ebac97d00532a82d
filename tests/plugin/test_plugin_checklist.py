"""Checklist markers: unknown ids are collection errors; --etl-checklist prints the map."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_unknown_checklist_id_is_a_collection_error(
    pytester: pytest.Pytester, run_args: tuple[str, ...]
) -> None:
    pytester.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.checklist("pre.1_environment_setup.backup_intgrity")
        def test_typo():
            pass

        def test_fine():
            pass
        """
    )
    result = pytester.runpytest_subprocess(*run_args)
    assert result.ret == pytest.ExitCode.INTERRUPTED  # collection errors interrupt the run
    result.stdout.fnmatch_lines(
        [
            "*ERROR collecting test_bad.py*",
            "test_bad.py::test_typo: unknown checklist item"
            " 'pre.1_environment_setup.backup_intgrity'"
            " (did you mean 'pre.1_environment_setup.backup_integrity'?)",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_empty_checklist_marker_is_an_error(
    pytester: pytest.Pytester, run_args: tuple[str, ...]
) -> None:
    pytester.makepyfile("import pytest\n@pytest.mark.checklist()\ndef test_x():\n    pass\n")
    result = pytester.runpytest_subprocess(*run_args)
    result.stdout.fnmatch_lines(["*test_x: checklist() needs at least one item id*"])
    assert result.ret != 0


def test_etl_checklist_prints_the_map_and_runs_nothing(
    pytester: pytest.Pytester, run_args: tuple[str, ...]
) -> None:
    pytester.makepyfile(
        test_map="""
        import pytest

        @pytest.mark.checklist("pre.1_environment_setup.backup_integrity")
        def test_backup(etl_api):
            raise AssertionError("must not run")
        """
    )
    result = pytester.runpytest_subprocess(*run_args, "--etl-checklist")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "## Pre-Deployment Preparation",
            "*pre.1_environment_setup.backup_binary  ?NO TEST?*",
            "*pre.1_environment_setup.backup_integrity  ?1 test(s)?  Verify backup integrity",
            "*test_map.py::test_backup",
            "*comms.post_deployment.document_lessons_learned  ?manual (deployment lead)?*",
            "checklist: 131 items*automated items have no collected test",
        ]
    )
    assert "must not run" not in result.stdout.str()
    assert "etlverify target: http" not in result.stdout.str()  # nothing was started
