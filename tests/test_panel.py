"""The editor panel, offscreen, driven as an editor would: real Qt widgets and real frame grabs.

Most tests run the panel on ``FakeEngine``, an in-process engine with ``EngineClient``'s methods
whose event streams the test writes, so each state of a job (submitted, running, finished and
placed, failed, cancelled, stream lost) is reached on purpose and checked where the editor sees
it. One slow test runs a real engine service subprocess on the tiny model, end to end.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything imports Qt

import opentimelineio as otio
import pytest
from PIL import Image
from PySide6.QtCore import QElapsedTimer, QPoint, Qt, QTimer
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from magic141 import home as home_dir
from magic141.errors import EngineError
from magic141.plugin import edits
from magic141.plugin import timeline as tl
from magic141.protocol import MODELS_VERSION, Event, EventType, JobResult, JobSpec
from magic141.ui.job_controller import JobPhase
from magic141.ui.panel import Magic141Panel
from magic141.ui.prompt import HISTORY_VERSION, PromptHistory
from magic141.ui.viewer import grab_image

SAMPLES = Path(__file__).resolve().parents[1] / "resources" / "samples"
PROMPT = "the ball keeps rolling right"
_END = object()  # ends a fake event stream without a final event
ENDED = (JobPhase.FINISHED, JobPhase.FAILED, JobPhase.CANCELLED)


class FakeEngine:
    """An engine in this process with ``EngineClient``'s methods. Each job's event stream sends
    what the test ``send``s; ``job(id)`` answers from ``records``; nothing runs by itself."""

    def __init__(self) -> None:
        self.specs: dict[str, JobSpec] = {}
        self.records: dict[str, dict | Exception] = {}  # what job(id) answers (or raises)
        self.record_reads: list[str] = []
        self.cancelled: list[str] = []
        self.cancel_refusal: Exception | None = None  # what cancel raises, once ``cancel_gate`` opens
        self.cancel_gate = threading.Event()
        self.cancel_gate.set()
        self.refuse: Exception | None = None  # what submit raises, if anything
        self.accepting = threading.Event()  # cleared: submit waits (the engine is still starting)
        self.accepting.set()
        self.down = threading.Event()  # set: the service is gone (connect, job and cancel are refused)
        self.refused_connects = 0
        self._streams: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()

    # EngineClient's side

    def connect(self, *, start: bool = True) -> FakeEngine:
        self._reachable("connect")
        return self

    def _reachable(self, what: str) -> None:
        if self.down.is_set():
            if what == "connect":
                self.refused_connects += 1
            raise EngineError("cannot reach the engine service at http://127.0.0.1:1: connection refused")

    def health(self) -> dict:
        return {"device": "fake", "free_memory": 3 * 2**30, "loaded_models": ["tiny (none)"],  # as served
                "queue": {"PENDING": 0}}

    def models(self) -> dict:  # as GET /v1/models answers, with one real family installed
        wan = {"name": "wan", "label": "Wan 2.2 image-to-video", "tiny": "tiny-wan",
               "needs_bytes": {"bf16": 72 * 2**30, "fp8": 46 * 2**30},
               "installed": [{"model": "Wan-AI/Wan2.2-I2V-A14B-Diffusers", "path": "/hub/wan"}]}
        hunyuan = {"name": "hunyuan", "label": "HunyuanVideo-I2V-33ch", "tiny": "tiny", "needs_bytes": {},
                   "installed": []}
        return {"version": MODELS_VERSION, "families": [hunyuan, wan]}

    def submit(self, spec: JobSpec, *, job_id: str | None = None, priority: int = 0) -> dict:
        assert isinstance(spec, JobSpec) and job_id is not None
        self.accepting.wait(10)
        if self.refuse is not None:
            raise self.refuse
        self.specs[job_id] = spec
        self._stream(job_id)
        return {"id": job_id, "state": "PENDING", "spec": spec.to_json()}

    def events(self, job_id: str | None = None, after: int = 0) -> Iterator[Event]:
        stream = self._stream(job_id)
        while True:
            item = stream.get(timeout=20)
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def job(self, job_id: str) -> dict:
        self._reachable("job")
        self.record_reads.append(job_id)
        record = self.records[job_id]
        if isinstance(record, Exception):
            raise record
        return record

    def cancel(self, job_id: str) -> dict:
        self._reachable("cancel")
        self.cancelled.append(job_id)
        self.cancel_gate.wait(10)
        if self.cancel_refusal is not None:
            raise self.cancel_refusal
        return {"id": job_id, "state": "CANCELLING"}

    # The test's side

    def _stream(self, job_id: str | None) -> queue.Queue:
        with self._lock:
            return self._streams.setdefault(str(job_id), queue.Queue())

    def send(self, job_id: str, kind: EventType, **fields: object) -> None:
        self._stream(job_id).put(Event(job_id, kind, **fields))

    def end_stream(self, job_id: str) -> None:
        self._stream(job_id).put(_END)

    def break_stream(self, job_id: str, error: Exception) -> None:
        self._stream(job_id).put(error)

    def make_media(self, job_id: str, frames: int = 24) -> JobResult:
        """The file a finished job leaves (the sample plate stands in for it), and its result."""
        spec = self.specs[job_id]
        path = Path(spec.output_path(job_id))
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLES / "plate.mp4", path)
        return JobResult(path=str(path), frames=frames, fps=spec.fps, width=64, height=48, codec=spec.codec,
                         settings={"steps": 4})

    def close(self) -> None:
        with self._lock:
            for stream in self._streams.values():
                stream.put(_END)


def png_base64(colour: tuple[int, int, int] = (200, 40, 40)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), colour).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def sample(tmp_path) -> Path:
    """The sample timeline and its plate in a folder of their own; the plate is found relatively."""
    folder = tmp_path / "edit"
    folder.mkdir()
    shutil.copy(SAMPLES / "sample.otio", folder)
    shutil.copy(SAMPLES / "plate.mp4", folder)
    opened = otio.adapters.read_from_file(str(folder / "sample.otio"))
    urls = {clip.media_reference.target_url for clip in opened.find_clips()}
    assert urls == {"plate.mp4"}  # relative: the copy must not reach back into resources/
    return folder / "sample.otio"


def _shown(qtbot, widget: Magic141Panel) -> Magic141Panel:
    qtbot.addWidget(widget)
    widget.resize(1280, 720)
    widget.show()
    qtbot.waitExposed(widget)
    widget.activateWindow()
    return widget


@pytest.fixture
def panel(qtbot, home):
    """The panel on a real engine service (started by its first job)."""
    widget = _shown(qtbot, Magic141Panel(home=home, poll_ms=500))
    yield widget
    widget.shutdown()


@pytest.fixture
def engine():
    fake = FakeEngine()
    yield fake
    fake.close()


@pytest.fixture
def fake_panel(qtbot, home, engine):
    """The panel on the in-process fake engine."""
    widget = _shown(qtbot, Magic141Panel(home=home, poll_ms=60000, client=engine))
    yield widget
    engine.close()
    widget.shutdown()


def clip_names(panel: Magic141Panel) -> list[str]:
    return [item.name for item in panel.strip.clip_items()]


def click_clip(qtbot, panel: Magic141Panel, name: str) -> None:
    item = next(i for i in panel.strip.clip_items() if i.name == name)
    point = panel.strip.mapFromScene(item.rect().center())
    qtbot.mouseClick(panel.strip.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(point.x(), point.y()))


def open_in(qtbot, panel: Magic141Panel, path: Path) -> None:
    panel.open_timeline(path)
    qtbot.waitUntil(lambda: panel.document.doc is not None and panel.document.doc.path == path.resolve(),
                    timeout=15000)


def state(panel: Magic141Panel, job_id: str) -> JobPhase | None:
    job = panel.controller.job(job_id)
    return job.state if job is not None else None


def wait_state(qtbot, panel: Magic141Panel, job_id: str, *wanted: JobPhase, timeout: int = 5000) -> None:
    qtbot.waitUntil(lambda: state(panel, job_id) in wanted, timeout=timeout)


def row_text(panel: Magic141Panel, job_id: str) -> str:
    return panel.jobs.row(job_id).status.text()


def another_request(panel: Magic141Panel) -> None:
    """Change the (locked) seed, as an editor asking for another job changes something: the same
    request again, inside the double-click interval or while the first is in flight, is refused."""
    panel.prompt.seed.setValue(panel.prompt.seed.value() + 1)


def press_extend(qtbot, panel: Magic141Panel, engine: FakeEngine, *, seconds: float = 1.0) -> str:
    """Extend the selected clip from the viewer's frame; the job's id once the engine has it."""
    if not panel.prompt.prompt.toPlainText():
        qtbot.keyClicks(panel.prompt.prompt, PROMPT)
    panel.prompt.seconds.setValue(seconds)
    another_request(panel)
    qtbot.mouseClick(panel.prompt.extend_button, Qt.MouseButton.LeftButton)
    job_id = panel.controller.active()[0]
    qtbot.waitUntil(lambda: job_id in engine.specs, timeout=5000)
    return job_id


def save_artifact(panel: Magic141Panel, tmp_path: Path, name: str) -> Path:
    shot = panel.grab()
    path = tmp_path / name
    assert shot.save(str(path))
    if os.environ.get("MAGIC141_ARTIFACTS"):
        folder = Path(os.environ["MAGIC141_ARTIFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / name)
    return path


# The job's life on the fake engine -----------------------------------------------------------------


def test_the_cut_settings_reach_the_job(qtbot, fake_panel, engine, sample):
    panel = fake_panel
    open_in(qtbot, panel, sample)
    click_clip(qtbot, panel, "Plate A")
    panel.prompt.color_match.setValue(50)
    panel.prompt.ambience.setValue(0)
    assert panel.prompt.ambience.text() == "off (video only)"
    panel.prompt.quality.setCurrentText("Master (ProRes 422 HQ)")
    spec = engine.specs[press_extend(qtbot, panel, engine)]
    assert (spec.codec, spec.color_match, spec.ambience) == ("prores", 0.5, 0.0)
    assert spec.output_path("x").endswith(".mov")
    panel.prompt.quality.setCurrentText("As the source (ProRes if 10-bit)")
    assert engine.specs[press_extend(qtbot, panel, engine)].codec == "h264"  # the sample plate is 8-bit


def test_a_job_runs_with_progress_and_its_clip_lands_in_the_timeline(qtbot, fake_panel, engine, sample):
    panel = fake_panel
    open_in(qtbot, panel, sample)
    assert clip_names(panel) == ["Plate A", "Plate B"]
    click_clip(qtbot, panel, "Plate A")
    assert panel.selected_clip().name == "Plate A"
    panel.viewer.slider.setFocus()
    qtbot.keyClick(panel.viewer.slider, Qt.Key.Key_End)  # its last frame, where the extension starts
    assert panel.viewer.frame == 35 and panel.strip.playhead == 35

    job_id = press_extend(qtbot, panel, engine)
    wait_state(qtbot, panel, job_id, JobPhase.QUEUED)
    assert row_text(panel, job_id) == "queued" and panel.jobs.row(job_id).cancel.isVisible()
    assert panel.message.text() == f"Job {job_id} sent to the engine"
    spec = engine.specs[job_id]  # what the engine was asked: the clip's media at its frame 35
    assert spec.prompt == PROMPT and spec.seconds == 1 and spec.fps == 24 and spec.source.kind == "media"
    assert spec.source.time == Fraction(35, 24) and Path(spec.source.path) == (sample.parent / "plate.mp4")
    assert Path(spec.output_dir) == sample.parent / "sample_magic141"
    # The cut's defaults: H.264, colour matched, its sound carried on for up to 10 s.
    assert (spec.codec, spec.color_match, spec.ambience) == ("h264", 1.0, 10.0)

    engine.send(job_id, EventType.STARTED, seq=1)
    wait_state(qtbot, panel, job_id, JobPhase.LOADING)
    assert row_text(panel, job_id) == "loading the model…"

    engine.send(job_id, EventType.STEP, seq=2, step=1, total=4, window=1, windows=1, eta=6.0,
                preview=png_base64())
    wait_state(qtbot, panel, job_id, JobPhase.GENERATING)
    row = panel.jobs.row(job_id)
    assert row.status.text() == "step 1/4, about 6 s of denoising left" and row.progress.value() == 250
    assert not row.preview.pixmap().isNull()  # the step's preview is shown
    engine.send(job_id, EventType.STEP, seq=3, step=3, total=4, window=1, windows=1)
    qtbot.waitUntil(lambda: row.progress.value() == 750, timeout=5000)
    assert row.status.text() == "step 3/4"

    result = engine.make_media(job_id)
    with qtbot.waitSignal(panel.clip_added, timeout=5000) as added:
        engine.send(job_id, EventType.FINISHED, seq=4, result=result)
    assert added.args[0].name == "Plate A ext"
    assert state(panel, job_id) is JobPhase.FINISHED and not row.cancel.isVisible()
    assert row.status.text() == "added 'Plate A ext' on V1 at frame 36, 24 frames"
    assert row.progress.value() == 1000
    qtbot.waitUntil(lambda: not panel.document.modified and "Saved" in panel.message.text(), timeout=5000)

    # The strip shows the new clip right after Plate A, drawn as generated.
    assert clip_names(panel) == ["Plate A", "Plate A ext", "Plate B"]
    items = {item.name: item for item in panel.strip.clip_items()}
    assert items["Plate A ext"].kind == "generated"
    assert abs(items["Plate A ext"].rect().left() - items["Plate A"].rect().right()) <= 1

    # The saved timeline holds it, with the record `magic141 extend` leaves.
    saved = otio.adapters.read_from_file(str(sample))
    clips = list(saved.video_tracks()[0].find_clips())
    assert [c.name for c in clips] == ["Plate A", "Plate A ext", "Plate B"]
    made = clips[1].metadata["magic141"]
    assert made["prompt"] == PROMPT and made["source_clip"] == "Plate A" and made["source_frame"] == 35
    assert made["seconds"] == "1" and made["model"] == "world" and made["job_id"] == job_id
    assert made["source_time"] == "35/24" and made["steps"] == 4 and made["seed"] == spec.seed
    assert [m.name for m in clips[1].markers] == [edits.MARKER_NAME]
    assert clips[2].range_in_parent().start_time.to_frames() == 36 + 24  # Plate B rippled
    assert tl.find_clip(tl.open_timeline(sample), "Plate A ext").media_path == Path(result.path)
    assert (sample.parent / "sample.otio.bak").exists()
    assert panel.prompt.history.items == [PROMPT]
    assert PromptHistory(panel.home / "prompt_history.json").items == [PROMPT]  # kept for next time

    # Ctrl+Z (the panel's own shortcut) takes the clip off the strip; the timeline is now modified.
    panel.strip.setFocus()
    qtbot.keyClick(panel.strip, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: clip_names(panel) == ["Plate A", "Plate B"], timeout=5000)
    assert panel.document.modified and "modified" in panel.title.text()
    assert panel.selected_clip().name == "Plate A"  # the selection survives the undo
    panel.redo()
    assert clip_names(panel) == ["Plate A", "Plate A ext", "Plate B"]


def test_a_text_to_video_clip_goes_on_a_new_track_above(qtbot, fake_panel, engine, sample):
    panel = fake_panel
    open_in(qtbot, panel, sample)
    click_clip(qtbot, panel, "Plate B")
    qtbot.keyClicks(panel.prompt.prompt, PROMPT)
    panel.prompt.seconds.setValue(0.5)
    panel.prompt.mode.setCurrentIndex(panel.prompt.mode.findData("newtrack"))
    shortcut = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
    qtbot.keyClick(panel.prompt.prompt, Qt.Key.Key_Return, shortcut)  # Generate from text's shortcut
    job_id = panel.controller.active()[0]
    qtbot.waitUntil(lambda: job_id in engine.specs, timeout=5000)
    assert engine.specs[job_id].source.kind == "none" and engine.specs[job_id].seconds == Fraction(1, 2)

    engine.send(job_id, EventType.FINISHED, result=engine.make_media(job_id, frames=12))
    wait_state(qtbot, panel, job_id, JobPhase.FINISHED)
    qtbot.waitUntil(lambda: not panel.document.modified, timeout=5000)
    new_track = next(i for i in panel.strip.clip_items() if i.name == "Plate B ext")
    plate_b = next(i for i in panel.strip.clip_items() if i.name == "Plate B")
    assert new_track.rect().top() < plate_b.rect().top()  # the track above
    assert abs(new_track.rect().left() - plate_b.rect().right()) <= 1  # where Plate B ends
    saved = otio.adapters.read_from_file(str(sample))
    assert [[c.name for c in track.find_clips()] for track in saved.video_tracks()] == [
        ["Plate A", "Plate B"], ["Plate B ext"]]
    made = saved.video_tracks()[1].find_clips()[0].metadata["magic141"]
    assert made["source_frame"] is None and made["seconds"] == "1/2" and made["job_id"] == job_id


def test_a_failed_job_says_why_in_the_panels_words(qtbot, fake_panel, engine, sample):
    panel = fake_panel
    open_in(qtbot, panel, sample)
    click_clip(qtbot, panel, "Plate A")

    # The engine names the field at fault; the panel names it as its own form does, never as a flag.
    job_id = press_extend(qtbot, panel, engine)
    engine.send(job_id, EventType.FAILED, reason="seconds: must be at most 3600, got '4000'", field="seconds")
    wait_state(qtbot, panel, job_id, JobPhase.FAILED)
    assert row_text(panel, job_id) == "Failed: Seconds: must be at most 3600, got '4000'"
    assert panel.message.text() == f"Job {job_id} failed: Seconds: must be at most 3600, got '4000'"
    assert panel.message.level == "error" and not panel.jobs.row(job_id).cancel.isVisible()

    # An unexpected engine error is said as such.
    job_id = press_extend(qtbot, panel, engine)
    engine.send(job_id, EventType.FAILED, reason="internal error: RuntimeError: CUDA error")
    wait_state(qtbot, panel, job_id, JobPhase.FAILED)
    assert row_text(panel, job_id) == ("Failed: The engine hit an unexpected problem "
                                       "(RuntimeError: CUDA error); its log has details")

    # A job the engine refuses outright: the error's field, phrased for the panel.
    engine.refuse = EngineError("is empty; describe what should happen", 400, field="prompt")
    another_request(panel)
    qtbot.mouseClick(panel.prompt.extend_button, Qt.MouseButton.LeftButton)
    refused = panel.controller.active()[0]
    wait_state(qtbot, panel, refused, JobPhase.FAILED)
    assert row_text(panel, refused) == "Failed: Prompt: is empty; describe what should happen"
    assert panel.message.text() == f"Job {refused}: Prompt: is empty; describe what should happen"
    assert refused not in engine.specs

    # A setting the spec refuses (no widget allows it; a host's script might): no job, the field named.
    too_long = dataclasses.replace(panel.prompt.settings(), seconds=Fraction(4000))
    assert panel.controller.extend(panel.selected_clip(), 35, too_long) is None
    assert panel.message.text() == "Seconds: must be at most 3600, got '4000'"
    assert len(panel.jobs.job_ids()) == 3

    texts = [panel.jobs.row(j).status.text() for j in panel.jobs.job_ids()] + [panel.message.text()]
    assert not any("--" in text for text in texts)
    assert clip_names(panel) == ["Plate A", "Plate B"] and not panel.document.modified
    assert not (sample.parent / "sample.otio.bak").exists()  # nothing was saved


def test_cancel_stops_the_job_and_adds_nothing(qtbot, fake_panel, engine, sample):
    panel = fake_panel
    open_in(qtbot, panel, sample)
    click_clip(qtbot, panel, "Plate A")
    job_id = press_extend(qtbot, panel, engine)
    engine.send(job_id, EventType.STEP, seq=1, step=1, total=4)
    wait_state(qtbot, panel, job_id, JobPhase.GENERATING)

    row = panel.jobs.row(job_id)
    qtbot.mouseClick(row.cancel, Qt.MouseButton.LeftButton)
    assert state(panel, job_id) is JobPhase.CANCELLING
    assert row.status.text() == "cancelling…" and not row.cancel.isEnabled()
    qtbot.waitUntil(lambda: engine.cancelled == [job_id], timeout=5000)
    # A step that was already on its way moves the bar, not the state.
    engine.send(job_id, EventType.STEP, seq=2, step=2, total=4)
    qtbot.waitUntil(lambda: row.progress.value() == 500, timeout=5000)
    assert state(panel, job_id) is JobPhase.CANCELLING and row.status.text() == "cancelling…"

    engine.send(job_id, EventType.CANCELLED, seq=3)
    wait_state(qtbot, panel, job_id, JobPhase.CANCELLED)
    assert row.status.text() == "cancelled" and not row.cancel.isVisible()
    assert panel.message.text() == f"Job {job_id} cancelled; nothing was added"
    assert clip_names(panel) == ["Plate A", "Plate B"] and not panel.document.modified
    assert panel.controller.active() == []

    # Ctrl+. before the engine has even accepted the job: the cancel goes once it has.
    engine.accepting.clear()
    another_request(panel)
    qtbot.mouseClick(panel.prompt.extend_button, Qt.MouseButton.LeftButton)
    early = panel.controller.active()[0]
    panel.jobs.setFocus()
    qtbot.keyClick(panel.jobs, Qt.Key.Key_Period, Qt.KeyboardModifier.ControlModifier)
    assert state(panel, early) is JobPhase.CANCELLING and engine.cancelled == [job_id]
    engine.accepting.set()
    qtbot.waitUntil(lambda: engine.cancelled == [job_id, early], timeout=5000)

    panel.jobs.clear_finished()
    assert panel.jobs.job_ids() == [early]  # the ended job's row goes, the cancelling one stays


def test_a_cancel_too_late_leaves_the_finished_clip_in_place(qtbot, fake_panel, engine, sample):
    panel = fake_panel
    open_in(qtbot, panel, sample)
    click_clip(qtbot, panel, "Plate A")
    job_id = press_extend(qtbot, panel, engine)
    engine.cancel_gate.clear()  # the cancel is on its way while the job finishes
    engine.cancel_refusal = EngineError("the job has already ended", 409)
    panel.controller.cancel(job_id)
    qtbot.waitUntil(lambda: engine.cancelled == [job_id], timeout=5000)
    engine.send(job_id, EventType.FINISHED, result=engine.make_media(job_id))
    wait_state(qtbot, panel, job_id, JobPhase.FINISHED)
    with qtbot.waitSignal(panel.bridge.cancel_failed, timeout=5000):
        engine.cancel_gate.set()  # ... and is refused: the job had ended, which is no failure
    qtbot.waitUntil(lambda: not panel.document.modified, timeout=5000)
    assert state(panel, job_id) is JobPhase.FINISHED and row_text(panel, job_id).startswith("added ")
    assert clip_names(panel) == ["Plate A", "Plate A ext", "Plate B"]
    assert panel.message.level == "info"  # the cancel's refusal is not said once the job has ended


def test_a_stream_that_ends_early_is_settled_by_the_jobs_record(qtbot, fake_panel, engine, sample):
    panel = fake_panel
    open_in(qtbot, panel, sample)
    click_clip(qtbot, panel, "Plate A")

    # The stream ends without a last event; the record says the job is done: its clip is placed.
    done = press_extend(qtbot, panel, engine)
    engine.records[done] = {"state": "DONE", "result": engine.make_media(done).to_json(), "error": None}
    engine.end_stream(done)
    wait_state(qtbot, panel, done, JobPhase.FINISHED)
    assert engine.record_reads == [done]
    assert clip_names(panel) == ["Plate A", "Plate A ext", "Plate B"]
    qtbot.waitUntil(lambda: not panel.document.modified, timeout=5000)

    # ... the record says it failed: its reason is shown.
    failed = press_extend(qtbot, panel, engine)
    engine.records[failed] = {"state": "FAILED", "result": None, "error": "out of memory on cuda:0"}
    engine.end_stream(failed)
    wait_state(qtbot, panel, failed, JobPhase.FAILED)
    assert row_text(panel, failed) == "Failed: Out of memory on cuda:0"
    assert engine.record_reads == [done, failed]

    # ... the record says it still runs: followed again by id, and placed when it finishes.
    running = press_extend(qtbot, panel, engine)
    engine.records[running] = {"state": "RUNNING", "result": None, "error": None}
    engine.end_stream(running)
    wait_state(qtbot, panel, running, JobPhase.LOADING)
    qtbot.waitUntil(lambda: engine.record_reads == [done, failed, running], timeout=5000)
    assert panel.message.text() == f"Job {running}: reconnected to the engine; following the job again"
    engine.send(running, EventType.STEP, step=2, total=4)
    wait_state(qtbot, panel, running, JobPhase.GENERATING)
    engine.send(running, EventType.FINISHED, result=engine.make_media(running))
    wait_state(qtbot, panel, running, JobPhase.FINISHED)
    assert len(clip_names(panel)) == 4 and row_text(panel, running).startswith("added ")

    # ... the queue no longer knows it (another home, a wiped queue): nothing to wait for.
    gone = press_extend(qtbot, panel, engine)
    engine.records[gone] = EngineError(f"no job {gone}", 404)
    engine.end_stream(gone)
    wait_state(qtbot, panel, gone, JobPhase.FAILED)
    assert row_text(panel, gone) == "Failed: The engine's queue no longer has this job"


def test_after_the_engine_dies_mid_job_the_panel_reattaches_and_places_the_clip(qtbot, fake_panel, engine,
                                                                                 sample):
    """Issue 14, item 2: the service dies while the job runs; the restarted service runs it again."""
    panel = fake_panel
    open_in(qtbot, panel, sample)
    click_clip(qtbot, panel, "Plate A")
    job_id = press_extend(qtbot, panel, engine)
    engine.send(job_id, EventType.STEP, step=1, total=4)
    wait_state(qtbot, panel, job_id, JobPhase.GENERATING)

    # The service dies: its stream breaks and nothing answers.
    engine.down.set()
    engine.break_stream(job_id, EngineError("lost the engine service's event stream: connection reset"))
    wait_state(qtbot, panel, job_id, JobPhase.RECONNECTING)
    qtbot.waitUntil(lambda: engine.refused_connects >= 2, timeout=5000)  # it keeps trying, backing off
    row = panel.jobs.row(job_id)
    assert row.status.text().startswith("reconnecting to the engine… (Lost the engine: ")
    assert row.cancel.isVisible() and row.cancel.isEnabled()
    assert panel.message.level == "info" and "reconnecting" in panel.message.text()
    assert state(panel, job_id) is JobPhase.RECONNECTING  # not "failed": the queue still has the job

    # The service is back (connect() found or started it); its queue ran the job again: RUNNING.
    engine.records[job_id] = {"state": "RUNNING", "result": None, "error": None}
    engine.down.clear()
    wait_state(qtbot, panel, job_id, JobPhase.LOADING)
    engine.send(job_id, EventType.STEP, step=3, total=4)
    wait_state(qtbot, panel, job_id, JobPhase.GENERATING)
    result = engine.make_media(job_id)
    with qtbot.waitSignal(panel.clip_added, timeout=5000) as added:
        engine.send(job_id, EventType.FINISHED, result=result)
    assert added.args[0].name == "Plate A ext"
    assert state(panel, job_id) is JobPhase.FINISHED
    qtbot.waitUntil(lambda: not panel.document.modified, timeout=5000)
    saved = tl.open_timeline(sample)
    assert tl.find_clip(saved, "Plate A ext").media_path == Path(result.path)  # its media is on the timeline

    # A cancel asked for while the engine is away is sent once the job is followed again.
    doomed = press_extend(qtbot, panel, engine)
    engine.down.set()
    engine.end_stream(doomed)
    wait_state(qtbot, panel, doomed, JobPhase.RECONNECTING)
    qtbot.mouseClick(panel.jobs.row(doomed).cancel, Qt.MouseButton.LeftButton)
    assert state(panel, doomed) is JobPhase.CANCELLING and engine.cancelled == []
    engine.records[doomed] = {"state": "PENDING", "result": None, "error": None}
    engine.down.clear()
    qtbot.waitUntil(lambda: engine.cancelled == [doomed], timeout=5000)
    engine.send(doomed, EventType.CANCELLED)
    wait_state(qtbot, panel, doomed, JobPhase.CANCELLED)
    assert len(clip_names(panel)) == 3


def test_a_job_that_ends_after_its_timeline_was_closed_keeps_its_media(qtbot, fake_panel, engine, sample,
                                                                       tmp_path):
    panel = fake_panel
    open_in(qtbot, panel, sample)
    click_clip(qtbot, panel, "Plate A")
    job_id = press_extend(qtbot, panel, engine)
    other = tmp_path / "other"
    shutil.copytree(sample.parent, other)
    open_in(qtbot, panel, other / "sample.otio")

    result = engine.make_media(job_id)
    engine.send(job_id, EventType.FINISHED, result=result)
    wait_state(qtbot, panel, job_id, JobPhase.FINISHED)
    assert panel.message.text() == (f"Job {job_id} finished after its timeline was closed; media kept at "
                                    f"{result.path}")
    assert row_text(panel, job_id) == f"media kept at {result.path}"
    assert clip_names(panel) == ["Plate A", "Plate B"] and not panel.document.modified
    assert Path(result.path).exists()


def test_bad_input_is_reported_on_the_message_line_and_changes_nothing(qtbot, fake_panel, engine, sample,
                                                                       tmp_path, home):
    panel = fake_panel
    open_in(qtbot, panel, sample)

    # An unreadable timeline: said in one line; the open timeline stays.
    broken = tmp_path / "broken.otio"
    broken.write_text("{ this is not a timeline", encoding="utf-8")
    panel.open_timeline(broken)
    qtbot.waitUntil(lambda: panel.message.level == "error", timeout=15000)
    assert f"timeline {broken} cannot be read" in panel.message.text()
    assert panel.document.doc.path == sample.resolve() and clip_names(panel) == ["Plate A", "Plate B"]
    assert QApplication.activeModalWidget() is None

    # A timeline whose media is missing: its clips open as offline, and cannot be extended.
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(sample, lonely / "sample.otio")
    before = (lonely / "sample.otio").read_bytes()
    open_in(qtbot, panel, lonely / "sample.otio")
    assert "offline" in panel.message.text() and panel.message.level == "error"
    assert [item.kind for item in panel.strip.clip_items()] == ["offline", "offline"]
    click_clip(qtbot, panel, "Plate B")
    missing = f"its media {lonely / 'plate.mp4'} is missing"
    assert missing in panel.viewer.message() and panel.viewer.image() is None

    qtbot.mouseClick(panel.prompt.extend_button, Qt.MouseButton.LeftButton)  # no prompt yet
    assert "Type a prompt first" in panel.prompt.problem.text()
    qtbot.keyClicks(panel.prompt.prompt, PROMPT)
    qtbot.keyClick(panel.prompt.prompt, Qt.Key.Key_Return,
                   Qt.KeyboardModifier.ControlModifier)  # Extend's shortcut
    assert panel.prompt.prompt.toPlainText() == PROMPT  # taken as the shortcut, not typed as a new line
    assert panel.message.text() == f"Cannot extend 'Plate B': it is offline ({missing})"
    assert panel.message.level == "error" and QApplication.activeModalWidget() is None
    assert panel.jobs.job_ids() == [] and panel.controller.active() == []
    assert (lonely / "sample.otio").read_bytes() == before and not panel.document.modified
    assert not list(lonely.glob("*_magic141")) and engine.specs == {}  # nothing reached the engine
    assert home_dir.read_service(home) is None  # and no engine service was started


def test_a_timeline_that_cannot_be_saved_is_refused_before_the_job_starts(qtbot, fake_panel, engine, sample,
                                                                          tmp_path):
    panel = fake_panel
    open_in(qtbot, panel, sample)
    click_clip(qtbot, panel, "Plate A")
    shutil.move(sample.parent, tmp_path / "moved")
    sample.parent.write_text("", encoding="utf-8")  # its folder is now a file: nothing can be saved there
    qtbot.keyClicks(panel.prompt.prompt, PROMPT)
    qtbot.mouseClick(panel.prompt.extend_button, Qt.MouseButton.LeftButton)
    job_id = panel.jobs.job_ids()[0]
    wait_state(qtbot, panel, job_id, JobPhase.FAILED)
    assert engine.specs == {}  # refused before the engine heard of it
    assert row_text(panel, job_id).startswith(f"Failed: Timeline: cannot save {sample}")
    assert panel.message.level == "error" and panel.message.text().startswith(f"Job {job_id}: Timeline: ")


def test_the_prompt_history_is_versioned_and_survives_a_bad_file(tmp_path):
    path = tmp_path / "prompt_history.json"
    history = PromptHistory(path)
    history.add("first")
    history.add("second")
    history.add("first")
    assert history.items == ["first", "second"]  # newest first, never twice
    assert PromptHistory(path).items == ["first", "second"]
    assert json.loads(path.read_text(encoding="utf-8"))["version"] == HISTORY_VERSION
    path.write_text("{ not json", encoding="utf-8")
    assert PromptHistory(path).items == []  # an unreadable history starts afresh


def test_before_a_timeline_is_open_the_footer_shows_the_engine_and_extend_says_what_is_missing(
        qtbot, fake_panel, engine):
    panel = fake_panel
    qtbot.waitUntil(lambda: panel.engine_status.status is not None, timeout=5000)
    assert panel.engine_status.full_text == "Engine: fake · 3.0 GiB free · model tiny, full precision"
    qtbot.waitUntil(lambda: panel.prompt.model.findText("Wan-AI/Wan2.2-I2V-A14B-Diffusers") >= 0,
                    timeout=5000)
    menu = panel.prompt.model
    items = [menu.itemText(i) for i in range(menu.count())]
    assert items[:3] == ["world", "tiny", "tiny-wan"] and items[-1] == "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
    tip = menu.itemData(menu.count() - 1, Qt.ItemDataRole.ToolTipRole)
    assert tip == "Wan 2.2 image-to-video (/hub/wan); needs bf16 72 GiB, fp8 46 GiB"
    assert menu.currentText() == "world"  # the menu filled in; the choice stays
    assert menu.view().minimumWidth() >= menu.view().sizeHintForColumn(0)  # the list shows names whole
    qtbot.keyClicks(panel.prompt.prompt, PROMPT)
    qtbot.mouseClick(panel.prompt.extend_button, Qt.MouseButton.LeftButton)
    assert panel.message.text() == "Open a timeline first" and panel.message.level == "error"
    assert panel.jobs.job_ids() == [] and engine.specs == {}


# Unsaved edits: Save / Discard / Cancel (issue 14, item 6) -------------------------------------------


@pytest.fixture
def answers(monkeypatch):
    """The answers the "Save the changes?" box gives, in turn; ``asked`` keeps what each box said."""
    from PySide6.QtWidgets import QMessageBox

    given: list[QMessageBox.StandardButton] = []
    asked: list[str] = []

    def exec_(box: QMessageBox) -> int:
        asked.append(box.text())
        assert box.standardButtons() == (QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                                         | QMessageBox.StandardButton.Cancel)
        return given.pop(0).value

    monkeypatch.setattr(QMessageBox, "exec", exec_)
    return given, asked


def place_then_undo(qtbot, panel: Magic141Panel, engine: FakeEngine, sample: Path) -> None:
    """A generated clip placed (and saved), then undone: the timeline on disk still has it."""
    open_in(qtbot, panel, sample)
    click_clip(qtbot, panel, "Plate A")
    job_id = press_extend(qtbot, panel, engine)
    engine.send(job_id, EventType.FINISHED, result=engine.make_media(job_id))
    wait_state(qtbot, panel, job_id, JobPhase.FINISHED)
    qtbot.waitUntil(lambda: not panel.document.modified, timeout=5000)
    panel.undo()
    assert panel.document.modified and clip_names(panel) == ["Plate A", "Plate B"]


def on_disk(sample: Path) -> list[str]:
    return [c.name for c in otio.adapters.read_from_file(str(sample)).find_clips()]


def file_dialogs(panel: Magic141Panel) -> list:
    from PySide6.QtWidgets import QFileDialog

    return [d for d in panel.findChildren(QFileDialog) if d.isVisible()]


def test_quitting_after_an_edit_asks_save_discard_or_cancel(qtbot, home, engine, sample, answers):
    from PySide6.QtWidgets import QMessageBox

    from magic141.ui.app import MainWindow

    given, asked = answers
    window = MainWindow(home=str(home), client=engine)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    place_then_undo(qtbot, window.panel, engine, sample)
    assert window.windowTitle() == "sample.otio * — Magic141"

    given.append(QMessageBox.StandardButton.Cancel)  # Cancel: the window stays, the edit too
    assert not window.close()
    assert window.isVisible() and window.panel.document.modified
    assert asked == ["Save the changes to sample.otio?"]
    assert on_disk(sample) == ["Plate A", "Plate A ext", "Plate B"]

    given.append(QMessageBox.StandardButton.Save)  # Save: saved, then the window closes
    window.close()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=5000)
    assert on_disk(sample) == ["Plate A", "Plate B"] and len(asked) == 2
    assert given == []


def test_closing_the_panel_or_opening_another_timeline_asks_first(qtbot, fake_panel, engine, sample,
                                                                   answers):
    from PySide6.QtWidgets import QMessageBox

    given, asked = answers
    panel = fake_panel
    place_then_undo(qtbot, panel, engine, sample)

    # Open… with unsaved edits: Cancel shows no file dialog; Discard goes on to it.
    given.append(QMessageBox.StandardButton.Cancel)
    panel.choose_timeline()
    assert file_dialogs(panel) == [] and panel.document.modified
    assert asked == ["Save the changes to sample.otio?"]
    given.append(QMessageBox.StandardButton.Discard)
    panel.choose_timeline()
    (dialog,) = file_dialogs(panel)
    dialog.reject()
    assert on_disk(sample) == ["Plate A", "Plate A ext", "Plate B"]  # discarding writes nothing

    # ... Save saves first, then shows the dialog.
    given.append(QMessageBox.StandardButton.Save)
    panel.choose_timeline()
    qtbot.waitUntil(lambda: len(file_dialogs(panel)) == 1, timeout=5000)
    file_dialogs(panel)[0].reject()
    assert on_disk(sample) == ["Plate A", "Plate B"] and not panel.document.modified

    # Nothing unsaved: nothing asked.
    panel.choose_timeline()
    file_dialogs(panel)[0].reject()
    assert len(asked) == 3

    # Closing the panel itself (a host closing it, or it as a window): asked too; Discard closes.
    panel.redo()
    given.append(QMessageBox.StandardButton.Cancel)
    assert not panel.close() and panel.isVisible()
    given.append(QMessageBox.StandardButton.Discard)
    assert panel.close() and not panel.isVisible()
    assert on_disk(sample) == ["Plate A", "Plate B"] and len(asked) == 5 and given == []


# One job per click (issue 14, item 7) -----------------------------------------------------------------


def test_a_double_click_on_extend_queues_one_job(qtbot, fake_panel, engine, sample):
    panel = fake_panel
    open_in(qtbot, panel, sample)
    click_clip(qtbot, panel, "Plate A")
    qtbot.keyClicks(panel.prompt.prompt, PROMPT)
    button = panel.prompt.extend_button
    timer = QElapsedTimer()

    # Two clicks inside the double-click interval, the seed locked.
    timer.start()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert timer.elapsed() < QApplication.doubleClickInterval()
    first = panel.controller.active()
    assert len(first) == 1 and len(panel.jobs.job_ids()) == 1
    qtbot.waitUntil(lambda: first[0] in engine.specs, timeout=5000)

    # A double-click with the seed unlocked (each request would draw a new seed): still one job.
    panel.prompt.seed_lock.setChecked(False)
    panel.prompt.seconds.setValue(1.0)  # another request than the first
    clicks: list[int] = []
    button.clicked.connect(lambda: clicks.append(1))
    timer.start()  # what a real double-click delivers: press, release, double-click press, release
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.mouseDClick(button, Qt.MouseButton.LeftButton)
    qtbot.mouseRelease(button, Qt.MouseButton.LeftButton)
    assert timer.elapsed() < QApplication.doubleClickInterval() and len(clicks) == 2
    assert len(panel.jobs.job_ids()) == 2
    qtbot.waitUntil(lambda: len(engine.specs) == 2, timeout=5000)

    # The same request again later, while the first is still running: refused, and said why.
    again = engine.specs[first[0]]
    settings = dataclasses.replace(panel.prompt.settings(), seconds=Fraction(2), seed=again.seed)
    assert panel.controller.extend(panel.selected_clip(), panel.viewer.frame, settings) is None
    assert panel.message.text().startswith(f"Job {first[0]} is already making this clip")
    assert panel.message.level == "error" and len(engine.specs) == 2

    # ... once it has ended, the same request is a new job.
    engine.send(first[0], EventType.CANCELLED)
    wait_state(qtbot, panel, first[0], JobPhase.CANCELLED)
    assert panel.controller.extend(panel.selected_clip(), panel.viewer.frame, settings) is not None


# At a docked size (issue 14, item 9) ----------------------------------------------------------------


def docked(qtbot, panel: Magic141Panel) -> Magic141Panel:
    panel.resize(760, 480)
    qtbot.waitUntil(lambda: panel.width() == 760 and panel.height() == 480, timeout=5000)
    return panel


def test_at_a_docked_size_the_settings_fit_and_scroll(qtbot, fake_panel, engine, sample):
    panel = docked(qtbot, fake_panel)
    open_in(qtbot, panel, sample)
    prompt = panel.prompt
    fields = [prompt.seconds, prompt.seed, prompt.steps, prompt.model, prompt.quality, prompt.memory,
              prompt.mode]
    area = prompt.settings_area
    for combo in (prompt.model, prompt.quality, prompt.memory, prompt.mode):
        widest = max(combo.itemText(i) for i in range(combo.count()))
        for i in range(combo.count()):  # every choice fits whole, whichever is picked
            combo.setCurrentIndex(i)
        assert combo.width() >= combo.sizeHint().width(), widest
    for field in fields:
        assert field.width() >= field.minimumSizeHint().width(), field
        assert field.height() >= field.sizeHint().height(), field  # not squashed
        assert area.widget().width() <= area.viewport().width()  # nothing hidden to the right
    # Too tall for the room: the settings scroll to the last one; the buttons stay in view.
    assert area.verticalScrollBar().maximum() > 0
    area.ensureWidgetVisible(prompt.mode)
    mode_top = prompt.mode.mapTo(area.viewport(), QPoint(0, 0)).y()
    assert 0 <= mode_top and mode_top + prompt.mode.height() <= area.viewport().height()
    for button in (prompt.extend_button, prompt.generate_button):
        corner = button.mapTo(panel, QPoint(button.width(), button.height()))
        assert button.isVisible() and corner.x() <= panel.width() and corner.y() <= panel.height()


def test_at_a_docked_size_the_panel_reads_right(qtbot, fake_panel, engine, sample, tmp_path):
    panel = docked(qtbot, fake_panel)
    open_in(qtbot, panel, sample)

    # Disabled Undo and Redo look disabled: their text is dim next to Open's.
    assert not panel.undo_button.isEnabled() and not panel.redo_button.isEnabled()

    def brightest(button) -> int:
        image = button.grab().toImage()
        return max(QColor(image.pixel(x, y)).lightness() for x in range(image.width())
                   for y in range(image.height()))

    assert brightest(panel.undo_button) < brightest(panel.open_button) - 80
    assert panel.undo_button.palette().color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText) != \
        panel.open_button.palette().color(QPalette.ColorGroup.Active, QPalette.ColorRole.ButtonText)

    # A job's long title ends in an ellipsis, cut at a whole character, never past its row.
    click_clip(qtbot, panel, "Plate A")
    long_prompt = "the ball keeps rolling right across the whole wide floor until it meets the far wall"
    qtbot.keyClicks(panel.prompt.prompt, long_prompt)
    job_id = press_extend(qtbot, panel, engine)
    title = panel.jobs.row(job_id).title
    qtbot.waitUntil(lambda: title.text().endswith("…"), timeout=5000)
    assert title.full_text.endswith(long_prompt) and title.full_text.startswith(title.text()[:-1])
    assert title.fontMetrics().horizontalAdvance(title.text()) <= title.contentsRect().width()
    assert panel.jobs.row(job_id).cancel.isVisible()

    # The ruler's last label is drawn whole, inside the strip.
    labels = panel.strip.ruler_labels()
    assert [label.text() for label in labels] == ["01:00:00:00", "01:00:01:00", "01:00:02:00", "01:00:03:00"]
    for label in labels:
        box = panel.strip.mapFromScene(label.sceneBoundingRect()).boundingRect()
        assert 0 <= box.left() and box.right() <= panel.strip.viewport().width(), label.text()

    # The footer says the weights' precision in words, never "(none)".
    panel.bridge.refresh_status()
    qtbot.waitUntil(lambda: panel.engine_status.status is not None, timeout=5000)
    assert "(none)" not in panel.engine_status.full_text
    assert panel.engine_status.full_text.endswith("model tiny, full precision")

    # The Open dialog starts in the open timeline's folder.
    panel.choose_timeline()
    (dialog,) = file_dialogs(panel)
    assert Path(dialog.directory().absolutePath()) == sample.parent.resolve()
    dialog.reject()


def test_the_viewer_shows_the_timelines_timecode_at_the_frame(qtbot, fake_panel, sample):
    panel = fake_panel
    timeline = otio.adapters.read_from_file(str(sample))
    timeline.global_start_time = otio.opentime.from_timecode("01:00:00:00", 24)
    otio.adapters.write_to_file(timeline, str(sample))
    open_in(qtbot, panel, sample)
    click_clip(qtbot, panel, "Plate B")
    panel.viewer.slider.setValue(7)
    first = panel.strip.item_span(panel.selected_clip())[0]
    at = otio.opentime.RationalTime(first + 7, 24) + otio.opentime.from_timecode("01:00:00:00", 24)
    assert panel.viewer.timecode.text() == otio.opentime.to_timecode(at, 24) == "01:00:01:19"


def test_timecode_is_exact_at_a_fractional_rate():
    from magic141.ui.frames import timecode

    rate = otio.opentime.RationalTime(0, 24000 / 1001).rate
    timeline = otio.schema.Timeline()
    timeline.global_start_time = otio.opentime.from_timecode("00:59:00:00", rate)
    doc = tl.TimelineDoc(Path("t.otio"), timeline, Fraction(24000, 1001), "otio_json", Path("."))
    at = otio.opentime.RationalTime(86313, rate) + timeline.global_start_time
    assert timecode(doc, 86313) == otio.opentime.to_timecode(at, rate) == "01:58:56:09"


# End to end on a real engine service ---------------------------------------------------------------


@pytest.mark.slow
def test_extend_undo_cancel_and_generate_from_text_in_the_panel(qtbot, panel, sample, tmp_path):
    from magic141.engine import media  # only this test decodes what a real engine wrote

    open_in(qtbot, panel, sample)
    assert clip_names(panel) == ["Plate A", "Plate B"]

    # Select Plate A with a click on the strip; the viewer shows it, off the UI thread.
    click_clip(qtbot, panel, "Plate A")
    assert panel.selected_clip().name == "Plate A"
    qtbot.waitUntil(lambda: panel.viewer.shown_frame is not None, timeout=15000)

    # Scrub to frame 20: the picture is that frame of the plate, and the playhead follows.
    panel.viewer.slider.setValue(20)
    qtbot.waitUntil(lambda: panel.viewer.shown_frame == 20, timeout=15000)
    ref = panel.selected_clip()
    assert panel.viewer.image() == grab_image(ref, 20)
    assert panel.viewer.image() != grab_image(ref, 0)
    assert panel.strip.playhead == 20
    # ... and back to the clip's last frame with the keyboard, where the extension starts.
    panel.viewer.slider.setFocus()
    qtbot.keyClick(panel.viewer.slider, Qt.Key.Key_End)
    qtbot.waitUntil(lambda: panel.viewer.shown_frame == 35, timeout=15000)
    assert panel.strip.playhead == 35

    qtbot.keyClicks(panel.prompt.prompt, PROMPT)
    panel.prompt.seconds.setValue(1.0)
    assert panel.prompt.model.currentText() == "world"  # the default; this test runs the random one
    panel.prompt.model.setCurrentText("tiny")

    # A heartbeat on the UI thread: the longest gap between beats is the longest stall.
    beats: list[float] = [time.perf_counter()]
    stalls: list[float] = [0.0]

    def beat() -> None:
        now = time.perf_counter()
        stalls[0] = max(stalls[0], now - beats[-1])
        beats.append(now)

    heartbeat = QTimer()
    heartbeat.setInterval(10)
    heartbeat.timeout.connect(beat)
    heartbeat.start()
    qtbot.mouseClick(panel.prompt.extend_button, Qt.MouseButton.LeftButton)
    job_id = panel.controller.active()[0]
    wait_state(qtbot, panel, job_id, *ENDED, timeout=180000)
    assert state(panel, job_id) is JobPhase.FINISHED, row_text(panel, job_id)
    qtbot.waitUntil(lambda: not panel.document.modified and "Saved" in panel.message.text(), timeout=15000)

    # The strip shows the new clip right after Plate A, drawn as generated.
    assert clip_names(panel) == ["Plate A", "Plate A ext", "Plate B"]
    items = {item.name: item for item in panel.strip.clip_items()}
    assert items["Plate A ext"].kind == "generated"
    assert abs(items["Plate A ext"].rect().left() - items["Plate A"].rect().right()) <= 1
    row = panel.jobs.row(job_id)
    assert row.progress.value() == 1000 and not row.preview.pixmap().isNull()  # a step preview was shown
    assert "added 'Plate A ext' on V1 at frame 36, 24 frames" in row.status.text()
    qtbot.waitUntil(lambda: panel.engine_status.status is not None and panel.engine_status.status.running,
                    timeout=10000)
    assert "cpu" in panel.engine_status.full_text and "tiny" in panel.engine_status.full_text

    # The saved timeline holds it, with how it was made.
    saved = otio.adapters.read_from_file(str(sample))
    clips = list(saved.video_tracks()[0].find_clips())
    assert [c.name for c in clips] == ["Plate A", "Plate A ext", "Plate B"]
    made = clips[1].metadata["magic141"]
    assert made["prompt"] == PROMPT and made["source_clip"] == "Plate A" and made["source_frame"] == 35
    assert made["seconds"] == "1" and made["model"] == "tiny" and made["job_id"] == job_id
    assert [m.name for m in clips[1].markers] == [edits.MARKER_NAME]
    assert clips[2].range_in_parent().start_time.to_frames() == 36 + 24  # Plate B rippled
    generated = tl.open_timeline(sample)
    info = media.probe_video(tl.find_clip(generated, "Plate A ext").media_path)
    assert info.frames == 24
    assert (sample.parent / "sample.otio.bak").exists()
    assert PROMPT in panel.prompt.history.items

    # Ctrl+Z (the panel's own shortcut) takes the clip off the strip; the timeline is now modified.
    panel.strip.setFocus()
    qtbot.keyClick(panel.strip, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: clip_names(panel) == ["Plate A", "Plate B"], timeout=5000)
    assert panel.document.modified and "modified" in panel.title.text()
    assert panel.selected_clip().name == "Plate A"  # the selection survives the undo
    panel.redo()
    assert clip_names(panel) == ["Plate A", "Plate A ext", "Plate B"]

    # Cancel: the job stops, and nothing is added.
    panel.prompt.seconds.setValue(2.0)
    qtbot.mouseClick(panel.prompt.extend_button, Qt.MouseButton.LeftButton)
    doomed = panel.controller.active()[0]
    wait_state(qtbot, panel, doomed, JobPhase.GENERATING, timeout=60000)
    qtbot.mouseClick(panel.jobs.row(doomed).cancel, Qt.MouseButton.LeftButton)
    wait_state(qtbot, panel, doomed, *ENDED, timeout=60000)
    assert state(panel, doomed) is JobPhase.CANCELLED and "nothing was added" in panel.message.text()
    assert clip_names(panel) == ["Plate A", "Plate A ext", "Plate B"]

    # Generate from text onto a new track above Plate B, chosen in the settings.
    click_clip(qtbot, panel, "Plate B")
    panel.prompt.seconds.setValue(0.5)
    panel.prompt.mode.setCurrentIndex(panel.prompt.mode.findData("newtrack"))
    qtbot.mouseClick(panel.prompt.generate_button, Qt.MouseButton.LeftButton)
    text_job = panel.controller.active()[0]
    wait_state(qtbot, panel, text_job, *ENDED, timeout=120000)
    assert state(panel, text_job) is JobPhase.FINISHED, row_text(panel, text_job)
    qtbot.waitUntil(lambda: not panel.document.modified, timeout=15000)
    heartbeat.stop()
    print(f"longest UI-thread stall during the jobs: {stalls[0] * 1000:.0f} ms over {len(beats)} beats")
    assert len(beats) > 100 and stalls[0] < 1.0

    new_track = next(i for i in panel.strip.clip_items() if i.name == "Plate B ext")
    plate_b = next(i for i in panel.strip.clip_items() if i.name == "Plate B")
    assert new_track.rect().top() < plate_b.rect().top()  # the track above
    assert abs(new_track.rect().left() - plate_b.rect().right()) <= 1  # where Plate B ends
    saved = otio.adapters.read_from_file(str(sample))
    assert [[c.name for c in track.find_clips()] for track in saved.video_tracks()] == [
        ["Plate A", "Plate A ext", "Plate B"], ["Plate B ext"]]
    made = saved.video_tracks()[1].find_clips()[0].metadata["magic141"]
    assert made["source_frame"] is None and made["seconds"] == "1/2" and made["job_id"] == text_job

    shot = save_artifact(panel, tmp_path, "panel.png")
    with Image.open(shot) as picture:  # the dark look: the panel's chrome is dark grey
        assert max(picture.convert("RGB").getpixel((3, 3))) < 60



def test_magic141_panel_opens_the_timeline_named_on_its_command_line(qapp, sample, home, monkeypatch):
    from magic141.ui.app import MainWindow, main

    monkeypatch.setenv("MAGIC141_HOME", str(home))
    seen: dict = {}

    def look() -> None:
        window = next((w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow)), None)
        if window is None or window.panel.document.doc is None:
            QTimer.singleShot(50, look)
            return
        seen.update(title=window.windowTitle(), clips=clip_names(window.panel), home=window.panel.home)
        window.close()
        qapp.quit()

    QTimer.singleShot(0, look)
    QTimer.singleShot(20000, qapp.quit)  # a guard: the assertions below say what was missing
    assert main([str(sample)]) == 0
    assert seen == {"title": "sample.otio — Magic141", "clips": ["Plate A", "Plate B"],
                    "home": home.resolve()}
