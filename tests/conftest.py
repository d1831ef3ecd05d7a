"""Shared fixtures: tiny models built in code (no downloads), sample media."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_IMAGE = ROOT / "resources" / "samples" / "first_frame.png"


@pytest.fixture
def tiny_components():
    from magic141.engine.tiny import build_tiny_components

    return build_tiny_components()


@pytest.fixture
def sample_image():
    import PIL.Image

    with PIL.Image.open(SAMPLE_IMAGE) as image:
        return image.convert("RGB")


def stop_service(root: Path, timeout: float = 10.0) -> None:
    """Kill the engine service a test started under ``root`` (tests leave no server behind), be it
    serving or still starting, and wait until it is gone, so that a client started next never finds
    it still alive."""
    from magic141 import home as home_dir

    if not root.exists():
        return
    info = home_dir.read_service(root)
    for pid in {home_dir.service_pid(root), info and info.get("pid")} - {None, 0}:
        kill_and_wait(pid, timeout)


def kill_and_wait(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL ``pid`` and wait until it is gone (reaped by its parent's reaper thread, or init)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


@pytest.fixture
def home(tmp_path):
    """An engine home folder; the service started in it is killed afterwards."""
    root = tmp_path / "home"
    yield root
    stop_service(root)


@pytest.fixture(scope="module")
def noise_image():
    """A 96x64 picture of seeded noise: the size the tiny model families make."""
    import numpy as np
    import PIL.Image

    return PIL.Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype("uint8"))
