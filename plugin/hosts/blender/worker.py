"""One extend job off Blender's main thread: read the movie, build the job spec, submit it to the
engine service, wait. No ``bpy`` here.

The thread never touches Blender. It reports through ``updates`` (a ``queue.Queue``), which the
add-on's timer drains on the main thread, where the finished media becomes a strip.

Traps avoided:
- Starting the service can take a minute (a cold model), and a job longer: both happen here, so
  Blender's interface never waits on the network.
- Any failure, expected or not, ends as one ``failed`` update with a plain sentence; nothing
  reaches Blender as a traceback, and the thread never dies silently.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from magic141.errors import EngineError, InvalidInput, Magic141Error
from magic141.plugin.extend import job_spec
from magic141.plugin.markers import wait_for
from magic141.protocol import DEFAULT_MODEL, JobResult, JobSpec, JobState, progress_fraction

from . import exchange, probe
from .strips import PLACEMENTS, Strip

if TYPE_CHECKING:
    from magic141.plugin.client import EngineClient

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


@dataclass(frozen=True)
class ExtendRequest:
    """What the editor asked for, read from Blender on the main thread."""

    scene: str  # the scene's name
    blend_file: str  # the .blend it is in ("" when unsaved): a scene of another file is never edited
    strip: Strip  # the source strip as it was when the job was asked for
    frame: int  # the timeline frame to continue from
    prompt: str
    seconds: Fraction
    rate: Fraction  # the scene's, exact
    placement: str  # one of strips.PLACEMENTS
    media_dir: Path  # where the engine writes the new movie
    seed: int = 0
    model: str = DEFAULT_MODEL
    steps: int | None = None
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise InvalidInput(f"must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}",
                               field="placement")
        if not self.prompt.strip():
            raise InvalidInput("is empty: say what happens next", field="prompt")


@dataclass(frozen=True)
class Update:
    state: str  # running | done | failed | cancelled
    text: str  # one line for the status bar
    fraction: float = 0.0  # progress over all windows, 0..1
    result: JobResult | None = None  # the engine's result, when done
    spec: JobSpec | None = None  # the job spec, when done


class ExtendWorker:
    """Runs ``request`` on a daemon thread; ``drain()`` (main thread) returns what happened since."""

    def __init__(self, request: ExtendRequest, connect: Callable[[], EngineClient], *,
                 poll: float = 0.5) -> None:
        self.request = request
        self.updates: queue.Queue[Update] = queue.Queue()
        self._connect = connect
        self._poll = poll
        self._client: EngineClient | None = None
        self._cancel = threading.Event()
        self._cancel_sent = False
        self._thread = threading.Thread(target=self._run, name=f"magic141-{request.job_id}", daemon=True)

    def start(self) -> ExtendWorker:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the engine to stop the job (sent from the thread at its next poll)."""
        self._cancel.set()

    def drain(self) -> list[Update]:
        drained = []
        while True:
            try:
                drained.append(self.updates.get_nowait())
            except queue.Empty:
                return drained

    # On the thread ------------------------------------------------------------------------------

    def _say(self, text: str, fraction: float = 0.0) -> None:
        self.updates.put(Update(RUNNING, text, fraction))

    def _run(self) -> None:
        try:
            self.updates.put(self._work())
        except Magic141Error as exc:
            self.updates.put(Update(FAILED, str(exc)))
        except Exception as exc:  # noqa: BLE001 (the last line of defence: a sentence, never a traceback)
            self.updates.put(Update(FAILED, f"unexpected {type(exc).__name__}: {exc}"))

    def _work(self) -> Update:
        request = self.request
        frame = request.strip.frame_in_strip(request.frame)
        movie = request.strip.path
        assert movie is not None  # frame_in_strip checked it
        self._say(f"Reading {movie.name}")
        ref = exchange.clip_ref(request.strip, probe.media_info(movie))
        spec = job_spec(ref, frame, prompt=request.prompt, seconds=request.seconds, rate=request.rate,
                        media_dir=request.media_dir, job_id=request.job_id, seed=request.seed,
                        model=request.model, steps=request.steps)
        self._say("Connecting to the engine service (it starts with the first job)")
        self._client = client = self._connect()
        client.submit(spec, job_id=request.job_id)
        job = wait_for(client, [request.job_id], poll=self._poll, say=lambda line: None,
                       watch=self._watch)[request.job_id]
        if job["state"] == JobState.DONE:
            return Update(DONE, f"Job {request.job_id} done", 1.0, JobResult.from_json(job["result"]), spec)
        if job["state"] == JobState.CANCELLED:
            return Update(CANCELLED, f"Job {request.job_id} was cancelled; nothing was added")
        return Update(FAILED, f"job {request.job_id} failed: {job.get('error') or 'no reason given'}")

    def _watch(self, job: dict) -> None:
        if self._cancel.is_set() and not self._cancel_sent and self._client is not None:
            self._cancel_sent = True
            try:
                self._client.cancel(job["id"])
            except EngineError:
                pass  # it ended meanwhile; the next poll says how
        progress = job.get("progress") or {}
        if job["state"] == JobState.PENDING:
            self._say("Waiting in the engine's queue")
        elif progress.get("total"):
            windows = int(progress.get("windows") or 1)
            where = f", window {progress.get('window')}/{windows}" if windows > 1 else ""
            fraction = progress_fraction(int(progress.get("step") or 0), int(progress["total"]),
                                         int(progress.get("window") or 1), windows)
            self._say(f"Step {progress.get('step')}/{progress['total']}{where}", fraction)
        elif job["state"] == JobState.RUNNING:
            self._say("Loading the model")
