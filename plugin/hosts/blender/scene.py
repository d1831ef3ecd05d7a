"""Blender's side of the records: read a scene's strips, add a generated strip, build a scene from a
cut. Runs inside Blender only (``bpy``), on the main thread only.

Traps avoided:
- ``frame_start`` is where media frame ``animation_offset_start`` would sit; the trim
  (``frame_offset_start``, a float) is counted from there, and Blender truncates to whole frames.
- ``sequences.new_movie`` lays the whole movie from ``frame_start`` and never moves a strip that
  overlaps: imported strips are built left to right on each channel, heads cut with the hold
  offset (the strip only grows to the right, where nothing is yet) and tails trimmed after.
- Strips are shifted rightmost first (``strips.place`` orders them): a strip moved onto another is
  pushed to another channel by Blender.
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

from .strips import Cut, Placement, Strip, blender_fps, place, scene_rate

TIMECODE_PROPERTY = "magic141_timecode_start"  # scene: frames of an imported timeline's start time


def rate_of(scene) -> Fraction:
    return scene_rate(scene.render.fps, scene.render.fps_base)


def _problem(strip) -> str:
    if strip.use_reverse_frames:
        return "plays reversed"
    if strip.strobe > 1:
        return f"shows every {strip.strobe:g}th frame (strobe)"
    speed = getattr(strip, "speed_factor", 1.0)  # Blender 3.3 and later
    if abs(speed - 1.0) > 1e-6:
        return f"plays at speed {speed:g}"
    return ""


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
    strips = tuple(strip_record(strip) for strip in editor.sequences) if editor else ()
    timecode = scene.get(TIMECODE_PROPERTY)
    return Cut(scene.name, rate_of(scene), strips, tuple((m.name, m.frame) for m in scene.timeline_markers),
               scene.frame_start, timecode if isinstance(timecode, int) else None)


def top_level(scene, strip) -> Strip:
    """The record of ``strip``, refused if it lies inside a meta strip (its channels are the meta's)."""
    editor = scene.sequence_editor
    if editor is None or editor.sequences.get(strip.name) != strip:
        raise TimelineError(f"strip {strip.name!r} is inside a meta strip: ungroup it first "
                       "(Strip > Meta Strip > Ungroup Meta Strips)")
    return strip_record(strip)


def add_generated(scene, source_name: str, media: Path, frames: int, how: str, metadata: dict) -> tuple:
    """Put ``frames`` frames of ``media`` after strip ``source_name`` (see ``strips.place``); returns
    the new strip and its placement."""
    editor = scene.sequence_editor
    source = editor.sequences.get(source_name) if editor else None
    if source is None:
        raise TimelineError(f"strip {source_name!r} is no longer in scene {scene.name!r}; "
                       f"the new movie is {media}")
    records = [strip_record(strip) for strip in editor.sequences]
    placement: Placement = place(records, strip_record(source), frames, how)
    for name in placement.shifted:
        strip = editor.sequences[name]
        if getattr(strip, "input_1", None) is None:  # effects follow the strips they take as inputs
            strip.frame_start += frames
    new = editor.sequences.new_movie(f"{source_name} ext", str(media), placement.channel, placement.start)
    new[NAMESPACE] = json.dumps(metadata)
    return new, placement


def build_scene(cut: Cut):
    """A new scene showing ``cut``: its rate, strips, markers and start frame."""
    scene = bpy.data.scenes.new(cut.name)
    scene.render.fps, scene.render.fps_base = blender_fps(cut.rate)
    editor = scene.sequence_editor_create()
    for record in sorted(cut.strips, key=lambda s: (s.channel, s.start)):
        strip = editor.sequences.new_movie(record.name, str(record.path), record.channel, record.start)
        strip.animation_offset_start = record.media_start
        strip.frame_final_duration = record.duration
        if record.metadata:
            strip[NAMESPACE] = json.dumps(record.metadata)
    for name, frame in cut.markers:
        scene.timeline_markers.new(name, frame=frame)
    scene.frame_start = cut.frame_start
    scene.frame_end = max([s.end - 1 for s in cut.strips] + [cut.frame_start])
    if cut.timecode_start is not None:
        scene[TIMECODE_PROPERTY] = cut.timecode_start
    return scene
