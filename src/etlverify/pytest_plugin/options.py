"""Command line options and ini keys for every setting; the run's `Settings`, resolved once.

A bad value stops the run before anything starts: `pytest.UsageError` with one line naming the
option, variable or ini key it came from (exit code 2, no traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

import pytest

from etlverify.errors import SettingsError
from etlverify.pytest_plugin._state import SETTINGS_KEY
from etlverify.settings import SETTINGS, Settings, resolve_settings

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = ["EXIT_USAGE", "get_settings"]

#: the gate's exit code for a usage or configuration error (docs/exit-codes.md); pytest's is 4,
#: which the gate reserves for INCOMPLETE
EXIT_USAGE = 2

GROUP = "etlverify"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register `--base-url` ... (see docs/suite-api.md), their ini keys, and `--etl-checklist`."""
    group = parser.getgroup(GROUP, "etlverify: verify an ETL Plus deployment")
    for spec in SETTINGS:
        dest = f"etlplus_{spec.name}"
        env_help = f" [env {spec.env}]"
        if spec.kind == "bool":
            group.addoption(
                spec.cli or "",
                # --x and --no-x: a default that is on (--embedded-faults) can be switched off
                action=argparse.BooleanOptionalAction,
                default=None,
                dest=dest,
                help=spec.help + env_help,
            )
        elif spec.kind == "profiles":
            group.addoption(
                spec.cli or "",
                action="append",
                default=None,
                dest=dest,
                metavar="NAME=SOURCE_CONFIG",
                help=spec.help + env_help,
            )
        else:
            group.addoption(
                spec.cli or "",
                action="store",
                default=None,
                dest=dest,
                metavar=spec.kind.upper(),
                help=spec.help + env_help,
            )
        if spec.ini:
            if spec.kind == "profiles":
                parser.addini(spec.ini, help=spec.help, type="linelist", default=None)
            else:
                parser.addini(spec.ini, help=spec.help, type="string", default=None)
    group.addoption(
        "--etl-checklist",
        action="store_true",
        default=False,
        help="print the checklist map (items, automation, tests behind them) and exit",
    )
    parser.addini(
        "etlplus_default_reports",
        type="bool",
        default=True,
        help="write reports/report.html and reports/junit.xml when --html/--junitxml are not given",
    )


def _ini(config: pytest.Config, name: str) -> Any:
    try:
        value = config.getini(name)
    except ValueError:
        return None
    return value or None


def _resolve(config: pytest.Config) -> Settings:
    cli = {spec.name: config.getoption(f"etlplus_{spec.name}") for spec in SETTINGS}
    ini = {spec.ini: _ini(config, spec.ini) for spec in SETTINGS if spec.ini}
    return resolve_settings(cli, os.environ, ini)


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config: pytest.Config) -> Generator[None, int | pytest.ExitCode, int]:
    """A `pytest.UsageError` (a bad setting, a bad baseline, a bad role...) exits 2, not 4.

    pytest prints a UsageError as ``ERROR: <message>`` and exits 4; the gate's exit codes give 4 to
    INCOMPLETE, so this prints the same line and returns 2. (pytest_configure is a historic hook and
    cannot be wrapped; the UsageError leaves the session through here.)
    """
    try:
        return int((yield))
    except pytest.UsageError as exc:
        for message in exc.args:
            sys.stderr.write(f"ERROR: {message}\n")
        sys.stderr.flush()
        return EXIT_USAGE


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Resolve the settings first of all, so that a bad value stops the run at once."""
    get_settings(config)


def get_settings(config: pytest.Config) -> Settings:
    """The run's settings, resolved on first use (any of the plugin's tryfirst hooks may be first).

    A bad value raises `pytest.UsageError` (one line, exit code 2).
    """
    if SETTINGS_KEY not in config.stash:
        try:
            config.stash[SETTINGS_KEY] = _resolve(config)
        except SettingsError as exc:
            raise pytest.UsageError(str(exc)) from None
    return config.stash[SETTINGS_KEY]
