"""Engine status (device, free memory, loaded model) and the panel's message line.

The message line is how the panel reports problems (an unreadable timeline, an offline clip, a
job that could not start): one line in plain words, never a modal dialog, so a host application
and a test driving the panel are never stopped by a box waiting for a click.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QSizePolicy, QWidget

from .elided import ElidedLabel
from .engine_bridge import EngineStatus

LEVELS = ("info", "error")


class EngineStatusLabel(ElidedLabel):
    """The engine's state in one line, shortened with an ellipsis when docked (all of it in the tooltip)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Engine: …", parent)
        self.setObjectName("engineStatus")
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.status: EngineStatus | None = None

    def show_status(self, status: EngineStatus) -> None:
        self.status = status
        self.set_full_text(status.describe())
        self.setToolTip(status.describe())
        self.setProperty("running", status.running)
        self.style().unpolish(self)
        self.style().polish(self)


class MessageLine(QLabel):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("", parent)
        self.setObjectName("message")
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.level = "info"

    def show_message(self, text: str, level: str = "info") -> None:
        assert level in LEVELS, level
        self.level = level
        self.setText(text)
        self.setProperty("level", level)
        self.style().unpolish(self)
        self.style().polish(self)
