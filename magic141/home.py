"""Where all state lives: ``$MAGIC141_HOME`` (default: the platform's user data directory). Stdlib only
at import (``platformdirs`` is imported only to find the default folder).

    queue.db        the persistent job queue (SQLite, WAL)
    token           the service's bearer token (mode 0600, readable by the user alone)
    service.json    address and pid of the running service (versioned JSON, ``protocol.SERVICE_FILE_VERSION``)
    service.lock    held (``flock``) by the one service of this home for its whole life; holds its pid
    start.lock      held by a client while it starts a service, so that racing clients start one
    logs/           service logs
    outputs/        default folder for generated media
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import atomic
from .protocol import SERVICE_FILE_VERSION

IDLE_EXIT = 15 * 60.0  # seconds with no job and no client before a service stops by itself (0: never)


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


class ServiceLock:
    """One service per home: an exclusive ``flock`` on ``service.lock``, held while the service lives.

    The OS drops the lock when its holder exits, however it exits (kill -9 too), so no lock is ever
    stale; the pid written in the file only serves messages. Only the holder may ``recover()`` the
    queue: every RUNNING job is then known to be a dead engine's.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / "service.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, patience: float = 1.0) -> bool:
        """Take the lock (True) or find another process holding it (False). A client's probe
        (``service_pid``) holds it for an instant, hence ``patience`` seconds of retries."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, atomic.PRIVATE)
        deadline = time.monotonic() + patience
        while not _try_flock(fd, fcntl.LOCK_EX):
            if time.monotonic() >= deadline:
                os.close(fd)
                return False
            time.sleep(0.01)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> ServiceLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def service_pid(root: Path) -> int | None:
    """The pid of the process holding ``root``'s service lock (0 if it has not written it yet), or
    None when no service holds it (none runs, or it has not started yet)."""
    try:
        fd = os.open(root / "service.lock", os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _try_flock(fd, fcntl.LOCK_SH):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else 0
    finally:
        os.close(fd)


@contextmanager
def starting(root: Path, deadline: float) -> Iterator[bool]:
    """Hold ``start.lock`` while starting a service (yields True), or yield False if another
    client kept it past ``deadline`` (a ``time.monotonic()`` value)."""
    fd = os.open(root / "start.lock", os.O_RDWR | os.O_CREAT, atomic.PRIVATE)
    try:
        while not _try_flock(fd, fcntl.LOCK_EX):
            if time.monotonic() >= deadline:
                yield False
                return
            time.sleep(0.02)
        yield True
    finally:
        os.close(fd)


def _try_flock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
