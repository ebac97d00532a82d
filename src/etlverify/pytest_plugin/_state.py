"""Typed state shared between the plugin's modules, kept in `config.stash` (never in attributes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from etlverify.checklist import Checklist, TestOutcome
from etlverify.report.summary import Summary
from etlverify.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from etlverify.target import SharedEmbedded, Target

__all__ = [
    "CHECKLIST_KEY",
    "OUTCOMES_KEY",
    "RUN_KEY",
    "SETTINGS_KEY",
    "SUMMARY_KEY",
    "RunState",
]


@dataclass
class RunState:
    """Per-process facts about this run.

    `run_dir` and `run_id` are made by the controller and handed to xdist workers (workerinput), so
    every process of one run shares them. `deadline` is wall-clock (time.time) for the same reason.
    """

    run_dir: Path
    run_id: str
    deadline: float
    is_worker: bool
    owns_run_dir: bool
    worker_id: str = ""
    target: Target | None = None
    target_error: str | None = None
    shared: SharedEmbedded | None = None


SETTINGS_KEY = pytest.StashKey[Settings]()
RUN_KEY = pytest.StashKey[RunState]()
CHECKLIST_KEY = pytest.StashKey[Checklist]()
#: nodeid -> outcome, filled from reports on the process that reports (controller or single)
OUTCOMES_KEY = pytest.StashKey[dict[str, TestOutcome]]()
#: the run's evidence judged once, at the end (the sign-off plugin sets it)
SUMMARY_KEY = pytest.StashKey[Summary]()
