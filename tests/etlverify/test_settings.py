"""Settings resolution: CLI -> env -> ini -> default, sources remembered, errors name the source."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from etlverify.settings import DEFAULT_JOB_PROFILES, SettingsError, resolve_settings

if TYPE_CHECKING:
    from pathlib import Path


def test_defaults() -> None:
    s = resolve_settings()
    assert s.base_url is None
    assert s.embedded
    assert s.destructive_allowed
    assert s.request_timeout == 10
    assert s.run_timeout == 600
    assert s.reload_timeout == 15
    assert s.job_types == ("EXTRACT", "TRANSFORM", "LOAD", "FULL_ETL")
    assert dict(s.job_profiles) == dict(DEFAULT_JOB_PROFILES)
    assert s.source_of("request_timeout") == "default"


def test_precedence_cli_over_env_over_ini() -> None:
    ini = {"etlplus_request_timeout": "3"}
    env = {"ETLPLUS_REQUEST_TIMEOUT": "2"}
    assert resolve_settings({}, {}, ini).request_timeout == 3
    assert resolve_settings({}, env, ini).request_timeout == 2
    s = resolve_settings({"request_timeout": "1.5"}, env, ini)
    assert s.request_timeout == 1.5
    assert s.source_of("request_timeout") == "--request-timeout"
    assert resolve_settings({}, env, ini).source_of("request_timeout") == (
        "env ETLPLUS_REQUEST_TIMEOUT"
    )
    assert resolve_settings({}, {}, ini).source_of("request_timeout") == (
        "ini etlplus_request_timeout"
    )


@pytest.mark.parametrize(
    ("cli", "env", "message"),
    [
        ({"request_timeout": "abc"}, {}, "--request-timeout: expected seconds > 0, got 'abc'"),
        ({}, {"ETLPLUS_REQUEST_TIMEOUT": "0"}, "env ETLPLUS_REQUEST_TIMEOUT: expected seconds > 0"),
        ({"base_url": "localhost:8080"}, {}, "--base-url: expected a URL starting with http://"),
        ({}, {"ETLPLUS_WS_URL": "http://x/ws"}, "env ETLPLUS_WS_URL: expected a URL starting"),
        ({"job_profiles": ["quick"]}, {}, "--job-profile: expected NAME=SOURCE_CONFIG"),
        ({}, {"ETLPLUS_ALLOW_DESTRUCTIVE": "maybe"}, "env ETLPLUS_ALLOW_DESTRUCTIVE: expected"),
        ({"deploy_root": "/no/such/dir"}, {}, "--deploy-root: expected an existing directory"),
    ],
)
def test_bad_values_name_their_source(
    cli: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        resolve_settings(cli, env, {})  # type: ignore[arg-type]
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_bad_ini_value() -> None:
    with pytest.raises(SettingsError, match=r"^ini etlplus_run_timeout: expected seconds > 0"):
        resolve_settings({}, {}, {"etlplus_run_timeout": "-5"})


def test_ws_url_derived_from_base_url() -> None:
    s = resolve_settings({"base_url": "https://etl.example:8443/"}, {}, {})
    assert s.base_url == "https://etl.example:8443"
    assert s.ws_url == "wss://etl.example:8443/ws"
    assert not s.embedded
    assert not s.destructive_allowed


def test_profiles_from_each_source() -> None:
    s = resolve_settings({}, {"ETLPLUS_JOB_PROFILES": "quick=rows=1;;big=rows=9;batch=3"}, {})
    assert s.job_profiles["quick"] == "rows=1"
    assert s.job_profiles["big"] == "rows=9;batch=3"
    assert s.job_profiles["long"] == DEFAULT_JOB_PROFILES["long"]
    s = resolve_settings({"job_profiles": ["x=rows=5"]}, {}, {"etlplus_job_profiles": ["y=a=1"]})
    assert "x" in s.job_profiles
    assert "y" not in s.job_profiles


def test_paths_commands_and_bools(tmp_path: Path) -> None:
    s = resolve_settings(
        {
            "deploy_root": str(tmp_path),
            "monitor_cmd": "bash '/opt/x y/monitor.sh'",
            "allow_destructive": True,
            "job_types": "extract, load",
        },
        {"ETLPLUS_EMBEDDED_FAULTS": "yes"},
        {},
    )
    assert s.deploy_root == tmp_path.resolve()
    assert s.monitor_cmd == ("bash", "/opt/x y/monitor.sh")
    assert s.allow_destructive
    assert s.embedded_faults
    assert s.job_types == ("EXTRACT", "LOAD")


def test_secrets_only_from_env_and_never_shown() -> None:
    env = {
        "ETLPLUS_USERNAME": "admin",
        "ETLPLUS_PASSWORD": "hunter2-secret",
        "ETLPLUS_TOKEN": "tok-abcdef123456",
    }
    s = resolve_settings({}, env, {})
    assert s.password == "hunter2-secret"
    assert s.token == "tok-abcdef123456"
    text = repr(s) + str(s.describe())
    assert "hunter2" not in text
    assert "tok-abcdef" not in text
    assert ("password", "***", "env ETLPLUS_PASSWORD") in s.describe()
    assert s.token_env_ref == "$ETLPLUS_TOKEN"


def test_username_without_password_is_an_error() -> None:
    with pytest.raises(SettingsError, match="ETLPLUS_PASSWORD"):
        resolve_settings({}, {"ETLPLUS_USERNAME": "admin"}, {})


def test_settings_are_frozen() -> None:
    s = resolve_settings()
    with pytest.raises(AttributeError):
        s.request_timeout = 1  # type: ignore[misc]
