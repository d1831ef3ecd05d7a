"""The panel's jobs, from a click on Extend to the clip on the timeline. No widgets here.

``JobController`` builds each job's ``JobSpec`` (``plugin.extend.job_spec``), sends it through
the engine bridge, follows its events, places the finished clip in the document with the
clip record every generated clip carries (``protocol.clip_record``), saves the timeline, and
cancels on request. Widgets only listen: every change is a ``Job`` (a frozen snapshot) on
``job_changed``, every sentence for the message line on ``message``.

A job's life as the panel shows it (``JobPhase``)::

    SUBMITTING --> QUEUED --> LOADING --> GENERATING --> FINISHED   (clip placed, timeline saved)
         |  \\________\\__________\\___________\\------> FAILED      (with a reason in the panel's words)
         \\--------------------------------> CANCELLING --> CANCELLED

    QUEUED, LOADING, GENERATING, CANCELLING --(stream lost)--> RECONNECTING
    RECONNECTING --(followed again by id)--> QUEUED | LOADING | CANCELLING, or straight to its ending

Traps avoided:
- A lost event stream is not a failure: the engine may have died and will run the job again on
  restart. The job waits in RECONNECTING until the bridge follows it again by id, and its clip
  is placed when it finishes; FAILED only when the queue says so (or the job never got there).
- A double-click, or a second press while the first job is still on its way, must not queue the
  same job twice: a request identical to one in flight (same timeline, clip, frame, prompt and
  settings, seed included) is refused, and the message line names the job already doing it.
- A cancel asked for while the engine is out of reach is sent again once the job is followed again.
- An ending is final: a late or replayed event (the stream is replayed after a reconnect) never
  turns a finished job back into a running one, and steps that arrive while cancelling move the
  progress bar but not the state.
- A cancel asked for before the engine has accepted the job would reach an engine that does not
  know it yet: it is sent once the job is accepted.
- A job's clip goes into the timeline it was started from: when another timeline has been opened
  meanwhile, or its source clip has gone, the media is kept and the editor told where.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import opentimelineio as otio
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from magic141.errors import Magic141Error
from magic141.plugin import timeline as tl
from magic141.plugin.extend import job_spec, media_dir_for
from magic141.protocol import Event, EventType, JobResult, JobSpec, JobState, clip_record

from .document import TimelineDocument
from .engine_bridge import EngineBridge, JobUpdate
from .frames import span
from .labels import PANEL_LABELS
from .prompt import GenerationSettings
from .tasks import TaskRunner, plain_error


class JobPhase(str, Enum):
    """A job's state as the panel shows it."""

    SUBMITTING = "submitting"  # checking the timeline can be saved, starting the engine, sending the spec
    QUEUED = "queued"
    LOADING = "loading"  # the engine has started it: loading the model
    GENERATING = "generating"  # denoising steps are coming in
    RECONNECTING = "reconnecting"  # the event stream was lost; reaching the engine to follow it again
    CANCELLING = "cancelling"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (JobPhase.FINISHED, JobPhase.FAILED, JobPhase.CANCELLED)


_PHASE_OF = {EventType.QUEUED: JobPhase.QUEUED, EventType.STARTED: JobPhase.LOADING,
             EventType.STEP: JobPhase.GENERATING}
_REATTACHED_AS = {JobState.PENDING: JobPhase.QUEUED, JobState.RUNNING: JobPhase.LOADING,
                  JobState.CANCELLING: JobPhase.CANCELLING}


@dataclass(frozen=True)
class Job:
    """One job of the panel, as it stands now."""

    id: str
    title: str  # what was asked ("Extend Plate A from frame 35: ...")
    detail: str  # its settings in short
    spec: JobSpec
    settings: GenerationSettings
    state: JobPhase = JobPhase.SUBMITTING
    progress: Event | None = None  # the latest step event
    preview: QImage | None = field(default=None, compare=False)  # the latest step's picture
    result: JobResult | None = None
    reason: str = ""  # why it failed, or why it is reconnecting, in the panel's words
    clip: otio.schema.Clip | None = field(default=None, compare=False)  # the clip it placed
    note: str = ""  # where the clip went, or why it was not placed


@dataclass(frozen=True)
class _Target:
    """Where a running job's clip goes when it finishes."""

    doc: tl.TimelineDoc  # the document it was started from (another may be open by then)
    ref: tl.ClipRef  # the clip it extends, or the one the text-to-video clip goes after
    frame: int | None  # the frame it continues from (None: text to video)
    mode: str
    request: tuple  # what was asked, to refuse the same request while this one is in flight


def in_plain_words(reason: str, field_name: str | None = None) -> str:
    """An engine's failure reason as an editor would want to read it, its field named as the panel does."""
    reason = reason.strip()
    if field_name:
        prefix = f"{field_name}: "  # a reason written as str(error) already names the field
        reason = reason[len(prefix):] if reason.startswith(prefix) else reason
        return Magic141Error(reason or "is not valid", field=field_name).phrase(PANEL_LABELS)
    if not reason:
        return "The engine gave no reason"
    if reason.startswith("internal error:"):
        detail = reason[len("internal error:"):].strip()
        return f"The engine hit an unexpected problem ({detail}); its log has details"
    return reason[0].upper() + reason[1:]


class JobController(QObject):
    job_added = Signal(object)  # Job: a new job, not yet accepted by the engine
    job_changed = Signal(object)  # Job: its state, progress, preview or note changed
    clip_placed = Signal(object)  # otio.schema.Clip: a finished job's clip, now in the document
    message = Signal(str, str)  # a sentence for the message line, and its level ("info" | "error")

    def __init__(self, bridge: EngineBridge, document: TimelineDocument,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.document = document
        self._jobs: dict[str, Job] = {}
        self._targets: dict[str, _Target] = {}
        self._cancel_wanted: set[str] = set()  # cancelled by the editor; sent again after a reconnect
        self._checks = TaskRunner(1, self)  # "can this timeline be saved?", off the UI thread
        bridge.job_submitted.connect(self._submitted)
        bridge.job_updated.connect(self._updated)
        bridge.job_error.connect(self._lost)
        bridge.job_reconnecting.connect(self._reconnecting)
        bridge.job_reattached.connect(self._reattached)
        bridge.cancel_failed.connect(self._cancel_failed)

    # What the panel asks -----------------------------------------------------------------------

    def extend(self, ref: tl.ClipRef | None, frame: int, settings: GenerationSettings) -> str | None:
        """Continue ``ref`` from ``frame``; the new job's id, or None (the message line says why)."""
        ref = self._target(ref)
        if ref is None:
            return None
        if ref.offline:
            self.message.emit(f"Cannot extend {ref.name!r}: it is offline ({ref.reason})", "error")
            return None
        return self._start(ref, frame, settings, f"Extend {ref.name} from frame {frame}: {settings.prompt}")

    def generate(self, ref: tl.ClipRef | None, settings: GenerationSettings) -> str | None:
        """A clip from the prompt alone, to go after ``ref``; the new job's id, or None."""
        ref = self._target(ref)
        if ref is None:
            return None
        return self._start(ref, None, settings, f"From text, after {ref.name}: {settings.prompt}")

    def cancel(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.state.ended or job.state is JobPhase.CANCELLING:
            return
        self._cancel_wanted.add(job_id)
        reachable = job.state not in (JobPhase.SUBMITTING, JobPhase.RECONNECTING)
        self._change(job, state=JobPhase.CANCELLING)
        if reachable:
            self.bridge.cancel(job_id)  # else sent once the engine has accepted the job, or is back

    def cancel_newest(self) -> None:
        active = self.active()
        if active:
            self.cancel(active[0])

    # What widgets and tests read ---------------------------------------------------------------------

    def job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def active(self) -> list[str]:
        """Ids of jobs not ended yet, newest first."""
        return [job.id for job in reversed(self._jobs.values()) if not job.state.ended]

    def wait(self, msecs: int = 3000) -> bool:
        return self._checks.wait(msecs)

    # Starting ------------------------------------------------------------------------------------

    def _target(self, ref: tl.ClipRef | None) -> tl.ClipRef | None:
        """``ref`` if a job can start from it; else None, and the message line says what is missing."""
        if self.document.doc is None:
            self.message.emit("Open a timeline first", "error")
            return None
        if ref is None:
            self.message.emit("Select a clip on the timeline first", "error")
        return ref

    def _start(self, ref: tl.ClipRef, frame: int | None, settings: GenerationSettings,
               title: str) -> str | None:
        doc = self.document.doc
        assert doc is not None
        request = (id(doc), id(ref.clip), frame, settings)
        same = next((i for i, t in self._targets.items() if t.request == request), None)
        if same is not None:
            self.message.emit(f"Job {same} is already making this clip (same clip, frame, prompt and "
                              "settings); change something to make another", "error")
            return None
        job_id = uuid.uuid4().hex[:12]
        try:
            spec = job_spec(ref, frame, prompt=settings.prompt, seconds=settings.seconds, rate=doc.rate,
                            media_dir=media_dir_for(doc.path), job_id=job_id, seed=settings.seed,
                            model=settings.model, quant=settings.quant, steps=settings.steps,
                            codec=settings.codec, color_match=settings.color_match,
                            ambience=settings.ambience)
        except Magic141Error as exc:
            self.message.emit(plain_error(exc), "error")
            return None
        detail = f"{settings.seconds} s, seed {settings.seed}, {settings.model}"
        job = Job(job_id, title, detail, spec, settings)
        self._jobs[job_id] = job
        self._targets[job_id] = _Target(doc, ref, frame, settings.mode, request)
        self.job_added.emit(job)
        self.message.emit(f"Job {job_id} sent to the engine", "info")
        # Refuse a timeline that cannot be saved before minutes of generation, then submit.
        self._checks.submit(tl.check_writable, doc.path, done=lambda _: self.bridge.submit(job_id, spec),
                            failed=lambda message: self._lost(job_id, message))
        return job_id

    # Following ------------------------------------------------------------------------------------

    def _submitted(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            return
        if job.state is JobPhase.CANCELLING:
            self.bridge.cancel(job_id)
        elif job.state is JobPhase.SUBMITTING:
            self._change(job, state=JobPhase.QUEUED)

    def _updated(self, update: JobUpdate) -> None:
        event = update.event
        job = self._jobs.get(event.job)
        if job is None or job.state.ended:
            return  # not ours, or a late duplicate: an ending is never undone
        if event.type is EventType.FINISHED:
            self._finished(job, event.result)
        elif event.type is EventType.FAILED:
            self._failed(job, in_plain_words(event.reason or "", event.field))
        elif event.type is EventType.CANCELLED:
            self._targets.pop(job.id, None)
            self._cancel_wanted.discard(job.id)
            self._change(job, state=JobPhase.CANCELLED)
            self.message.emit(f"Job {job.id} cancelled; nothing was added", "info")
        else:
            changes: dict[str, Any] = {}
            if event.type is EventType.STEP:
                changes.update(progress=event, preview=update.preview or job.preview)
            if job.state is not JobPhase.CANCELLING:
                changes["state"] = _PHASE_OF[event.type]
            self._change(job, **changes)

    def _lost(self, job_id: str, message: str) -> None:
        """Not submitted (the engine never had it), or the engine's queue no longer has it."""
        job = self._jobs.get(job_id)
        if job is None or job.state.ended:
            return
        self._failed(job, in_plain_words(message), f"Job {job_id}: {message}")

    def _reconnecting(self, job_id: str, why: str) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.state.ended:
            return
        if job.state is not JobPhase.RECONNECTING:
            self.message.emit(f"Job {job_id}: {why}; reconnecting to follow the job", "info")
        self._change(job, state=JobPhase.RECONNECTING, reason=in_plain_words(why))

    def _reattached(self, job_id: str, state: str) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.state.ended:
            return
        phase = _REATTACHED_AS[JobState(state)]
        if job_id in self._cancel_wanted and phase is not JobPhase.CANCELLING:
            self.bridge.cancel(job_id)  # asked for while the engine was out of reach
            phase = JobPhase.CANCELLING
        self._change(job, state=phase, reason="")
        self.message.emit(f"Job {job_id}: reconnected to the engine; following the job again", "info")

    def _cancel_failed(self, job_id: str, message: str) -> None:
        """The cancel did not get through; how the job ends is still the engine's to say."""
        job = self._jobs.get(job_id)
        if job is not None and not job.state.ended:
            self.message.emit(f"Job {job_id}: the cancel did not reach the engine: {message}", "error")

    def _failed(self, job: Job, reason: str, text: str | None = None) -> None:
        self._targets.pop(job.id, None)
        self._cancel_wanted.discard(job.id)
        self._change(job, state=JobPhase.FAILED, reason=reason)
        self.message.emit(text or f"Job {job.id} failed: {reason}", "error")

    # Placing --------------------------------------------------------------------------------------

    def _finished(self, job: Job, result: JobResult | None) -> None:
        target = self._targets.pop(job.id, None)
        self._cancel_wanted.discard(job.id)
        if result is None:
            self._failed(job, "The engine said the job finished but sent no result")
            return
        job = replace(job, state=JobPhase.FINISHED, result=result)
        if target is None:
            self._change(job)
            return
        clip, where = self._place(job, target, result)
        if clip is None:
            self._change(job, note=f"media kept at {result.path}")
            self.message.emit(where, "error")
            return
        self._change(job, clip=clip, note=f"added {where}")
        self.message.emit(f"Added {where}", "info")
        self.clip_placed.emit(clip)
        self.document.save()

    def _place(self, job: Job, target: _Target, result: JobResult) -> tuple[otio.schema.Clip | None, str]:
        """The clip placed and where it went, or None and why it could not be placed."""
        kept = f"media kept at {result.path}"
        if target.doc is not self.document.doc:
            return None, f"Job {job.id} finished after its timeline was closed; {kept}"
        ref = self.document.resolve(target.ref)
        if ref is None:
            return None, f"Clip {target.ref.name!r} is no longer on the timeline; {kept}"
        record = clip_record(job.id, job.spec, result, source_clip=ref.name, source_frame=target.frame)
        try:
            clip = self.document.add_generated(ref, Path(result.path), result.frames, record, target.mode,
                                               audio_frames=result.sound_frames)
        except Magic141Error as exc:
            return None, f"Job {job.id} finished but its clip could not be placed: {plain_error(exc)}"
        first, count = span(clip, target.doc.rate)
        return clip, f"{clip.name!r} on {clip.parent().name} at frame {first}, {count} frames"

    def _change(self, job: Job, **changes: Any) -> None:
        job = replace(job, **changes) if changes else job
        self._jobs[job.id] = job
        self.job_changed.emit(job)
