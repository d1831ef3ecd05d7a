"""Blender's side of the records: read a scene's strips, add a generated strip, build a scene from a
cut. Runs inside Blender only (``bpy``), on the main thread only.

Traps avoided:
- ``frame_start`` is where media frame ``animation_offset_start`` would sit; the trim
  (``frame_offset_start``, a float) is counted from there, and Blender truncates to whole frames.
- ``new_movie`` lays the whole movie from ``frame_start`` and never moves a strip that
  overlaps: imported strips are built left to right on each channel, heads cut with the hold
  offset (the strip only grows to the right, where nothing is yet) and tails trimmed after.
- Strips are shifted rightmost first (``strips.place`` orders them): a strip moved onto another is
  pushed to another channel by Blender.
- The scene's frame range is set from the strips Blender made, not from the records: what it shows
  is what plays and renders.
- The API that moved between Blender versions (``strips`` / ``sequences``, retiming) is in ``compat``.
"""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction
from pathlib import Path

import bpy

from magic141.errors import TimelineError
from magic141.plugin.timeline import NAMESPACE

from . import compat
from .strips import Cut, Placement, Strip, blender_fps, place, scene_rate

TIMECODE_PROPERTY = "magic141_timecode_start"  # scene: frames of an imported timeline's start time


def rate_of(scene) -> Fraction:
    return scene_rate(scene.render.fps, scene.render.fps_base)


def _problem(strip) -> str:
    if strip.use_reverse_frames:
        return "plays reversed"
    if strip.strobe > 1:
        return f"shows every {strip.strobe:g}th frame (strobe)"
    return compat.speed_problem(strip)


def _metadata(strip) -> dict:
    raw = strip.get(NAMESPACE)
    try:
        value = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def strip_record(strip) -> Strip:
    path, media_start, problem = None, 0, ""
    if strip.type == "MOVIE":
        if strip.filepath:
            path = Path(os.path.normpath(bpy.path.abspath(strip.filepath)))
        media_start = strip.animation_offset_start + math.floor(strip.frame_final_start - strip.frame_start)
        problem = _problem(strip)
    return Strip(strip.name, strip.channel, strip.frame_final_start, strip.frame_final_duration, strip.type,
                 path, media_start, _metadata(strip), problem)


def read_cut(scene) -> Cut:
    """The scene's top-level strips (not those inside meta strips) and markers."""
    editor = scene.sequence_editor
    strips = tuple(strip_record(strip) for strip in compat.strips(editor)) if editor else ()
    timecode = scene.get(TIMECODE_PROPERTY)
    return Cut(scene.name, rate_of(scene), strips, tuple((m.name, m.frame) for m in scene.timeline_markers),
               scene.frame_start, timecode if isinstance(timecode, int) else None)


def top_level(scene, strip) -> Strip:
    """The record of ``strip``, refused if it lies inside a meta strip (its channels are the meta's)."""
    editor = scene.sequence_editor
    if editor is None or compat.strips(editor).get(strip.name) != strip:
        raise TimelineError(f"strip {strip.name!r} is inside a meta strip: ungroup it first "
                       "(Strip > Meta Strip > Ungroup Meta Strips)")
    return strip_record(strip)


def add_generated(scene, source_name: str, source_frame: int, media: Path, frames: int, how: str,
                  metadata: dict) -> tuple:
    """Put ``frames`` frames of ``media`` after frame ``source_frame`` of strip ``source_name`` (counted
    from its first frame; see ``strips.place``). The scene's end moves with an insert after it, and to
    the new strip's end if that is later. Returns the new strip, its placement and the scene's new end
    frame (None: unchanged)."""
    editor = scene.sequence_editor
    source = compat.strips(editor).get(source_name) if editor else None
    if source is None:
        raise TimelineError(f"strip {source_name!r} is no longer in scene {scene.name!r}; "
                            f"the new movie is {media}")
    top = compat.strips(editor)
    record = strip_record(source)
    placement: Placement = place([strip_record(strip) for strip in top], record, frames, how,
                                 cut=record.start + source_frame + 1)
    moving = [top[name] for name in placement.shifted]
    if placement.split:
        moving.append(source.split(frame=placement.start, split_method="SOFT"))
    for strip in moving:
        if getattr(strip, "input_1", None) is None:  # effects follow the strips they take as inputs
            strip.frame_start += frames
    new = top.new_movie(f"{source_name} ext", str(media), placement.channel, placement.start)
    new[NAMESPACE] = json.dumps(metadata)
    end = scene.frame_end + (frames if how == "insert" and scene.frame_end >= placement.start else 0)
    end = max(end, new.frame_final_end - 1)
    if end == scene.frame_end:
        return new, placement, None
    scene.frame_end = end
    return new, placement, end


def build_scene(cut: Cut):
    """A new scene showing ``cut``: its rate, strips, markers and start frame."""
    scene = bpy.data.scenes.new(cut.name)
    scene.render.fps, scene.render.fps_base = blender_fps(cut.rate)
    editor = scene.sequence_editor_create()
    top = compat.strips(editor)
    for record in sorted(cut.strips, key=lambda s: (s.channel, s.start)):
        strip = top.new_movie(record.name, str(record.path), record.channel, record.start)
        strip.animation_offset_start = record.media_start
        strip.frame_final_duration = record.duration
        if record.metadata:
            strip[NAMESPACE] = json.dumps(record.metadata)
    for name, frame in cut.markers:
        scene.timeline_markers.new(name, frame=frame)
    scene.frame_start = cut.frame_start
    scene.frame_end = max([strip.frame_final_end - 1 for strip in top] + [cut.frame_start])
    if cut.timecode_start is not None:
        scene[TIMECODE_PROPERTY] = cut.timecode_start
    return scene
