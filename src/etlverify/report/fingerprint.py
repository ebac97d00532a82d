"""The environment fingerprint of a run: what was verified, by what, when, by whom."""

from __future__ import annotations

import getpass
import os
import platform
import subprocess
from typing import TYPE_CHECKING, Any

from etlverify import __version__

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from etlverify.target import Target

__all__ = ["build_fingerprint", "operator_name", "suite_git"]


def suite_git(root: Path, timeout: float = 5.0) -> tuple[str | None, bool | None]:
    """(commit, has uncommitted changes) of the suite's checkout; (None, None) outside git."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return commit.stdout.strip() or None, dirty


def operator_name(cli: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    """(operator, source): ``--operator``, ETLPLUS_OPERATOR, $USER, $USERNAME, the login name."""
    if cli:
        return cli, "--operator"
    for var in ("ETLPLUS_OPERATOR", "USER", "USERNAME"):
        if env.get(var):
            return env[var], f"env {var}"
    try:
        return getpass.getuser(), "login name"
    except (OSError, KeyError):
        return "?", "unknown"


def build_fingerprint(
    *,
    target: Target | None,
    base_url: str | None,
    flags: Mapping[str, Any] | None,
    flags_source: str,
    root: Path,
    operator: str,
    settings: Sequence[tuple[str, str, str]] = (),
    baseline: Mapping[str, Any] | None = None,
    run_id: str = "",
) -> dict[str, Any]:
    """The ``fingerprint`` object of summary.json (see docs/report-schema.md)."""
    commit, dirty = suite_git(root)
    status = target.status if target is not None else {}
    flag_states = {k: flags[k] for k in ("flags", "rollout_percentages") if flags and k in flags}
    return {
        "target_url": target.base_url if target is not None else base_url,
        "ws_url": target.ws_url if target is not None else None,
        "embedded": bool(target.embedded) if target is not None else base_url is None,
        "target_version": target.version if target is not None else None,
        "build_commit": target.commit if target is not None else None,
        "config_sha256": target.loaded_sha256("config") if target is not None else None,
        "flags_sha256": (flags or {}).get("sha256")
        or (target.loaded_sha256("feature_flags") if target is not None else None),
        "flags": flag_states,
        "flags_source": flags_source,
        "target_status": status.get("status") if isinstance(status, dict) else None,
        "suite_version": __version__,
        "suite_commit": commit,
        "suite_dirty": dirty,
        "baseline": dict(baseline) if baseline else None,
        "operator": operator,
        "run_id": run_id,
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "settings": [list(row) for row in settings],
    }
