"""The timeline strip: tracks, clips, a playhead and the selected clip, drawn from the OTIO model.

Scene items hold a reference to the OTIO object they draw (the OTIO timeline is the model); the
strip rebuilds its scene from the document after every change, which is cheap at editing-timeline
sizes and cannot drift from the model. It only emits what the user did; ``set_playhead`` and
``select`` from the outside never echo back, so the panel can mirror the viewer without loops.

Traps avoided:
- Frames on the strip are timeline frames at the timeline's exact rate (``frames``).
- The ruler's last label would run off the strip's right edge: labels that do not fit right of
  their tick go left of it.
- The zoom lives on the view instance (fit to width), not in module state.
"""

from __future__ import annotations

import opentimelineio as otio
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QKeyEvent, QMouseEvent, QPainter, QPen, QResizeEvent
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsLineItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QGraphicsView,
    QWidget,
)

from magic141.plugin import timeline as tl

from .frames import frames_at, span, timecode

HEADER = 64  # track name column, pixels
RULER = 22
TRACK_HEIGHT = 38
GAP = 4
MARGIN = 12
MAX_HEIGHT = 260  # beyond this many tracks' height the strip scrolls

COLOURS = {
    "clip": QColor("#3d5a80"),
    "generated": QColor("#7b4fa3"),
    "offline": QColor("#7a2e2e"),
    "audio": QColor("#2f6b55"),
    "selected": QColor("#f2b233"),
    "playhead": QColor("#ff5a4e"),
    "text": QColor("#e6e6e6"),
    "dim": QColor("#8b8f96"),
    "track": QColor("#23262b"),
    "ruler": QColor("#1b1d21"),
}


def is_generated(clip: otio.schema.Clip) -> bool:
    return tl.NAMESPACE in clip.metadata


class ClipItem(QGraphicsRectItem):
    """One clip on the strip; ``clip`` is the OTIO clip, ``ref`` its ClipRef (video clips only)."""

    def __init__(self, clip: otio.schema.Clip, ref: tl.ClipRef | None, rect: QRectF, kind: str) -> None:
        super().__init__(rect)
        self.clip, self.ref, self.kind = clip, ref, kind
        pattern = Qt.BrushStyle.BDiagPattern if kind == "offline" else Qt.BrushStyle.SolidPattern
        self.setBrush(QBrush(COLOURS[kind], pattern))
        self.setPen(QPen(COLOURS[kind].lighter(140), 1))
        self.setToolTip(self._tooltip())
        label = QGraphicsSimpleTextItem(clip.name or "", self)
        label.setBrush(COLOURS["text"])
        font = QFont()
        font.setPointSizeF(8.5)
        label.setFont(font)
        label.setPos(rect.left() + 5, rect.top() + (rect.height() - label.boundingRect().height()) / 2)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemClipsChildrenToShape, True)

    @property
    def name(self) -> str:
        return self.clip.name

    def _tooltip(self) -> str:
        lines = [self.clip.name]
        if self.ref is not None and self.ref.offline:
            lines.append(f"offline: {self.ref.reason}")
        elif self.ref is not None and self.ref.media_path is not None:
            lines.append(str(self.ref.media_path))
        made = self.clip.metadata.get(tl.NAMESPACE)
        if made:
            lines.append(f"generated: {made.get('prompt', '')!r} "
                         f"(seed {made.get('seed')}, {made.get('model')})")
        return "\n".join(lines)

    def set_selected_look(self, selected: bool) -> None:
        self.setPen(QPen(COLOURS["selected"], 2) if selected else QPen(COLOURS[self.kind].lighter(140), 1))
        self.setZValue(2 if selected else 1)


class TimelineStrip(QGraphicsView):
    clip_selected = Signal(object)  # ClipRef the user clicked (None: clicked on nothing)
    playhead_moved = Signal(int)  # timeline frame the user moved the playhead to

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("timelineStrip")
        self.setScene(QGraphicsScene(self))
        self.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        self.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMinimumHeight(RULER + TRACK_HEIGHT + 2 * GAP + 8)
        self._doc: tl.TimelineDoc | None = None
        self._refs: list[tl.ClipRef] = []
        self._total = 1  # frames
        self._playhead = 0
        self._selected: otio.schema.Clip | None = None
        self._items: list[ClipItem] = []
        self._playhead_item: QGraphicsLineItem | None = None
        self._ruler_labels: list[QGraphicsSimpleTextItem] = []
        self._dragging = False

    # What the panel tells it ---------------------------------------------------------------------

    def set_timeline(self, doc: tl.TimelineDoc | None, refs: list[tl.ClipRef]) -> None:
        self._doc, self._refs = doc, list(refs)
        if doc is None or not any(r.clip is self._selected for r in refs):
            self._selected = None
        self._rebuild()

    def select(self, ref: tl.ClipRef | None) -> None:
        self._selected = ref.clip if ref is not None else None
        for item in self._items:
            item.set_selected_look(item.clip is self._selected)

    def set_playhead(self, frame: int) -> None:
        self._playhead = max(0, min(int(frame), self._total))
        self._place_playhead()

    # What tests and the panel may read --------------------------------------------------------------

    def clip_items(self) -> list[ClipItem]:
        return list(self._items)

    def selected_ref(self) -> tl.ClipRef | None:
        return next((r for r in self._refs if r.clip is self._selected), None)

    @property
    def playhead(self) -> int:
        return self._playhead

    def ruler_labels(self) -> list[QGraphicsSimpleTextItem]:
        return list(self._ruler_labels)

    def item_span(self, ref: tl.ClipRef) -> tuple[int, int]:
        assert self._doc is not None
        return span(ref.clip, self._doc.rate)

    # Drawing -------------------------------------------------------------------------------------

    def _scale(self) -> float:
        width = max(self.viewport().width() - HEADER - 2 * MARGIN, 50)
        return width / max(self._total, 1)

    def _x(self, frame: float) -> float:
        return HEADER + MARGIN + frame * self._scale()

    def _rebuild(self) -> None:
        scene = self.scene()
        scene.clear()
        self._items, self._playhead_item, self._ruler_labels = [], None, []
        if self._doc is None:
            scene.setSceneRect(QRectF(0, 0, self.viewport().width(), RULER + TRACK_HEIGHT))
            return
        rate = self._doc.rate
        tracks = list(self._doc.timeline.tracks)
        # Video tracks stack upwards (V2 above V1), audio below, as editors draw them.
        video = [t for t in tracks if t.kind == otio.schema.TrackKind.Video][::-1]
        audio = [t for t in tracks if t.kind != otio.schema.TrackKind.Video]
        self._total = max([frames_at(t.duration(), rate) for t in tracks] + [1])
        refs = {id(r.clip): r for r in self._refs}
        width = self._x(self._total) + MARGIN
        self._draw_ruler(width)
        for row, track in enumerate(video + audio):
            top = RULER + GAP + row * (TRACK_HEIGHT + GAP)
            lane = scene.addRect(QRectF(0, top, width, TRACK_HEIGHT), QPen(Qt.PenStyle.NoPen),
                                 QBrush(COLOURS["track"]))
            lane.setZValue(-1)
            name = scene.addSimpleText(track.name or f"track {row + 1}")
            name.setBrush(COLOURS["dim"])
            name.setPos(6, top + (TRACK_HEIGHT - name.boundingRect().height()) / 2)
            for child in track:
                if not isinstance(child, otio.schema.Clip):
                    continue  # gaps stay empty; transitions are not drawn
                first, count = span(child, rate)
                rect = QRectF(self._x(first), top + 2, max(count * self._scale(), 2.0), TRACK_HEIGHT - 4)
                ref = refs.get(id(child))
                if track.kind != otio.schema.TrackKind.Video:
                    kind = "audio"
                elif ref is not None and ref.offline:
                    kind = "offline"
                else:
                    kind = "generated" if is_generated(child) else "clip"
                item = ClipItem(child, ref, rect, kind)
                item.set_selected_look(child is self._selected)
                scene.addItem(item)
                self._items.append(item)
        height = RULER + GAP + len(video + audio) * (TRACK_HEIGHT + GAP)
        self._fit_height(height)
        self._playhead_item = scene.addLine(0, 0, 0, height, QPen(COLOURS["playhead"], 2))
        self._playhead_item.setZValue(10)
        scene.setSceneRect(QRectF(0, 0, width, height))
        self._playhead = min(self._playhead, self._total)
        self._place_playhead()

    def _fit_height(self, content: float) -> None:
        """Show every track (up to MAX_HEIGHT; more tracks scroll)."""
        wanted = min(int(content) + 2 * self.frameWidth() + 2, MAX_HEIGHT)
        if wanted != self.minimumHeight():
            self.setMinimumHeight(wanted)
            self.updateGeometry()

    def _draw_ruler(self, width: float) -> None:
        scene = self.scene()
        scene.addRect(QRectF(0, 0, width, RULER), QPen(Qt.PenStyle.NoPen), QBrush(COLOURS["ruler"]))
        assert self._doc is not None
        rate = self._doc.rate
        per_second = float(rate) * self._scale()
        every = next((s for s in (1, 2, 5, 10, 30, 60, 300, 600) if s * per_second >= 70), 1200)
        pen = QPen(COLOURS["dim"], 1)
        font = QFont()
        font.setPointSizeF(7.5)
        right = min(width, self.viewport().width()) - 2  # what is drawn past the viewport is never seen
        second = 0
        while second * rate <= self._total:
            frame = round(second * rate)
            x = self._x(frame)
            scene.addLine(x, RULER - 6, x, RULER, pen)
            label = scene.addSimpleText(timecode(self._doc, frame))
            label.setBrush(COLOURS["dim"])
            label.setFont(font)
            wide = label.boundingRect().width()
            left = x + 3 if x + 3 + wide <= right else x - 3 - wide
            if self._ruler_labels and left < self._ruler_labels[-1].sceneBoundingRect().right() + 4:
                scene.removeItem(label)  # the end tick, too close to the one before to be labelled
            else:
                label.setPos(left, 2)
                self._ruler_labels.append(label)
            second += every

    def _place_playhead(self) -> None:
        if self._playhead_item is not None:
            self._playhead_item.setX(self._x(self._playhead))

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._rebuild()

    # What the user does --------------------------------------------------------------------------

    def _frame_at(self, x: float) -> int:
        return max(0, min(self._total - 1, int((x - HEADER - MARGIN) / self._scale())))

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self._doc is None:
            return super().mousePressEvent(event)
        point = self.mapToScene(event.position().toPoint())
        hit = self._clip_item_at(point)
        if hit is not None and hit.ref is not None and hit.clip is not self._selected:
            self.select(hit.ref)
            self.clip_selected.emit(hit.ref)
        self._dragging = True
        self._user_playhead(self._frame_at(point.x()))

    def _clip_item_at(self, point: QPointF) -> ClipItem | None:
        for item in self.scene().items(point):
            owner = item if isinstance(item, ClipItem) else item.parentItem()  # a clip's label: its clip
            if isinstance(owner, ClipItem):
                return owner
        return None

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._dragging:
            self._user_playhead(self._frame_at(self.mapToScene(event.position().toPoint()).x()))
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self._dragging = False
        super().mouseReleaseEvent(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = Qt.Key(event.key())
        steps = {Qt.Key.Key_Left: -1, Qt.Key.Key_Right: 1}
        if key in steps and self._doc is not None:
            jump = float(self._doc.rate) if event.modifiers() & Qt.KeyboardModifier.ShiftModifier else 1
            self._user_playhead(self._playhead + round(steps[key] * jump))
        elif key in (Qt.Key.Key_Up, Qt.Key.Key_Down) and self._refs:
            self._step_selection(-1 if key == Qt.Key.Key_Up else 1)
        elif key == Qt.Key.Key_Home:
            self._user_playhead(0)
        elif key == Qt.Key.Key_End:
            self._user_playhead(self._total - 1)
        else:
            super().keyPressEvent(event)

    def _step_selection(self, step: int) -> None:
        current = next((i for i, r in enumerate(self._refs) if r.clip is self._selected), None)
        index = current + step if current is not None else 0
        ref = self._refs[max(0, min(index, len(self._refs) - 1))]
        self.select(ref)
        self.clip_selected.emit(ref)

    def _user_playhead(self, frame: int) -> None:
        frame = max(0, min(frame, self._total - 1))
        if frame != self._playhead:
            self.set_playhead(frame)
            self.playhead_moved.emit(frame)
