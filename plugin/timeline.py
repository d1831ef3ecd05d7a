"""Timelines through OpenTimelineIO: open, find clips and their media, map time exactly, edit, save.

Never imports torch, PyAV or numpy at import time (the OTIO markers hook imports this module on
every OTIO read): frame grabs import ``engine.media`` when they run. Time stays rational: OTIO stores
a rate as a float, so every rate read from a timeline goes through ``rate_from_float``
(23.976023976... -> 24000/1001) and every duration becomes a ``Fraction`` of seconds before any
arithmetic.

Traps avoided:
- A relative ``target_url`` is relative to the timeline file, not the working directory; and it
  must be re-based when the timeline is saved into another folder.
- ``file://`` URLs are percent-encoded (spaces, non-ASCII names): decode them with
  ``url2pathname``, never by stripping the scheme.
- ``.otioz`` media lives inside the zip: it is extracted to a private folder so PyAV can read it,
  and saving as ``.otioz`` bundles every file again, the generated ones included.

The edits (placing generated clips) are in ``edits``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TypeAlias
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import opentimelineio as otio

from magic141 import atomic
from magic141.errors import Magic141Error, TimelineError
from magic141.rational import rate_from_float

RationalTime: TypeAlias = otio.opentime.RationalTime
TimeRange: TypeAlias = otio.opentime.TimeRange

NAMESPACE = "magic141"  # clip.metadata[NAMESPACE] holds how a generated clip was made
BUNDLES = ("otioz", "otiod")  # adapters that carry the media: written with absolute file URLs


def to_seconds(time: RationalTime) -> Fraction:
    return Fraction(time.value) / rate_from_float(time.rate)


def to_frames(seconds: Fraction, rate: Fraction) -> int:
    """A whole number of frames; timelines place clips on frame boundaries, so round to nearest."""
    return round(seconds * rate)


@dataclass
class TimelineDoc:
    path: Path  # the file (or .otiod folder) it was opened from
    timeline: otio.schema.Timeline
    rate: Fraction  # the timeline's frame rate, exact
    adapter: str  # the OTIO adapter that read it
    media_root: Path  # relative media URLs resolve against this folder


@dataclass(frozen=True)
class ClipRef:
    clip: otio.schema.Clip
    track: otio.schema.Track
    index: int  # among the timeline's video clips
    name: str
    media_path: Path | None
    offline: bool
    reason: str  # why the clip is offline; "" when online


# Opening -------------------------------------------------------------------------------------


def _adapter_for(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    try:
        return otio.adapters.from_filepath(str(path)).name
    except Exception as exc:  # OTIO raises its own NoKnownAdapterForExtensionError
        known = sorted({s for a in otio.plugins.ActiveManifest().adapters for s in a.suffixes})
        raise TimelineError(f"cannot open .{suffix} timelines: OTIO knows "
                            f"{', '.join('.' + s for s in known)} "
                            "(install OpenTimelineIO-Plugins for EDL, FCP XML, AAF, ...)") from exc


def open_timeline(path: str | os.PathLike) -> TimelineDoc:
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise TimelineError(f"timeline {path} does not exist")
    adapter = _adapter_for(path)
    media_root = path.parent
    try:
        if adapter == "otioz":
            media_root = Path(tempfile.mkdtemp(prefix="magic141-otioz-"))
            result = otio.adapters.read_from_file(str(path), extract_to_directory=str(media_root))
        else:
            if adapter == "otiod":
                media_root = path
            result = otio.adapters.read_from_file(str(path), adapter_name=adapter)
    except Exception as exc:  # adapters raise anything from JSON to zip errors
        raise TimelineError(f"timeline {path} cannot be read: {exc}") from exc
    if isinstance(result, otio.schema.SerializableCollection):  # e.g. AAF with several sequences
        timelines = list(result.find_children(descended_from_type=otio.schema.Timeline, shallow_search=True))
        result = timelines[0] if timelines else None
    if not isinstance(result, otio.schema.Timeline):
        raise TimelineError(f"{path} holds no timeline")
    return TimelineDoc(path, result, _timeline_rate(result), adapter, media_root)


def _timeline_rate(timeline: otio.schema.Timeline) -> Fraction:
    if timeline.global_start_time is not None:
        return rate_from_float(timeline.global_start_time.rate)
    for clip in timeline.find_clips():
        return rate_from_float(clip.trimmed_range().duration.rate)
    return Fraction(24)


def _media_path(doc: TimelineDoc, clip: otio.schema.Clip) -> tuple[Path | None, str]:
    reference = clip.media_reference
    if not isinstance(reference, otio.schema.ExternalReference) or not reference.target_url:
        return None, "it has no media reference"
    url = reference.target_url
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = Path(url2pathname(unquote(parts.path) if parts.netloc in ("", "localhost") else url[5:]))
    elif parts.scheme and len(parts.scheme) > 1:  # "C:" is a drive, not a scheme
        return None, f"its media {url} is not a local file"
    else:
        path = Path(unquote(url)) if "%" in url else Path(url)
        if not path.is_absolute():
            path = doc.media_root / path
    if not path.is_file():
        return path, f"its media {path} is missing"
    return path, ""


def video_clips(doc: TimelineDoc) -> list[ClipRef]:
    refs: list[ClipRef] = []
    for track in doc.timeline.video_tracks():
        for clip in track.find_clips(shallow_search=True):
            path, reason = _media_path(doc, clip)
            refs.append(ClipRef(clip, track, len(refs), clip.name or f"clip {len(refs)}", path, bool(reason),
                                reason))
    return refs


def find_clip(doc: TimelineDoc, name_or_index: str | int) -> ClipRef:
    refs = video_clips(doc)
    if not refs:
        raise TimelineError(f"{doc.path.name} has no video clips")
    named = [ref for ref in refs if ref.name == name_or_index]
    if len(named) > 1:
        raise TimelineError(f"{len(named)} clips are named {name_or_index!r}: give the clip's index instead")
    if named:
        return named[0]
    if isinstance(name_or_index, int) or str(name_or_index).isdigit():
        index = int(name_or_index)
        if index < len(refs):
            return refs[index]
    listing = ", ".join(f"{ref.index}: {ref.name!r}" for ref in refs)
    raise TimelineError(f"no clip {name_or_index!r} in {doc.path.name}; its video clips are {listing}")


# Time -----------------------------------------------------------------------------------------


def clip_frames(ref: ClipRef, rate: Fraction | None = None) -> int:
    """The clip's duration in frames of ``rate`` (default: its own source rate)."""
    duration = ref.clip.trimmed_range().duration
    return to_frames(to_seconds(duration), rate or rate_from_float(duration.rate))


def last_frame(ref: ClipRef) -> int:
    return clip_frames(ref) - 1


def media_seconds(ref: ClipRef, frame: int) -> Fraction:
    """Seconds from the media file's first frame to the clip's ``frame`` (counted from the clip's
    first frame at its source rate): ``source_range`` start + frame - ``available_range`` start."""
    frames = clip_frames(ref)
    if isinstance(frame, bool) or not isinstance(frame, int) or not 0 <= frame < frames:
        raise TimelineError(f"frame {frame} is outside clip {ref.name!r}, which has frames 0 to {frames - 1}")
    source = ref.clip.trimmed_range().start_time
    rate = rate_from_float(source.rate)
    available = ref.clip.media_reference.available_range
    media_start = to_seconds(available.start_time) if available is not None else Fraction(0)
    seconds = to_seconds(source) + Fraction(frame) / rate - media_start
    if seconds < 0 or (available is not None and seconds >= to_seconds(available.duration)):
        raise TimelineError(f"clip {ref.name!r} frame {frame} lies outside its media's available range")
    return seconds


def grab_frame(ref: ClipRef, frame: int):
    """The picture at ``frame`` of the clip, decoded frame-accurately from its media (a PIL image)."""
    from magic141.engine import media  # PyAV and numpy only, no torch

    if ref.offline:
        raise TimelineError(f"clip {ref.name!r} is offline: {ref.reason}")
    try:
        return media.grab_frame(ref.media_path, media_seconds(ref, frame))
    except Magic141Error as exc:
        raise TimelineError(f"clip {ref.name!r}: {exc}") from exc


# Saving ---------------------------------------------------------------------------------------


def _writer_for(path: Path) -> str:
    adapter = otio.adapters.from_filepath(str(path))
    if not adapter.has_feature("write"):
        raise TimelineError(f"OTIO's {adapter.name} adapter cannot write {path.suffix} files")
    return adapter.name


def _rebased(doc: TimelineDoc, target_dir: Path, absolute: bool) -> otio.schema.Timeline:
    """A copy whose relative media URLs resolve from ``target_dir`` (absolute file URLs if asked)."""
    timeline = doc.timeline.clone()
    for clip in timeline.find_clips():
        reference = clip.media_reference
        if not isinstance(reference, otio.schema.ExternalReference) or not reference.target_url:
            continue
        parts = urlsplit(reference.target_url)
        if parts.scheme and len(parts.scheme) > 1 and parts.scheme != "file":
            continue
        path, _ = _media_path(doc, clip)
        if path is None:
            continue
        if absolute:
            reference.target_url = path.resolve().as_uri()
        elif not parts.scheme and not Path(reference.target_url).is_absolute():
            reference.target_url = Path(os.path.relpath(path, target_dir)).as_posix()
    return timeline


def save_timeline(doc: TimelineDoc, out: str | os.PathLike | None = None) -> Path:
    """Write atomically; the previous file is kept as ``NAME.bak``. Saved in the format of ``out``'s
    suffix (default: the file it came from); a format OTIO cannot write is saved as ``.otio`` beside it."""
    target = Path(out).expanduser().resolve() if out is not None else doc.path
    try:
        adapter = _writer_for(target)
    except (otio.exceptions.OTIOError, TimelineError):  # no adapter for the suffix, or a read-only one
        target = target.with_suffix(".otio")
        adapter = "otio_json"
    timeline = _rebased(doc, target.parent, absolute=adapter in BUNDLES)
    if adapter == "otiod":
        _save_folder(timeline, target)
        return target
    _make_folder(target)
    try:
        with atomic.replacing(target) as temp:
            if adapter == "otioz":
                temp.unlink()  # OTIO's otioz writer refuses to write over any file, even an empty one
            _write(timeline, temp, adapter, target.name)
            if target.exists():
                _keep_backup(target)
    except OSError as exc:
        raise _unwritable(target, exc) from exc
    return target


def _write(timeline: otio.schema.Timeline, path: Path, adapter: str, name: str) -> None:
    options = {"media_policy": "ErrorIfNotFile"} if adapter in BUNDLES else {}
    try:
        otio.adapters.write_to_file(timeline, str(path), adapter_name=adapter, **options)
    except Exception as exc:  # adapters raise anything from OTIOError to XML and zip errors
        raise TimelineError(f"cannot write {name}: {exc}") from exc


def _save_folder(timeline: otio.schema.Timeline, target: Path) -> None:
    """An ``.otiod`` bundle (a folder): written whole beside it, then moved in; the old one becomes
    ``NAME.bak`` (folders cannot be replaced in one step)."""
    staging = _staging_dir(target)
    try:
        written = staging / target.name
        _write(timeline, written, "otiod", target.name)
        backup = _backup_of(target)
        try:
            if target.exists():
                if backup.is_dir():
                    shutil.rmtree(backup)
                os.replace(target, backup)
            os.replace(written, target)
        except OSError as exc:
            raise _unwritable(target, exc) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _backup_of(target: Path) -> Path:
    return target.with_name(target.name + ".bak")


def _keep_backup(target: Path) -> None:
    backup = _backup_of(target)
    if backup.is_dir():
        shutil.rmtree(backup)
    shutil.copy2(target, backup)


def _unwritable(target: Path, exc: OSError) -> TimelineError:
    return TimelineError(f"cannot save {target}: {exc.strerror or exc} (read-only storage? save it "
                         "elsewhere)", field="out")


def _make_folder(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # `--out renders/cut.otio` makes renders/
    except OSError as exc:
        raise _unwritable(target, exc) from exc


def _staging_dir(target: Path) -> Path:
    _make_folder(target)
    try:
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise _unwritable(target, exc) from exc


def check_writable(target: str | os.PathLike) -> None:
    """Fail now, before minutes of generation, if ``target`` (a timeline to save) cannot be written."""
    shutil.rmtree(_staging_dir(Path(target).expanduser().resolve()))
