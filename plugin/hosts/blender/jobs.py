"""Following extend jobs from Blender's main thread: the ``bpy.app.timers`` function, progress in the
status bar and the panel, and the finished movie placed as a strip.

Traps avoided:
- ``bpy`` is only touched here, on the main thread; each job's worker thread talks to the engine and
  reports through a queue, which ``Jobs.poll`` (the timer's function) drains.
- Errors that arrive after the operator has returned (the engine could not start, the job failed)
  are reported through ``magic141.report``, an operator that does only that, so they reach the status
  bar and the Info log as the operators' own errors do.
- Blender drops a timer whose function raises: ``poll`` turns any failure into a report instead.
- In ``blender -b`` timers do not run while a script runs: ``Jobs.pump`` calls the timer's function
  in a loop, for scripts and tests.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import bpy

from magic141.errors import Magic141Error, TimelineError
from magic141.protocol import JobResult, JobSpec, clip_record

from . import scene as scene_io
from .worker import CANCELLED, DONE, FAILED, RUNNING, ExtendRequest, ExtendWorker

POLL_SECONDS = 0.25


class Jobs:
    """The extend jobs this Blender is waiting for. ``poll`` is the timer's function."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python  # the Python that magic141 is installed in: it runs the engine service
        self.workers: list[ExtendWorker] = []
        self.history: list[tuple[str, str, str]] = []  # (job id, final state, message), oldest first
        self._timer = self.poll  # one bound method, so the timer can be found again
        self._connecting = threading.Lock()  # two quick clicks must not start two services

    def connect(self):
        from magic141.plugin.client import EngineClient

        with self._connecting:
            return EngineClient(python=self.python).connect()

    def start(self, request: ExtendRequest) -> ExtendWorker:
        worker = ExtendWorker(request, self.connect).start()
        self.workers.append(worker)
        _show(f"{request.strip.name}: job {request.job_id} submitted", 0.0, running=True)
        if not bpy.app.timers.is_registered(self._timer):
            bpy.app.timers.register(self._timer, first_interval=POLL_SECONDS, persistent=True)
        return worker

    def cancel(self) -> int:
        for worker in self.workers:
            worker.cancel()
        return len(self.workers)

    def poll(self) -> float | None:
        """Apply what the workers reported; ``None`` (stop the timer) once none is left."""
        for worker in list(self.workers):
            for update in worker.drain():
                try:
                    self._apply(worker, update)
                except Exception as exc:  # noqa: BLE001 (Blender drops a timer that raises: the others would hang)
                    if worker in self.workers:
                        self.workers.remove(worker)
                    message = f"unexpected {type(exc).__name__}: {exc}"
                    self.history.append((worker.request.job_id, FAILED, message))
                    report("ERROR", message)
        return POLL_SECONDS if self.workers else None

    def pump(self, timeout: float = 600.0) -> None:
        """Poll until every job has ended (for ``blender -b`` scripts, where timers do not run)."""
        deadline = time.monotonic() + timeout
        while self.poll() is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Magic141 jobs still running after {timeout:.0f} s")
            time.sleep(0.1)

    def _apply(self, worker: ExtendWorker, update) -> None:
        request = worker.request
        if update.state == RUNNING:
            _show(f"{request.strip.name}: {update.text}", update.fraction, running=True)
            return
        self.workers.remove(worker)
        level, message = "ERROR", update.text
        if update.state == DONE:
            try:
                message, level = _place(request, update.result, update.spec), "INFO"
            except (Magic141Error, RuntimeError) as exc:  # RuntimeError: Blender refused the movie
                message = str(exc)
        elif update.state == CANCELLED:
            level = "WARNING"
        self.history.append((request.job_id, update.state if level != "ERROR" else FAILED, message))
        _show(message, 1.0 if level == "INFO" else 0.0, running=bool(self.workers))
        report(level, message)


def _place(request: ExtendRequest, result: JobResult, spec: JobSpec) -> str:
    scene = bpy.data.scenes.get(request.scene)
    if bpy.data.filepath != request.blend_file or scene is None:
        where = request.blend_file or "the unsaved file"
        raise TimelineError(f"scene {request.scene!r} of {where} is no longer open; "
                            f"the new movie is {result.path}")
    source_frame = request.frame - request.strip.start
    metadata = clip_record(request.job_id, spec, result, source_clip=request.strip.name,
                           source_frame=source_frame)
    frames = result.frames
    strip, placement, end = scene_io.add_generated(scene, request.strip.name, source_frame, Path(result.path),
                                                   frames, request.placement, metadata)
    notes = []
    if placement.split:
        notes.append(f"{request.strip.name!r} cut at frame {placement.start}")
    if placement.shifted or placement.split:
        notes.append(f"{len(placement.shifted) + placement.split} strips moved right by {frames} frames")
    if end is not None:
        notes.append(f"scene end moved to frame {end}")
    return (f"Added {strip.name!r} on channel {strip.channel} at frame {strip.frame_final_start}, "
            f"{strip.frame_final_duration} frames" + "".join(f"; {note}" for note in notes))


def _show(text: str, fraction: float, *, running: bool) -> None:
    """The panel's status line and progress, and the status bar while jobs run."""
    manager = bpy.context.window_manager
    status = manager.magic141
    status.text, status.progress, status.running = text, 100.0 * fraction, running
    for window in manager.windows:
        window.workspace.status_text_set(f"Magic141: {text} ({100 * fraction:.0f}%)" if running else None)
        for area in window.screen.areas:
            if area.type == "SEQUENCE_EDITOR":
                area.tag_redraw()


def report(level: str, message: str) -> None:
    """Report from outside an operator (the timer): through ``magic141.report``."""
    print(f"Magic141 {level.lower()}: {message}")
    try:
        bpy.ops.magic141.report(level=level, message=message)
    except RuntimeError:
        pass  # an ERROR report is raised back to the caller once it is in Blender's reports


_jobs: Jobs | None = None


def current() -> Jobs:
    """The jobs being followed (the add-on must be registered)."""
    if _jobs is None:
        raise Magic141Error("the Magic141 add-on is not registered")
    return _jobs


def start(python: str | None) -> Jobs:
    """Follow jobs from now on (the add-on's register)."""
    global _jobs
    _jobs = Jobs(python)
    return _jobs


def stop() -> None:
    """Stop following (unregister): running jobs go on in the engine, their media stays in its folder."""
    global _jobs
    if _jobs is not None and bpy.app.timers.is_registered(_jobs._timer):
        bpy.app.timers.unregister(_jobs._timer)
    _jobs = None
