"""Timelines shaped as Kdenlive 25's **OpenTimelineIO Export…** writes them (see test_kdenlive.py's
docstring for the facts and where in Kdenlive's ``src/otio/otioexport.cpp`` each comes from).

The project is described the way Kdenlive holds it (bin clips with their own markers, tracks listed
top to bottom, clips at positions with in points, mixes between neighbours, guides), and
``export`` turns it into the OTIO objects Kdenlive's exporter makes of it: written here with
OTIO's Python API, not copied from Kdenlive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import opentimelineio as otio

RT, TR = otio.opentime.RationalTime, otio.opentime.TimeRange


@dataclass
class KdMarker:
    frame: int  # bin clip markers: in the bin clip's (source) frames; guides: in timeline frames
    comment: str  # Kdenlive keeps a marker's text here; the OTIO marker gets no name
    type: int = 0  # Kdenlive's marker category
    color: str = "PURPLE"  # the OTIO colour nearest the category's (otioutil.cpp toOtioMarkerColor)


@dataclass
class KdBin:
    """A bin clip. ``path`` None: a clip without a file (a colour clip): no media reference."""

    path: Path | None
    frames: int  # its length at its own rate
    rate: Fraction
    markers: list[KdMarker] = field(default_factory=list)


@dataclass
class KdClip:
    name: str
    bin: KdBin
    position: int  # timeline frame of its first shown frame, once the mix overlap is taken out
    in_frame: int  # first source frame shown, ditto
    frames: int
    mix_before: tuple[int, int] | None = None  # (in_offset, out_offset) of a mix with the clip before


@dataclass
class KdTrack:
    kind: str  # otio.schema.TrackKind.Video or .Audio
    clips: list[KdClip] = field(default_factory=list)
    name: str = ""  # "kdenlive:track_name": empty unless the user named the track


def _at(frame: int | float, rate: Fraction | float) -> RT:
    return RT(frame, float(rate))


def _marker(marker: KdMarker, frame: int, rate: Fraction) -> otio.schema.Marker:
    return otio.schema.Marker(marked_range=TR(_at(frame, rate), _at(1, rate)), color=marker.color,
                              comment=marker.comment, metadata={"kdenlive": {"type": marker.type}})


def _clip(clip: KdClip, rate: Fraction) -> otio.schema.Clip:
    reference = None
    if clip.bin.path is not None:  # the bin clip's file as it is, an absolute path, no file:// URL
        reference = otio.schema.ExternalReference(target_url=str(clip.bin.path),
                                                  available_range=TR(_at(0, clip.bin.rate),
                                                                     _at(clip.bin.frames, clip.bin.rate)))
    made = otio.schema.Clip(name=clip.name, media_reference=reference,
                            source_range=TR(_at(clip.in_frame, rate), _at(clip.frames, rate)))
    for marker in clip.bin.markers:  # every marker of the bin clip, relative to the in point
        made.markers.append(_marker(marker, marker.frame - clip.in_frame, rate))
    return made


def export(tracks: list[KdTrack], guides: list[KdMarker], rate: Fraction) -> otio.schema.Timeline:
    """The OTIO timeline Kdenlive's exporter writes for this project (``tracks`` top to bottom)."""
    timeline = otio.schema.Timeline()  # no name, no global_start_time, no metadata
    for guide in guides:
        timeline.tracks.markers.append(_marker(guide, guide.frame, rate))
    for track in tracks:
        clips = sorted(track.clips, key=lambda c: c.position)
        end = max((c.position + c.frames for c in clips), default=0)
        made = otio.schema.Track(name=track.name, kind=track.kind,
                                 source_range=TR(_at(0, rate), _at(end, rate)))
        at = 0
        for clip in clips:
            if clip.position > at:  # the blank before a clip; none after the last one
                made.append(otio.schema.Gap(source_range=TR(_at(0, rate), _at(clip.position - at, rate))))
            if clip.mix_before is not None:
                in_offset, out_offset = clip.mix_before
                made.append(otio.schema.Transition(name="Transition",
                                                   transition_type=otio.schema.TransitionTypes.SMPTE_Dissolve,
                                                   in_offset=_at(in_offset, rate),
                                                   out_offset=_at(out_offset, rate)))
            made.append(_clip(clip, rate))
            at = clip.position + clip.frames
        timeline.tracks.append(made)
    return timeline


def write(timeline: otio.schema.Timeline, path: Path) -> Path:
    """Written as Kdenlive writes it: OTIO's own JSON (``to_json_file``), no adapter, no hooks."""
    timeline.to_json_file(str(path))
    return path
