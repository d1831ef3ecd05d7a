"""Frames and timecode on the open timeline, exact: the strip, the viewer and the job controller
count with these. No widgets here.

Traps avoided:
- OTIO keeps rates as floats: a 23.976 timeline's rate is converted through ``rate_from_float``
  (24000/1001) before any arithmetic, and only the final frame count is rounded.
- Timecode is made from a whole frame at the timeline's rate (``to_timecode``), never from
  float seconds, so frame 1000 of a 24000/1001 timeline reads the same as in an editor.
"""

from __future__ import annotations

from fractions import Fraction

import opentimelineio as otio

from magic141.plugin import timeline as tl
from magic141.rational import rate_from_float


def frames_at(time: otio.opentime.RationalTime, rate: Fraction) -> int:
    """``time`` as a whole number of frames of ``rate`` (exact until the final rounding)."""
    return round(Fraction(time.value) / rate_from_float(time.rate) * rate)


def span(item: otio.core.Item, rate: Fraction) -> tuple[int, int]:
    """(first frame, frame count) of ``item`` on its track, in frames of ``rate``."""
    placed = item.range_in_parent()
    return frames_at(placed.start_time, rate), frames_at(placed.duration, rate)


def clip_rate(ref: tl.ClipRef) -> Fraction:
    return rate_from_float(ref.clip.trimmed_range().duration.rate)


def timeline_frame(ref: tl.ClipRef, frame: int, rate: Fraction) -> int:
    """The timeline frame (of ``rate``) where frame ``frame`` of the clip (counted from 0) plays."""
    first, _ = span(ref.clip, rate)
    return first + round(Fraction(frame) * rate / clip_rate(ref))


def timecode(doc: tl.TimelineDoc, frame: int) -> str:
    """Timeline frame ``frame`` as the timeline's timecode (its start time included)."""
    rate = float(doc.rate)
    at = otio.opentime.RationalTime(frame, rate)
    start = doc.timeline.global_start_time
    if start is not None:
        at = at + start.rescaled_to(rate)
    try:
        return otio.opentime.to_timecode(at, rate)
    except ValueError:  # a rate timecode cannot express: show frames
        return str(frame)
