"""`--profile` and the heavy checks' budgets: resolved like every setting, each with its source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from etlverify.errors import SettingsError
from etlverify.settings import PROFILES, SETTINGS, resolve_settings


def test_default_profile_is_staging_with_its_budgets() -> None:
    s = resolve_settings()
    assert s.profile == "staging"
    assert s.source_of("profile") == "default"
    assert s.fuzz_allowed
    assert (s.connections, s.connections_budget_s) == (300, 30.0)
    assert s.source_of("connections") == "profile staging"
    assert (s.connection_timeout_s, s.fuzz_budget_s, s.fuzz_examples) == (2.0, 20.0, 100)
    assert s.load_profile.perf_rate_rps == 100.0


def test_production_profile_is_gentler_in_every_budget() -> None:
    staging, production = PROFILES["staging"], PROFILES["production"]
    assert production.perf_rate_rps < staging.perf_rate_rps
    assert production.connections < staging.connections
    assert production.connections_budget_s < staging.connections_budget_s
    assert staging.fuzz
    assert not production.fuzz
    # The connection check skips below 20 connections (it proves nothing about a pool then), and
    # a p95 verdict needs 100 samples a trial window: 4 routes, 5 windows of the 40 s default.
    assert production.connections >= 20
    assert production.perf_rate_rps * 40 / 4 / 5 >= 100


@pytest.mark.parametrize(
    ("cli", "env", "ini", "source"),
    [
        ({"profile": "production"}, {"ETLPLUS_PROFILE": "staging"}, {}, "--profile"),
        ({}, {"ETLPLUS_PROFILE": "Production"}, {"etlplus_profile": "staging"}, "env"),
        ({}, {}, {"etlplus_profile": "production"}, "ini etlplus_profile"),
    ],
)
def test_profile_from_each_source(
    cli: dict[str, str], env: dict[str, str], ini: dict[str, str], source: str
) -> None:
    s = resolve_settings(cli, env, ini)
    assert s.profile == "production"
    assert s.source_of("profile").startswith(source)
    assert not s.fuzz_allowed
    assert (s.connections, s.connections_budget_s) == (50, 15.0)
    assert s.source_of("connections_budget_s") == "profile production"


def test_budget_in_the_environment_wins_over_the_profile() -> None:
    env = {"ETLPLUS_PROFILE": "production", "ETLPLUS_CONNECTIONS": "120"}
    s = resolve_settings({}, env, {})
    assert s.connections == 120
    assert s.source_of("connections") == "env ETLPLUS_CONNECTIONS"
    assert s.connections_budget_s == 15.0
    assert ("connections", "120", "env ETLPLUS_CONNECTIONS") in s.describe()
    assert ("profile", "production", "env ETLPLUS_PROFILE") in s.describe()


@pytest.mark.parametrize(
    ("cli", "env", "message"),
    [
        (
            {"profile": "prod"},
            {},
            "--profile: expected staging or production, got 'prod'; did you mean 'production'?",
        ),
        (
            {},
            {"ETLPLUS_PROFILE": "stagin"},
            "env ETLPLUS_PROFILE: expected staging or production, got 'stagin'; "
            "did you mean 'staging'?",
        ),
        ({}, {"ETLPLUS_PROFILE": "qa"}, "env ETLPLUS_PROFILE: expected staging or production"),
        (
            {},
            {"ETLPLUS_CONNECTIONS": "many"},
            "env ETLPLUS_CONNECTIONS: expected a whole number > 0, got 'many'",
        ),
        ({}, {"ETLPLUS_FUZZ_EXAMPLES": "0"}, "env ETLPLUS_FUZZ_EXAMPLES: expected a whole number"),
        ({}, {"ETLPLUS_FUZZ_BUDGET_S": "-1"}, "env ETLPLUS_FUZZ_BUDGET_S: expected seconds > 0"),
    ],
)
def test_bad_profile_or_budget_names_its_source(
    cli: dict[str, str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        resolve_settings(cli, env, {})
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_budgets_have_no_command_line_or_ini() -> None:
    """Environment only, as documented: a CLI or ini value of the same name is ignored."""
    s = resolve_settings({"connections": "7"}, {}, {"etlplus_connections": "7"})
    assert s.connections == 300


def test_the_checks_own_defaults_are_the_staging_profiles() -> None:
    """The heavy checks read their budgets from the environment with defaults of their own; the
    plugin exports only what differs from those, so they must be the staging profile's values."""
    suites = Path(__file__).resolve().parents[2] / "verification" / "post_deploy"
    text = "".join(
        (suites / name).read_text(encoding="utf-8")
        for name in ("test_post_connections.py", "test_post_fuzz.py")
    )
    found = {
        var: float(default)
        for var, default in re.findall(r'_env_number\(\s*"(ETLPLUS_\w+)",\s*([\d.]+)', text)
    }
    staging = resolve_settings()
    by_var = {spec.env: float(getattr(staging, spec.name)) for spec in SETTINGS if not spec.cli}
    assert found == by_var
