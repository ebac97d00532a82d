"""Change the deployment folder and wait for the server to notice; run the operations scripts.

`FlagsEditor` and `ConfigEditor` write `config/feature_flags.json` / `config/config.json`
atomically, then poll the server until it reports the new file's sha256 (proof that it reloaded
this exact content). `restore()` puts the original bytes back. `OpsRunner` runs `monitor.sh` and
`rollback.sh` with a timeout; a hang is killed and reported with the command line.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from etlverify.errors import CheckFailed, TargetError

if TYPE_CHECKING:
    from pathlib import Path

    from etlverify.client import EtlClient, Expect

__all__ = ["ConfigEditor", "FlagsEditor", "OpsRunner", "deep_merge", "sha256_bytes"]


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def deep_merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: `base` with `patch` merged in recursively (the patch wins on leaves)."""
    out = copy.deepcopy(dict(base))
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    # a reader (the server's watcher) must never see a half-written file
    tmp = path.with_name(f".{path.name}.etlverify.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _dump(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


class _FileEditor:
    """Shared logic: one JSON file whose loaded sha256 the server reports somewhere."""

    what = "file"

    def __init__(
        self,
        path: Path,
        api: EtlClient,
        expect: Expect,
        *,
        reload_timeout: float,
        poll_interval: float = 0.2,
    ) -> None:
        self.path = path
        self.api = api
        self.expect = expect
        self.reload_timeout = reload_timeout
        self.poll_interval = poll_interval
        self.original = path.read_bytes()
        self.changed = False

    def loaded_sha256(self) -> str | None:
        """The sha256 the server says it has loaded (None when it does not say)."""
        raise NotImplementedError

    def read(self) -> dict[str, Any]:
        """The file's current content."""
        data = json.loads(self.path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TargetError(f"{self.path}: expected a JSON object")
        return data

    def write_raw(self, text: str | bytes) -> str:
        """Write `text` as the file (atomically) without waiting; returns its sha256."""
        data = text.encode("utf-8") if isinstance(text, str) else text
        self.changed = True
        _write_atomic(self.path, data)
        return sha256_bytes(data)

    def write_json(self, data: Mapping[str, Any]) -> str:
        """Write `data` and wait until the server has loaded it; returns the new sha256."""
        sha = self.write_raw(_dump(data))
        self.wait_loaded(sha)
        return sha

    def wait_loaded(self, sha256: str, timeout: float | None = None) -> None:
        """Poll until the server reports `sha256`; `CheckFailed` after the reload timeout."""
        limit = self.reload_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        seen: str | None = None
        while True:
            seen = self.loaded_sha256()
            if seen == sha256:
                return
            if time.monotonic() >= deadline:
                raise self.expect.fail(
                    f"the server did not reload {self.path.name} within {limit:g} s",
                    expected=f"sha256 {sha256}",
                    got=f"sha256 {seen}",
                )
            time.sleep(self.poll_interval)

    def restore(self) -> None:
        """Put the original bytes back and wait for the server to load them (teardown)."""
        if not self.changed:
            return
        _write_atomic(self.path, self.original)
        self.changed = False
        self.wait_loaded(sha256_bytes(self.original))


class FlagsEditor(_FileEditor):
    """`config/feature_flags.json`; the server's view is ``GET /api/flags`` ``sha256``."""

    what = "feature flags"

    def loaded_sha256(self) -> str | None:
        """``sha256`` of ``GET /api/flags``."""
        resp = self.api.get("/api/flags")
        if resp.status_code != 200:
            return None
        try:
            body = resp.json()
        except ValueError:
            return None
        return body.get("sha256") if isinstance(body, dict) else None

    def set(
        self, flags: Mapping[str, bool] | None = None, rollout: Mapping[str, int] | None = None
    ) -> str:
        """Merge `flags` and `rollout` into the file, write it, wait for the reload."""
        data = self.read()
        data = deep_merge(
            data, {"flags": dict(flags or {}), "rollout_percentages": dict(rollout or {})}
        )
        return self.write_json(data)


class ConfigEditor(_FileEditor):
    """`config/config.json`; the server's view is ``GET /api/health/status`` ``config.sha256``."""

    what = "configuration"

    def loaded_sha256(self) -> str | None:
        """``config.sha256`` of ``GET /api/health/status``."""
        resp = self.api.get("/api/health/status")
        try:
            body = resp.json()
        except ValueError:
            return None
        config = body.get("config") if isinstance(body, dict) else None
        return config.get("sha256") if isinstance(config, dict) else None

    def update(self, patch: Mapping[str, Any]) -> str:
        """Deep-merge `patch` into the config, write it, wait for the reload."""
        return self.write_json(deep_merge(self.read(), patch))


class OpsRunner:
    """Runs the deployment's monitoring and rollback commands with timeouts."""

    def __init__(
        self,
        monitor_cmd: Sequence[str] | None,
        rollback_cmd: Sequence[str] | None,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        items: Sequence[str] = (),
    ) -> None:
        self.monitor_cmd = tuple(monitor_cmd) if monitor_cmd else None
        self.rollback_cmd = tuple(rollback_cmd) if rollback_cmd else None
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.items = tuple(items)

    def monitor(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the monitoring command with `args` (e.g. ``check``)."""
        return self.run(self._need(self.monitor_cmd, "monitor"), *args, timeout=timeout)

    def rollback(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the rollback command with `args` (e.g. ``backup``, ``partial logger``)."""
        return self.run(self._need(self.rollback_cmd, "rollback"), *args, timeout=timeout)

    @staticmethod
    def _need(cmd: tuple[str, ...] | None, what: str) -> tuple[str, ...]:
        if not cmd:
            raise TargetError(f"no {what} command: give --{what}-cmd or --deploy-root")
        return cmd

    def run(
        self, cmd: Sequence[str], *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd + args`; returns the completed process whatever its exit code.

        A command still running after `timeout` is killed with its whole process group and
        reported as `CheckFailed` naming the command line.
        """
        argv = [*cmd, *args]
        line = shlex.join(argv)
        env = {**os.environ, **self.env} if self.env is not None else None
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise CheckFailed(
                check="ops", what=f"`{line}` could not start: {exc}", items=self.items
            ) from None
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = _drain(proc)
            raise CheckFailed(
                check="ops",
                what=f"`{line}` did not finish within {timeout:g} s (killed)",
                expected=f"exit within {timeout:g} s",
                got=f"still running; output so far: {(out + err)[-300:].strip()!r}",
                items=self.items,
            ) from None
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=3)
            return
        except subprocess.TimeoutExpired:
            continue


def _drain(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=2)
    except (subprocess.TimeoutExpired, ValueError):
        return "", ""
    return out or "", err or ""
