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


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """Choose the rootdir again now that this plugin's options are known.

    pytest picks its rootdir and ini file before it loads plugins from entry points, so the value
    of ``--deploy-root /opt/etlplus`` (space form) is taken for a test path: the rootdir becomes
    /opt/etlplus, this project's pytest configuration (testpaths, addopts) is not read and reports
    land in the deployment folder. This hook runs right after the plugins are loaded and before
    any conftest or test path is used: with the full parser, the option values are no longer test
    paths, so the rootdir, ini file, addopts and conftest cut-off are set as pytest would have set
    them had it known the options. ``--rootdir`` or ``-c`` given by the user are left alone.
    """
    from _pytest.config.findpaths import determine_setup

    try:
        ns = parser.parse_known_args(list(args))
    except (pytest.UsageError, SystemExit):  # pytest reports bad options itself later
        return
    if ns.rootdir or ns.inifilename:
        return
    rootpath, inipath, inicfg, ignored = determine_setup(
        inifile=None,
        override_ini=ns.override_ini,
        args=list(ns.file_or_dir),
        rootdir_cmd_arg=None,
        invocation_dir=early_config.invocation_params.dir,
    )
    if rootpath == early_config.rootpath and inipath == early_config.inipath:
        return
    old_cut = str(early_config.inipath.parent if early_config.inipath else early_config.rootpath)
    config: Any = early_config  # private fields: pytest offers no public way to re-root
    config._rootpath, config._inipath, config._inicfg = rootpath, inipath, inicfg
    config._ignored_config_files = ignored
    config._inicache.clear()
    config._parser.extra_info["rootdir"] = str(rootpath)
    config._parser.extra_info["inifile"] = str(inipath)
    if config.known_args_namespace.confcutdir == old_cut:
        config.known_args_namespace.confcutdir = str(inipath.parent if inipath else rootpath)
    addopts = list(early_config.getini("addopts"))
    if addopts:
        args[:0] = addopts
        early_config.pluginmanager.consider_preparse(addopts, exclude_only=False)


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
