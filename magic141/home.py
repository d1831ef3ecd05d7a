"""Where all state lives: ``$MAGIC141_HOME`` (default: the platform's user data directory). Stdlib only
at import (``platformdirs`` is imported only to find the default folder).

    queue.db        the persistent job queue (SQLite, WAL)
    token           the service's bearer token (mode 0600, readable by the user alone)
    service.json    address and pid of the running service (versioned JSON, ``protocol.SERVICE_FILE_VERSION``)
    logs/           service logs
    outputs/        default folder for generated media
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from . import atomic
from .protocol import SERVICE_FILE_VERSION


def home(path: str | os.PathLike | None = None) -> Path:
    if path is None:
        path = os.environ.get("MAGIC141_HOME")
    if path is None:
        from platformdirs import user_data_dir

        path = user_data_dir("magic141", appauthor=False)
    root = Path(path).expanduser().resolve()
    for sub in ("", "logs", "outputs"):
        (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    return root


def new_token(root: Path) -> str:
    """A fresh token, written so that only the user can read it (created 0600, never widened)."""
    token = secrets.token_urlsafe(32)
    atomic.write_text(root / "token", token, mode=atomic.PRIVATE)
    return token


def read_token(root: Path) -> str | None:
    try:
        return (root / "token").read_text().strip() or None
    except OSError:
        return None


def write_service(root: Path, data: dict) -> None:
    """Publish the running service's address (``version`` is added here)."""
    atomic.write_json(root / "service.json", {"version": SERVICE_FILE_VERSION, **data}, mode=atomic.PRIVATE)


def read_service(root: Path) -> dict | None:
    """The running service's address, or None if there is no (readable) service file."""
    try:
        data = json.loads((root / "service.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != SERVICE_FILE_VERSION:
        return None
    return data
