"""The Magic141 panel: a ``QWidget`` a PySide6 host can dock, and the standalone app's centre.

It builds the widgets and connects their signals (siblings never import each other): the
timeline strip and the frame viewer follow the selected clip and the playhead; the prompt panel
asks for an extension or a text-to-video clip; the job is built with ``extend.job_spec`` and sent
through the engine bridge; when the job finishes the clip is placed with
``timeline.add_generated_clip`` (undoable), and the timeline saved with ``timeline.save_timeline``.

Nothing here blocks the UI thread: timelines are opened and saved on a one-thread pool (in
order), frames are grabbed by the viewer's pool, and engine traffic runs on the bridge's threads.
Problems are reported on the message line, never in a modal box.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QSplitter, QToolButton, QVBoxLayout, QWidget

from magic141.errors import Magic141Error
from magic141.plugin import timeline as tl
from magic141.plugin.extend import job_spec, media_dir_for

from .document import TimelineDocument
from .engine_bridge import EngineBridge, EngineStatus, JobUpdate
from .jobs import JobList
from .prompt import GenerationSettings, PromptHistory, PromptPanel
from .status import EngineStatusLabel, MessageLine
from .strip import TimelineStrip, span
from .tasks import TaskRunner
from .viewer import FrameViewer

STYLESHEET = Path(__file__).with_name("style.qss")  # shipped as package data of magic141.ui
TIMELINE_FILTER = "Timelines (*.otio *.otioz *.otiod *.edl *.xml *.fcpxml *.aaf);;All files (*)"


def load_stylesheet() -> str:
    return STYLESHEET.read_text(encoding="utf-8")


@dataclass(frozen=True)
class _Pending:
    """What a running job will do when it finishes."""

    doc: tl.TimelineDoc  # the document it was started from (another may be open by then)
    ref: tl.ClipRef  # the clip it extends, or the one the text-to-video clip goes after
    frame: int | None  # the frame it continues from (None: text to video)
    settings: GenerationSettings
    spec: dict


class Magic141Panel(QWidget):
    timeline_opened = Signal(object)  # TimelineDoc
    timeline_saved = Signal(object)  # Path it was saved to
    clip_added = Signal(object)  # the new otio Clip
    modified_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None, *, home: str | os.PathLike | None = None,
                 poll_ms: int = 3000) -> None:
        super().__init__(parent)
        self.setObjectName("magic141Panel")
        self.setAttribute(Qt.WA_StyledBackground, True)
        self.setStyleSheet(load_stylesheet())  # the panel only: a host's own look is left alone
        self.setWindowTitle("Magic141")

        self.document = TimelineDocument(self)
        self.bridge = EngineBridge(home, self, poll_ms=poll_ms)
        self._io = TaskRunner(1, self)  # opening and saving timelines, one at a time, in order
        self._pending: dict[str, _Pending] = {}
        self._ref: tl.ClipRef | None = None

        self.title = QLabel("No timeline", self)
        self.title.setObjectName("documentTitle")
        self.strip = TimelineStrip(self)
        self.viewer = FrameViewer(self)
        self.prompt = PromptPanel(self, PromptHistory(self.bridge.home / "prompt_history.json"))
        self.jobs = JobList(self)
        self.engine_status = EngineStatusLabel(self)
        self.message = MessageLine(self)
        self._build_layout()
        self._connect()
        self._shortcuts()
        self.bridge.start_polling()

    # Building ------------------------------------------------------------------------------------

    def _tool(self, text: str, tip: str, slot) -> QToolButton:
        button = QToolButton(self)
        button.setText(text)
        button.setToolTip(tip)
        button.clicked.connect(slot)
        return button

    def _build_layout(self) -> None:
        self.open_button = self._tool("Open…", "Open a timeline (Ctrl+O)", self.choose_timeline)
        self.save_button = self._tool("Save", "Save the timeline (Ctrl+S)", self.save)
        self.undo_button = self._tool("Undo", "Undo the last clip placed (Ctrl+Z)", self.undo)
        self.redo_button = self._tool("Redo", "Redo (Ctrl+Shift+Z)", self.redo)
        self.document.undo_stack.canUndoChanged.connect(self.undo_button.setEnabled)
        self.document.undo_stack.canRedoChanged.connect(self.redo_button.setEnabled)
        self.undo_button.setEnabled(False)
        self.redo_button.setEnabled(False)
        self.save_button.setEnabled(False)
        header = QHBoxLayout()
        header.addWidget(self.title, 1)
        for button in (self.open_button, self.save_button, self.undo_button, self.redo_button):
            header.addWidget(button)

        lower = QSplitter(Qt.Horizontal, self)
        lower.addWidget(self.viewer)
        lower.addWidget(self.prompt)
        lower.addWidget(self.jobs)
        lower.setStretchFactor(0, 3)
        lower.setStretchFactor(1, 2)
        lower.setStretchFactor(2, 3)
        lower.setSizes([420, 330, 380])
        split = QSplitter(Qt.Vertical, self)
        split.addWidget(self.strip)
        split.addWidget(lower)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 3)
        footer = QHBoxLayout()
        footer.addWidget(self.message, 1)
        footer.addWidget(self.engine_status)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 6)
        layout.addLayout(header)
        layout.addWidget(split, 1)
        layout.addLayout(footer)

    def _connect(self) -> None:
        self.document.changed.connect(self._document_changed)
        self.document.modified_changed.connect(self._modified_changed)
        self.strip.clip_selected.connect(self._select)
        self.strip.playhead_moved.connect(self._playhead_moved)
        self.viewer.frame_changed.connect(self._viewer_moved)
        self.prompt.extend_requested.connect(self._extend)
        self.prompt.generate_requested.connect(self._generate)
        self.jobs.cancel_requested.connect(self.bridge.cancel)
        self.bridge.status_changed.connect(self._engine_status)
        self.bridge.job_submitted.connect(self._job_submitted)
        self.bridge.job_updated.connect(self._job_updated)
        self.bridge.job_error.connect(self._job_error)

    def _shortcuts(self) -> None:
        bindings = [
            (("Ctrl+Return", "Ctrl+Enter"), self.prompt.trigger_extend),
            (("Ctrl+Shift+Return", "Ctrl+Shift+Enter"), self.prompt.trigger_generate),
            ((QKeySequence.Undo,), self.undo),
            (("Ctrl+Shift+Z", "Ctrl+Y"), self.redo),
            ((QKeySequence.Save,), self.save),
            ((QKeySequence.Open,), self.choose_timeline),
            (("Ctrl+L",), self.prompt.toggle_seed_lock),
            (("Ctrl+R",), self.prompt.new_seed),
            (("Ctrl+.",), self.jobs.cancel_newest),
            (("Ctrl+T",), self.strip.setFocus),
        ]
        self._shortcut_objects = []
        for keys, slot in bindings:
            for key in keys:
                shortcut = QShortcut(QKeySequence(key), self)
                # Only while focus is inside the panel: a host's own Ctrl+Z and Ctrl+S keep working.
                shortcut.setContext(Qt.WidgetWithChildrenShortcut)
                shortcut.activated.connect(slot)
                self._shortcut_objects.append(shortcut)

    # Timelines -----------------------------------------------------------------------------------

    def choose_timeline(self) -> None:
        dialog = QFileDialog(self, "Open a timeline", "", TIMELINE_FILTER)
        dialog.setFileMode(QFileDialog.ExistingFile)
        dialog.fileSelected.connect(self.open_timeline)
        dialog.open()  # window-modal but asynchronous: the event loop keeps running

    def open_timeline(self, path: str | os.PathLike) -> None:
        """Open ``path`` on a worker thread; the current timeline stays until it has loaded."""
        path = Path(path)
        self.message.show_message(f"Opening {path.name}…")
        self._io.submit(_load, path, done=self._opened,
                        failed=lambda message: self.message.show_message(message, "error"))

    def _opened(self, loaded: tuple[tl.TimelineDoc, list[tl.ClipRef]]) -> None:
        doc, refs = loaded
        self._ref = None
        self.document.set_doc(doc, refs)
        offline = [r for r in refs if r.offline]
        text = f"Opened {doc.path.name}: {len(refs)} video clip{'s' if len(refs) != 1 else ''}"
        if offline:
            text += f"; {len(offline)} offline ({offline[0].name}: {offline[0].reason})"
            self.message.show_message(text, "error")
        else:
            self.message.show_message(text)
        if refs:
            self._select(refs[0])
        self.save_button.setEnabled(True)
        self.timeline_opened.emit(doc)

    def save(self) -> None:
        if self.document.doc is None:
            self.message.show_message("No timeline is open", "error")
            return
        copy, position = self.document.save_copy()
        self._io.submit(tl.save_timeline, copy, done=lambda path: self._saved(path, position),
                        failed=lambda message: self.message.show_message(f"Not saved: {message}", "error"))

    def _saved(self, path: Path, position: int) -> None:
        self.document.mark_saved(position)
        self.message.show_message(f"Saved {path.name} (previous version kept as {path.name}.bak)")
        self.timeline_saved.emit(path)

    def undo(self) -> None:
        self.document.undo_stack.undo()

    def redo(self) -> None:
        self.document.undo_stack.redo()

    def _document_changed(self, doc: tl.TimelineDoc | None) -> None:
        refs = self.document.refs
        self.strip.set_timeline(doc, refs)
        previous = self._ref
        self._ref = self.document.resolve(previous) if previous is not None else None
        if self._ref is not previous:  # the same clip after undo/redo (a copy), or gone
            self.strip.select(self._ref)
            self.viewer.show_clip(self._ref, self.viewer.frame if self._ref is not None else None)
        self._show_title()

    def _modified_changed(self, modified: bool) -> None:
        self._show_title()
        self.modified_changed.emit(modified)

    def _show_title(self) -> None:
        doc = self.document.doc
        if doc is None:
            self.title.setText("No timeline")
            return
        rate = doc.rate
        fps = f"{float(rate):.3f}".rstrip("0").rstrip(".") if rate.denominator != 1 else str(rate.numerator)
        mark = " •  modified" if self.document.modified else ""
        self.title.setText(f"{doc.timeline.name or doc.path.name}  —  {doc.path.name}, {fps} fps{mark}")

    # Selection and playhead ------------------------------------------------------------------------

    def select_clip(self, name_or_index: str | int) -> None:
        """Select a clip by name or index, as a click on the strip would."""
        if self.document.doc is None:
            self.message.show_message("No timeline is open", "error")
            return
        try:
            ref = tl.find_clip(self.document.doc, name_or_index)
        except tl.TimelineError as exc:
            self.message.show_message(str(exc), "error")
            return
        self._select(next(r for r in self.document.refs if r.clip is ref.clip))

    def selected_clip(self) -> tl.ClipRef | None:
        return self._ref

    def _select(self, ref: tl.ClipRef | None) -> None:
        self._ref = ref
        self.strip.select(ref)
        self.viewer.show_clip(ref)
        if ref is not None:
            self.strip.set_playhead(self._timeline_frame(ref, self.viewer.frame))
            if ref.offline:
                self.message.show_message(f"Clip {ref.name!r} is offline: {ref.reason}", "error")

    def _clip_rate(self, ref: tl.ClipRef) -> Fraction:
        return tl.rational_rate(ref.clip.trimmed_range().duration.rate)

    def _timeline_frame(self, ref: tl.ClipRef, frame: int) -> int:
        first, _ = span(ref.clip, self.document.doc.rate)
        return first + round(Fraction(frame) * self.document.doc.rate / self._clip_rate(ref))

    def _viewer_moved(self, frame: int) -> None:
        if self._ref is not None:
            self.strip.set_playhead(self._timeline_frame(self._ref, frame))

    def _playhead_moved(self, frame: int) -> None:
        ref = self._ref
        if ref is None or self.document.doc is None:
            return
        first, count = span(ref.clip, self.document.doc.rate)
        if first <= frame < first + count:
            self.viewer.set_frame(int((frame - first) * self._clip_rate(ref) / self.document.doc.rate))

    # Jobs ----------------------------------------------------------------------------------------

    def extend(self) -> None:
        """Press Extend (as the button and Ctrl+Enter do)."""
        self.prompt.trigger_extend()

    def generate_from_text(self) -> None:
        self.prompt.trigger_generate()

    def _target(self) -> tuple[tl.TimelineDoc, tl.ClipRef] | None:
        doc = self.document.doc
        if doc is None:
            self.message.show_message("Open a timeline first", "error")
            return None
        if self._ref is None:
            self.message.show_message("Select a clip on the timeline first", "error")
            return None
        return doc, self._ref

    def _extend(self, settings: GenerationSettings) -> None:
        target = self._target()
        if target is None:
            return
        doc, ref = target
        if ref.offline:
            self.message.show_message(f"Cannot extend {ref.name!r}: it is offline ({ref.reason})", "error")
            return
        frame = self.viewer.frame
        job_id = uuid.uuid4().hex[:12]
        try:
            spec = job_spec(ref, frame, prompt=settings.prompt, seconds=settings.seconds, rate=doc.rate,
                            media_dir=media_dir_for(doc.path), job_id=job_id, seed=settings.seed,
                            model=settings.model, quant=settings.quant, steps=settings.steps, codec=settings.codec)
        except Magic141Error as exc:
            self.message.show_message(str(exc), "error")
            return
        title = f"Extend {ref.name} from frame {frame}: {settings.prompt}"
        self._start(job_id, spec, _Pending(doc, ref, frame, settings, spec), title)

    def _generate(self, settings: GenerationSettings) -> None:
        target = self._target()
        if target is None:
            return
        doc, ref = target
        job_id = uuid.uuid4().hex[:12]
        spec = job_spec(ref, None, prompt=settings.prompt, seconds=settings.seconds, rate=doc.rate,
                        media_dir=media_dir_for(doc.path), job_id=job_id, seed=settings.seed, model=settings.model,
                        quant=settings.quant, steps=settings.steps, codec=settings.codec)
        title = f"From text, after {ref.name}: {settings.prompt}"
        self._start(job_id, spec, _Pending(doc, ref, None, settings, spec), title)

    def _start(self, job_id: str, spec: dict, pending: _Pending, title: str) -> None:
        self._pending[job_id] = pending
        self.jobs.add_job(job_id, title, f"{pending.settings.seconds} s, seed {pending.settings.seed}, "
                                         f"{pending.settings.model}")
        self.prompt.remember(pending.settings.prompt)
        self.message.show_message(f"Job {job_id} sent to the engine")
        # Refuse a timeline that cannot be saved before minutes of generation, then submit.
        self._io.submit(tl.check_writable, pending.doc.path,
                        done=lambda _: self.bridge.submit(job_id, spec),
                        failed=lambda message: self._job_error(job_id, message))

    def _job_submitted(self, job_id: str) -> None:
        self.jobs.update_job(JobUpdate(job_id, "queued"))

    def _job_updated(self, update: JobUpdate) -> None:
        self.jobs.update_job(update)
        if update.kind == "finished":
            self._place(update.job_id, update.result or {})
        elif update.kind == "failed":
            self._pending.pop(update.job_id, None)
            self.message.show_message(f"Job {update.job_id} failed: {update.reason}", "error")
        elif update.kind == "cancelled":
            self._pending.pop(update.job_id, None)
            self.message.show_message(f"Job {update.job_id} cancelled; nothing was added")

    def _job_error(self, job_id: str, message: str) -> None:
        self._pending.pop(job_id, None)
        self.jobs.fail_job(job_id, message)
        self.message.show_message(f"Job {job_id}: {message}", "error")

    def _place(self, job_id: str, result: dict) -> None:
        pending = self._pending.pop(job_id, None)
        if pending is None:
            return
        media = Path(result.get("path", ""))
        if pending.doc is not self.document.doc:
            self.message.show_message(f"Job {job_id} finished after its timeline was closed; media kept at "
                                      f"{media}", "error")
            return
        ref = self.document.resolve(pending.ref)
        if ref is None:
            self.message.show_message(f"Clip {pending.ref.name!r} is no longer on the timeline; media kept "
                                      f"at {media}", "error")
            return
        settings, spec = pending.settings, pending.spec
        source = spec["source"]
        metadata = {  # the keys `magic141 extend` records, so both paths leave the same trace
            "job_id": job_id, "prompt": settings.prompt, "seed": settings.seed, "model": spec["model"],
            "quant": settings.quant, "steps": (result.get("settings") or {}).get("steps", settings.steps),
            "source_clip": ref.name, "source_frame": pending.frame, "source_time": source.get("time"),
            "seconds": spec["seconds"],
        }
        try:
            clip = self.document.add_generated(ref, media, int(result["frames"]), metadata, settings.mode)
        except (Magic141Error, KeyError, ValueError) as exc:
            self.message.show_message(f"Job {job_id} finished but its clip could not be placed: {exc}",
                                      "error")
            return
        first, count = span(clip, self.document.doc.rate)
        where = f"{clip.name!r} on {clip.parent().name} at frame {first}, {count} frames"
        self.jobs.note(job_id, f"added {where}")
        self.message.show_message(f"Added {where}")
        self.clip_added.emit(clip)
        self.save()

    def _engine_status(self, status: EngineStatus) -> None:
        self.engine_status.show_status(status)

    # Lifetime ------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop background work; running jobs go on in the engine service."""
        self.bridge.shutdown()
        self.viewer.shutdown()
        self._io.wait(5000)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.shutdown()
        super().closeEvent(event)


def _load(path: Path) -> tuple[tl.TimelineDoc, list[tl.ClipRef]]:
    doc = tl.open_timeline(path)
    return doc, tl.video_clips(doc)
