"""A movie's exact rate and length, read with PyAV: Blender's own ``fps`` is a rounded float.

Traps avoided:
- The frame count comes from decoding (``engine.media.probe_video``), not the container's header,
  which counts frames an edit list hides; it runs off Blender's main thread when it can (extend),
  and once per file (export).
- Importing needs only the rate, which the header has: a timeline of long media opens in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from magic141.errors import Magic141Error, TimelineError


@dataclass(frozen=True)
class MediaInfo:
    rate: Fraction
    frames: int


def media_info(path: Path) -> MediaInfo:
    from magic141.engine import media  # PyAV and numpy, no torch

    try:
        info = media.probe_video(path)
    except Magic141Error as exc:
        raise TimelineError(str(exc)) from exc
    if not info.fps or info.frames < 1:
        raise TimelineError(f"video {path} has no frames or no frame rate")
    return MediaInfo(Fraction(info.fps), info.frames)


def media_rate(path: Path) -> Fraction:
    """The video stream's average rate, from the header alone."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise TimelineError(f"{path} has no video stream")
            rate = container.streams.video[0].average_rate
    except av.FFmpegError as exc:
        raise TimelineError(f"video {path} cannot be read: {exc}") from exc
    if not rate:
        raise TimelineError(f"video {path} does not say its frame rate")
    return Fraction(rate)
