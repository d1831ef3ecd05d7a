"""The Magic141 panel: a ``QWidget`` a PySide6 host can dock, and the standalone app's centre.

It only builds the widgets and connects their signals (siblings never import each other): the
timeline strip and the frame viewer follow the selected clip and the playhead; the prompt panel
asks for an extension or a text-to-video clip, which the ``JobController`` turns into a job,
follows, and places in the ``TimelineDocument`` when it finishes; the job list and the message
line show what the controller says.

Nothing here blocks the UI thread: the document opens and saves timelines on its own thread,
frames are grabbed by the viewer's pool, and engine traffic runs on the bridge's threads.
Problems are reported on the message line, never in a modal box; the one question asked in a
box is Save / Discard / Cancel, before closing or opening another timeline would lose edits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QSplitter, QToolButton, QVBoxLayout, QWidget

from magic141 import home as home_dir
from magic141.errors import Magic141Error
from magic141.plugin import timeline as tl
from magic141.plugin.client import EngineClient

from .document import TimelineDocument
from .elided import ElidedLabel
from .engine_bridge import Engine, EngineBridge
from .frames import clip_rate, span, timeline_frame
from .job_controller import JobController
from .jobs import JobList
from .prompt import GenerationSettings, PromptHistory, PromptPanel
from .status import EngineStatusLabel, MessageLine
from .strip import TimelineStrip
from .tasks import plain_error
from .unsaved import DISCARD, SAVE, ask_to_save
from .viewer import FrameViewer

STYLESHEET = Path(__file__).with_name("style.qss")  # shipped as package data of magic141.ui
TIMELINE_FILTER = "Timelines (*.otio *.otioz *.otiod *.edl *.xml *.fcpxml *.aaf);;All files (*)"


def load_stylesheet() -> str:
    return STYLESHEET.read_text(encoding="utf-8")


class Magic141Panel(QWidget):
    timeline_opened = Signal(object)  # TimelineDoc
    timeline_saved = Signal(object)  # Path it was saved to
    clip_added = Signal(object)  # the new otio Clip
    modified_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None, *, home: str | os.PathLike | None = None,
                 poll_ms: int = 3000, client: Engine | None = None) -> None:
        """``home``: the engine's state folder (default ``$MAGIC141_HOME``); ``client``: the engine
        client (default: ``EngineClient`` of ``home``; tests pass an in-process one)."""
        super().__init__(parent)
        self.setObjectName("magic141Panel")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.setStyleSheet(load_stylesheet())  # the panel only: a host's own look is left alone
        self.setWindowTitle("Magic141")

        self.home = home_dir.home(home)
        self.document = TimelineDocument(self)
        self.bridge = EngineBridge(client if client is not None else EngineClient(self.home), self,
                                   poll_ms=poll_ms)
        self.controller = JobController(self.bridge, self.document, self)
        self._ref: tl.ClipRef | None = None
        self._after_save: Callable[[], object] | None = None  # what Save in "Save the changes?" goes on to

        self.title = ElidedLabel("No timeline", self)
        self.title.setObjectName("documentTitle")
        self.strip = TimelineStrip(self)
        self.viewer = FrameViewer(self)
        self.prompt = PromptPanel(self, PromptHistory(self.home / "prompt_history.json"))
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

        lower = QSplitter(Qt.Orientation.Horizontal, self)
        lower.addWidget(self.viewer)
        lower.addWidget(self.prompt)
        lower.addWidget(self.jobs)
        lower.setStretchFactor(0, 3)
        lower.setStretchFactor(1, 2)
        lower.setStretchFactor(2, 3)
        lower.setSizes([420, 330, 380])
        split = QSplitter(Qt.Orientation.Vertical, self)
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
        self.document.opened.connect(self._opened)
        self.document.open_failed.connect(lambda message: self.message.show_message(message, "error"))
        self.document.saved.connect(self._saved)
        self.document.save_failed.connect(self._save_failed)
        self.strip.clip_selected.connect(self._select)
        self.strip.playhead_moved.connect(self._playhead_moved)
        self.viewer.frame_changed.connect(self._viewer_moved)
        self.prompt.extend_requested.connect(self._extend)
        self.prompt.generate_requested.connect(self._generate)
        self.jobs.cancel_requested.connect(self.controller.cancel)
        self.controller.job_added.connect(self.jobs.add_job)
        self.controller.job_added.connect(lambda job: self.prompt.remember(job.settings.prompt))
        self.controller.job_changed.connect(self.jobs.show_job)
        self.controller.clip_placed.connect(self.clip_added)
        self.controller.message.connect(self.message.show_message)
        self.bridge.status_changed.connect(self.engine_status.show_status)
        self.bridge.models_changed.connect(self.prompt.show_models)

    def _shortcuts(self) -> None:
        bindings: list[tuple[tuple[str | QKeySequence.StandardKey, ...], Callable[[], object]]] = [
            (("Ctrl+Return", "Ctrl+Enter"), self.prompt.trigger_extend),
            (("Ctrl+Shift+Return", "Ctrl+Shift+Enter"), self.prompt.trigger_generate),
            ((QKeySequence.StandardKey.Undo,), self.undo),
            (("Ctrl+Shift+Z", "Ctrl+Y"), self.redo),
            ((QKeySequence.StandardKey.Save,), self.save),
            ((QKeySequence.StandardKey.Open,), self.choose_timeline),
            (("Ctrl+L",), self.prompt.toggle_seed_lock),
            (("Ctrl+R",), self.prompt.new_seed),
            (("Ctrl+.",), self.controller.cancel_newest),
            (("Ctrl+T",), self.strip.setFocus),
        ]
        self._shortcut_objects = []
        for keys, slot in bindings:
            for key in keys:
                shortcut = QShortcut(QKeySequence(key), self)
                # Only while focus is inside the panel: a host's own Ctrl+Z and Ctrl+S keep working.
                shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
                shortcut.activated.connect(slot)
                self._shortcut_objects.append(shortcut)

    # Timelines -----------------------------------------------------------------------------------

    def choose_timeline(self) -> None:
        """Open… (as the button and Ctrl+O do): unsaved edits first, then the file dialog."""
        if self.confirm_unsaved(self._open_dialog):
            self._open_dialog()

    def _open_dialog(self) -> None:
        doc = self.document.doc
        folder = str(doc.path.parent) if doc is not None else ""  # beside the open timeline
        dialog = QFileDialog(self, "Open a timeline", folder, TIMELINE_FILTER)
        dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
        dialog.fileSelected.connect(self.open_timeline)
        dialog.open()  # window-modal but asynchronous: the event loop keeps running

    def confirm_unsaved(self, then: Callable[[], object]) -> bool:
        """Whether going on now loses nothing the editor wants: True with no unsaved edits or after
        Discard. With unsaved edits it asks Save / Discard / Cancel; Save saves (off the UI thread)
        and calls ``then`` once the timeline is saved; Save and Cancel answer False."""
        doc = self.document.doc
        if doc is None or not self.document.modified:
            return True
        answer = ask_to_save(self, doc.path.name)
        if answer is DISCARD:
            return True
        if answer is SAVE:
            self._after_save = then
            self.document.save()
        return False

    def open_timeline(self, path: str | os.PathLike) -> None:
        """Open ``path`` on a worker thread; the current timeline stays until it has loaded."""
        self.message.show_message(f"Opening {Path(path).name}…")
        self.document.open(path)

    def _opened(self, doc: tl.TimelineDoc) -> None:
        refs = self.document.refs
        self._ref = None
        offline = [r for r in refs if r.offline]
        text = f"Opened {doc.path.name}: {len(refs)} video clip{'s' if len(refs) != 1 else ''}"
        if offline:
            text += f"; {len(offline)} offline ({offline[0].name}: {offline[0].reason})"
            self.message.show_message(text, "error")
        else:
            self.message.show_message(text)
        self._select(refs[0] if refs else None)
        self.save_button.setEnabled(True)
        self.timeline_opened.emit(doc)

    def save(self) -> None:
        if self.document.doc is None:
            self.message.show_message("No timeline is open", "error")
            return
        self.document.save()

    def _saved(self, path: Path) -> None:
        self.message.show_message(f"Saved {path.name} (previous version kept as {path.name}.bak)")
        self.timeline_saved.emit(path)
        then = self._after_save
        if then is not None and not self.document.modified:  # not an earlier save that ended first
            self._after_save = None
            then()

    def _save_failed(self, message: str) -> None:
        self._after_save = None  # what was to follow the save does not happen: the edits are not safe
        self.message.show_message(f"Not saved: {message}", "error")

    def undo(self) -> None:
        self.document.undo_stack.undo()

    def redo(self) -> None:
        self.document.undo_stack.redo()

    def _document_changed(self, doc: tl.TimelineDoc | None) -> None:
        refs = self.document.refs
        self.viewer.set_timeline(doc)
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
            self.title.set_full_text("No timeline")
            return
        rate = doc.rate
        fps = f"{float(rate):.3f}".rstrip("0").rstrip(".") if rate.denominator != 1 else str(rate.numerator)
        mark = " •  modified" if self.document.modified else ""
        self.title.set_full_text(f"{doc.timeline.name or doc.path.name}  —  {doc.path.name}, {fps} fps{mark}")

    # Selection and playhead ------------------------------------------------------------------------

    def select_clip(self, name_or_index: str | int) -> None:
        """Select a clip by name or index, as a click on the strip would."""
        if self.document.doc is None:
            self.message.show_message("No timeline is open", "error")
            return
        try:
            ref = tl.find_clip(self.document.doc, name_or_index)
        except Magic141Error as exc:
            self.message.show_message(plain_error(exc), "error")
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

    def _timeline_frame(self, ref: tl.ClipRef, frame: int) -> int:
        assert self.document.doc is not None  # a clip is selected only in an open timeline
        return timeline_frame(ref, frame, self.document.doc.rate)

    def _viewer_moved(self, frame: int) -> None:
        if self._ref is not None:
            self.strip.set_playhead(self._timeline_frame(self._ref, frame))

    def _playhead_moved(self, frame: int) -> None:
        ref = self._ref
        if ref is None or self.document.doc is None:
            return
        first, count = span(ref.clip, self.document.doc.rate)
        if first <= frame < first + count:
            self.viewer.set_frame(int((frame - first) * clip_rate(ref) / self.document.doc.rate))

    # Jobs ----------------------------------------------------------------------------------------

    def extend(self) -> None:
        """Press Extend (as the button and Ctrl+Enter do)."""
        self.prompt.trigger_extend()

    def generate_from_text(self) -> None:
        self.prompt.trigger_generate()

    def _extend(self, settings: GenerationSettings) -> None:
        self.controller.extend(self._ref, self.viewer.frame, settings)

    def _generate(self, settings: GenerationSettings) -> None:
        self.controller.generate(self._ref, settings)

    # Lifetime ------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop background work; running jobs go on in the engine service."""
        self.bridge.shutdown()
        self.controller.wait()
        self.viewer.shutdown()
        self.document.wait(5000)

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self.confirm_unsaved(self.close):
            event.ignore()  # Cancel, or Save under way (it closes the panel once saved)
            return
        self.shutdown()
        super().closeEvent(event)

