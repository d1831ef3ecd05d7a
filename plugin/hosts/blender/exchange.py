"""A sequencer's strips to and from OpenTimelineIO, and a strip as the clip an engine job starts from.

Channels are video tracks (channel 1 is the first, empty channels stay as empty tracks, so channel
numbers come back), empty stretches are gaps, movie strips are clips whose ``ExternalReference``
spans the whole movie (``available_range``, read from the file). Rates are exact: timeline frames
at the scene's rate, source ranges at the media's. Scene markers named ``magic141: ...`` go onto the
clip they sit on (the top movie strip at their frame), in its source time, so that
``magic141 queue from-timeline`` renders them; other markers go on the timeline.

Blender shows a movie one media frame per timeline frame; OTIO plays it in real time. The two
agree when the rates match; when they differ a clip keeps its start and its length on the
timeline, and a warning says the strip plays at another speed in Blender.

Strips that are not movies (images, colours, effects, ...) become clips without media that keep
their place; sound strips are left out. On import, clips without local media are left out, each
with a warning.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import opentimelineio as otio

from magic141.plugin import markers as mk
from magic141.plugin import timeline as tl
from magic141.plugin.edits import MARKER_NAME
from magic141.rational import rate_from_float

from . import probe
from .strips import MAX_CHANNEL, Cut, Strip

RT, TR = otio.opentime.RationalTime, otio.opentime.TimeRange


def _seconds(time: otio.opentime.RationalTime) -> Fraction:
    return Fraction(time.value) / rate_from_float(time.rate)


def _frames(time: otio.opentime.RationalTime, rate: Fraction) -> int:
    return round(_seconds(time) * rate)


def _at(frames, rate: Fraction) -> otio.opentime.RationalTime:
    return RT(float(frames), float(rate))


def _plain(value):
    """OTIO's AnyDictionary / AnyVector as dicts and lists (what Blender's custom properties hold)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(item) for item in value]
    return value


# A strip as a clip -----------------------------------------------------------------------------


def clip_for(strip: Strip, media: probe.MediaInfo, rate: Fraction) -> otio.schema.Clip:
    """The movie strip as a clip: from the media frame it shows first, in the media's time, lasting
    what ``strip.duration`` frames of ``rate`` last. ``rate`` is the scene's for a timeline; the
    media's for a clip whose frames are the strip's frames, as Blender shows them."""
    assert strip.path is not None  # a movie strip's: callers checked it is a file
    whole = TR(_at(0, media.rate), _at(media.frames, media.rate))
    duration = Fraction(strip.duration) * media.rate / rate
    clip = otio.schema.Clip(
        name=strip.name,
        media_reference=otio.schema.ExternalReference(target_url=strip.path.resolve().as_uri(),
                                                      available_range=whole),
        source_range=TR(_at(strip.media_start, media.rate), _at(duration, media.rate)),
    )
    if strip.metadata:
        clip.metadata[tl.NAMESPACE] = copy.deepcopy(strip.metadata)
    return clip


def clip_ref(strip: Strip, media: probe.MediaInfo) -> tl.ClipRef:
    """The strip as the ``ClipRef`` that ``extend.job_spec`` continues: clip frame ``k`` is media frame
    ``media_start + k``, the frame Blender shows at the strip's ``k``-th frame."""
    clip = clip_for(strip, media, media.rate)
    track = otio.schema.Track(name=f"Channel {strip.channel}")
    track.append(clip)
    return tl.ClipRef(clip, track, 0, strip.name, strip.path, False, "")


def _placeholder(strip: Strip, rate: Fraction) -> otio.schema.Clip:
    clip = otio.schema.Clip(name=strip.name, media_reference=otio.schema.MissingReference(),
                            source_range=TR(_at(0, rate), _at(strip.duration, rate)))
    clip.metadata[tl.NAMESPACE] = {"blender_type": strip.kind}
    return clip


# Export ----------------------------------------------------------------------------------------


def to_timeline(cut: Cut, media_info: Callable[[Path], probe.MediaInfo] = probe.media_info,
                ) -> tuple[otio.schema.Timeline, list[str]]:
    """The cut as an OTIO timeline, and warnings about what it cannot say exactly."""
    rate = cut.rate
    warnings: list[str] = []
    shown = [s for s in cut.strips if s.kind != "SOUND"]
    if len(shown) < len(cut.strips):
        warnings.append(f"{len(cut.strips) - len(shown)} sound strips are left out")
    origin = min([cut.frame_start] + [s.start for s in shown])
    start = cut.timecode_start if cut.timecode_start is not None else origin
    timeline = otio.schema.Timeline(name=cut.name, global_start_time=_at(start, rate))
    timeline.metadata[tl.NAMESPACE] = {"blender": {"origin": origin}}
    media: dict[Path, probe.MediaInfo] = {}
    clips: dict[str, tuple[Strip, otio.schema.Clip]] = {}
    for channel in range(1, max((s.channel for s in shown), default=0) + 1):
        track = otio.schema.Track(name=f"Channel {channel}", kind=otio.schema.TrackKind.Video)
        position = origin
        for strip in sorted((s for s in shown if s.channel == channel), key=lambda s: s.start):
            if strip.start < position:
                warnings.append(f"strip {strip.name!r} overlaps the strip before it on channel {channel}: "
                                "left out")
                continue
            if strip.start > position:
                gap = TR(_at(0, rate), _at(strip.start - position, rate))
                track.append(otio.schema.Gap(source_range=gap))
            track.append(_item(strip, rate, media, media_info, warnings, clips))
            position = strip.end
        timeline.tracks.append(track)
    _export_markers(cut, timeline, clips, origin, warnings)
    return timeline, warnings


def _item(strip: Strip, rate: Fraction, media: dict, media_info, warnings: list[str], clips: dict):
    if strip.kind != "MOVIE":
        return _placeholder(strip, rate)
    if strip.path is None or not strip.path.is_file():
        warnings.append(f"strip {strip.name!r}: its media {strip.path} is missing; exported without media")
        return _placeholder(strip, rate)
    if strip.path not in media:
        media[strip.path] = media_info(strip.path)
    info = media[strip.path]
    if info.rate != rate:
        warnings.append(f"strip {strip.name!r}: its media runs at {info.rate} fps and the scene at {rate}; "
                        "Blender shows it frame for frame, other applications in real time")
    if strip.problem:
        warnings.append(f"strip {strip.name!r} {strip.problem}: exported as if it did not")
    clip = clip_for(strip, info, rate)
    clips[strip.name] = (strip, clip)
    return clip


def _export_markers(cut: Cut, timeline, clips: dict, origin: int, warnings: list[str]) -> None:
    rate = cut.rate
    for name, frame in cut.markers:
        marker = otio.schema.Marker(name=name, marked_range=TR(_at(frame - origin, rate), _at(0, rate)))
        if mk.is_request(marker):
            under = [(strip, clip) for strip, clip in clips.values() if strip.start <= frame < strip.end]
            if under:
                strip, clip = max(under, key=lambda pair: pair[0].channel)  # the one on top is the one seen
                media_rate = rate_from_float(clip.source_range.start_time.rate)
                at = strip.media_start + frame - strip.start  # the media frame under the marker
                marker.marked_range = TR(_at(at, media_rate), _at(0, media_rate))
                clip.markers.append(marker)
                continue
            warnings.append(f"marker {name!r} at frame {frame} is on no movie strip: kept on the timeline")
        timeline.tracks.markers.append(marker)


def save(cut: Cut, path: str | Path, media_info: Callable[[Path], probe.MediaInfo] = probe.media_info,
         ) -> tuple[Path, list[str]]:
    """Write the cut as a timeline (any format OTIO writes, by suffix), atomically, keeping ``NAME.bak``."""
    path = Path(path).expanduser().resolve()
    timeline, warnings = to_timeline(cut, media_info)
    doc = tl.TimelineDoc(path, timeline, cut.rate, "otio_json", path.parent)
    return tl.save_timeline(doc, path), warnings


# Import ----------------------------------------------------------------------------------------


def from_timeline(doc: tl.TimelineDoc, media_rate: Callable[[Path], Fraction] = probe.media_rate,
                  ) -> tuple[Cut, list[str]]:
    """The timeline's video tracks as strips on channels 1, 2, ...: what Blender can show of it, and
    warnings about what it leaves out."""
    rate = doc.rate
    ours = doc.timeline.metadata.get(tl.NAMESPACE)
    blender = ours.get("blender") if isinstance(ours, Mapping) else None
    origin = int(blender.get("origin", 1)) if isinstance(blender, Mapping) else 1
    start = doc.timeline.global_start_time
    refs = {id(ref.clip): ref for ref in tl.video_clips(doc)}
    strips: list[Strip] = []
    marks: list[tuple[str, int]] = []
    warnings: list[str] = []
    for index, track in enumerate(doc.timeline.video_tracks()):
        channel = index + 1
        if channel > MAX_CHANNEL:
            warnings.append(f"tracks above {MAX_CHANNEL} are left out (Blender has {MAX_CHANNEL} channels)")
            break
        for item in track:
            if isinstance(item, (otio.schema.Gap, otio.schema.Transition)):
                continue
            name = item.name or f"clip {len(strips) + 1}"
            ref = refs.get(id(item))
            if ref is None or ref.offline:
                warnings.append(f"clip {name!r} is left out: " + (ref.reason if ref else "it is not a clip"))
                continue
            at = origin + _frames(item.range_in_parent().start_time, rate)
            strip, clip_marks = _strip(ref, channel, at, rate, media_rate, warnings)
            strips.append(strip)
            marks.extend(clip_marks)
    for marker in doc.timeline.tracks.markers:
        marks.append((marker.name, origin + _frames(marker.marked_range.start_time, rate)))
    cut = Cut(doc.timeline.name or doc.path.stem, rate, tuple(strips), tuple(marks), origin,
              _frames(start, rate) if start is not None else None)
    return cut, warnings


def _strip(ref: tl.ClipRef, channel: int, start: int, rate: Fraction, media_rate, warnings: list[str]):
    clip = ref.clip
    assert ref.media_path is not None  # the clip is online
    source = clip.trimmed_range()
    available = clip.media_reference.available_range
    media_start_seconds = _seconds(source.start_time) - (_seconds(available.start_time) if available else 0)
    own_rate = media_rate(ref.media_path)
    if own_rate != rate:
        warnings.append(f"clip {ref.name!r}: its media runs at {own_rate} fps and the timeline at {rate}; "
                        "Blender shows it frame for frame")
    made = clip.metadata.get(tl.NAMESPACE)
    metadata = _plain(made) if isinstance(made, Mapping) else {}
    strip = Strip(ref.name, channel, start, _frames(source.duration, rate), "MOVIE", ref.media_path.resolve(),
                  round(media_start_seconds * own_rate), metadata)
    into = _seconds(source.start_time)  # markers are in source time
    marks = [(marker.name, start + round((_seconds(marker.marked_range.start_time) - into) * own_rate))
             for marker in clip.markers
             if marker.name != MARKER_NAME]  # that one only labels generated clips
    return strip, marks


def load(path: str | Path, media_rate: Callable[[Path], Fraction] = probe.media_rate,
         ) -> tuple[Cut, list[str]]:
    """Any timeline OTIO reads, as a cut (see ``from_timeline``)."""
    return from_timeline(tl.open_timeline(path), media_rate)

