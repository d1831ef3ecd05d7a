"""OTIO timelines as MLT XML: what ``melt``, Shotcut and Kdenlive (as a library clip) play.

Written here because no maintained OTIO -> MLT adapter installs from PyPI: ``otio-mlt-adapter``
0.3.0 targets OTIO 0.12/0.13 and Python <= 3.8, and OpenTimelineIO-Plugins does not bundle one.
It is registered with OTIO as the ``magic141_mlt`` adapter (suffix ``.mlt``), so
``otioconvert -i cut.otio -o cut.mlt`` and ``save_timeline(doc, "cut.mlt")`` both use it.

The document, bottom to top::

    profile      the timeline's exact rate (24000/1001 as frame_rate_num/den) and frame size
    producers    one avformat producer per media file (plus a black colour producer)
    playlists    one per OTIO track: <entry in out> per clip, <blank length> per gap
    tractor      track 0 = black background, then the OTIO tracks in stack order; a "mix"
                 transition sums each audio track into track 0

Traps avoided:
- MLT frame numbers are frames of the *profile* rate, counted from the media file's first frame;
  OTIO source ranges are in the media's own clock and may start at a timecode
  (``available_range.start_time`` 01:00:00:00). Entries go through exact seconds, then frames.
- ``out`` is inclusive in MLT; a clip of N frames is ``in``..``in + N - 1``.
- Without transitions MLT shows the top-most track that is not blank at each frame, which is
  OTIO's stacking; the black background only shows where every track has a gap.
- ``file://`` URLs are percent-decoded to paths (FFmpeg would read ``%20`` literally); relative
  paths are kept relative: MLT resolves them against the XML file's folder, as OTIO does.
- Video tracks are written with their audio hidden: in an OTIO timeline a clip's sound lives on
  audio tracks, and playing both would double it. OTIO transitions become cuts (timing is kept).
- ``LC_NUMERIC="C"`` so a German locale does not read "2,5" for 2.5 in MLT.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname
from xml.etree import ElementTree as ET

import opentimelineio as otio

from magic141 import atomic
from magic141.errors import TimelineError
from magic141.rational import rate_from_float

DEFAULT_SIZE = (1920, 1080)


def _seconds(time: otio.opentime.RationalTime) -> Fraction:
    return Fraction(time.value) / rate_from_float(time.rate)


def _timeline_rate(timeline: otio.schema.Timeline) -> Fraction:
    if timeline.global_start_time is not None:
        return rate_from_float(timeline.global_start_time.rate)
    for clip in timeline.find_clips():
        return rate_from_float(clip.trimmed_range().duration.rate)
    raise TimelineError("the timeline has no clips and no start time: its frame rate is unknown")


def resource_path(url: str, base: Path | None) -> tuple[str, Path | None]:
    """``(text for MLT's resource, local file to probe or None)`` for a media URL."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = Path(url2pathname(unquote(parts.path)))
        return str(path), path
    if parts.scheme and len(parts.scheme) > 1:  # http:, s3:, ...: MLT/FFmpeg may still read it
        return url, None
    text = unquote(url) if "%" in url else url
    path = Path(text)
    if not path.is_absolute() and base is not None:
        path = base / path
    return text, path


def _frame_size(timeline: otio.schema.Timeline, base: Path | None) -> tuple[int, int]:
    """The first video clip's media size (PyAV probe), or 1920x1080 when none can be read."""
    import av  # PyAV only; no torch

    for track in timeline.video_tracks():
        for clip in track.find_clips():
            reference = clip.media_reference
            if not isinstance(reference, otio.schema.ExternalReference) or not reference.target_url:
                continue
            path = resource_path(reference.target_url, base)[1]
            if path is None or not path.is_file():
                continue
            try:
                with av.open(str(path)) as container:
                    context = container.streams.video[0].codec_context
                    return context.width, context.height
            except (av.FFmpegError, IndexError, OSError):
                continue
    return DEFAULT_SIZE


def _frames(seconds: Fraction, rate: Fraction) -> int:
    return round(seconds * rate)


def _property(parent: ET.Element, name: str, value) -> None:
    ET.SubElement(parent, "property", name=name).text = str(value)


class _Writer:
    def __init__(self, timeline: otio.schema.Timeline, base: Path | None, width: int | None,
                 height: int | None) -> None:
        self.timeline = timeline
        self.base = base
        self.rate = _timeline_rate(timeline)
        size = (width, height) if width and height else _frame_size(timeline, base)
        self.width, self.height = int(size[0]), int(size[1])
        if self.width <= 0 or self.height <= 0:
            raise TimelineError(f"frame size must be positive, got {self.width}x{self.height}")
        self.producers: dict[str, str] = {}  # resource -> producer id
        self.root = ET.Element("mlt", LC_NUMERIC="C", version="7.0.0", producer="main",
                               title=timeline.name or "magic141")

    def build(self) -> ET.Element:
        rate = self.rate
        aspect = Fraction(self.width, self.height)
        ET.SubElement(self.root, "profile", description=f"{self.width}x{self.height} {rate} fps",
                      width=str(self.width), height=str(self.height), progressive="1",
                      sample_aspect_num="1", sample_aspect_den="1",
                      display_aspect_num=str(aspect.numerator), display_aspect_den=str(aspect.denominator),
                      frame_rate_num=str(rate.numerator), frame_rate_den=str(rate.denominator),
                      colorspace="709")
        tracks = list(self.timeline.tracks)
        playlists = []
        for number, track in enumerate(tracks, start=1):
            if not isinstance(track, otio.schema.Track):
                raise TimelineError(f"the timeline's stack holds a {type(track).__name__}, not a track")
            playlists.append(self._playlist(track, number))
        total = max([length for _, length in playlists] + [1])
        whole = {"in": "0", "out": str(total - 1)}
        black = ET.Element("producer", whole, id="black")
        _property(black, "length", total)
        _property(black, "resource", "#000000")
        _property(black, "mlt_service", "color")
        self.root.insert(1, black)
        background = ET.Element("playlist", id="background")
        ET.SubElement(background, "entry", whole, producer="black")
        self.root.insert(2, background)
        for element, _ in playlists:
            self.root.append(element)
        tractor = ET.SubElement(self.root, "tractor", whole, id="main")
        _property(tractor, "shotcut", 1)  # Shotcut opens it as a timeline, not as a clip
        multitrack = ET.SubElement(tractor, "multitrack")
        ET.SubElement(multitrack, "track", producer="background")
        for track, (element, _) in zip(tracks, playlists, strict=True):
            audio = track.kind == otio.schema.TrackKind.Audio
            hide = "both" if not track.enabled else ("video" if audio else "audio")
            ET.SubElement(multitrack, "track", producer=element.attrib["id"], hide=hide)
        for number, track in enumerate(tracks, start=1):
            if track.kind == otio.schema.TrackKind.Audio and track.enabled:
                mix = ET.SubElement(tractor, "transition", id=f"mix{number}")
                for name, value in (("mlt_service", "mix"), ("a_track", 0), ("b_track", number),
                                    ("always_active", 1), ("sum", 1)):
                    _property(mix, name, value)
        return self.root

    def _producer(self, resource: str) -> str:
        if resource not in self.producers:
            ident = f"media{len(self.producers)}"
            element = ET.Element("producer", id=ident)
            _property(element, "resource", resource)
            _property(element, "mlt_service", "avformat")
            self.root.insert(1 + len(self.producers), element)
            self.producers[resource] = ident
        return self.producers[resource]

    def _playlist(self, track: otio.schema.Track, number: int) -> tuple[ET.Element, int]:
        audio = track.kind == otio.schema.TrackKind.Audio
        element = ET.Element("playlist", id=f"{'A' if audio else 'V'}{number}")
        _property(element, "shotcut:name", track.name or element.get("id"))
        _property(element, "shotcut:audio" if audio else "shotcut:video", 1)
        position = 0  # frames written so far
        for item in track:
            if isinstance(item, otio.schema.Transition):
                continue  # overlaps its neighbours and takes no track time: a cut
            if not isinstance(item, (otio.schema.Clip, otio.schema.Gap)):
                raise TimelineError(f"track {track.name!r} holds a nested {type(item).__name__} "
                                    f"({item.name!r}): flatten it first (otio.algorithms.flatten_stack)")
            # Place by the exact end time, so rounding never accumulates along the track.
            end = _frames(_seconds(item.range_in_parent().end_time_exclusive()), self.rate)
            length = end - position
            if length <= 0:
                continue
            entry = self._entry(item, length) if isinstance(item, otio.schema.Clip) and item.enabled else None
            if entry is None:
                ET.SubElement(element, "blank", length=str(length))
                if isinstance(item, otio.schema.Clip):
                    element.append(ET.Comment(f" offline or disabled: {item.name} "))
            else:
                element.append(entry)
            position = end
        return element, position

    def _entry(self, clip: otio.schema.Clip, length: int) -> ET.Element | None:
        reference = clip.media_reference
        if not isinstance(reference, otio.schema.ExternalReference) or not reference.target_url:
            return None
        resource, _ = resource_path(reference.target_url, self.base)
        source = clip.trimmed_range()
        available = reference.available_range
        media_start = _seconds(available.start_time) if available else Fraction(0)
        first = _frames(_seconds(source.start_time) - media_start, self.rate)
        if first < 0:
            raise TimelineError(f"clip {clip.name!r} starts before its media's available range")
        entry = ET.Element("entry", {"in": str(first), "out": str(first + length - 1)},
                           producer=self._producer(resource))
        _property(entry, "magic141:clip", clip.name)
        return entry


def to_mlt(timeline: otio.schema.Timeline, *, base: str | os.PathLike | None = None,
           width: int | None = None, height: int | None = None) -> str:
    """The timeline as an MLT XML document. ``base`` is the folder relative media URLs resolve
    against (for probing the frame size); ``width``/``height`` override the probed size."""
    if not isinstance(timeline, otio.schema.Timeline):
        raise TimelineError(f"only a Timeline can be written as MLT, got {type(timeline).__name__}")
    root = _Writer(timeline, Path(base) if base is not None else None, width, height).build()
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_mlt(timeline: otio.schema.Timeline, path: str | os.PathLike, *, width: int | None = None,
              height: int | None = None) -> Path:
    """Write atomically, mode 0666 less the umask like any other file. Relative media URLs must
    already be relative to ``path``'s folder (``timeline.save_timeline`` rebases them)."""
    path = Path(path)
    text = to_mlt(timeline, base=path.parent, width=width, height=height)
    try:
        return atomic.write_text(path, text)
    except OSError as exc:
        raise TimelineError(f"cannot write {path}: {exc.strerror or exc}") from exc
