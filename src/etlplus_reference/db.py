"""SQLite persistence: a small connection pool run on worker threads, with real counters.

WAL with synchronous=NORMAL makes a commit a write to the WAL without an fsync, so job creation is
cheap; statements run on a thread pool (one thread per pooled connection) so the event loop never
waits on the disk. SQLite has one writer at a time: writes take an in-process lock instead of
spinning in SQLite's busy handler, reads go straight through (WAL readers never block).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from etlplus_reference.errors import DatabaseError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from etlplus_reference.faults import Faults
    from etlplus_reference.logs import Logger

__all__ = ["Database"]

T = TypeVar("T")

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)


class Database:
    """A pooled SQLite database: `await db.run(fn, write=...)` runs `fn(conn)` on a db thread."""

    def __init__(
        self,
        path: Path,
        *,
        pool_size: int,
        timeout_s: float,
        journal: Logger,
        faults: Faults | None = None,
    ) -> None:
        self.path = path
        self.pool_size = pool_size
        self.timeout_s = timeout_s
        self.journal = journal
        self.faults = faults
        self._idle: queue.Queue[sqlite3.Connection] = queue.Queue()
        self._all: list[sqlite3.Connection] = []
        self._write_lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self.connections_active = 0
        self.connection_timeouts = 0
        self.connection_failures = 0
        self.operations = 0
        self.last_ok = False
        self.last_error: str | None = None
        self.opened = False

    @property
    def connections_idle(self) -> int:
        """Pooled connections not checked out right now."""
        return self._idle.qsize()

    def open(self, schema: str) -> None:
        """Create the file, the pool and the schema (synchronous: called once at startup)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            for _ in range(self.pool_size):
                conn = sqlite3.connect(self.path, timeout=self.timeout_s, check_same_thread=False)
                for pragma in _PRAGMAS:
                    conn.execute(pragma)
                self._all.append(conn)
                self._idle.put(conn)
            self._all[0].executescript(schema)
            self._all[0].commit()
        except sqlite3.Error as exc:
            self._count_failure(f"open failed: {exc}")
            raise DatabaseError(f"cannot open database {self.path}: {exc}") from exc
        self._executor = ThreadPoolExecutor(self.pool_size, thread_name_prefix="etlplus-db")
        self.opened = True
        self.last_ok = True

    def _count_failure(self, message: str) -> None:
        with self._counter_lock:
            self.connection_failures += 1
        self.last_ok = False
        self.last_error = message

    def run_sync(self, fn: Callable[[sqlite3.Connection], T], write: bool = False) -> T:
        """Run `fn` with a pooled connection on the calling thread; commit when `write`."""
        if not self.opened:
            raise DatabaseError("database is closed")
        if self.faults is not None and self.faults.db_fails():
            self._count_failure("injected database failure")
            raise DatabaseError("database operation failed (injected fault)")
        try:
            conn = self._idle.get(timeout=self.timeout_s)
        except queue.Empty:
            with self._counter_lock:
                self.connection_timeouts += 1
            self.last_error = "connection pool exhausted"
            raise DatabaseError(
                f"no database connection within {self.timeout_s:g}s (pool exhausted)"
            ) from None
        with self._counter_lock:
            self.connections_active += 1
            self.operations += 1
        try:
            if write:
                with self._write_lock:
                    try:
                        result = fn(conn)
                        conn.commit()
                    except BaseException:
                        conn.rollback()
                        raise
            else:
                result = fn(conn)
        except sqlite3.Error as exc:
            self._count_failure(str(exc))
            raise DatabaseError(f"database error: {exc}") from exc
        finally:
            with self._counter_lock:
                self.connections_active -= 1
            self._idle.put(conn)
        self.last_ok = True
        return result

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """Run `fn(conn)` on a database thread without blocking the event loop."""
        if self._executor is None:
            raise DatabaseError("database is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_sync, fn, write)

    async def ping(self, timeout_s: float = 1.0) -> bool:
        """True when a trivial statement succeeds within `timeout_s`."""
        try:
            await asyncio.wait_for(self.run(_select_one), timeout_s)
        except (DatabaseError, TimeoutError):
            return False
        return True

    def counters(self) -> dict[str, Any]:
        """The database block of /api/health/metrics."""
        return {
            "connections_active": self.connections_active,
            "connections_idle": self.connections_idle,
            "connection_timeouts": self.connection_timeouts,
            "connection_failures": self.connection_failures,
        }

    def close(self) -> None:
        """Finish queued statements, then close every connection."""
        self.opened = False
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        for conn in self._all:
            try:
                conn.close()
            except sqlite3.Error as exc:
                self.journal.warn("Database", "Closing a connection failed", error=str(exc))
        self._all.clear()
        while not self._idle.empty():
            self._idle.get_nowait()


def _select_one(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1").fetchone()
