"""The queue worker: claims jobs, keeps the pipeline warm between them, records what happened.

One worker runs one job at a time on one device. A second job on the same model and quantisation
reuses the loaded engine (no load time). Every failure of a job is recorded on that job with a
clear reason and the worker goes on to the next; nothing but the job's own state changes. A job
whose state someone else changed meanwhile (``JobConflict`` on recording it) is logged and left
as it is: the worker thread never dies of it.
"""

from __future__ import annotations

import base64
import glob
import io
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import PIL.Image

from magic141.errors import InvalidInput, JobCancelled, JobConflict, Magic141Error
from magic141.protocol import EventType, JobResult, JobSpec, JobState

from .events import EventHub
from .generate import Engine
from .lora import Lora
from .pipeline_output import CancelToken, StepProgress
from .queue import Job, JobQueue

log = logging.getLogger("magic141.worker")


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass(frozen=True)
class Outcome:
    """How one job ended: ``state`` is DONE (with its ``result``), FAILED (with a ``reason`` and,
    when one input is at fault, its ``field``, for a front end to phrase) or CANCELLED."""

    state: JobState
    result: JobResult | None = None
    reason: str | None = None
    field: str | None = None

    @classmethod
    def failed(cls, exc: Magic141Error) -> Outcome:
        return cls(JobState.FAILED, reason=exc.message, field=exc.field)

    @property
    def error(self) -> str:
        """The failure in plain words, field first (what the queue's record keeps)."""
        return f"{self.field}: {self.reason}" if self.field else self.reason or "failed"

    def to_json(self) -> dict:
        """JSON-safe (what a Ray actor sends back)."""
        return {"state": self.state.value, "result": self.result.to_json() if self.result else None,
                "reason": self.reason, "field": self.field}

    @classmethod
    def from_json(cls, data: dict) -> Outcome:
        result = data.get("result")
        return cls(JobState(data["state"]), JobResult.from_json(result) if result else None,
                   data.get("reason"), data.get("field"))


def _make_folder(output_dir: str) -> None:
    """A job's output folder is its producer's choice (a timeline's ``NAME_magic141/``, the service's
    default): the job makes it. ``magic141 generate`` refuses a missing folder before it gets here."""
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"cannot be made: {exc.strerror or exc}: {output_dir}",
                           field="output_dir") from exc


class JobRunner:
    """Runs job specs on a warm engine; knows nothing of queues (Ray actors hold one too)."""

    def __init__(self, device: str | None = None, *, previews: bool = True) -> None:
        self.device = device
        self.previews = previews
        self._engine: Engine | None = None
        self._engine_key: tuple | None = None

    @property
    def loaded_models(self) -> list[str]:
        return [f"{self._engine_key[0]} ({self._engine_key[1]})"] if self._engine_key else []

    def engine_for(self, spec: JobSpec) -> Engine:
        key = (spec.model, spec.quant, spec.loras)
        if self._engine is None or key != self._engine_key:
            self._engine = None  # one model at a time: free the old one before loading the next
            self._engine_key = None
            loras = [Lora.checked(*lora) for lora in spec.loras]
            self._engine = Engine.load(spec.model, device=self.device, quant=spec.quant, loras=loras)
            self._engine_key = key
        return self._engine

    def execute(self, job_id: str, spec: JobSpec | dict,
                progress: Callable[[StepProgress], None] | None = None,
                cancel: CancelToken | None = None) -> Outcome:
        """Run one job (a spec, or its JSON as the queue stores it); every failure becomes a FAILED
        outcome with a clear reason (never a raise)."""
        output: Path | None = None
        try:
            spec = spec if isinstance(spec, JobSpec) else JobSpec.from_json(spec)
            output = Path(spec.output_path(job_id))
            _make_folder(spec.output_dir)
            started = time.perf_counter()
            engine = self.engine_for(spec)
            load = time.perf_counter() - started
            result = engine.generate(spec, output, preview=self.previews, progress=progress, cancel=cancel)
            return Outcome(JobState.DONE, result=replace(result, timings={**result.timings, "load": load}))
        except JobCancelled:
            return Outcome(JobState.CANCELLED)
        except Magic141Error as exc:
            return Outcome.failed(exc)
        except Exception as exc:  # the runner must outlive any one job
            if _is_out_of_memory(exc):
                self._release_device_memory()
                reason = f"out of memory on the device: {exc}".split("\n")[0]
                reason += "; try quant fp8, a smaller size or fewer seconds"
                return Outcome(JobState.FAILED, reason=reason)
            log.exception("job %s failed", job_id)
            return Outcome(JobState.FAILED, reason=f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if output is not None and cancel is not None and cancel.cancelled:
                output.unlink(missing_ok=True)

    def _release_device_memory(self) -> None:
        import torch

        self._engine, self._engine_key = None, None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def discard_unfinished(job: Job) -> list[Path]:
    """Delete what a dead engine left of a job that is not DONE: the hidden partial file of an
    interrupted write, and media it renamed into place but never recorded (written since the job
    was queued). Returns the paths deleted. Call it only for jobs ``recover()`` gave back."""
    if job.state == JobState.DONE:
        return []
    try:
        output = Path(JobSpec.from_json(job.spec).output_path(job.id))
    except Magic141Error:
        return []  # a spec that never ran wrote nothing
    # The partial name is atomic.temporary_beside's: ".<name>.<random>.partial<suffix>".
    found = [Path(p) for p in glob.glob(str(output.parent / f".{glob.escape(output.name)}.*.partial*"))]
    try:
        if output.stat().st_mtime >= job.created:
            found.append(output)
    except OSError:
        pass
    for path in found:
        path.unlink(missing_ok=True)
        log.info("job %s: deleted %s, left by a stopped engine", job.id, path)
    return found


def record(queue: JobQueue, hub: EventHub, job_id: str, outcome: Outcome) -> None:
    """Write a job's outcome to the queue (the record) and tell the event stream."""
    if outcome.state == JobState.DONE:
        assert outcome.result is not None
        final = queue.complete(job_id, outcome.result.to_json())
        if final.state == JobState.CANCELLED:  # cancelled as its last step finished: drop the media
            Path(outcome.result.path).unlink(missing_ok=True)
            hub.publish(job_id, EventType.CANCELLED)
        else:
            hub.publish(job_id, EventType.FINISHED, result=outcome.result)
    elif outcome.state == JobState.CANCELLED:
        queue.mark_cancelled(job_id)
        hub.publish(job_id, EventType.CANCELLED)
    else:
        queue.fail(job_id, outcome.error)
        hub.publish(job_id, EventType.FAILED, reason=outcome.reason, field=outcome.field)


class Worker:
    """Claims jobs from the queue one at a time and runs them on a ``JobRunner``."""

    def __init__(self, queue: JobQueue, hub: EventHub | None = None, *, device: str | None = None,
                 name: str | None = None, previews: bool = True) -> None:
        self.queue = queue
        self.hub = hub or EventHub()
        self.runner = JobRunner(device, previews=previews)
        self.device = device
        self.name = name or f"{socket.gethostname()}:{threading.get_native_id()}"
        self.current: str | None = None

    @property
    def loaded_models(self) -> list[str]:
        return self.runner.loaded_models

    def run_forever(self, stop: threading.Event, poll: float = 0.2) -> None:
        while not stop.is_set():
            if not self.run_one():
                stop.wait(poll)

    def drain(self) -> int:
        """Run jobs until none is pending; returns how many ran."""
        count = 0
        while self.run_one():
            count += 1
        return count

    def run_one(self) -> bool:
        job = self.queue.claim(self.name)
        if job is None:
            return False
        self.current = job.id
        log.info("job %s: attempt %d on %s", job.id, job.attempts, self.name)
        try:
            self._run(job)
        except JobConflict as exc:  # someone else changed the job meanwhile: theirs to decide
            log.warning("job %s: left as it is: %s", job.id, exc)
        finally:
            self.current = None
        return True

    def _run(self, job: Job) -> None:
        self.hub.publish(job.id, EventType.STARTED, attempt=job.attempts, worker=self.name)
        token = CancelToken()

        def progress(step: StepProgress) -> None:
            if self.queue.is_cancel_requested(job.id):
                token.cancel()
            data = {"step": step.step, "total": step.total, "window": step.window, "windows": step.windows,
                    "elapsed": round(step.elapsed, 3), "eta": round(step.eta, 3)}
            self.queue.report_progress(job.id, data)
            preview = _png_base64(step.preview) if step.preview is not None else None
            self.hub.publish(job.id, EventType.STEP, preview=preview, **data)

        record(self.queue, self.hub, job.id, self.runner.execute(job.id, job.spec, progress, token))


def _png_base64(rgb) -> str:
    buffer = io.BytesIO()
    PIL.Image.fromarray(rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")

