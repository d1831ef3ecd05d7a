"""A scroll area that scrolls up and down only and is never narrower than its content needs.

With the horizontal scroll bar off, a plain ``QScrollArea`` squeezed by a splitter cuts its
content at the right edge (fields lose their text, a job's Cancel button goes out of sight). This
one reports its content's minimum width (plus the vertical bar) as its own, asked each time (a
style sheet changes the content's sizes once applied; rows come and go), and tells its layout
whenever the content's layout changes.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QSize, Qt
from PySide6.QtWidgets import QFrame, QScrollArea, QWidget


class VerticalScrollArea(QScrollArea):
    def __init__(self, inner: QWidget, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._inner = inner  # kept here: asking QScrollArea.widget() in a size hint is not safe in PySide
        self.setWidget(inner)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        inner.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self._inner and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the content's minimum changed (a row added): ours with it
        return super().eventFilter(watched, event)

    def minimumSizeHint(self) -> QSize:
        bar = self.verticalScrollBar().sizeHint().width()
        return QSize(self._inner.minimumSizeHint().width() + bar + 2 * self.frameWidth(),
                     super().minimumSizeHint().height())
