"""Shared fixtures: tiny models built in code (no downloads), sample media."""

from __future__ import annotations

import os
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
