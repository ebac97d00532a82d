"""Plain helpers of the pre-deployment suite."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True)
class Backup:
    """A folder made by `rollback.sh backup`, and the output that named it."""

    path: Path
    stdout: str
