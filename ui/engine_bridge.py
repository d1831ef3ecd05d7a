"""The engine service, seen from the UI thread as Qt signals. Never blocks, never imports torch.

The bridge talks to any object with ``EngineClient``'s methods (``Engine`` below): the real
``plugin.client.EngineClient``, or an in-process fake in tests. Everything that touches it runs
elsewhere: connect/submit/cancel/health on a small private ``QThreadPool``, and each job's event
stream (``events(job_id)``, ``protocol.Event`` objects) on its own thread, where step previews
are decoded into ``QImage`` too, so the UI thread only places finished objects.

Traps avoided:
- Two "Extend" clicks before the service is up must not spawn two services: ``connect`` is
  serialised by a lock.
- A blocking server-sent-event read cannot be interrupted from outside. Putting it on a
  ``QThreadPool`` would make quitting the app (or closing a host's panel) wait for the job to
  finish, because Qt waits for pool threads on exit; the engine keeps the job whatever we do, so
  the stream is followed on a daemon thread that is simply abandoned at shutdown. It reaches Qt
  only through this object's signals, guarded against this object's deletion.
- A stream that ends without a final event, or breaks (the service died or restarted, the
  connection dropped), is neither a success nor a failure: the job lives on in the queue, and a
  restarted service runs it again. The follower says it is reconnecting, connects again
  (``connect()`` finds the service, or starts it), reads the job's record by id, and either
  reports the ending the record holds or follows the job's events again. Only the queue's word
  ends a job; an unreachable engine is retried (with back-off) until the panel closes.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PySide6.QtCore import QObject, QTimer, Signal, SignalInstance
from PySide6.QtGui import QImage

from magic141.errors import EngineError
from magic141.protocol import MODELS_VERSION, Event, JobSpec, JobState

from .labels import QUANT_WORDS
from .tasks import TaskRunner, plain_error

RETRY_FIRST, RETRY_MOST = 0.25, 5.0  # seconds between attempts to reach a lost engine again


class Engine(Protocol):
    """What the bridge needs of an engine client (``plugin.client.EngineClient`` has it all)."""

    def connect(self, *, start: bool = True) -> Any: ...
    def health(self) -> dict: ...
    def models(self) -> dict: ...
    def submit(self, spec: JobSpec, *, job_id: str | None = None) -> dict: ...
    def events(self, job_id: str | None = None) -> Iterator[Event]: ...
    def job(self, job_id: str) -> dict: ...
    def cancel(self, job_id: str) -> dict: ...


@dataclass(frozen=True)
class EngineStatus:
    running: bool
    device: str = ""
    free_memory: int | None = None  # bytes
    loaded_models: tuple[str, ...] = ()
    running_job: str | None = None
    queued: int = 0
    message: str = ""  # why it is not running

    def describe(self) -> str:
        if not self.running:
            return f"Engine: {self.message}"
        parts = [f"Engine: {self.device}"]
        if self.free_memory is not None:
            parts.append(f"{self.free_memory / 2**30:.1f} GiB free")
        models = ", ".join(_model_words(m) for m in self.loaded_models)
        parts.append(f"model {models}" if models else "no model loaded")
        if self.running_job:
            parts.append(f"running {self.running_job}")
        if self.queued:
            parts.append(f"{self.queued} queued")
        return " · ".join(parts)


def _model_words(loaded: str) -> str:
    """``"world (none)"`` (a loaded model as the service names it) as ``"world, full precision"``."""
    name, _, quant = loaded.rpartition(" (")
    if not name or not quant.endswith(")"):
        return loaded
    return f"{name}, {QUANT_WORDS.get(quant[:-1], quant[:-1])}"


@dataclass(frozen=True)
class JobUpdate:
    """One event of one job, with its step preview (if any) already decoded."""

    event: Event
    preview: QImage | None = field(default=None, compare=False)

    @classmethod
    def of(cls, event: Event) -> JobUpdate:
        """Decode the preview here, on the stream's thread: a bad one is dropped, never fatal."""
        if not event.preview:
            return cls(event)
        try:
            data = base64.b64decode(event.preview)
        except ValueError:  # not base64 (binascii.Error is a ValueError)
            return cls(event)
        preview = QImage.fromData(data)  # the format is read from the data (a PNG)
        return cls(event, None if preview.isNull() else preview)


class EngineBridge(QObject):
    status_changed = Signal(object)  # EngineStatus
    job_submitted = Signal(str)  # the service accepted the job with this id
    job_updated = Signal(object)  # JobUpdate
    job_error = Signal(str, str)  # job id, why it cannot be followed (not submitted; the queue lost it)
    job_reconnecting = Signal(str, str)  # job id, why its event stream was lost
    job_reattached = Signal(str, str)  # job id, its JobState (not ended) once followed again
    cancel_failed = Signal(str, str)  # job id, why the cancel did not reach the engine
    models_changed = Signal(object)  # the engine's model catalog (protocol.MODELS_VERSION), once running

    def __init__(self, client: Engine, parent: QObject | None = None, *, poll_ms: int = 3000) -> None:
        super().__init__(parent)
        self.client = client
        self._connect_lock = threading.Lock()
        self._closing = threading.Event()
        self._tasks = TaskRunner(2, self)
        self._status_pending = False
        self._models_asked = False
        self._followers: dict[str, threading.Thread] = {}
        self._timer = QTimer(self)
        self._timer.setInterval(poll_ms)
        self._timer.timeout.connect(self.refresh_status)

    @property
    def home(self) -> Path | None:
        """The engine's state folder, where the client has one (the real client does)."""
        return getattr(self.client, "root", None)

    # Status -------------------------------------------------------------------------------------

    def start_polling(self) -> None:
        self._timer.start()
        self.refresh_status()

    def refresh_status(self) -> None:
        if self._status_pending or self._closing.is_set():
            return
        self._status_pending = True
        self._tasks.submit(self._health, done=self._status_done, failed=self._status_failed)

    def _health(self) -> EngineStatus:
        with self._connect_lock:
            try:
                self.client.connect(start=False)
            except EngineError:
                return EngineStatus(False, message="not running (it starts with the first job)")
        health = self.client.health()
        counts = health.get("queue") or {}
        return EngineStatus(True, device=str(health.get("device", "")), free_memory=health.get("free_memory"),
                            loaded_models=tuple(health.get("loaded_models") or ()),
                            running_job=health.get("running"), queued=int(counts.get("PENDING", 0) or 0))

    def _status_done(self, status: EngineStatus) -> None:
        self._status_pending = False
        self.status_changed.emit(status)
        if status.running and not self._models_asked:  # once per panel: families change with installs only
            self._models_asked = True
            self._tasks.submit(self.client.models, done=self._models_done,
                               failed=lambda message: setattr(self, "_models_asked", False))

    def _models_done(self, catalog: dict) -> None:
        if catalog.get("version") == MODELS_VERSION:  # a newer engine's catalog: the menu stays as it is
            self.models_changed.emit(catalog)

    def _status_failed(self, message: str) -> None:
        self._status_pending = False
        self.status_changed.emit(EngineStatus(False, message=f"unreachable: {message}"))

    # Jobs ---------------------------------------------------------------------------------------

    def submit(self, job_id: str, spec: JobSpec) -> None:
        """Start the service if needed, queue the job, then follow its events."""
        self._tasks.submit(self._submit, job_id, spec,
                           done=lambda _record: self._submitted(job_id),
                           failed=lambda message: self.job_error.emit(job_id, message))

    def _submit(self, job_id: str, spec: JobSpec) -> dict:
        with self._connect_lock:
            self.client.connect()
        return self.client.submit(spec, job_id=job_id)

    def _submitted(self, job_id: str) -> None:
        self.job_submitted.emit(job_id)
        self.refresh_status()
        thread = threading.Thread(target=self._follow, args=(job_id,), name=f"magic141-events-{job_id}",
                                  daemon=True)
        self._followers[job_id] = thread
        thread.start()

    def cancel(self, job_id: str) -> None:
        self._tasks.submit(self.client.cancel, job_id,
                           failed=lambda message: self.cancel_failed.emit(job_id, message))

    def _follow(self, job_id: str) -> None:
        """Follow one job until it ends, across lost streams and engine restarts (a daemon thread)."""
        try:
            while not self._closing.is_set():
                lost = self._stream(job_id)
                if lost is None or self._closing.is_set():
                    return
                self._emit(self.job_reconnecting, job_id, lost)
                if not self._reattach(job_id):
                    return
        finally:
            self._followers.pop(job_id, None)

    def _stream(self, job_id: str) -> str | None:
        """Pass on the job's events: None once its final event came, else why the stream was lost."""
        try:
            for event in self.client.events(job_id):
                if self._closing.is_set():
                    return None
                self._emit(self.job_updated, JobUpdate.of(event))
                if event.type.terminal:
                    return None
        except Exception as exc:  # noqa: BLE001 - a lost stream is followed again, never raised into Qt
            return f"lost the engine: {plain_error(exc)}"
        return "the engine's event stream ended before the job did"

    def _reattach(self, job_id: str) -> bool:
        """Reach the engine again (starting it if need be) and read the job's record; whether to
        follow its events again. An ended job's last event is rebuilt from the record. Retries
        until the engine answers or the panel closes."""
        delay = RETRY_FIRST
        while not self._closing.is_set():
            try:
                with self._connect_lock:
                    self.client.connect()
                record = self.client.job(job_id)
            except EngineError as exc:
                if exc.status == 404:  # reachable, but the queue does not know it: nothing to wait for
                    self._emit(self.job_error, job_id, "the engine's queue no longer has this job")
                    return False
                why = f"lost the engine: {plain_error(exc)}"
            except Exception as exc:  # noqa: BLE001 - whatever broke, the job may still run: retry
                why = f"lost the engine: {plain_error(exc)}"
            else:
                state = JobState(str(record.get("state")).upper())
                if state.terminal:
                    ending = Event.ending(job_id, state, record.get("result"), record.get("error"))
                    self._emit(self.job_updated, JobUpdate(ending))
                    return False
                self._emit(self.job_reattached, job_id, state.value)
                return True
            self._emit(self.job_reconnecting, job_id, why)
            self._closing.wait(delay)
            delay = min(delay * 2, RETRY_MOST)
        return False

    def _emit(self, signal: SignalInstance, *args: object) -> None:
        try:
            signal.emit(*args)
        except RuntimeError:  # this object was deleted (panel closed) while the stream ran
            self._closing.set()

    # Lifetime -----------------------------------------------------------------------------------

    def following(self) -> list[str]:
        return list(self._followers)

    def shutdown(self) -> None:
        """Stop polling and let short tasks end; event streams are abandoned (the engine keeps the jobs)."""
        self._closing.set()
        self._timer.stop()
        self._tasks.wait(3000)

