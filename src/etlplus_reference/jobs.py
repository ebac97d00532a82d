"""ETL jobs (contract section 4): validation, persistence, real batch work and status pushes.

A job is an asyncio task that moves synthetic records through its steps in batches and loads them
into the `records` table. `source_config` is `key=value;...`:

    rows=1000      records to produce (0-10,000,000)
    batch=100      records per batch (1-100,000)
    delay_ms=10    simulated source latency per batch (0-60,000)
    fail_every=0   mark every Nth record invalid (counted in recordsFailed; 0 = none)
    fail_at=0      batch index at which a `fail` job fails (clamped to the last batch)

Segments without `=` and unknown keys are ignored (an upstream-style `input.csv` is fine); a known
key with a bad value is a 400 naming `source_config`.

Type semantics: every type writes its output to `records` (a job leaves a result, and a job whose
id contains `fail` fails "in its load step" whatever its type). EXTRACT and LOAD run
extract -> load, TRANSFORM and FULL_ETL run extract -> transform -> load. `fail_every` rejects
records in the transform step, or at load-time validation for types without one.

Restart: pending jobs stay pending and run; running jobs resume at the first batch not yet loaded
(counters and the batch's records are committed in one transaction), keeping status `running` and
every counter monotone. Nothing a client saw goes backwards.

Concurrency: at most `jobs.max_concurrent` jobs run at once; the rest wait as `pending`.

Creator: a job keeps the `X-User-Id` of its POST (`createdBy` in its detail) and the flags active
for that user at creation (persisted, as columns a database of an older reference gains at
start); the WebSocket cohort faults (`faults.py`) touch the pushes of the jobs whose creator was
inside the cohort. A job created without `X-User-Id` is outside every cohort.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from etlplus_reference.errors import ApiError, DatabaseError, iso_ms, now_iso

if TYPE_CHECKING:
    import sqlite3

    from etlplus_reference.db import Database
    from etlplus_reference.logs import Logger
    from etlplus_reference.wshub import Hub

__all__ = [
    "JOB_TYPES",
    "SCHEMA",
    "Job",
    "JobManager",
    "JobParams",
    "parse_source_config",
    "validate_create",
]

JOB_TYPES = ("extract", "transform", "load", "full_etl")
TERMINAL = frozenset({"completed", "failed", "cancelled"})
STATUSES = ("pending", "running", "completed", "failed", "cancelled")
_ALLOWED = {
    "pending": {"running", "cancelled"},
    "running": {"completed", "failed", "cancelled"},
}
_JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    source_config TEXT NOT NULL,
    target_config TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    progress REAL NOT NULL DEFAULT 0,
    current_step TEXT,
    processed INTEGER NOT NULL DEFAULT 0,
    successful INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_by TEXT,
    creator_flags TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS records (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    payload TEXT NOT NULL,
    valid INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""

_PARAM_LIMITS: dict[str, tuple[int, int]] = {
    "rows": (0, 10_000_000),
    "batch": (1, 100_000),
    "delay_ms": (0, 60_000),
    "fail_every": (0, 10_000_000),
    "fail_at": (0, 10_000_000),
}


@dataclass(frozen=True)
class JobParams:
    """What `source_config` asks for."""

    rows: int = 1000
    batch: int = 100
    delay_ms: int = 10
    fail_every: int = 0
    fail_at: int = 0

    @property
    def batches(self) -> int:
        """Number of batches."""
        return math.ceil(self.rows / self.batch)


def parse_source_config(text: str) -> JobParams:
    """Parse `key=value;...`; 400 INVALID_INPUT naming source_config for a bad known value."""
    values: dict[str, int] = {}
    for segment in text.split(";"):
        key, sep, value = segment.partition("=")
        key = key.strip().lower()
        if not sep or key not in _PARAM_LIMITS:
            continue
        lo, hi = _PARAM_LIMITS[key]
        value = value.strip()
        if not value.isdigit() or not lo <= int(value) <= hi:
            raise ApiError.field(
                "INVALID_INPUT",
                "source_config",
                f"source_config: {key} must be an integer in {lo}-{hi}, got {value[:40]!r}",
            )
        values[key] = int(value)
    return JobParams(**values)


@dataclass
class Job:
    """One job's state; the in-memory copy is the one the API serves."""

    job_id: str
    type: str
    status: str
    source_config: str
    target_config: str
    created_at: float
    started_at: float | None = None
    completed_at: float | None = None
    progress: float = 0.0
    current_step: str | None = None
    processed: int = 0
    successful: int = 0
    failed: int = 0
    error: str | None = None
    #: the X-User-Id of its POST /api/jobs (None without one)
    created_by: str | None = None
    #: the flags active for `created_by` at creation: whose cohort faults touch its pushes
    creator_flags: frozenset[str] = frozenset()
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def execution_ms(self) -> int:
        """Milliseconds between start and end (or now); 0 before the start."""
        if self.started_at is None:
            return 0
        end = self.completed_at if self.completed_at is not None else time.time()
        return max(0, int((end - self.started_at) * 1000))

    def summary(self) -> dict[str, Any]:
        """An entry of GET /api/jobs."""
        return {
            "id": self.job_id,
            "status": self.status,
            "type": self.type,
            "createdAt": iso_ms(self.created_at),
        }

    def detail(self) -> dict[str, Any]:
        """GET /api/jobs/{id} and /status."""
        out: dict[str, Any] = {
            "jobId": self.job_id,
            "type": self.type,
            "status": self.status,
            "createdAt": iso_ms(self.created_at),
            "startedAt": iso_ms(self.started_at),
            "completedAt": iso_ms(self.completed_at),
            "progressPercent": round(self.progress, 2),
            "currentStep": self.current_step,
            "recordsProcessed": self.processed,
            "recordsSuccessful": self.successful,
            "recordsFailed": self.failed,
            "executionTimeMs": self.execution_ms,
            "sourceConfig": self.source_config,
            "targetConfig": self.target_config,
        }
        if self.error is not None:
            out["errorMessage"] = self.error
        if self.created_by is not None:
            out["createdBy"] = self.created_by
        return out

    def metrics(self) -> dict[str, Any]:
        """GET /api/jobs/{id}/metrics."""
        ms = self.execution_ms
        return {
            "jobId": self.job_id,
            "status": self.status,
            "recordsProcessed": self.processed,
            "recordsSuccessful": self.successful,
            "recordsFailed": self.failed,
            "processingRate": round(self.processed / (ms / 1000), 3) if ms > 0 else 0.0,
            "successRate": round(100 * self.successful / self.processed, 3)
            if self.processed
            else 0.0,
            "executionTimeMs": ms,
        }


def validate_create(body: Any) -> tuple[str, str, str, str | None, JobParams]:
    """Check a POST /api/jobs body: (type, source_config, target_config, job_id, params)."""
    if not isinstance(body, dict):
        raise ApiError.field("INVALID_INPUT", "body", "Request body must be a JSON object")
    if "type" not in body or body["type"] is None:
        raise ApiError.field("MISSING_FIELD", "type", "Missing required field: type")
    jtype = body["type"]
    if not isinstance(jtype, str) or jtype.lower() not in JOB_TYPES:
        raise ApiError.field(
            "INVALID_INPUT",
            "type",
            f"type must be one of {', '.join(t.upper() for t in JOB_TYPES)}",
        )
    texts: dict[str, str] = {}
    for name in ("source_config", "target_config"):
        if name not in body or body[name] is None:
            raise ApiError.field("MISSING_FIELD", name, f"Missing required field: {name}")
        value = body[name]
        if not isinstance(value, str):
            raise ApiError.field("INVALID_INPUT", name, f"{name} must be a string")
        if not 1 <= len(value) <= 1024:
            raise ApiError.field(
                "INVALID_RANGE", name, f"{name} must be 1-1024 characters, got {len(value)}"
            )
        texts[name] = value
    job_id = body.get("job_id")
    if job_id is not None and (not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id)):
        raise ApiError.field("INVALID_INPUT", "job_id", "job_id must match ^[A-Za-z0-9_-]{1,64}$")
    params = parse_source_config(texts["source_config"])
    return jtype.lower(), texts["source_config"], texts["target_config"], job_id, params


class _JobFailure(Exception):
    """The job fails (its errorMessage is the message)."""


_COLUMNS = (
    "job_id, type, status, source_config, target_config, created_at, started_at, completed_at,"
    " progress, current_step, processed, successful, failed, error, created_by, creator_flags"
)
#: columns added since the first schema: (name, declaration) for ALTER TABLE on older databases
_ADDED_COLUMNS = (("created_by", "TEXT"), ("creator_flags", "TEXT NOT NULL DEFAULT ''"))


def _job_from_row(row: tuple[Any, ...]) -> Job:
    *fields, created_by, creator_flags = row
    job = Job(*fields)
    job.created_by = created_by
    job.creator_flags = frozenset(name for name in (creator_flags or "").split(",") if name)
    return job


def _migrate(c: sqlite3.Connection) -> None:
    have = {row[1] for row in c.execute("PRAGMA table_info(jobs)")}
    for name, declaration in _ADDED_COLUMNS:
        if name not in have:
            c.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")


class JobManager:
    """All jobs: the API's operations and the runner tasks."""

    def __init__(self, db: Database, hub: Hub, journal: Logger, *, max_concurrent: int = 8) -> None:
        self.db = db
        self.hub = hub
        self.journal = journal
        self.jobs: dict[str, Job] = {}
        self.counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        self._reserved: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._sem = asyncio.Semaphore(max_concurrent)
        self.max_concurrent = max_concurrent
        self._next = 0

    # ---- startup / shutdown -------------------------------------------------------------------

    async def start(self) -> None:
        """Load every persisted job; run pending ones and resume running ones."""
        await self.db.run(_migrate, write=True)
        rows = await self.db.run(
            lambda c: c.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY seq").fetchall()
        )
        resumed = 0
        for row in rows:
            job = _job_from_row(row)
            self.jobs[job.job_id] = job
            self.counts[job.status] = self.counts.get(job.status, 0) + 1
            if job.status not in TERMINAL:
                resumed += 1
                self._spawn(job)
        self._next = len(rows)
        if rows:
            self.journal.info("Jobs", "Jobs loaded", total=len(rows), resumed=resumed)

    async def stop(self) -> None:
        """Cancel runners; running jobs stay `running` in the database and resume next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- API operations -----------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job, or 404 JOB_NOT_FOUND."""
        job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(
                "JOB_NOT_FOUND", f"Job not found: {job_id[:100]}", context={"jobId": job_id[:100]}
            )
        return job

    async def create(
        self,
        body: Any,
        *,
        created_by: str | None = None,
        creator_flags: frozenset[str] = frozenset(),
    ) -> Job:
        """Validate, persist and schedule a new job (`created_by`: the X-User-Id of its POST,
        `creator_flags`: the flags active for that user now)."""
        jtype, source, target, job_id, _params = validate_create(body)
        if job_id is None:
            job_id = f"job_{int(time.time() * 1000):x}{self._next:06x}"
            self._next += 1
        if job_id in self.jobs or job_id in self._reserved:
            raise ApiError(
                "CONSTRAINT_VIOLATION",
                f"Job id already in use: {job_id}",
                context={"jobId": job_id, "field": "job_id"},
            )
        self._reserved.add(job_id)
        try:
            job = Job(
                job_id,
                jtype,
                "pending",
                source,
                target,
                time.time(),
                created_by=created_by,
                creator_flags=creator_flags if created_by is not None else frozenset(),
            )
            await self.db.run(_insert_job(job), write=True)
        finally:
            self._reserved.discard(job_id)
        self.jobs[job_id] = job
        self.counts["pending"] += 1
        self._spawn(job)
        if self.journal.enabled("DEBUG"):
            self.journal.debug("Jobs", "Job created", jobId=job_id, type=jtype)
        return job

    async def cancel(self, job_id: str, body: Any) -> Job:
        """PUT /api/jobs/{id} with {"status": "cancelled"}."""
        job = self.get(job_id)
        if not isinstance(body, dict):
            raise ApiError.field("INVALID_INPUT", "body", "Request body must be a JSON object")
        if "status" not in body:
            raise ApiError.field("MISSING_FIELD", "status", "Missing required field: status")
        if body["status"] != "cancelled":
            raise ApiError.field("INVALID_INPUT", "status", "status can only be set to 'cancelled'")
        async with job.lock:
            if job.status in TERMINAL:
                raise ApiError(
                    "INVALID_JOB_STATE",
                    f"Job {job_id} is already {job.status}",
                    context={"jobId": job_id, "status": job.status},
                )
            now = time.time()
            await self.db.run(_update_status(job_id, "cancelled", now, job.error), write=True)
            self._transition(job, "cancelled", completed_at=now)
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()
        return job

    def status_counts(self) -> dict[str, int]:
        """Totals per status plus `total`."""
        return {"total": len(self.jobs), **self.counts}

    # ---- running ------------------------------------------------------------------------------

    def _spawn(self, job: Job) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"job-{job.job_id}")
        self._tasks[job.job_id] = task
        jid = job.job_id

        def forget(_task: asyncio.Task[None]) -> None:
            self._tasks.pop(jid, None)

        task.add_done_callback(forget)

    def _transition(
        self, job: Job, new: str, *, completed_at: float | None = None, error: str | None = None
    ) -> None:
        # The one place a status changes: forward only, pushed once, in order.
        old = job.status
        if new not in _ALLOWED.get(old, set()):
            raise RuntimeError(f"illegal job transition {old} -> {new} for {job.job_id}")
        job.status = new
        self.counts[old] -= 1
        self.counts[new] += 1
        now = time.time()
        if new == "running" and job.started_at is None:
            job.started_at = now
        if new in TERMINAL:
            job.completed_at = completed_at or now
            job.error = error if error is not None else job.error
        if new == "completed":
            job.progress = 100.0
        data: dict[str, Any] = {
            "jobId": job.job_id,
            "status": new,
            "previousStatus": old,
            "timestamp": now_iso(),
            "progressPercent": round(job.progress, 2),
            "currentStep": job.current_step,
        }
        if job.error is not None:
            data["errorMessage"] = job.error
        hub = self.hub
        flags = job.creator_flags
        hub.publish("job_status_update", data, target_job_id=job.job_id, creator_flags=flags)
        level = {"failed": "WARN", "cancelled": "WARN"}.get(new, "INFO")
        hub.publish(
            "job_log_message",
            {
                "jobId": job.job_id,
                "level": level,
                "component": "Jobs",
                "message": f"Job {new}" + (f": {job.error}" if new == "failed" else ""),
                "timestamp": data["timestamp"],
                "context": {"previousStatus": old, "type": job.type},
            },
            target_job_id=job.job_id,
            level=level,
            creator_flags=flags,
        )
        if new in TERMINAL:
            hub.publish(
                "job_metrics_update",
                {"jobId": job.job_id, "metrics": job.metrics()},
                target_job_id=job.job_id,
                creator_flags=flags,
            )
            self.journal.log(
                level,
                "Jobs",
                f"Job {new}",
                jobId=job.job_id,
                type=job.type,
                records=job.processed,
                **({"error": job.error} if job.error else {}),
            )

    async def _finish(self, job: Job, new: str, error: str | None = None) -> None:
        async with job.lock:
            if job.status in TERMINAL:
                return
            now = time.time()
            try:
                await self.db.run(
                    _update_final(job, new, now, error if error is not None else job.error),
                    write=True,
                )
            except DatabaseError as exc:
                # The outcome is real even if it cannot be stored; say so in the log.
                self.journal.error(
                    "Jobs",
                    "Could not persist job outcome",
                    jobId=job.job_id,
                    status=new,
                    error=exc.message,
                )
            self._transition(job, new, completed_at=now, error=error)

    async def _run(self, job: Job) -> None:
        async with self._sem:
            if job.status in TERMINAL:
                return
            params = parse_source_config(job.source_config)
            try:
                if job.status == "pending":
                    async with job.lock:
                        if job.status != "pending":
                            return
                        job.current_step = "extract"
                        now = time.time()
                        await self.db.run(_update_start(job.job_id, now), write=True)
                        job.started_at = now
                        self._transition(job, "running")
                elif self.journal.enabled("INFO"):
                    self.journal.info(
                        "Jobs",
                        "Resuming job after restart",
                        jobId=job.job_id,
                        recordsProcessed=job.processed,
                    )
                await self._work(job, params)
            except _JobFailure as exc:
                await self._finish(job, "failed", str(exc))
                return
            except DatabaseError as exc:
                await self._finish(job, "failed", f"Database error: {exc.message}")
                return
            await self._finish(job, "completed")

    async def _work(self, job: Job, params: JobParams) -> None:
        transform = job.type in ("transform", "full_etl")
        batches = params.batches
        fail_here = min(params.fail_at, max(batches - 1, 0)) if "fail" in job.job_id else -1
        if batches == 0 and fail_here == 0:
            job.current_step = "load"
            raise _JobFailure("Load step failed: simulated failure for job ids containing 'fail'")
        jid = job.job_id
        hub = self.hub
        for b in range(job.processed // params.batch, batches):
            first = b * params.batch
            n = min(params.batch, params.rows - first)
            job.current_step = "extract"
            if params.delay_ms:
                await asyncio.sleep(params.delay_ms / 1000)
            records = [(s, (s * 7919) % 1000) for s in range(first, first + n)]
            every = params.fail_every
            if transform:
                job.current_step = "transform"
                rows = [
                    (
                        jid,
                        s,
                        f'{{"id":{s},"value":{v},"score":{v * 1.5:.1f}}}',
                        0 if every and (s + 1) % every == 0 else 1,
                    )
                    for s, v in records
                ]
            else:
                rows = [
                    (
                        jid,
                        s,
                        f'{{"id":{s},"value":{v}}}',
                        0 if every and (s + 1) % every == 0 else 1,
                    )
                    for s, v in records
                ]
            job.current_step = "load"
            if b == fail_here:
                raise _JobFailure(
                    f"Load step failed at batch {b}: "
                    "simulated failure for job ids containing 'fail'"
                )
            bad = sum(1 for r in rows if not r[3])
            processed = job.processed + n
            successful = job.successful + n - bad
            failed = job.failed + bad
            progress = 100.0 * (b + 1) / batches
            await self.db.run(
                _load_batch(
                    jid,
                    rows=rows,
                    processed=processed,
                    successful=successful,
                    failed=failed,
                    progress=progress,
                ),
                write=True,
            )
            if job.status in TERMINAL:
                return  # cancelled while loading
            job.processed, job.successful, job.failed = processed, successful, failed
            job.progress = progress
            hub.publish(
                "job_progress_update",
                {
                    "jobId": jid,
                    "progressPercent": round(progress, 2),
                    "currentStep": "load",
                    "timestamp": now_iso(),
                    "recordsProcessed": processed,
                    "recordsSuccessful": successful,
                    "recordsFailed": failed,
                    "batch": b + 1,
                    "batches": batches,
                },
                target_job_id=jid,
                creator_flags=job.creator_flags,
            )


# ---- SQL (run on database threads) ------------------------------------------------------------


def _insert_job(job: Job) -> Any:
    def run(c: sqlite3.Connection) -> None:
        c.execute(
            "INSERT INTO jobs (job_id, type, status, source_config, target_config, created_at,"
            " created_by, creator_flags) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.job_id,
                job.type,
                job.status,
                job.source_config,
                job.target_config,
                job.created_at,
                job.created_by,
                ",".join(sorted(job.creator_flags)),
            ),
        )

    return run


def _update_start(job_id: str, now: float) -> Any:
    def run(c: sqlite3.Connection) -> None:
        c.execute(
            "UPDATE jobs SET status='running', started_at=?, current_step='extract'"
            " WHERE job_id=? AND status='pending'",
            (now, job_id),
        )

    return run


def _update_status(job_id: str, status: str, now: float, error: str | None) -> Any:
    def run(c: sqlite3.Connection) -> None:
        c.execute(
            "UPDATE jobs SET status=?, completed_at=?, error=? WHERE job_id=?",
            (status, now, error, job_id),
        )

    return run


def _update_final(job: Job, status: str, now: float, error: str | None) -> Any:
    progress = 100.0 if status == "completed" else job.progress

    def run(c: sqlite3.Connection) -> None:
        c.execute(
            "UPDATE jobs SET status=?, completed_at=?, error=?, progress=?, current_step=?"
            " WHERE job_id=? AND status IN ('pending', 'running')",
            (status, now, error, progress, job.current_step, job.job_id),
        )

    return run


def _load_batch(
    job_id: str,
    *,
    rows: list[tuple[str, int, str, int]],
    processed: int,
    successful: int,
    failed: int,
    progress: float,
) -> Any:
    # Records and counters in one transaction: a resumed job restarts exactly after this batch.
    def run(c: sqlite3.Connection) -> None:
        c.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)", rows)
        c.execute(
            "UPDATE jobs SET processed=?, successful=?, failed=?, progress=?, current_step='load'"
            " WHERE job_id=?",
            (processed, successful, failed, progress, job_id),
        )

    return run
