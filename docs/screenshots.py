"""Screenshots of the panel for the README: docs/panel-1920.png, panel-1280.png and panel-760.png.

The panel opens a copy of the world sample (``resources/world_sample/world.otio``) and runs two
jobs on a stand-in engine in this process (no model is loaded): one finished and placed on the
timeline, one generating with its step preview. Run it on a real X server, e.g.::

    Xvfb :99 -screen 0 1920x1080x24 &
    DISPLAY=:99 QT_QPA_PLATFORM=xcb python docs/screenshots.py

Not a test: it only draws, then saves what the window shows.
"""

from __future__ import annotations

import base64
import io
import queue
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication

from magic141.plugin import timeline as tl
from magic141.protocol import Event, EventType, JobResult, JobSpec
from magic141.ui.app import MainWindow

ROOT = Path(__file__).resolve().parents[1]
SIZES = ((1920, 1080), (1280, 720), (760, 480))
PROMPTS = ("the ball keeps rolling right and bounces off the far wall",
           "the ball slows down, wobbles and comes to rest in the middle of the floor")


class StandInEngine:
    """``EngineClient``'s methods, answered in this process: each job's events are what ``send`` puts."""

    def __init__(self) -> None:
        self.specs: dict[str, JobSpec] = {}
        self._streams: dict[str, queue.Queue] = {}

    def connect(self, *, start: bool = True) -> StandInEngine:
        return self

    def health(self) -> dict:
        return {"device": "cpu", "free_memory": 20 * 2**30,
                "loaded_models": ["world (none)"], "running": next(reversed(self.specs), None),
                "queue": {"PENDING": 0}}

    def submit(self, spec: JobSpec, *, job_id: str | None = None) -> dict:
        assert job_id is not None
        self.specs[job_id] = spec
        return {"id": job_id, "state": "PENDING"}

    def events(self, job_id: str | None = None) -> Iterator[Event]:
        stream = self._streams.setdefault(str(job_id), queue.Queue())
        while (event := stream.get()) is not None:
            yield event

    def job(self, job_id: str) -> dict:
        return {"state": "RUNNING"}

    def cancel(self, job_id: str) -> dict:
        return {"id": job_id, "state": "CANCELLING"}

    def send(self, job_id: str, kind: EventType, **fields: object) -> None:
        self._streams.setdefault(job_id, queue.Queue()).put(Event(job_id, kind, **fields))


def wait(app: QApplication, until, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise SystemExit("the panel did not get there in time")
        loop = QEventLoop()
        QTimer.singleShot(20, loop.quit)
        loop.exec()


def preview(ref: tl.ClipRef, frame: int) -> str:
    picture = tl.grab_frame(ref, frame).convert("RGB")
    picture.thumbnail((160, 90))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def extend(app: QApplication, window: MainWindow, engine: StandInEngine, prompt: str) -> str:
    panel = window.panel
    panel.prompt.prompt.setPlainText(prompt)
    panel.prompt.seconds.setValue(1.0)
    panel.prompt.seed.setValue(panel.prompt.seed.value() + 41)
    panel.extend()
    job_id = panel.controller.active()[0]
    wait(app, lambda: job_id in engine.specs)
    return job_id


def stage(app: QApplication, window: MainWindow, engine: StandInEngine, timeline: Path) -> None:
    panel = window.panel
    panel.open_timeline(timeline)
    wait(app, lambda: panel.document.doc is not None)
    panel.select_clip("Ball")
    # A finished job: its clip (the plate stands in for the generated media) lands on the timeline.
    done = extend(app, window, engine, PROMPTS[0])
    spec = engine.specs[done]
    media = Path(spec.output_path(done))
    media.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(timeline.with_name("plate.mp4"), media)
    result = JobResult(path=str(media), frames=24, fps=spec.fps, width=256, height=256, codec=spec.codec,
                       settings={"steps": 8})
    ref = panel.selected_clip()
    assert ref is not None
    engine.send(done, EventType.STARTED)
    engine.send(done, EventType.STEP, step=8, total=8, window=1, windows=1, preview=preview(ref, 23))
    engine.send(done, EventType.FINISHED, result=result)
    wait(app, lambda: not panel.document.modified and panel.controller.job(done).state.ended)
    # A job under way, at step 5 of 8, with its preview.
    panel.select_clip("Ball")
    ref = panel.selected_clip()
    assert ref is not None
    running = extend(app, window, engine, PROMPTS[1])
    engine.send(running, EventType.STARTED)
    engine.send(running, EventType.STEP, step=5, total=8, window=1, windows=1, eta=4.0,
                preview=preview(ref, 12))
    wait(app, lambda: panel.jobs.row(running).progress.value() > 0)
    panel.viewer.set_frame(12)
    panel.bridge.refresh_status()
    wait(app, lambda: panel.engine_status.status is not None and panel.viewer.shown_frame == 12)


def main() -> int:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    out = Path(__file__).resolve().parent
    for width, height in SIZES:
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            shutil.copytree(ROOT / "resources" / "world_sample", work / "edit")
            engine = StandInEngine()
            window = MainWindow(home=str(work / "home"), client=engine)
            window.resize(width, height)
            window.show()
            wait(app, lambda w=window, x=width, y=height: w.width() == x and w.height() == y)
            stage(app, window, engine, work / "edit" / "world.otio")
            path = out / f"panel-{width}.png"
            shot = window.grab().toImage()
            assert shot.save(str(path)), path
            with Image.open(path) as image:
                print(f"{path.relative_to(ROOT)}: {image.width}x{image.height}")
            for job_id in engine.specs:
                engine._streams.setdefault(job_id, queue.Queue()).put(None)
            window.panel.shutdown()
            window.deleteLater()
    return 0


if __name__ == "__main__":
    sys.exit(main())
