"""Every exception Magic141 raises on purpose, in one tree. Stdlib only.

    Magic141Error                 base; ``field`` names the input at fault (or None)
    ├── InvalidInput (ValueError) an argument, file or job-spec field is wrong (the message says why)
    │   └── TimelineError         a timeline cannot be read, has no such clip, frame or marker, or
    │                             cannot be edited or saved (OTIO, MLT, a host's strips)
    ├── CheckpointError           weights missing, mismatched or in a refused format (names the tensor)
    ├── InsufficientMemory        the job cannot fit the device (says how much it needs and has)
    ├── JobCancelled              the cancel token was set; no output was written
    ├── JobNotFound               no job has this id
    ├── JobConflict               the id is taken by another spec, or the job's state forbids the request
    ├── SchemaTooNew              a file or message was written by a newer Magic141 than this one
    └── EngineError               the engine service refused a request (``status``) or is unreachable (0)

Errors from torch, PyAV, OTIO or Qt are translated at the boundary with ``raise ... from exc``.
A message never names a command-line flag or a widget: it names the ``field`` and each front end
phrases it (``--seconds`` on the command line, "Seconds" in the panel) with ``phrase``.
"""

from __future__ import annotations

from collections.abc import Mapping


class Magic141Error(Exception):
    """Base class of every error Magic141 raises on purpose.

    ``str(error)`` is ``"field: message"`` (or the message alone): plain words for logs and job
    records; front ends call ``phrase`` to name the field their own way.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def phrase(self, names: Mapping[str, str] | None = None, *, default: str = "{}") -> str:
        """The message with the field named as a front end names it: ``names[field]``, else the
        field put through ``default`` (``"--{}"`` for flags); underscores in a field read as the
        front end's word separator is the caller's choice (``names``)."""
        if not self.field:
            return self.message
        label = (names or {}).get(self.field) or default.format(self.field)
        return f"{label}: {self.message}"


class InvalidInput(Magic141Error, ValueError):
    """An argument, input file or job-spec field is wrong; the message names the valid choices."""


class TimelineError(InvalidInput):
    """The timeline cannot be read, has no such clip, frame or marker, or cannot be edited or saved."""


class CheckpointError(Magic141Error):
    """A checkpoint is missing, incomplete, mismatched or in a refused format."""


class InsufficientMemory(Magic141Error):
    """The job is estimated not to fit the device's free memory."""


class JobCancelled(Magic141Error):
    """The job's cancel token was set; the step loop stopped and nothing was written."""


class JobNotFound(Magic141Error):
    """No job has this id."""


class JobConflict(Magic141Error):
    """The id is taken by a job with a different spec, or the job's state does not allow the request."""


class SchemaTooNew(Magic141Error):
    """A queue file, spec, result or event was written by a newer Magic141 than this one reads."""


class EngineError(Magic141Error):
    """The service refused a request (``status`` says how) or could not be reached (status 0)."""

    def __init__(self, message: str, status: int = 0, *, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.status = status


__all__ = [
    "CheckpointError", "EngineError", "InsufficientMemory", "InvalidInput", "JobCancelled", "JobConflict",
    "JobNotFound", "Magic141Error", "SchemaTooNew", "TimelineError",
]
