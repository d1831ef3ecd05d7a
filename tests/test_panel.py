"""The editor panel, offscreen, driven as an editor would: real Qt widgets, real frame grabs, and a
real engine service subprocess running the tiny model."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything imports Qt

import opentimelineio as otio
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, Qt, QTimer
from PySide6.QtWidgets import QApplication

from magic141 import home as home_dir
from magic141.engine import media
from magic141.plugin import timeline as tl
from magic141.ui.panel import Magic141Panel
from magic141.ui.viewer import grab_image

SAMPLES = Path(__file__).resolve().parents[1] / "resources" / "samples"
PROMPT = "the ball keeps rolling right"


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


@pytest.fixture
def panel(qtbot, home):
    widget = Magic141Panel(home=home, poll_ms=500)
    qtbot.addWidget(widget)
    widget.resize(1280, 720)
    widget.show()
    qtbot.waitExposed(widget)
    widget.activateWindow()
    yield widget
    widget.shutdown()


def clip_names(panel: Magic141Panel) -> list[str]:
    return [item.name for item in panel.strip.clip_items()]


def click_clip(qtbot, panel: Magic141Panel, name: str) -> None:
    item = next(i for i in panel.strip.clip_items() if i.name == name)
    point = panel.strip.mapFromScene(item.rect().center())
    qtbot.mouseClick(panel.strip.viewport(), Qt.LeftButton, pos=QPoint(point.x(), point.y()))


def open_in(qtbot, panel: Magic141Panel, path: Path) -> None:
    panel.open_timeline(path)
    qtbot.waitUntil(lambda: panel.document.doc is not None and panel.document.doc.path == path.resolve(),
                    timeout=15000)


def save_artifact(panel: Magic141Panel, tmp_path: Path, name: str) -> Path:
    shot = panel.grab()
    path = tmp_path / name
    assert shot.save(str(path))
    if os.environ.get("MAGIC141_ARTIFACTS"):
        folder = Path(os.environ["MAGIC141_ARTIFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / name)
    return path


def test_extend_undo_cancel_and_generate_from_text_in_the_panel(qtbot, panel, sample, tmp_path):
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
    qtbot.keyClick(panel.viewer.slider, Qt.Key_End)
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
    qtbot.mouseClick(panel.prompt.extend_button, Qt.LeftButton)
    job_id = panel.jobs.active()[0]
    qtbot.waitUntil(lambda: panel.jobs.state(job_id) in ("finished", "failed", "cancelled"), timeout=180000)
    assert panel.jobs.state(job_id) == "finished", panel.jobs.row(job_id).status.text()
    qtbot.waitUntil(lambda: not panel.document.modified and "Saved" in panel.message.text(), timeout=15000)

    # The strip shows the new clip right after Plate A, drawn as generated.
    assert clip_names(panel) == ["Plate A", "Plate A ext", "Plate B"]
    items = {item.name: item for item in panel.strip.clip_items()}
    assert items["Plate A ext"].kind == "generated"
    assert items["Plate A ext"].rect().left() == pytest.approx(items["Plate A"].rect().right(), abs=1)
    row = panel.jobs.row(job_id)
    assert row.progress.value() == 1000 and not row.preview.pixmap().isNull()  # a step preview was shown
    assert "added 'Plate A ext' on V1 at frame 36, 24 frames" in row.status.text()
    qtbot.waitUntil(lambda: panel.engine_status.status is not None and panel.engine_status.status.running,
                    timeout=10000)
    assert "cpu" in panel.engine_status.text() and "tiny" in panel.engine_status.text()

    # The saved timeline holds it, with how it was made.
    saved = otio.adapters.read_from_file(str(sample))
    clips = list(saved.video_tracks()[0].find_clips())
    assert [c.name for c in clips] == ["Plate A", "Plate A ext", "Plate B"]
    made = clips[1].metadata["magic141"]
    assert made["prompt"] == PROMPT and made["source_clip"] == "Plate A" and made["source_frame"] == 35
    assert made["seconds"] == "1" and made["model"] == "tiny" and made["job_id"] == job_id
    assert [m.name for m in clips[1].markers] == [tl.MARKER_NAME]
    assert clips[2].range_in_parent().start_time.to_frames() == 36 + 24  # Plate B rippled
    generated = tl.open_timeline(sample)
    info = media.probe_video(tl.find_clip(generated, "Plate A ext").media_path)
    assert info.frames == 24
    assert (sample.parent / "sample.otio.bak").exists()
    assert PROMPT in panel.prompt.history.items

    # Ctrl+Z (the panel's own shortcut) takes the clip off the strip; the timeline is now modified.
    panel.strip.setFocus()
    qtbot.keyClick(panel.strip, Qt.Key_Z, Qt.ControlModifier)
    qtbot.waitUntil(lambda: clip_names(panel) == ["Plate A", "Plate B"], timeout=5000)
    assert panel.document.modified and "modified" in panel.title.text()
    assert panel.selected_clip().name == "Plate A"  # the selection survives the undo
    panel.redo()
    assert clip_names(panel) == ["Plate A", "Plate A ext", "Plate B"]

    # Cancel: the job stops, and nothing is added.
    panel.prompt.seconds.setValue(2.0)
    qtbot.mouseClick(panel.prompt.extend_button, Qt.LeftButton)
    doomed = panel.jobs.active()[0]
    qtbot.waitUntil(lambda: panel.jobs.state(doomed) == "step", timeout=60000)
    qtbot.mouseClick(panel.jobs.row(doomed).cancel, Qt.LeftButton)
    qtbot.waitUntil(lambda: panel.jobs.state(doomed) in ("finished", "failed", "cancelled"), timeout=60000)
    assert panel.jobs.state(doomed) == "cancelled" and "nothing was added" in panel.message.text()
    assert clip_names(panel) == ["Plate A", "Plate A ext", "Plate B"]

    # Generate from text onto a new track above Plate B, chosen in the settings.
    click_clip(qtbot, panel, "Plate B")
    panel.prompt.seconds.setValue(0.5)
    panel.prompt.mode.setCurrentIndex(panel.prompt.mode.findData("newtrack"))
    qtbot.mouseClick(panel.prompt.generate_button, Qt.LeftButton)
    text_job = panel.jobs.active()[0]
    qtbot.waitUntil(lambda: panel.jobs.state(text_job) in ("finished", "failed", "cancelled"), timeout=120000)
    assert panel.jobs.state(text_job) == "finished", panel.jobs.row(text_job).status.text()
    qtbot.waitUntil(lambda: not panel.document.modified, timeout=15000)
    heartbeat.stop()
    print(f"longest UI-thread stall during the jobs: {stalls[0] * 1000:.0f} ms over {len(beats)} beats")
    assert len(beats) > 100 and stalls[0] < 1.0

    new_track = next(i for i in panel.strip.clip_items() if i.name == "Plate B ext")
    plate_b = next(i for i in panel.strip.clip_items() if i.name == "Plate B")
    assert new_track.rect().top() < plate_b.rect().top()  # the track above
    assert new_track.rect().left() == pytest.approx(plate_b.rect().right(), abs=1)  # where Plate B ends
    saved = otio.adapters.read_from_file(str(sample))
    assert [[c.name for c in track.find_clips()] for track in saved.video_tracks()] == [
        ["Plate A", "Plate A ext", "Plate B"], ["Plate B ext"]]
    made = saved.video_tracks()[1].find_clips()[0].metadata["magic141"]
    assert made["source_frame"] is None and made["seconds"] == "1/2" and made["job_id"] == text_job

    shot = save_artifact(panel, tmp_path, "panel.png")
    with Image.open(shot) as picture:  # the dark look: the panel's chrome is dark grey
        assert max(picture.convert("RGB").getpixel((3, 3))) < 60


def test_bad_input_is_reported_on_the_message_line_and_changes_nothing(qtbot, panel, sample, tmp_path, home):
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

    qtbot.mouseClick(panel.prompt.extend_button, Qt.LeftButton)  # no prompt yet
    assert "Type a prompt first" in panel.prompt.problem.text()
    qtbot.keyClicks(panel.prompt.prompt, PROMPT)
    qtbot.keyClick(panel.prompt.prompt, Qt.Key_Return, Qt.ControlModifier)  # Extend's shortcut
    assert panel.prompt.prompt.toPlainText() == PROMPT  # taken as the shortcut, not typed as a new line
    assert panel.message.text() == f"Cannot extend 'Plate B': it is offline ({missing})"
    assert panel.message.level == "error" and QApplication.activeModalWidget() is None
    qtbot.wait(300)
    assert panel.jobs.job_ids() == []
    assert (lonely / "sample.otio").read_bytes() == before and not panel.document.modified
    assert not list(lonely.glob("*_magic141")) and home_dir.read_service(home) is None  # no engine started


def test_magic141_panel_opens_the_timeline_named_on_its_command_line(qapp, sample, home, monkeypatch):
    from magic141.ui.app import MainWindow, main

    monkeypatch.setenv("MAGIC141_HOME", str(home))
    seen: dict = {}

    def look() -> None:
        window = next((w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow)), None)
        if window is None or window.panel.document.doc is None:
            QTimer.singleShot(50, look)
            return
        seen.update(title=window.windowTitle(), clips=clip_names(window.panel), home=window.panel.bridge.home)
        window.close()
        qapp.quit()

    QTimer.singleShot(0, look)
    QTimer.singleShot(20000, qapp.quit)  # a guard: the assertions below say what was missing
    assert main([str(sample)]) == 0
    assert seen == {"title": "sample.otio — Magic141", "clips": ["Plate A", "Plate B"],
                    "home": home.resolve()}
