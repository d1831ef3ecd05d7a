"""The engine's exceptions: one base class, names that read as sentences.

    Magic141Error
    ├── InvalidInput          a user-supplied argument or file is wrong (names the argument)
    ├── CheckpointError       weights missing, mismatched or in a refused format (names the tensor)
    ├── InsufficientMemory    the job cannot fit the device (says how much it needs and has)
    └── JobCancelled          the cancel token was set; no output was written

Errors from torch, PyAV or PIL are translated at the boundary with ``raise ... from exc``,
so the CLI can print one clear line and exit non-zero.
"""

from __future__ import annotations


class Magic141Error(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidInput(Magic141Error, ValueError):
    """An argument or input file is wrong; the message names it and the valid choices."""


class CheckpointError(Magic141Error):
    """A checkpoint is missing, incomplete, mismatched or in a refused format."""


class InsufficientMemory(Magic141Error):
    """The job is estimated not to fit the device's free memory."""


class JobCancelled(Magic141Error):
    """The job's cancel token was set; the step loop stopped and nothing was written."""
