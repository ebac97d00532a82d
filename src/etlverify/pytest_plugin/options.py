"""Command line options and ini keys for every setting; the run's `Settings`, resolved once.

A bad value stops the run before anything starts: `pytest.UsageError` with one line naming the
option, variable or ini key it came from (exit code 2, no traceback).

The profile (`--profile staging|production`, `etlverify.settings.PROFILES`) is applied here too:
the heavy checks' budgets the environment does not set are put into it for the run (the checks in
verification/post_deploy/ read those variables), and under ``production`` every fuzz check is
skipped with the reason (a test with the ``fuzz`` marker, the ``fuzz_budget`` fixture or
hypothesis's ``@given`` that talks to the target).
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

__all__ = ["EXIT_USAGE", "FUZZ_FIXTURES", "get_settings", "is_fuzz_check"]

#: the verification run's exit code for a usage or configuration error (docs/exit-codes.md), the
#: same as the Locust side's; pytest's own 4 is left to command lines pytest itself cannot parse
EXIT_USAGE = 2
#: fixtures that make a test a fuzz check (verification/post_deploy/test_post_fuzz.py's budget)
FUZZ_FIXTURES = frozenset({"fuzz_budget"})
#: the settings the plugin hands to the heavy checks through the environment they read
_BUDGETS = (
    "connections",
    "connection_timeout_s",
    "connections_budget_s",
    "fuzz_budget_s",
    "fuzz_examples",
)
_EXPORTED_KEY = pytest.StashKey[dict[str, str]]()

GROUP = "etlverify"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register `--base-url` ... (see docs/suite-api.md), their ini keys, and `--etl-checklist`."""
    group = parser.getgroup(GROUP, "etlverify: verify an ETL Plus deployment")
    for spec in SETTINGS:
        if spec.cli is None:  # environment only (the heavy checks' budgets)
            continue
        dest = f"etlplus_{spec.name}"
        env_help = f" [env {spec.env}]"
        if spec.kind == "bool":
            group.addoption(
                spec.cli,
                # --x and --no-x: a default that is on (--embedded-faults) can be switched off
                action=argparse.BooleanOptionalAction,
                default=None,
                dest=dest,
                help=spec.help + env_help,
            )
        elif spec.kind == "profiles":
            group.addoption(
                spec.cli,
                action="append",
                default=None,
                dest=dest,
                metavar="NAME=SOURCE_CONFIG",
                help=spec.help + env_help,
            )
        else:
            group.addoption(
                spec.cli,
                action="store",
                default=None,
                dest=dest,
                metavar="NAME" if spec.kind == "profile" else spec.kind.upper(),
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
    cli = {spec.name: config.getoption(f"etlplus_{spec.name}") for spec in SETTINGS if spec.cli}
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

    pytest prints a UsageError as ``ERROR: <message>`` and exits 4; this prints the same line and
    returns 2, the verification run's usage code (as the Locust side's; docs/exit-codes.md), so
    pytest's 4 is left to a command line pytest itself cannot parse. (pytest_configure is a
    historic hook and cannot be wrapped; the UsageError leaves the session through here.)
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
    """Resolve the settings first of all, so that a bad value stops the run at once; hand the
    heavy checks the budgets of the profile that the environment does not set."""
    settings = get_settings(config)
    config.addinivalue_line(
        "markers",
        "fuzz: sends generated (hypothesis) input to the target; skipped under --profile "
        "production",
    )
    # Only what differs from the checks' own defaults (the staging profile's), so that a run
    # with the default profile leaves the environment of the processes it starts alone.
    exported: dict[str, str] = {}
    specs = {spec.name: spec for spec in SETTINGS}
    checks_defaults = Settings()
    for name in _BUDGETS:
        var = specs[name].env
        value = getattr(settings, name)
        if os.environ.get(var, "").strip() or value == getattr(checks_defaults, name):
            continue
        exported[var] = f"{value:g}" if isinstance(value, float) else str(value)
    os.environ.update(exported)
    config.stash[_EXPORTED_KEY] = exported


def pytest_unconfigure(config: pytest.Config) -> None:
    """Take the budgets this run put into the environment out again (in-process runs)."""
    for var, value in config.stash.get(_EXPORTED_KEY, {}).items():
        if os.environ.get(var) == value:
            del os.environ[var]


def is_fuzz_check(item: pytest.Item) -> bool:
    """A check that sends generated input to the target: marked ``fuzz``, or using a fuzz budget
    fixture, or a hypothesis test (``@given``), and in either of the last two cases a check of the
    target (a checklist item or an ``etl_`` fixture: the project's own property tests are not)."""
    if item.get_closest_marker("fuzz") is not None:
        return True
    names = set(getattr(item, "fixturenames", ()))
    generated = bool(names & FUZZ_FIXTURES) or bool(
        getattr(getattr(item, "obj", None), "is_hypothesis_test", False)
    )
    of_target = item.get_closest_marker("checklist") is not None or any(
        name.startswith("etl_") for name in names
    )
    return generated and of_target


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--profile production``: skip every fuzz check, saying why and how to run it."""
    settings = get_settings(config)
    if settings.fuzz_allowed:
        return
    reason = (
        f"fuzzing skipped: profile production ({settings.source_of('profile')}) sends no "
        "generated, malformed requests to the target; run it against staging (--profile staging)"
    )
    for item in items:
        if is_fuzz_check(item):
            item.add_marker(pytest.mark.skip(reason=reason))


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
