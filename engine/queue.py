"""The persistent render queue: one SQLite file in WAL mode, shared by threads and processes. No torch.

    PENDING     --claim-->                    RUNNING (attempts + 1)
    PENDING     --cancel-->                   CANCELLED
    RUNNING     --complete-->                 DONE
    RUNNING     --cancel-->                   CANCELLING (the worker stops within a step)
    RUNNING, CANCELLING --fail-->             FAILED (no automatic retry)
    RUNNING, CANCELLING --mark_cancelled-->   CANCELLED (the worker stopped, wrote nothing)
    CANCELLING  --complete-->                 CANCELLED (the caller deletes the media)
    FAILED, CANCELLED --retry-->              PENDING (attempts reset to 0)

``recover()`` (at engine start) puts a job a dead engine left RUNNING back to PENDING, or FAILED once
its attempts are spent; a CANCELLING one ends CANCELLED. Submission is idempotent by job id. Specs,
results and progress are stored as JSON text; nothing is pickled, so a queue file is safe to share.

Traps avoided:
- ``recover()`` treats every RUNNING job as orphaned: call it once at engine start, holding the
  home's ``home.ServiceLock`` (a second engine's ``recover()`` would take back the first one's jobs,
  and both would run them). ``claim()`` is one IMMEDIATE transaction, so two claimers, threads or
  processes, never take one job.
- A JobQueue holds an open SQLite connection: never share one across ``fork``; every process opens
  its own (the tests use subprocesses).
- ``complete()`` on a job the user cancelled meanwhile ends it CANCELLED, not DONE: whoever asked to
  cancel must not find media appear. The result is not stored; the caller deletes the media.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from magic141.errors import InvalidInput, JobConflict, JobNotFound, Magic141Error, SchemaTooNew
from magic141.protocol import ACTIVE_STATES, JobState

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

SCHEMA_VERSION = 1
# fullmatch, not match with `$`: `$` also matches before a trailing newline, so "a\n" would pass.
_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


_ACTIVE = tuple(sorted(ACTIVE_STATES))  # a fixed order for SQL parameters


@dataclass(frozen=True)
class Job:
    """One row of the queue, as read; a fresh copy every time (changing it changes nothing stored)."""

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
    progress: dict | None  # the last report: step, total, window, windows, elapsed, eta

    def to_json(self) -> dict:
        data = dict(self.__dict__, state=self.state.value)
        return json.loads(json.dumps(data))  # a deep copy that is JSON-safe by construction


_COLUMNS = ("id", "state", "spec", "priority", "attempts", "max_attempts", "created", "updated",
            "started", "finished", "result", "error", "progress")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
# The run order, shared by claim() and list() so the list shows what claim() will take next.
_RUN_ORDER = "priority DESC, created, id"


def _row_to_job(row: tuple) -> Job:
    values = dict(zip(_COLUMNS, row, strict=True))
    for key in ("spec", "result", "progress"):
        if values[key] is not None:
            values[key] = json.loads(values[key])
    values["state"] = JobState(values["state"])
    return Job(**values)


def _dumps(value: dict, name: str) -> str:
    """Canonical JSON text (sorted keys: equal dicts give equal text, which idempotent submit compares)."""
    if not isinstance(value, dict):
        raise InvalidInput(f"must be a dict, got {type(value).__name__}", field=name)
    try:
        # allow_nan=False: NaN/Infinity would be stored fine but break every strict JSON reader later.
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"must hold only JSON values (str keys, finite numbers): {exc}",
                           field=name) from exc


class JobQueue:
    """The queue on one SQLite file; one connection per object, safe to use from several threads."""

    def __init__(self, path: str | os.PathLike, *, max_attempts: int = 3) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidInput(f"must be an int >= 1, got {max_attempts!r}", field="max_attempts")
        self.path = os.fspath(path)
        self.max_attempts = max_attempts
        self._lock = threading.Lock()  # one statement or transaction at a time on the shared connection
        # isolation_level=None: the sqlite3 module opens no transactions behind our back (see _write).
        self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + synchronous=NORMAL: a commit is in the OS's page cache before COMMIT returns, so a
            # kill -9 of any process loses nothing; only a power cut may drop the last transactions.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._create_schema()
        except BaseException:
            self._db.close()  # or the connection leaks (a ResourceWarning) with the error
            raise

    def _create_schema(self) -> None:
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"queue file {self.path} has schema version {version}, but this Magic141 reads up to "
                    f"version {SCHEMA_VERSION}: upgrade Magic141 or use another queue file")
            db.execute("""CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY, state TEXT NOT NULL, spec TEXT NOT NULL, priority INTEGER NOT NULL,
                attempts INTEGER NOT NULL, max_attempts INTEGER NOT NULL, created REAL NOT NULL,
                updated REAL NOT NULL, started REAL, finished REAL, result TEXT, error TEXT,
                progress TEXT)""")
            db.execute(f"CREATE INDEX IF NOT EXISTS jobs_run_order ON jobs (state, {_RUN_ORDER})")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_updated ON jobs (updated)")  # MAX(updated) is hot
            db.execute("CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Plumbing -----------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the database's write lock before the first read. With a plain (deferred)
        # BEGIN two processes could both read the same PENDING row, and both claim it.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # also after a failed COMMIT, or the next BEGIN fails
                    self._db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    @staticmethod
    def _now(db: sqlite3.Connection) -> float:
        # Strictly increasing across every process (we hold the write lock), even within one clock
        # tick or when the clock steps back, so a watcher comparing ``updated`` never misses a change.
        last = db.execute("SELECT MAX(updated) FROM jobs").fetchone()[0] or 0.0
        return max(time.time(), last + 1e-6)

    @staticmethod
    def _get(db: sqlite3.Connection, job_id: str) -> Job:
        row = db.execute(f"{_SELECT} WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return _row_to_job(row)

    def _set(self, db: sqlite3.Connection, job_id: str, **fields: object) -> Job:
        now = self._now(db)
        fields = {key: (now if value is _NOW else value) for key, value in fields.items()}
        fields["updated"] = now
        assignments = ", ".join(f"{key} = ?" for key in fields)
        values = [v.value if isinstance(v, JobState) else v for v in fields.values()]
        db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id))
        return self._get(db, job_id)

    @staticmethod
    def _require(job: Job, allowed: Iterable[JobState], action: str, error: type[Magic141Error]) -> None:
        allowed = tuple(allowed)
        if job.state not in allowed:
            names = " or ".join(state.value for state in allowed)
            raise error(f"job {job.id!r} is {job.state.value}; only {names} jobs can be {action}")

    # Submitting and reading ---------------------------------------------------------------------

    def submit(self, spec: dict, *, job_id: str | None = None, priority: int = 0) -> Job:
        """Queue a job. The same id with an equal spec returns the existing job unchanged (any state,
        priority kept): a client may resend a submission it is unsure arrived."""
        if job_id is None:
            job_id = uuid.uuid4().hex
        if not isinstance(job_id, str) or not _ID.fullmatch(job_id):
            raise InvalidInput(f"must be 1-64 characters of A-Z a-z 0-9 _ . -, got {job_id!r}", field="id")
        if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) >= 2**31:
            raise InvalidInput(f"must be an int between -2**31 and 2**31, got {priority!r}", field="priority")
        text = _dumps(spec, "spec")
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
                (job_id, JobState.PENDING.value, text, priority, self.max_attempts, now, now))
            return self._get(db, job_id)

    def get(self, job_id: str) -> Job:
        with self._lock:
            return self._get(self._db, job_id)

    def list(self, states: Iterable[JobState | str] | None = None, limit: int | None = None) -> list[Job]:
        """Jobs in the order they will run (PENDING by priority, then age), then the rest by age."""
        if isinstance(states, str):  # one state (JobState is a str, and iterating one gives letters)
            states = [states]
        try:
            wanted = [JobState(s).value for s in (JobState if states is None else states)]
        except ValueError as exc:
            valid = ", ".join(s.value for s in JobState)
            raise InvalidInput(f"{exc}; valid states: {valid}", field="states") from exc
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InvalidInput(f"must be an int >= 0 or None, got {limit!r}", field="limit")
        marks = ",".join("?" * len(wanted))
        rows = self._read(
            f"{_SELECT} WHERE state IN ({marks}) "
            "ORDER BY state != 'PENDING', CASE state WHEN 'PENDING' THEN -priority ELSE 0 END, created, id "
            "LIMIT ?",
            (*wanted, -1 if limit is None else limit))
        return [_row_to_job(row) for row in rows]

    def counts(self) -> dict[str, int]:
        found = dict(self._read("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        return {state.value: found.get(state.value, 0) for state in JobState}

    # The worker's side --------------------------------------------------------------------------

    def claim(self, worker: str) -> Job | None:
        """Take the next PENDING job (highest priority, oldest first); None when paused or empty.
        ``worker`` names the claimer for the caller's logs; schema 1 does not store it."""
        with self._write() as db:
            if self._paused(db):
                return None
            row = db.execute(f"SELECT id, attempts FROM jobs WHERE state = 'PENDING' ORDER BY {_RUN_ORDER} "
                             "LIMIT 1").fetchone()
            if row is None:
                return None
            return self._set(db, row[0], state=JobState.RUNNING, attempts=row[1] + 1, started=_NOW,
                             finished=None, result=None, error=None, progress=None)

    def report_progress(self, job_id: str, progress: dict) -> None:
        """Store the last progress report. Ignored unless RUNNING/CANCELLING: a report arriving late
        (after a recover or a cancel) must not crash the worker or revive the job."""
        text = _dumps(progress, "progress")
        with self._write() as db:
            if self._get(db, job_id).state in _ACTIVE:
                self._set(db, job_id, progress=text)

    def complete(self, job_id: str, result: dict) -> Job:
        """RUNNING -> DONE with ``result``. CANCELLING -> CANCELLED without it: the user asked to
        cancel, so the caller must delete the media (check the returned state)."""
        text = _dumps(result, "result")
        with self._write() as db:
            job = self._get(db, job_id)
            self._require(job, _ACTIVE, "completed", JobConflict)
            if job.state == JobState.CANCELLING:
                return self._set(db, job_id, state=JobState.CANCELLED, finished=_NOW)
            return self._set(db, job_id, state=JobState.DONE, finished=_NOW, result=text)

    def fail(self, job_id: str, reason: str) -> Job:
        """RUNNING/CANCELLING -> FAILED with a reason (out of memory, bad input...). Never retried
        automatically: the same input would fail the same way."""
        with self._write() as db:
            self._require(self._get(db, job_id), _ACTIVE, "failed", JobConflict)
            return self._set(db, job_id, state=JobState.FAILED, finished=_NOW, error=str(reason))

    def mark_cancelled(self, job_id: str) -> Job:
        """RUNNING/CANCELLING -> CANCELLED: the worker stopped and wrote nothing."""
        with self._write() as db:
            self._require(self._get(db, job_id), _ACTIVE, "marked cancelled", JobConflict)
            return self._set(db, job_id, state=JobState.CANCELLED, finished=_NOW)

    def is_cancel_requested(self, job_id: str) -> bool:
        rows = self._read("SELECT state FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise JobNotFound(f"no job with id {job_id!r}")
        return rows[0][0] == JobState.CANCELLING.value

    def give_back(self, job_id: str) -> Job:
        """The process running this job died: RUNNING -> PENDING (FAILED when out of attempts),
        CANCELLING -> CANCELLED; any other state is returned unchanged."""
        with self._write() as db:
            return self._give_back(db, self._get(db, job_id))

    def _give_back(self, db: sqlite3.Connection, job: Job) -> Job:
        if job.state == JobState.CANCELLING:
            return self._set(db, job.id, state=JobState.CANCELLED, finished=_NOW)
        if job.state != JobState.RUNNING:
            return job
        if job.attempts < job.max_attempts:
            return self._set(db, job.id, state=JobState.PENDING, started=None, progress=None)
        return self._set(db, job.id, state=JobState.FAILED, finished=_NOW,
                         error=f"the engine stopped during this job {job.attempts} times")

    def recover(self) -> builtins.list[Job]:  # `list` here is JobQueue.list
        """Once, when an engine starts, by the holder of the home's service lock: give back every job
        a dead engine left RUNNING or CANCELLING. Returns the jobs it changed, in their new state."""
        with self._write() as db:
            rows = db.execute(f"{_SELECT} WHERE state IN (?, ?) ORDER BY created",
                              tuple(s.value for s in _ACTIVE)).fetchall()
            return [self._give_back(db, _row_to_job(row)) for row in rows]

    # The user's side ----------------------------------------------------------------------------

    def cancel(self, job_id: str) -> Job:
        """PENDING -> CANCELLED; RUNNING -> CANCELLING (the worker stops within a step); any other
        state is returned unchanged. Touches no other job."""
        with self._write() as db:
            job = self._get(db, job_id)
            if job.state == JobState.PENDING:
                return self._set(db, job_id, state=JobState.CANCELLED, finished=_NOW)
            if job.state == JobState.RUNNING:
                return self._set(db, job_id, state=JobState.CANCELLING)
            return job

    def retry(self, job_id: str) -> Job:
        """FAILED/CANCELLED -> PENDING with a fresh attempt budget."""
        with self._write() as db:
            job = self._get(db, job_id)
            self._require(job, (JobState.FAILED, JobState.CANCELLED), "retried", JobConflict)
            return self._set(db, job_id, state=JobState.PENDING, attempts=0, error=None, result=None,
                             started=None, finished=None, progress=None)

    @staticmethod
    def _paused(db: sqlite3.Connection) -> bool:
        row = db.execute("SELECT value FROM settings WHERE key = 'paused'").fetchone()
        return row is not None and row[0] == "1"

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused(self._db)

    def pause(self) -> None:
        """Stop claims (running jobs go on); kept in the file, so it outlives engine restarts."""
        self._set_paused("1")

    def resume(self) -> None:
        self._set_paused("0")

    def _set_paused(self, flag: str) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('paused', ?)", (flag,))


_NOW = object()  # a field value in _set meaning "the same timestamp as this change's ``updated``"
