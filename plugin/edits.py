"""Placing generated media in a timeline: the new clip after its source, and its sound beneath it.

OTIO's editing algorithms (insert, overwrite) are not bound in Python: the edits are written here on
a track's children list, which ripples later items by construction. Every position is a whole number
of frames at the timeline's rate.

The sound of a generated clip (a continuation of the source's ambience, muxed into the same media)
goes on the audio track that holds the source clip's sound: a clip of the same media under the
source, or else the first audio track; a timeline without one gets a new audio track. In ``insert``
mode that track ripples by the video clip's length (a gap fills what has no sound), so picture and
sound after the cut stay in sync, and so do the timeline's own markers (guides) after the cut.

A track with a ``source_range`` that shows all of it (Kdenlive's export gives every track one) keeps
showing all of it: the range grows with what is inserted, or the new clip would be trimmed away.
"""

from __future__ import annotations

import copy
from fractions import Fraction
from pathlib import Path

import opentimelineio as otio

from magic141.errors import TimelineError
from magic141.rational import rate_from_float

from .timeline import NAMESPACE, ClipRef, RationalTime, TimelineDoc, TimeRange, to_frames, to_seconds

MARKER_NAME = "magic141 generated"
MODES = ("insert", "overwrite", "newtrack")


def _range_at(rate: Fraction, start: int, frames: int) -> TimeRange:
    return TimeRange(RationalTime(start, float(rate)), RationalTime(frames, float(rate)))


def _length(item, rate: Fraction) -> int:
    return to_frames(to_seconds(item.trimmed_range().duration), rate)


def generated_clip(name: str, media_path: Path, frames: int, rate: Fraction, metadata: dict,
                   handles: int = 0, used: int | None = None, marker: bool = True) -> otio.schema.Clip:
    """A clip of media of ``frames`` frames at ``rate`` from 0, using ``used`` frames (default: all
    but the first ``handles``, media under the source's end left for a dissolve) after the handles."""
    used = frames - handles if used is None else used
    clip = otio.schema.Clip(
        name=name,
        media_reference=otio.schema.ExternalReference(target_url=Path(media_path).resolve().as_uri(),
                                                      available_range=_range_at(rate, 0, frames)),
        source_range=_range_at(rate, handles, used),
        metadata={NAMESPACE: copy.deepcopy(metadata)},
    )
    if marker:
        clip.markers.append(otio.schema.Marker(name=MARKER_NAME, marked_range=_range_at(rate, handles, used),
                                               color=otio.schema.MarkerColor.PURPLE,
                                               metadata={NAMESPACE: {"job_id": metadata.get("job_id")}}))
    return clip


def add_generated_clip(doc: TimelineDoc, ref: ClipRef, media_path: Path, frames: int, rate: Fraction,
                       metadata: dict, mode: str = "insert", handles: int = 0,
                       audio_frames: int = 0) -> otio.schema.Clip:
    """Place the generated media after ``ref``: inserted on its track (later items ripple by its
    duration), overwriting what follows on its track, or on a new track above. Returns the new clip.
    Its first ``handles`` media frames stay unused, under the end of ``ref``. When the media's first
    ``audio_frames`` frames have sound, an audio clip of it goes under the new clip (module docstring)."""
    if mode not in MODES:
        raise TimelineError(f"must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
    if frames - handles < 1:
        raise TimelineError(f"the generated media has {frames} frames, {handles} of them handles")
    track = ref.track
    try:
        index = track.index(ref.clip)
    except ValueError as exc:
        raise TimelineError(f"clip {ref.name!r} is no longer on track {track.name!r}") from exc
    clip = generated_clip(f"{ref.name} ext", media_path, frames, rate, metadata, handles)
    end = to_frames(to_seconds(track.range_of_child_at_index(index).end_time_exclusive()), rate)
    sound_frames = min(audio_frames, frames) - handles
    sound = (generated_clip(clip.name, media_path, audio_frames, rate, metadata, handles, sound_frames,
                            marker=False) if sound_frames > 0 else None)
    audio_track = _sound_track_of(doc, ref, rate)
    # Every change is worked out (and refused) before any is made: a refused edit changes nothing.
    children: list[tuple[otio.schema.Track, list]] = []
    new_tracks: list[tuple[otio.schema.Track | None, str, otio.schema.Clip]] = []
    if mode == "insert":
        following = track[index + 1] if index + 1 < len(track) else None
        if isinstance(following, otio.schema.Transition):
            raise TimelineError(f"clip {ref.name!r} is followed by a transition: use overwrite or newtrack "
                                "mode", field="mode")
        children.append((track, list(track)[: index + 1] + [clip] + list(track)[index + 1:]))
    elif mode == "overwrite":
        children.append((track, _overwritten(track, end, [clip], rate)))
    else:
        new_tracks.append((track, otio.schema.TrackKind.Video, clip))
    if mode == "insert" and audio_track is not None:  # ripple the sound with the picture
        silent = frames - handles - max(sound_frames, 0)
        filler = [otio.schema.Gap(source_range=_range_at(rate, 0, silent))] if silent else []
        children.append((audio_track, _inserted(audio_track, end, ([sound] if sound else []) + filler, rate)))
    elif sound is not None and mode == "overwrite" and audio_track is not None:
        children.append((audio_track, _overwritten(audio_track, end, [sound], rate)))
    elif sound is not None:
        new_tracks.append((audio_track, otio.schema.TrackKind.Audio, sound))
    for changed, kept in children:
        shown = _shows_all(changed, rate)
        changed.clear()  # detach every child, so the kept ones can be re-parented
        changed.extend(kept)
        if shown is not None:
            _show_all(changed, shown, rate)
    for beside, kind, item in new_tracks:
        _new_track(doc, beside, kind, end, item, rate)
    if mode == "insert":
        _ripple_guides(doc, end, frames - handles, rate)
    return clip


def _ripple_guides(doc: TimelineDoc, start: int, frames: int, rate: Fraction) -> None:
    """Move the timeline's own markers (guides) from frame ``start`` on right by ``frames``, as the
    insert moved what they sit over: a ``magic141:`` guide keeps continuing the same clip."""
    for marker in doc.timeline.tracks.markers:
        at = marker.marked_range.start_time
        if to_seconds(at) >= Fraction(start) / rate:
            by = RationalTime(float(Fraction(frames) * rate_from_float(at.rate) / rate), at.rate)
            marker.marked_range = TimeRange(at + by, marker.marked_range.duration)


def _content(track: otio.schema.Track, rate: Fraction) -> int:
    return sum(_length(item, rate) for item in track if not isinstance(item, otio.schema.Transition))


def _shows_all(track: otio.schema.Track, rate: Fraction) -> int | None:
    """Frames the track's own ``source_range`` shows past its content, when it starts at 0 and shows
    all of it (Kdenlive writes every track with one of (0, its length)); None otherwise."""
    window = track.source_range
    if window is None or to_seconds(window.start_time) != 0:
        return None
    extra = to_frames(to_seconds(window.duration), rate) - _content(track, rate)
    return extra if extra >= 0 else None


def _show_all(track: otio.schema.Track, extra: int, rate: Fraction) -> None:
    """Grow (or shrink) the track's ``source_range`` with its edited content: clips past its end would
    be cut off (OTIO trims a track's children to it; Kdenlive's import drops them)."""
    window_rate = track.source_range.duration.rate
    frames = (_content(track, rate) + extra) * rate_from_float(window_rate) / rate
    track.source_range = TimeRange(track.source_range.start_time, RationalTime(float(frames), window_rate))


def _sound_track_of(doc: TimelineDoc, ref: ClipRef, rate: Fraction) -> otio.schema.Track | None:
    """The audio track with ``ref``'s sound: one with a clip of its media overlapping it in time, or
    else the first audio track; None when the timeline has no audio track."""
    audio = [t for t in doc.timeline.tracks if t.kind == otio.schema.TrackKind.Audio]
    where = ref.clip.range_in_parent()  # trimmed_ raises past a track's own range
    url = getattr(ref.clip.media_reference, "target_url", None)
    for track in audio:
        for item in track.find_clips(shallow_search=True):
            if (url is not None and getattr(item.media_reference, "target_url", None) == url
                    and item.range_in_parent().intersects(where)):
                return track
    return audio[0] if audio else None


def _new_track(doc: TimelineDoc, beside: otio.schema.Track | None, kind: str, start: int,
               item: otio.schema.Clip, rate: Fraction) -> None:
    """A new track of ``kind`` holding ``item`` at frame ``start``: above ``beside`` for video, below
    it (or after every track) for audio, as editors draw them."""
    stack = doc.timeline.tracks
    number = sum(1 for t in stack if t.name.startswith(NAMESPACE) and t.kind == kind) + 1
    label = "" if kind == otio.schema.TrackKind.Video else " audio"
    track = otio.schema.Track(name=f"{NAMESPACE}{label} {number}", kind=kind)
    if start:
        track.append(otio.schema.Gap(source_range=_range_at(rate, 0, start)))
    track.append(item)
    stack.insert(stack.index(beside) + 1 if beside is not None else len(stack), track)


def _inserted(track: otio.schema.Track, start: int, items: list, rate: Fraction) -> list:
    """``track``'s children with ``items`` inserted at frame ``start``, splitting the item there (later
    items ripple); a track that ends earlier is extended with a gap first."""
    kept: list = []
    position, placed = 0, False
    for item in list(track):
        if isinstance(item, otio.schema.Transition):
            if position == start and not placed:
                raise TimelineError(f"a transition on track {track.name!r} is where the sound goes: use "
                                    "overwrite or newtrack mode", field="mode")
            kept.append(item)
            continue
        first = position
        position += _length(item, rate)
        if placed or not first <= start < position:
            kept.append(item)
            continue
        if first < start:  # split: its head stays before the insert, its tail after
            kept.append(_trimmed(item, 0, start - first, rate))
        kept += items
        kept.append(item if first == start else _trimmed(item, start - first, position - start, rate))
        placed = True
    if not placed:
        if position < start:
            kept.append(otio.schema.Gap(source_range=_range_at(rate, 0, start - position)))
        kept += items
    return kept


def _overwritten(track: otio.schema.Track, start: int, items: list, rate: Fraction) -> list:
    """``track``'s children with its frames from ``start``, as long as ``items`` run, replaced by them:
    items there are trimmed, split or removed; a track that ends earlier is extended with a gap."""
    stop = start + sum(_length(item, rate) for item in items)
    kept: list = []
    position = 0
    placed = False
    for item in list(track):
        if isinstance(item, otio.schema.Transition):
            if start <= position <= stop:
                raise TimelineError("a transition touches the range to overwrite: use insert or newtrack "
                                    "mode", field="mode")
            kept.append(item)
            continue
        first = position
        position += _length(item, rate)
        if position <= start:
            kept.append(item)
            continue
        if first < start:  # its head survives
            kept.append(_trimmed(item, 0, start - first, rate))
        if not placed and first < stop:
            kept += items
            placed = True
        if position > stop:  # its tail (or all of it) survives
            kept.append(item if first >= stop else _trimmed(item, stop - first, position - stop, rate))
    if not placed:
        if position < start:
            kept.append(otio.schema.Gap(source_range=_range_at(rate, 0, start - position)))
        kept += items
    return kept


def _trimmed(item, offset: int, length: int, rate: Fraction):
    piece = item.clone()
    source = item.trimmed_range()
    item_rate = source.start_time.rate
    scale = rate_from_float(item_rate) / rate  # item frames per timeline frame

    def frames(count: int) -> RationalTime:
        return RationalTime(float(count * scale), item_rate)

    piece.source_range = TimeRange(source.start_time + frames(offset), frames(length))
    return piece
