"""The server's own logger (contract section 9): TEXT or JSON lines, size rotation, a recent ring.

Not the stdlib `logging` tree on purpose: the line format, the rotation rule ("before a write would
pass max_file_size, shift the backups and start a fresh file") and the level names (WARN, FATAL) are
contract, and one small class with one lock keeps each line whole in exactly one file.

Each line is written with a single unbuffered `write` so that a crash (`os._exit`) loses nothing
that was logged before it.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["LEVELS", "LogRecord", "Logger", "format_text_line"]

#: level name -> severity; the order is the filter order
LEVELS: dict[str, int] = {"DEBUG": 10, "INFO": 20, "WARN": 30, "ERROR": 40, "FATAL": 50}

# Control characters would split a line or corrupt a terminal: escape them.
_ESCAPES = {i: f"\\x{i:02x}" for i in range(32)} | {10: "\\n", 13: "\\r", 9: "\\t", 127: "\\x7f"}

LogRecord = tuple[float, str, str, str, dict[str, Any]]  # ts, level, component, message, context


def _clean(text: str) -> str:
    return text.translate(_ESCAPES)


def _text_value(value: Any) -> str:
    text = _clean(str(value))
    if not text or any(c.isspace() for c in text) or "|" in text:
        return json.dumps(text, ensure_ascii=False)
    return text


def _stamp(ts: float, sep: str) -> str:
    secs = int(ts)
    ms = int((ts - secs) * 1000)
    return time.strftime(f"%Y-%m-%d{sep}%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}"


def format_text_line(rec: LogRecord) -> str:
    """`[YYYY-MM-DD HH:MM:SS.mmm] [LEVEL] [Component] message | k=v ...` (UTC), no newline."""
    ts, level, component, message, context = rec
    line = f"[{_stamp(ts, ' ')}] [{level}] [{_clean(component)}] {_clean(message)}"
    if context:
        line += " | " + " ".join(f"{_clean(str(k))}={_text_value(v)}" for k, v in context.items())
    return line


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def format_json_line(rec: LogRecord) -> str:
    """One JSON object: timestamp, level, component, message, context."""
    ts, level, component, message, context = rec
    return json.dumps(
        {
            "timestamp": _stamp(ts, "T") + "Z",
            "level": level,
            "component": component,
            "message": message,
            "context": {str(k): _json_safe(v) for k, v in context.items()},
        },
        ensure_ascii=False,
    )


class Logger:
    """A thread-safe, size-rotated line logger."""

    def __init__(
        self,
        path: Path,
        *,
        level: str = "INFO",
        fmt: str = "TEXT",
        max_file_size: int = 10 * 1024 * 1024,
        max_backup_files: int = 5,
        ring_size: int = 2000,
    ) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._threshold = LEVELS[level]
        self.level = level
        self.fmt = fmt
        self.max_file_size = max_file_size
        self.max_backup_files = max_backup_files
        self._recent: collections.deque[LogRecord] = collections.deque(maxlen=ring_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: Any = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the logger
        self._size = self._file.tell()

    def enabled(self, level: str) -> bool:
        """True when a line at `level` would be written (cheap: guard costly DEBUG lines)."""
        return LEVELS[level] >= self._threshold

    def reconfigure(
        self,
        *,
        level: str | None = None,
        fmt: str | None = None,
        max_file_size: int | None = None,
        max_backup_files: int | None = None,
    ) -> None:
        """Apply new settings (hot reload); takes effect from the next line."""
        with self._lock:
            if level is not None:
                self.level = level
                self._threshold = LEVELS[level]
            if fmt is not None:
                self.fmt = fmt
            if max_file_size is not None:
                self.max_file_size = max_file_size
            if max_backup_files is not None:
                self.max_backup_files = max_backup_files

    def log(self, level: str, component: str, message: str, **context: Any) -> None:
        """Write one line if `level` passes the threshold."""
        if LEVELS[level] < self._threshold:
            return
        self._write((time.time(), level, component, message, context))

    def _write(self, rec: LogRecord) -> None:
        with self._lock:
            line = format_json_line(rec) if self.fmt == "JSON" else format_text_line(rec)
            data = (line + "\n").encode("utf-8", "replace")
            if self._file is None:
                return
            if self._size > 0 and self._size + len(data) > self.max_file_size:
                self._rotate()
            self._file.write(data)
            self._size += len(data)
            self._recent.append(rec)

    def always(self, level: str, component: str, message: str, **context: Any) -> None:
        """Write one line whatever the threshold (`Configuration reloaded` must always show)."""
        self._write((time.time(), level, component, message, context))

    def debug(self, component: str, message: str, **context: Any) -> None:
        """A DEBUG line."""
        self.log("DEBUG", component, message, **context)

    def info(self, component: str, message: str, **context: Any) -> None:
        """An INFO line."""
        self.log("INFO", component, message, **context)

    def warn(self, component: str, message: str, **context: Any) -> None:
        """A WARN line."""
        self.log("WARN", component, message, **context)

    def error(self, component: str, message: str, **context: Any) -> None:
        """An ERROR line."""
        self.log("ERROR", component, message, **context)

    def fatal(self, component: str, message: str, **context: Any) -> None:
        """A FATAL line."""
        self.log("FATAL", component, message, **context)

    def _rotate(self) -> None:
        # Called with the lock held: .(n-1) -> .n, ..., .1 -> .2, current -> .1, fresh current.
        self._file.close()
        keep = self.max_backup_files
        base = str(self.path)
        oldest = Path(f"{base}.{keep}") if keep > 0 else None
        if oldest is not None and oldest.exists():
            oldest.unlink()
        # Backups beyond the limit (left by a larger earlier setting) go too.
        extra = keep + 1
        while Path(f"{base}.{extra}").exists():
            Path(f"{base}.{extra}").unlink()
            extra += 1
        for i in range(keep - 1, 0, -1):
            src = Path(f"{base}.{i}")
            if src.exists():
                os.replace(src, f"{base}.{i + 1}")
        if keep > 0:
            os.replace(self.path, f"{base}.1")
        else:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
        self._size = 0

    def recent(self, lines: int, level: str | None = None) -> list[dict[str, Any]]:
        """The last `lines` records at `level` or above, oldest first, as JSON-ready dicts."""
        floor = LEVELS[level] if level else 0
        with self._lock:
            records = [r for r in self._recent if LEVELS[r[1]] >= floor]
        out = []
        for ts, lvl, component, message, context in records[-lines:] if lines > 0 else []:
            out.append(
                {
                    "timestamp": _stamp(ts, "T") + "Z",
                    "level": lvl,
                    "component": component,
                    "message": message,
                    "context": {str(k): _json_safe(v) for k, v in context.items()},
                }
            )
        return out

    def close(self) -> None:
        """Close the file; later lines are dropped silently (the server is gone)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
