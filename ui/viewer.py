"""The frame viewer: one picture of the selected clip, scrubbed with a slider, frames grabbed off
the UI thread and kept in a byte-bounded cache.

Frames are decoded frame-accurately by ``timeline.grab_frame`` (PyAV) on a one-thread pool,
scaled down to a viewer-sized thumbnail there, and cached by (media file, exact media time), so
two clips cut from the same plate share frames and scrubbing back is instant.

Traps avoided:
- Scrubbing asks for many frames a second: requests not started yet are dropped and only the
  latest one is shown when it arrives, so the picture never lags behind the slider by a queue.
- ``QPixmap`` may only be made on the UI thread; workers make ``QImage`` (a deep copy: the PIL
  buffer it was built from is freed when the worker returns).
- The cache is bounded by bytes, not entries: a 4K plate would blow a count-bounded cache.
- The timecode shown is the timeline's at the frame (``frames.timecode``: a whole frame at the
  timeline's exact rate, its start included), not the media's.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from fractions import Fraction

from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPaintEvent
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QSlider, QVBoxLayout, QWidget

from magic141.plugin import timeline as tl

from .elided import ElidedLabel
from .frames import timecode, timeline_frame
from .tasks import TaskRunner

THUMBNAIL = (640, 360)  # frames are cached at most this size: enough for a docked viewer


class FrameCache:
    """Least-recently-used QImages by (media path, media seconds), bounded by their bytes."""

    def __init__(self, budget_bytes: int = 192 * 2**20) -> None:
        self.budget = budget_bytes
        self._images: OrderedDict[tuple[str, Fraction], QImage] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple[str, Fraction]) -> QImage | None:
        image = self._images.get(key)
        if image is not None:
            self._images.move_to_end(key)
        return image

    def put(self, key: tuple[str, Fraction], image: QImage) -> None:
        if key in self._images:
            self._bytes -= self._images.pop(key).sizeInBytes()
        self._images[key] = image
        self._bytes += image.sizeInBytes()
        while self._bytes > self.budget and len(self._images) > 1:
            _, old = self._images.popitem(last=False)
            self._bytes -= old.sizeInBytes()

    def __len__(self) -> int:
        return len(self._images)

    def __contains__(self, key: object) -> bool:
        return key in self._images


def grab_image(ref: tl.ClipRef, frame: int) -> QImage:
    """Decode ``frame`` of the clip and shrink it to a thumbnail. Runs on a worker thread."""
    picture = tl.grab_frame(ref, frame).convert("RGB")
    picture.thumbnail(THUMBNAIL)
    data = picture.tobytes()
    return QImage(data, picture.width, picture.height, 3 * picture.width, QImage.Format.Format_RGB888).copy()


class _Picture(QWidget):
    """Paints an image fitted into the widget (aspect kept), or a line of text."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("framePicture")
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(160, 90)
        self.image: QImage | None = None
        self.text = ""

    def sizeHint(self) -> QSize:
        return QSize(320, 180)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("#0e0f11"))
        if self.image is not None and not self.image.isNull():
            size = self.image.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
            target = QRectF((self.width() - size.width()) / 2, (self.height() - size.height()) / 2,
                            size.width(), size.height())
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            painter.drawImage(target, self.image)
        if self.text:
            painter.setPen(QColor("#c9ccd1"))
            painter.drawText(self.rect().adjusted(12, 12, -12, -12),
                             Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.text)
        painter.end()


class FrameViewer(QWidget):
    frame_changed = Signal(int)  # the frame in the clip the user scrubbed to

    def __init__(self, parent: QWidget | None = None, cache: FrameCache | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("frameViewer")
        self.cache = cache if cache is not None else FrameCache()
        self._tasks = TaskRunner(1, self)
        self._doc: tl.TimelineDoc | None = None
        self._ref: tl.ClipRef | None = None
        self._frames = 0
        self._wanted: tuple[str, Fraction] | None = None
        self.shown_frame: int | None = None  # the frame whose picture is on screen

        self.picture = _Picture(self)
        self.slider = QSlider(Qt.Orientation.Horizontal, self)
        self.slider.setObjectName("scrubber")
        self.slider.setEnabled(False)
        self.slider.setToolTip("Scrub within the clip (Left/Right: one frame; the frame to extend from)")
        self.slider.valueChanged.connect(self._scrubbed)
        self.timecode = QLabel("", self)
        self.timecode.setObjectName("frameTimecode")
        self.timecode.setToolTip("The timeline's timecode at this frame")
        self.position = ElidedLabel("no clip selected", self)
        self.position.setObjectName("framePosition")
        self.position.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.slider, 1)
        row.addWidget(self.timecode)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.picture, 1)
        layout.addLayout(row)
        layout.addWidget(self.position)
        self._say("Open a timeline and select a clip")

    # What the panel tells it ---------------------------------------------------------------------

    def set_timeline(self, doc: tl.TimelineDoc | None) -> None:
        """The timeline the clips shown are on (for the timecode)."""
        self._doc = doc

    def show_clip(self, ref: tl.ClipRef | None, frame: int | None = None) -> None:
        """Show ``ref`` at ``frame`` (default: its last frame, where an extension starts)."""
        self._ref, self._wanted, self.shown_frame = ref, None, None
        self.picture.image = None
        if ref is None:
            self._frames = 0
            self._set_slider(0, 0, False)
            self.position.set_full_text("no clip selected")
            self.timecode.setText("")
            self._say("Select a clip on the timeline")
            return
        self._frames = tl.clip_frames(ref)
        frame = self._frames - 1 if frame is None else max(0, min(frame, self._frames - 1))
        self._set_slider(frame, self._frames - 1, not ref.offline)
        if ref.offline:
            self.position.set_full_text(f"{ref.name}: offline")
            self.timecode.setText("")
            self._say(f"Clip {ref.name!r} is offline: {ref.reason}")
            return
        self._request(frame)

    def set_frame(self, frame: int) -> None:
        """Move to ``frame`` of the current clip without telling anyone (the panel's own echo)."""
        if self._ref is None or self._ref.offline:
            return
        frame = max(0, min(frame, self._frames - 1))
        self._set_slider(frame, self._frames - 1, True)
        self._request(frame)

    # What the panel and tests read -------------------------------------------------------------------

    @property
    def frame(self) -> int:
        return self.slider.value()

    def image(self) -> QImage | None:
        return self.picture.image

    def message(self) -> str:
        return self.picture.text

    # Inside --------------------------------------------------------------------------------------

    def _set_slider(self, value: int, maximum: int, enabled: bool) -> None:
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(maximum, 0))
        self.slider.setValue(value)
        self.slider.setEnabled(enabled)
        self.slider.blockSignals(False)

    def _scrubbed(self, frame: int) -> None:
        if self._ref is None or self._ref.offline:
            return
        self._request(frame)
        self.frame_changed.emit(frame)

    def _say(self, text: str) -> None:
        self.picture.text = text
        self.picture.update()

    def _request(self, frame: int) -> None:
        ref = self._ref
        assert ref is not None  # show_clip and set_frame only ask with a clip shown
        # Frames count from 0 at the clip's first frame, as `magic141 extend --at` counts them.
        self.position.set_full_text(f"{ref.name} · frame {frame} · {self._frames} frames")
        doc = self._doc
        self.timecode.setText(timecode(doc, timeline_frame(ref, frame, doc.rate)) if doc is not None else "")
        try:
            key = (str(ref.media_path), tl.media_seconds(ref, frame))
        except tl.TimelineError as exc:
            self._show(None, None, str(exc))
            return
        cached = self.cache.get(key)
        if cached is not None:
            self._wanted = key
            self._show(frame, cached)
            return
        self._wanted = key
        self._tasks.drop_waiting()  # scrubbing: only the newest request matters
        self._tasks.submit(grab_image, ref, frame,
                           done=functools.partial(self._arrived, key, frame),
                           failed=functools.partial(self._grab_failed, key))

    def _arrived(self, key: tuple[str, Fraction], frame: int, image: QImage) -> None:
        self.cache.put(key, image)
        if key == self._wanted:
            self._show(frame, image)

    def _grab_failed(self, key: tuple[str, Fraction], message: str) -> None:
        if key == self._wanted:
            self._show(None, None, message)

    def _show(self, frame: int | None, image: QImage | None, text: str = "") -> None:
        self.shown_frame = frame
        self.picture.image = image
        self._say(text)

    def shutdown(self) -> None:
        self._tasks.drop_waiting()
        self._tasks.wait(3000)
