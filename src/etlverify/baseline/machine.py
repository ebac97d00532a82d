"""Machine baselines: a baseline that describes the machine the suite runs on, kept in a cache.

A committed baseline recorded on other hardware cannot judge a run here: on another CPU every
route is uniformly faster or slower, so a real regression reads as "improved" (or the reverse).
So the default baseline of the embedded target is recorded on this machine, on first use, and kept
in a per-user cache::

    $ETLPLUS_BASELINE_CACHE/<key>.json              (when the variable is set: tests, CI)
    $XDG_CACHE_HOME/etlverify/baselines/<key>.json  (else; XDG_CACHE_HOME defaults to ~/.cache)

The key names what makes measurements comparable: the CPU model and core count, the platform, the
Python version, the target configuration (for the embedded target: the reference's version and
the suite's config overrides) and the load plan. Any of them changing gives another file, so a
baseline from other hardware or another configuration is never picked up by accident; a stale one
is removed by deleting the file (or the whole cache directory).

A machine baseline is recorded one measurement group at a time (each group's first-use measurement
is stored as a recorded run of its own), so the file's ``runs`` list counts groups times runs:
`recorded_runs` counts runs, the way a person does.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from etlverify.baseline.store import Baseline

__all__ = [
    "CACHE_ENV",
    "MACHINE_RUNS",
    "cache_dir",
    "cpu_model",
    "host_identity",
    "machine_baseline_path",
    "machine_key",
    "recorded_runs",
]

#: Environment variable that overrides the cache directory (tests and CI point it at a temp dir).
CACHE_ENV = "ETLPLUS_BASELINE_CACHE"
#: A machine baseline judges once it holds this many runs (pytest and Locust alike): one run's
#: windows cannot show how much whole runs vary on a machine (baselines/README.md). Measured on a
#: 2-core host: `pytest -m post_deploy` on the unchanged reference, judged against a one-run
#: baseline, read every key route +14% to +27% slower in 3 of 5 runs, a whole run slower, not a
#: window; against three runs recorded at different times, 2 of 2 PROMOTE.
MACHINE_RUNS = 3


@functools.cache
def cpu_model() -> str | None:
    """The CPU model name (`/proc/cpuinfo` "model name", else `platform.processor()`), or None."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model", "Processor") and value.strip():
            return " ".join(value.split())
    name = platform.processor().strip()
    return name or None


def host_identity() -> dict[str, Any]:
    """CPU model, usable cores, platform and Python version of this process's machine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 0
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": cores,
        "platform": f"{sys.platform}-{platform.machine()}",
        "python": platform.python_version(),
    }


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where machine baselines live: `$ETLPLUS_BASELINE_CACHE`, else the XDG cache directory."""
    env = os.environ if env is None else env
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV]).expanduser()
    xdg = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "etlverify" / "baselines"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "cpu"


def machine_key(
    host: Mapping[str, Any], target_config: Mapping[str, Any], load: Mapping[str, Any]
) -> str:
    """A file name stem: readable CPU part plus a hash of everything that must match."""
    blob = json.dumps(
        {"host": dict(host), "target": dict(target_config), "load": dict(load)},
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    cpu = _slug(str(host.get("cpu_model") or "unknown-cpu"))
    return f"{cpu}-{host.get('cpu_count') or 0}cpu-{digest}"


def machine_baseline_path(
    target_config: Mapping[str, Any],
    load: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    host: Mapping[str, Any] | None = None,
) -> Path:
    """The cache file of the machine baseline for this target configuration and load."""
    ident = host if host is not None else host_identity()
    return cache_dir(env) / f"{machine_key(ident, target_config, load)}.json"


def recorded_runs(baseline: Baseline, metrics: Callable[[str], bool] | None = None) -> int:
    """How many runs `baseline` holds: the most recorded runs any one metric has windows from
    (only the metrics `metrics` accepts, when given).

    Not ``len(baseline.runs)``: a machine baseline stores each measurement group's first use as a
    recorded run of its own, so three `pytest -m post_deploy` runs leave twelve entries there
    (routes, users, pool and WebSocket, three times); each metric still has windows from three.
    For a baseline recorded whole (``--baseline-record``) both counts are the same.
    """
    return max(
        (
            len({w.run for w in result.windows})
            for name, result in baseline.metrics.items()
            if metrics is None or metrics(name)
        ),
        default=0,
    )
