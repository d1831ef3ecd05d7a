"""A scene's strips as plain records, its exact frame rate, and where a generated strip goes. No ``bpy``.

Blender plays a movie strip one media frame per timeline frame, whatever the movie's own rate:
timeline frame ``f`` of a strip shows media frame ``media_start + (f - start)``, where
``media_start`` counts the strip's hold offset (``animation_offset_start``) and its trim
(``frame_offset_start``). A scene's rate is ``fps / fps_base``: an int over a 32-bit float.

Traps avoided:
- ``fps_base`` 1.001 is stored as 1.00100004673..., so 24 / fps_base is 23.97602285..., 1.2e-6 away
  from 24000/1001: closer to 23976/1000 than any tolerance that keeps 23.976 apart from 24000/1001.
  Only ``fps_base`` is made a fraction, with denominators up to 1001: such fractions lie at least
  1e-6 apart near 1, and a 32-bit float is within 1e-7 of the one that was typed.
- Strips are shifted right from the rightmost one first: moving a strip onto another makes
  Blender push it to another channel.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from magic141.errors import TimelineError

MAX_CHANNEL = 128  # Blender's sequencer has channels 1 to 128 (3.4 to 5.0)
MAX_FPS = 32767  # RenderSettings.fps is a short
PLACEMENTS = ("insert", "above")  # after the source on its channel (ripple), or on the first free one above


@dataclass(frozen=True)
class Strip:
    name: str
    channel: int
    start: int  # first timeline frame shown (Blender's frame_final_start)
    duration: int  # frames shown (frame_final_duration)
    kind: str = "MOVIE"  # Blender's strip type: MOVIE, IMAGE, COLOR, SOUND, CROSS, ...
    path: Path | None = None  # the movie file, absolute
    media_start: int = 0  # the media frame shown at ``start``
    metadata: dict = field(default_factory=dict, compare=False)  # how a generated strip was made
    problem: str = ""  # why it does not show its media frame for frame ("plays reversed", ...)

    @property
    def end(self) -> int:
        """The first frame after the strip."""
        return self.start + self.duration

    def can_cut(self, frame: int) -> bool:
        """Whether a new strip can start at ``frame``: after the strip's first frame, up to its end."""
        return self.start < frame <= self.end

    def check_movie(self) -> None:
        """Refuse a strip that is not a movie shown frame for frame, or whose media is missing."""
        if self.kind != "MOVIE":
            raise TimelineError(f"strip {self.name!r} is a {self.kind.lower()} strip: choose a movie strip")
        if self.problem:
            raise TimelineError(f"strip {self.name!r} {self.problem}: Magic141 continues movie strips that "
                                "show their media frame for frame")
        if self.path is None or not self.path.is_file():
            raise TimelineError(f"strip {self.name!r}: its media {self.path} is missing")

    def frame_in_strip(self, frame: int) -> int:
        """``frame`` (a timeline frame) counted from the strip's first frame, checked to be a frame
        of a movie this strip shows as is."""
        self.check_movie()
        if isinstance(frame, bool) or not isinstance(frame, int) or not self.start <= frame < self.end:
            raise TimelineError(f"frame {frame} is outside strip {self.name!r}, which shows frames "
                           f"{self.start} to {self.end - 1}")
        return frame - self.start


@dataclass(frozen=True)
class Cut:
    """What a scene's sequencer shows: its top-level strips, rate and markers."""

    name: str
    rate: Fraction
    strips: tuple[Strip, ...]
    markers: tuple[tuple[str, int], ...] = ()  # the scene's timeline markers: (name, frame)
    frame_start: int = 1  # the scene's first frame
    timecode_start: int | None = None  # frames: an imported timeline's start (01:00:00:00), kept for export


def scene_rate(fps: int, fps_base: float) -> Fraction:
    """A scene's exact rate: (24, 1.001) and (24000, 1001.0) are both 24000/1001."""
    if isinstance(fps, bool) or not isinstance(fps, int) or fps <= 0 or not fps_base or fps_base <= 0:
        raise TimelineError(f"the scene's frame rate must be positive, got fps={fps!r} fps_base={fps_base!r}")
    return Fraction(fps) / Fraction(fps_base).limit_denominator(1001)


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def blender_fps(rate: Fraction) -> tuple[int, float]:
    """``(fps, fps_base)`` that ``scene_rate`` reads back as exactly ``rate``: 24000/1001 -> (24, 1.001),
    the way Blender's own presets write it; 25/2 -> (25, 2.0)."""
    rate = Fraction(rate)
    candidates = []
    if (rate * Fraction(1001, 1000)).denominator == 1:
        candidates.append((int(rate * Fraction(1001, 1000)), 1.001))
    candidates.append((rate.numerator, float(rate.denominator)))
    for fps, base in candidates:
        if 0 < fps <= MAX_FPS and scene_rate(fps, _float32(base)) == rate:
            return fps, base
    raise TimelineError(f"Blender cannot hold the frame rate {rate} exactly (fps is at most {MAX_FPS})")


# Placing a generated strip -------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    channel: int
    start: int
    shifted: tuple[str, ...] = ()  # strips to move right by the new strip's length, rightmost first
    split: bool = False  # cut the source at ``start`` first; its right part moves right (after ``shifted``)


def place(strips: tuple[Strip, ...] | list[Strip], source: Strip, frames: int,
          how: str = "insert", cut: int | None = None) -> Placement:
    """Where ``frames`` new frames go at frame ``cut`` of ``source`` (default: its end): at the cut on
    its channel, cutting the source there and shifting what follows on that channel (``insert``),
    or at the same time on the first channel above that is free for all of them (``above``).

    The cut is where the new strip starts, as Blender's own split puts a cut: the frame under the
    playhead is the new strip's first, and the source's frame before it is the one continued."""
    if how not in PLACEMENTS:
        raise TimelineError(f"must be one of {', '.join(PLACEMENTS)}, got {how!r}", field="placement")
    if frames < 1:
        raise TimelineError(f"the generated media has {frames} frames")
    cut = source.end if cut is None else cut
    if not source.can_cut(cut):
        raise TimelineError(f"a cut at frame {cut} is not inside strip {source.name!r}: it must be from "
                            f"frame {source.start + 1} to {source.end}")
    if how == "insert":
        later = sorted((s for s in strips if s.channel == source.channel and s.start >= cut and s != source),
                       key=lambda s: s.start, reverse=True)
        return Placement(source.channel, cut, tuple(s.name for s in later), split=cut < source.end)
    start, end = cut, cut + frames
    for channel in range(source.channel + 1, MAX_CHANNEL + 1):
        if not any(s.channel == channel and s.start < end and start < s.end for s in strips):
            return Placement(channel, start)
    raise TimelineError(f"no channel above {source.channel} is free from frame {start} to {end - 1}: use "
                        "insert", field="placement")
