"""The job list: one row per job with its progress, the latest step preview, cancel, and how it
ended in plain words. Rows change only through ``JobUpdate`` objects and short notes."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QScrollArea,
                               QSizePolicy, QVBoxLayout, QWidget)

from .engine_bridge import JobUpdate

PREVIEW_SIZE = (72, 44)
STATES = {  # event type -> what the row says
    "submitting": "starting the engine…",
    "queued": "queued",
    "started": "loading the model…",
    "step": "generating",
    "finished": "done",
    "failed": "failed",
    "cancelling": "cancelling…",
    "cancelled": "cancelled",
}
ACTIVE = ("submitting", "queued", "started", "step", "cancelling")


def in_plain_words(reason: str) -> str:
    """The engine's failure reason as an editor would want to read it."""
    reason = reason.strip() or "the engine gave no reason"
    if reason.startswith("internal error:"):
        detail = reason[len("internal error:"):].strip()
        return f"the engine hit an unexpected problem ({detail}); its log has details"
    return reason[0].upper() + reason[1:]


class JobRow(QFrame):
    def __init__(self, job_id: str, title: str, detail: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("jobRow")
        self.job_id = job_id
        self.state = "submitting"
        self.preview = QLabel(self)
        self.preview.setObjectName("jobPreview")
        self.preview.setFixedSize(*PREVIEW_SIZE)
        self.preview.setAlignment(Qt.AlignCenter)
        self.title = QLabel(title, self)
        self.title.setObjectName("jobTitle")
        self.title.setToolTip(f"job {job_id}\n{title}\n{detail}")
        # A long prompt must never push the Cancel button out of sight.
        self.title.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.status = QLabel(STATES[self.state], self)
        self.status.setObjectName("jobStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(6)
        self.cancel = QPushButton("Cancel", self)
        self.cancel.setObjectName("jobCancel")
        self.cancel.setToolTip("Stop this job (the engine stops within one step and keeps no file)")

        text = QVBoxLayout()
        text.setSpacing(2)
        text.addWidget(self.title)
        text.addWidget(self.progress)
        text.addWidget(self.status)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.addWidget(self.preview)
        layout.addLayout(text, 1)
        layout.addWidget(self.cancel, 0, Qt.AlignTop)

    def apply(self, update: JobUpdate) -> None:
        if self.state in ("finished", "failed", "cancelled"):
            return  # a late duplicate (replayed stream) never undoes an ending
        if self.state == "cancelling" and update.kind in ("step", "started", "queued"):
            self.progress.setValue(round(update.fraction * 1000))
            return
        self.state = update.kind if update.kind in STATES else self.state
        if update.kind == "step":
            self.progress.setValue(round(update.fraction * 1000))
            window = f", window {update.window}/{update.windows}" if update.windows > 1 else ""
            # The engine's eta covers the current window's denoising: promise nothing for longer jobs.
            eta = ""
            if update.eta is not None and update.windows <= 1:
                eta = f", about {update.eta:.0f} s of denoising left"
            self.status.setText(f"step {update.step}/{update.total}{window}{eta}")
            if update.preview is not None:
                self.preview.setPixmap(QPixmap.fromImage(update.preview).scaled(
                    *PREVIEW_SIZE, Qt.KeepAspectRatio, Qt.SmoothTransformation))
        elif update.kind == "finished":
            self.progress.setValue(1000)
            frames = (update.result or {}).get("frames")
            self.status.setText(f"done: {frames} frames" if frames else "done")
        elif update.kind == "failed":
            self.status.setText(f"Failed: {in_plain_words(update.reason)}")
        else:
            self.status.setText(STATES.get(update.kind, update.kind))
        self._settle()

    def fail(self, message: str) -> None:
        self.state = "failed"
        self.status.setText(f"Failed: {in_plain_words(message)}")
        self._settle()

    def note(self, text: str) -> None:
        self.status.setText(text)

    def cancelling(self) -> None:
        if self.state in ACTIVE:
            self.state = "cancelling"
            self.status.setText(STATES["cancelling"])
            self.cancel.setEnabled(False)

    def _settle(self) -> None:
        active = self.state in ACTIVE
        self.cancel.setVisible(active)
        self.cancel.setEnabled(active and self.state != "cancelling")
        self.setProperty("state", self.state)
        self.style().unpolish(self)  # re-read the stylesheet's [state=...] rules
        self.style().polish(self)


class JobList(QWidget):
    cancel_requested = Signal(str)  # job id

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("jobList")
        self._rows: dict[str, JobRow] = {}
        self._inner = QWidget()
        self._inner.setObjectName("jobListInner")
        self._column = QVBoxLayout(self._inner)
        self._column.setContentsMargins(0, 0, 0, 0)
        self._column.setSpacing(4)
        self._empty = QLabel("No jobs yet", self._inner)
        self._empty.setObjectName("jobsEmpty")
        self._column.addWidget(self._empty)
        self._column.addStretch(1)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setWidget(self._inner)
        self.clear_button = QPushButton("Clear finished", self)
        self.clear_button.clicked.connect(self.clear_finished)
        header = QHBoxLayout()
        header.addWidget(QLabel("Jobs", self))
        header.addStretch(1)
        header.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(header)
        layout.addWidget(scroll, 1)

    def add_job(self, job_id: str, title: str, detail: str = "") -> JobRow:
        row = JobRow(job_id, title, detail, self._inner)
        row.cancel.clicked.connect(lambda: self._cancel(job_id))
        self._rows[job_id] = row
        self._column.insertWidget(0, row)  # newest on top
        self._empty.hide()
        return row

    def update_job(self, update: JobUpdate) -> None:
        row = self._rows.get(update.job_id)
        if row is not None:
            row.apply(update)

    def fail_job(self, job_id: str, message: str) -> None:
        row = self._rows.get(job_id)
        if row is not None:
            row.fail(message)

    def note(self, job_id: str, text: str) -> None:
        row = self._rows.get(job_id)
        if row is not None:
            row.note(text)

    def job_ids(self) -> list[str]:
        """Every job shown, newest first."""
        return list(reversed(self._rows))

    def row(self, job_id: str) -> JobRow | None:
        return self._rows.get(job_id)

    def state(self, job_id: str) -> str | None:
        row = self._rows.get(job_id)
        return row.state if row is not None else None

    def active(self) -> list[str]:
        """Ids of jobs still running or waiting, newest first."""
        return [job_id for job_id, row in reversed(self._rows.items()) if row.state in ACTIVE]

    def clear_finished(self) -> None:
        for job_id, row in list(self._rows.items()):
            if row.state not in ACTIVE:
                del self._rows[job_id]
                row.deleteLater()
        self._empty.setVisible(not self._rows)

    def _cancel(self, job_id: str) -> None:
        row = self._rows.get(job_id)
        if row is not None and row.state in ACTIVE:
            row.cancelling()
            self.cancel_requested.emit(job_id)

    def cancel_newest(self) -> None:
        active = self.active()
        if active:
            self._cancel(active[0])
