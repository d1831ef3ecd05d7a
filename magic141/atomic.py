"""One atomic write: a file appears whole at its path or not at all. Stdlib only.

A hidden temporary file is made beside the target (the same folder, so the rename stays on one
filesystem), written, flushed to disk, then renamed over the target with ``os.replace``. Any
failure removes the temporary file and leaves what was at the target untouched.

Traps avoided:
- ``tempfile.mkstemp`` creates files mode 0600; a timeline or a video the user shares must get
  the usual 0666 less the umask, so the file is created with ``os.open(..., mode)`` instead.
- The temporary name keeps the target's suffix (``.x.mp4.1a2b.partial.mp4``): writers such as
  PyAV pick the container from it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PUBLIC = 0o666  # less the umask: what any program's new file gets
PRIVATE = 0o600  # tokens and queue state: readable by the user alone


def temporary_beside(path: Path) -> Path:
    """A fresh hidden name beside ``path`` that keeps its suffix."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial{path.suffix}")


@contextmanager
def replacing(path: str | os.PathLike, *, mode: int = PUBLIC) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it is fsynced and renamed onto ``path``.

    The folder must exist: a missing folder is the caller's error to report, never created here.
    """
    target = Path(path)
    temp = temporary_beside(target)
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    try:
        yield temp
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = PUBLIC) -> Path:
    with replacing(path, mode=mode) as temp:
        temp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, mode: int = PUBLIC) -> Path:
    return write_bytes(path, text.encode("utf-8"), mode=mode)


def write_json(path: str | os.PathLike, data: object, *, mode: int = PUBLIC,
               indent: int | None = None) -> Path:
    """JSON that strict readers accept (no NaN), written atomically."""
    return write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n", mode=mode)
