"""Short jobs off the UI thread: run a function on a ``QThreadPool``, get its result as a signal.

Traps avoided:
- A ``QRunnable`` is not a ``QObject`` and cannot emit; each task carries a small ``QObject`` made
  on the UI thread, so its signals are delivered there (queued) whatever thread emits them.
- PySide may collect a task's Python wrapper while the pool still runs it; the runner keeps every
  task until it has reported.
- Errors become one line of plain words (``Magic141Error`` messages with their field named as the
  panel names it); a worker thread never raises into Qt, where the exception would be lost.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from magic141.errors import Magic141Error

from .labels import PANEL_LABELS


def plain_error(exc: BaseException) -> str:
    """One line an editor can read: our own errors in the panel's words, anything else named."""
    if isinstance(exc, Magic141Error):
        text = exc.phrase(PANEL_LABELS)
        return text.splitlines()[0] if text else type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"unexpected {type(exc).__name__}{': ' + text if text else ''}"


class _Report(QObject):
    done = Signal(object)
    failed = Signal(str)


class _Task(QRunnable):
    def __init__(self, fn: Callable, args: tuple) -> None:
        super().__init__()
        self.setAutoDelete(False)  # the runner owns it until it has reported
        self.fn, self.args = fn, args
        self.report = _Report()

    def run(self) -> None:
        try:
            result = self.fn(*self.args)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none escapes into Qt
            self.report.failed.emit(plain_error(exc))
        else:
            self.report.done.emit(result)


class TaskRunner(QObject):
    """A private thread pool (a host's global pool stays untouched) with result callbacks."""

    def __init__(self, threads: int, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self._tasks: set[_Task] = set()

    def submit(self, fn: Callable, *args, done: Callable | None = None,
               failed: Callable[[str], None] | None = None) -> None:
        task = _Task(fn, args)
        self._tasks.add(task)

        def finish(*_: object) -> None:
            self._tasks.discard(task)

        if done is not None:
            task.report.done.connect(done)
        if failed is not None:
            task.report.failed.connect(failed)
        task.report.done.connect(finish)
        task.report.failed.connect(finish)
        self.pool.start(task)

    def drop_waiting(self) -> None:
        """Forget tasks not started yet (stale frame grabs while scrubbing)."""
        for task in list(self._tasks):
            if self.pool.tryTake(task):
                self._tasks.discard(task)

    def busy(self) -> bool:
        return bool(self._tasks)

    def wait(self, msecs: int = 5000) -> bool:
        return self.pool.waitForDone(msecs)
