"""A watch's state on disk: what survives `kill -9` and lets a restarted watcher resume.

One folder (`--state DIR`) per watch::

    watch.json      written once when the watch starts (atomic): id, start time, plan, target
    windows.jsonl   one line per finished window, appended and fsync'd as each window ends
    events.jsonl    one line per event (notification sent, trigger fired, rollback started and
                    finished, watcher started/stopped), appended and fsync'd when it happens

Appends are a single `write` of one line followed by `fsync`, so after a crash a file ends with
whole lines, or with one partial line that `read_lines` drops (and `truncate_partial` cuts off
before the next append). A window is identified by its index (its slot in the watch's clock:
`floor((t - started_at) / window_s)`); reading keeps the first line of each index, so a window is
never counted twice, whatever happened between a write and a crash.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from etlverify.errors import EtlVerifyError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["StateError", "WatchState"]

SCHEMA_VERSION = 1
META = "watch.json"
WINDOWS = "windows.jsonl"
EVENTS = "events.jsonl"


class StateError(EtlVerifyError):
    """The state folder cannot be used (unreadable, another watch's, finished); one line."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to `path` atomically (temporary file, fsync, rename, fsync of the folder)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The whole JSON lines of `path` (a partial last line, from a crash mid-write, is dropped)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    out: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            if number == len(lines) and not text.endswith("\n"):
                break  # the partial line of a write cut short by a crash
            raise StateError(f"{path}: line {number} is not JSON") from None
        if isinstance(value, dict):
            out.append(value)
    return out


def truncate_partial(path: Path) -> None:
    """Cut a partial last line (no newline at the end) so the next append starts a line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with path.open("r+b") as fh:
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it."""
    line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class WatchState:
    """The state folder of one watch."""

    folder: Path

    @property
    def meta_path(self) -> Path:
        return self.folder / META

    @property
    def windows_path(self) -> Path:
        return self.folder / WINDOWS

    @property
    def events_path(self) -> Path:
        return self.folder / EVENTS

    def exists(self) -> bool:
        """True when a watch was started in this folder."""
        return self.meta_path.exists()

    def create(self, meta: dict[str, Any]) -> None:
        """Start a new watch here (the folder must not hold one)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"--state {self.folder}: cannot create it: {exc}") from None
        write_atomic(self.meta_path, {"schema_version": SCHEMA_VERSION, **meta})

    def meta(self) -> dict[str, Any]:
        """watch.json."""
        try:
            data = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StateError(f"{self.meta_path}: unreadable: {exc}") from None
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            raise StateError(f"{self.meta_path}: not a watch state (schema_version 1)")
        return data

    def prepare_append(self) -> None:
        """After a crash: cut partial last lines before appending again."""
        truncate_partial(self.windows_path)
        truncate_partial(self.events_path)

    def windows(self) -> list[dict[str, Any]]:
        """Finished windows, each index once (the first line of an index wins), by index."""
        seen: dict[int, dict[str, Any]] = {}
        for record in read_lines(self.windows_path):
            index = record.get("index")
            if isinstance(index, int) and index not in seen:
                seen[index] = record
        return [seen[i] for i in sorted(seen)]

    def add_window(self, record: dict[str, Any]) -> None:
        """Append a finished window."""
        append_line(self.windows_path, record)

    def events(self) -> list[dict[str, Any]]:
        """Every event, in order."""
        return read_lines(self.events_path)

    def add_event(self, record: dict[str, Any]) -> None:
        """Append an event."""
        append_line(self.events_path, record)
