"""The open timeline as the panel's model: the OTIO document, its video clips, undo and "modified",
opened and saved off the UI thread (on a one-thread pool, so in the order asked).

Every edit is recorded as two snapshots (deep copies of the timeline before and after) on a
``QUndoStack``; undo and redo put a fresh copy of a snapshot back. That is the simplest edit
history that is always right, whatever OTIO's edit did to the track (ripples, splits, new tracks).

Traps avoided:
- Restoring a snapshot replaces every clip object, so a ``ClipRef`` taken before (a running job's
  source clip) no longer points into the document: ``resolve`` finds the clip again by identity,
  then by its track and name.
- The snapshots themselves are never handed out, only copies of them; otherwise a redo would
  bring back a timeline that later edits had changed.
- A save that runs on a worker thread writes a copy taken when it started; the document is marked
  saved only if no edit, undo or redo happened meanwhile.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import opentimelineio as otio
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from magic141.plugin import edits
from magic141.plugin import timeline as tl

from .tasks import TaskRunner


class _SnapshotEdit(QUndoCommand):
    def __init__(self, document: TimelineDocument, before: otio.schema.Timeline, after: otio.schema.Timeline,
                 text: str) -> None:
        super().__init__(text)
        self._document, self._before, self._after = document, before, after
        self._applied = True  # pushed after the edit was made on the live timeline

    def redo(self) -> None:
        if self._applied:
            self._applied = False
            return
        self._document._restore(self._after)

    def undo(self) -> None:
        self._document._restore(self._before)


class TimelineDocument(QObject):
    changed = Signal(object)  # the TimelineDoc after an open, edit, undo or redo (None when closed)
    modified_changed = Signal(bool)
    opened = Signal(object)  # the TimelineDoc just opened (after ``changed``)
    open_failed = Signal(str)  # why, in plain words; the document open before stays
    saved = Signal(object)  # the Path it was saved to
    save_failed = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.doc: tl.TimelineDoc | None = None
        self.refs: list[tl.ClipRef] = []
        self.undo_stack = QUndoStack(self)
        self.undo_stack.cleanChanged.connect(self._clean_changed)
        self._io = TaskRunner(1, self)

    # Opening and saving (off the UI thread) --------------------------------------------------------

    def open(self, path: str | os.PathLike) -> None:
        """Read ``path`` on the I/O thread; the current timeline stays until it has loaded."""
        self._io.submit(_load, Path(path), done=self._loaded, failed=self.open_failed.emit)

    def _loaded(self, loaded: tuple[tl.TimelineDoc, list[tl.ClipRef]]) -> None:
        self.set_doc(*loaded)
        self.opened.emit(self.doc)

    def save(self) -> None:
        """Save a copy of the timeline as it is now; marked saved only if nothing changed meanwhile."""
        copy, position = self.save_copy()
        self._io.submit(tl.save_timeline, copy, done=lambda path: self._saved(path, position),
                        failed=self.save_failed.emit)

    def _saved(self, path: Path, position: int) -> None:
        self.mark_saved(position)
        self.saved.emit(path)

    def wait(self, msecs: int = 5000) -> bool:
        """Let an open or save under way finish (before the panel closes)."""
        return self._io.wait(msecs)

    # The model -------------------------------------------------------------------------------------

    @property
    def modified(self) -> bool:
        return not self.undo_stack.isClean()

    def _clean_changed(self, clean: bool) -> None:
        self.modified_changed.emit(not clean)

    def set_doc(self, doc: tl.TimelineDoc, refs: list[tl.ClipRef]) -> None:
        self.undo_stack.clear()
        self.doc, self.refs = doc, list(refs)
        self.undo_stack.setClean()
        self.changed.emit(doc)

    def resolve(self, ref: tl.ClipRef) -> tl.ClipRef | None:
        """``ref``'s clip in the document as it is now (after edits, undo, redo), or None."""
        for current in self.refs:
            if current.clip is ref.clip:
                return current
        track_name = ref.track.name
        named = [r for r in self.refs if r.name == ref.name and r.track.name == track_name]
        if len(named) == 1:
            return named[0]
        named = [r for r in self.refs if r.name == ref.name]
        return named[0] if len(named) == 1 else None

    def add_generated(self, ref: tl.ClipRef, media: Path, frames: int, metadata: dict,
                      mode: str, audio_frames: int = 0) -> otio.schema.Clip:
        """Place generated media after ``ref`` (see ``edits.add_generated_clip``); undoable."""
        if self.doc is None:
            raise tl.TimelineError("no timeline is open")
        before = self.doc.timeline.clone()
        try:
            clip = edits.add_generated_clip(self.doc, ref, media, frames, self.doc.rate, metadata, mode,
                                            audio_frames=audio_frames)
        except Exception:
            self.doc.timeline = before  # an edit that failed half-way changes nothing
            self.refs = tl.video_clips(self.doc)
            raise
        self.refs = tl.video_clips(self.doc)
        self.undo_stack.push(_SnapshotEdit(self, before, self.doc.timeline.clone(), f"add {clip.name}"))
        self.changed.emit(self.doc)
        return clip

    def _restore(self, snapshot: otio.schema.Timeline) -> None:
        assert self.doc is not None
        self.doc.timeline = snapshot.clone()
        self.refs = tl.video_clips(self.doc)
        self.changed.emit(self.doc)

    def save_copy(self) -> tuple[tl.TimelineDoc, int]:
        """A copy to save on another thread, and the undo position it stands for."""
        if self.doc is None:
            raise tl.TimelineError("no timeline is open")
        return dataclasses.replace(self.doc, timeline=self.doc.timeline.clone()), self.undo_stack.index()

    def mark_saved(self, position: int) -> None:
        if self.undo_stack.index() == position:
            self.undo_stack.setClean()


def _load(path: Path) -> tuple[tl.TimelineDoc, list[tl.ClipRef]]:
    doc = tl.open_timeline(path)
    return doc, tl.video_clips(doc)
