"""The persistent render queue: SQLite in WAL mode, safe across threads and processes. No torch.

States: PENDING -> RUNNING -> DONE | FAILED, with CANCELLING (a running job asked to stop) and
CANCELLED. A job that was RUNNING when its engine died goes back to PENDING on ``recover()``
(FAILED once its attempts are spent). Submission is idempotent by job id. Specs and results are
stored as JSON text; nothing is pickled.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from .errors import InvalidInput, Magic141Error

SCHEMA_VERSION = 1
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class JobNotFound(Magic141Error):
    """No job has this id."""


class JobConflict(Magic141Error):
    """A job with this id exists with a different spec."""


class JobState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL_STATES = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Job:
    id: str
    state: JobState
    spec: dict
    priority: int
    attempts: int
    max_attempts: int
    created: float
    updated: float
    started: float | None
    finished: float | None
    result: dict | None
    error: str | None
    progress: dict | None

    def to_json(self) -> dict:
        data = dict(self.__dict__)
        data["state"] = self.state.value
        return json.loads(json.dumps(data))  # a deep, JSON-safe copy


_COLUMNS = "id, state, spec, priority, attempts, max_attempts, created, updated, started, finished, result, error, progress"


def _row_to_job(row) -> Job:
    values = dict(zip([c.strip() for c in _COLUMNS.split(",")], row))
    for key in ("spec", "result", "progress"):
        values[key] = json.loads(values[key]) if values[key] is not None else None
    values["state"] = JobState(values["state"])
    return Job(**values)


class JobQueue:
    def __init__(self, path: str | os.PathLike, *, max_attempts: int = 3) -> None:
        self.max_attempts = max_attempts
        self._lock = threading.Lock()
        # isolation_level=None: we write BEGIN IMMEDIATE ourselves, so two claimers serialise on the
        # database's write lock instead of both reading the same PENDING row.
        self._db = sqlite3.connect(os.fspath(path), timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + synchronous=NORMAL survives a killed process (the WAL is in the OS's hands); only a
        # power loss can drop the last transactions.
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise Magic141Error(f"{path} was made by a newer Magic141 (queue schema {version})")
            db.execute("""CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY, state TEXT NOT NULL, spec TEXT NOT NULL, priority INTEGER NOT NULL,
                attempts INTEGER NOT NULL, max_attempts INTEGER NOT NULL, created REAL NOT NULL,
                updated REAL NOT NULL, started REAL, finished REAL, result TEXT, error TEXT, progress TEXT)""")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_run_order ON jobs (state, priority DESC, created)")
            db.execute("CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "JobQueue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Transactions -------------------------------------------------------------------------------

    class _Txn:
        def __init__(self, queue: "JobQueue") -> None:
            self.queue = queue

        def __enter__(self) -> sqlite3.Connection:
            self.queue._lock.acquire()
            try:
                self.queue._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.queue._lock.release()
                raise
            return self.queue._db

        def __exit__(self, exc_type, *_) -> None:
            try:
                self.queue._db.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.queue._lock.release()

    def _write(self) -> "_Txn":
        return JobQueue._Txn(self)

    def _read(self, sql: str, args: tuple = ()) -> list:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _now(self, db: sqlite3.Connection) -> float:
        # Strictly increasing, so a watcher comparing ``updated`` never misses a change in one clock tick.
        last = db.execute("SELECT MAX(updated) FROM jobs").fetchone()[0] or 0.0
        return max(time.time(), last + 1e-6)

    def _get(self, db: sqlite3.Connection, job_id: str) -> Job:
        row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return _row_to_job(row)

    def _set(self, db, job_id: str, **fields) -> Job:
        fields["updated"] = self._now(db)
        assignments = ", ".join(f"{key} = ?" for key in fields)
        values = [v.value if isinstance(v, JobState) else v for v in fields.values()]
        db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id))
        return self._get(db, job_id)

    # Submitting and reading -----------------------------------------------------------------------

    def submit(self, spec: dict, *, job_id: str | None = None, priority: int = 0) -> Job:
        job_id = job_id or uuid.uuid4().hex
        if not isinstance(job_id, str) or not _ID.match(job_id):
            raise InvalidInput(f"id: must be 1-64 letters, digits, '_', '.' or '-', got {job_id!r}")
        text = json.dumps(spec, sort_keys=True)
        with self._write() as db:
            row = db.execute("SELECT spec FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None:
                if row[0] != text:
                    raise JobConflict(f"job {job_id!r} already exists with a different spec")
                return self._get(db, job_id)
            now = self._now(db)
            db.execute(
                "INSERT INTO jobs (id, state, spec, priority, attempts, max_attempts, created, updated) "
                "VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
                (job_id, JobState.PENDING.value, text, int(priority), self.max_attempts, now, now),
            )
            return self._get(db, job_id)

    def get(self, job_id: str) -> Job:
        with self._lock:
            return self._get(self._db, job_id)

    def list(self, states: Iterable[JobState] | None = None, limit: int | None = None) -> list[Job]:
        wanted = [JobState(s).value for s in states] if states is not None else [s.value for s in JobState]
        marks = ",".join("?" * len(wanted))
        rows = self._read(
            f"SELECT {_COLUMNS} FROM jobs WHERE state IN ({marks}) "
            "ORDER BY state != 'PENDING', priority DESC, created LIMIT ?",
            (*wanted, -1 if limit is None else limit),
        )
        return [_row_to_job(row) for row in rows]

    def counts(self) -> dict[str, int]:
        found = dict(self._read("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        return {state.value: found.get(state.value, 0) for state in JobState}

    # The worker's side --------------------------------------------------------------------------

    def claim(self, worker: str) -> Job | None:
        with self._write() as db:
            if self._paused(db):
                return None
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'PENDING' ORDER BY priority DESC, created LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            attempts = db.execute("SELECT attempts FROM jobs WHERE id = ?", row).fetchone()[0]
            return self._set(db, row[0], state=JobState.RUNNING, attempts=attempts + 1,
                             started=time.time(), error=None)

    def report_progress(self, job_id: str, progress: dict) -> None:
        with self._write() as db:
            if self._get(db, job_id).state in (JobState.RUNNING, JobState.CANCELLING):
                self._set(db, job_id, progress=json.dumps(progress))

    def complete(self, job_id: str, result: dict) -> Job:
        """RUNNING -> DONE. A job cancelled meanwhile ends CANCELLED: the caller deletes its media."""
        with self._write() as db:
            state = self._get(db, job_id).state
            final = JobState.CANCELLED if state == JobState.CANCELLING else JobState.DONE
            return self._set(db, job_id, state=final, finished=time.time(),
                             result=json.dumps(result) if final == JobState.DONE else None)

    def fail(self, job_id: str, reason: str) -> Job:
        with self._write() as db:
            return self._set(db, job_id, state=JobState.FAILED, finished=time.time(), error=reason)

    def mark_cancelled(self, job_id: str) -> Job:
        with self._write() as db:
            return self._set(db, job_id, state=JobState.CANCELLED, finished=time.time())

    def is_cancel_requested(self, job_id: str) -> bool:
        rows = self._read("SELECT state FROM jobs WHERE id = ?", (job_id,))
        return bool(rows) and rows[0][0] == JobState.CANCELLING.value

    # The user's side ----------------------------------------------------------------------------

    def cancel(self, job_id: str) -> Job:
        """PENDING -> CANCELLED; RUNNING -> CANCELLING (the worker stops within a step); else unchanged."""
        with self._write() as db:
            job = self._get(db, job_id)
            if job.state == JobState.PENDING:
                return self._set(db, job_id, state=JobState.CANCELLED, finished=time.time())
            if job.state == JobState.RUNNING:
                return self._set(db, job_id, state=JobState.CANCELLING)
            return job

    def retry(self, job_id: str) -> Job:
        with self._write() as db:
            job = self._get(db, job_id)
            if job.state not in (JobState.FAILED, JobState.CANCELLED):
                raise InvalidInput(f"job {job_id} is {job.state.value}; only FAILED or CANCELLED jobs can be retried")
            return self._set(db, job_id, state=JobState.PENDING, attempts=0, error=None, finished=None,
                             started=None, progress=None)

    def _give_back(self, db, job_id: str) -> Job:
        job = self._get(db, job_id)
        if job.state == JobState.CANCELLING:
            return self._set(db, job_id, state=JobState.CANCELLED, finished=time.time())
        if job.state != JobState.RUNNING:
            return job
        if job.attempts < job.max_attempts:
            return self._set(db, job_id, state=JobState.PENDING, progress=None)
        return self._set(db, job_id, state=JobState.FAILED, finished=time.time(),
                         error=f"the engine stopped during this job {job.attempts} times")

    def give_back(self, job_id: str) -> Job:
        """The engine running this job died: run it again (or fail it, out of attempts; or end a cancel)."""
        with self._write() as db:
            return self._give_back(db, job_id)

    def recover(self) -> list[Job]:
        """At engine start: every job a dead engine left RUNNING or CANCELLING is given back."""
        with self._write() as db:
            rows = db.execute("SELECT id FROM jobs WHERE state IN ('RUNNING', 'CANCELLING')").fetchall()
            return [self._give_back(db, job_id) for (job_id,) in rows]

    def _paused(self, db) -> bool:
        row = db.execute("SELECT value FROM settings WHERE key = 'paused'").fetchone()
        return row is not None and row[0] == "1"

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused(self._db)

    def pause(self) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('paused', '1')")

    def resume(self) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('paused', '0')")

    def wait_for_change(self, since: float, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            last = self._read("SELECT MAX(updated) FROM jobs")[0][0] or 0.0
            if last > since:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
