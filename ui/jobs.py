"""The job list: one row per job with its progress, the latest step preview, cancel, and how it
ended in plain words. Rows only draw the ``Job`` snapshots the job controller sends."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .elided import ElidedLabel
from .job_controller import Job, JobPhase
from .scroll import VerticalScrollArea

PREVIEW_SIZE = (72, 44)
WORDS = {  # what a row says in each state (GENERATING says which step)
    JobPhase.SUBMITTING: "starting the engine…",
    JobPhase.QUEUED: "queued",
    JobPhase.LOADING: "loading the model…",
    JobPhase.GENERATING: "generating",
    JobPhase.RECONNECTING: "reconnecting to the engine…",
    JobPhase.CANCELLING: "cancelling…",
    JobPhase.FINISHED: "done",
    JobPhase.FAILED: "failed",
    JobPhase.CANCELLED: "cancelled",
}


class JobRow(QFrame):
    def __init__(self, job: Job, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("jobRow")
        self.job = job
        self.preview = QLabel(self)
        self.preview.setObjectName("jobPreview")
        self.preview.setFixedSize(*PREVIEW_SIZE)
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        # A long prompt must never push the Cancel button out of sight: shortened with an ellipsis.
        self.title = ElidedLabel(job.title, self)
        self.title.setObjectName("jobTitle")
        self.title.setToolTip(f"job {job.id}\n{job.title}\n{job.detail}")
        self.status = QLabel("", self)
        self.status.setObjectName("jobStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(6)
        self.progress.setMinimumWidth(40)  # its style's minimum is far wider than a thin bar needs
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
        layout.addWidget(self.cancel, 0, Qt.AlignmentFlag.AlignTop)

        self.show_job(job)

    @property
    def state(self) -> JobPhase:
        return self.job.state

    def show_job(self, job: Job) -> None:
        self.job = job
        if job.progress is not None:
            self.progress.setValue(round(job.progress.fraction * 1000))
        if job.preview is not None:
            self.preview.setPixmap(QPixmap.fromImage(job.preview).scaled(
                *PREVIEW_SIZE, Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.SmoothTransformation))
        if job.state is JobPhase.FINISHED:
            self.progress.setValue(1000)
        self.status.setText(_status(job))
        active = not job.state.ended
        self.cancel.setVisible(active)
        self.cancel.setEnabled(active and job.state is not JobPhase.CANCELLING)
        self.setProperty("state", job.state.value)
        self.style().unpolish(self)  # re-read the stylesheet's [state=...] rules
        self.style().polish(self)


def _status(job: Job) -> str:
    if job.state is JobPhase.GENERATING and job.progress is not None:
        step = job.progress
        windows = step.windows or 1
        window = f", window {step.window}/{windows}" if windows > 1 else ""
        # The engine's eta covers the current window's denoising: promise nothing for longer jobs.
        eta = f", about {step.eta:.0f} s of denoising left" if step.eta is not None and windows <= 1 else ""
        return f"step {step.step}/{step.total}{window}{eta}"
    if job.state is JobPhase.FINISHED:
        if job.note:
            return job.note
        return f"done: {job.result.frames} frames" if job.result is not None else "done"
    if job.state is JobPhase.FAILED:
        return f"Failed: {job.reason}"
    if job.state is JobPhase.RECONNECTING and job.reason:
        return f"{WORDS[job.state]} ({job.reason})"
    return WORDS[job.state]


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
        scroll = VerticalScrollArea(self._inner, self)
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

    def add_job(self, job: Job) -> JobRow:
        row = JobRow(job, self._inner)
        row.cancel.clicked.connect(lambda: self.cancel_requested.emit(job.id))
        self._rows[job.id] = row
        self._column.insertWidget(0, row)  # newest on top
        self._empty.hide()
        return row

    def show_job(self, job: Job) -> None:
        row = self._rows.get(job.id)
        if row is not None:
            row.show_job(job)

    def job_ids(self) -> list[str]:
        """Every job shown, newest first."""
        return list(reversed(self._rows))

    def row(self, job_id: str) -> JobRow | None:
        return self._rows.get(job_id)

    def clear_finished(self) -> None:
        for job_id, row in list(self._rows.items()):
            if row.state.ended:
                del self._rows[job_id]
                row.deleteLater()
        self._empty.setVisible(not self._rows)
