"""Extend a clip of a timeline: pick clip + frame -> job spec -> engine -> media -> timeline edit.

The flow never imports torch itself: the job runs through ``run_job(job_id, spec) -> result``
(a ``protocol.JobSpec`` in, a ``protocol.JobResult`` out), which is the engine service's client for
the panel and an in-process ``JobRunner`` for the ``magic141 extend`` command.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import opentimelineio as otio

from magic141.errors import InvalidInput, TimelineError
from magic141.protocol import (
    DEFAULT_AMBIENCE_SECONDS,
    DEFAULT_MODEL,
    EXTEND_REPORT_VERSION,
    JobResult,
    JobSpec,
    Source,
    clip_record,
    model_field,
    output_name,
)

from . import edits
from . import timeline as tl


@dataclass(frozen=True)
class ExtendResult:
    timeline: Path  # where the edited timeline was saved
    media: Path  # the generated clip's media
    clip_name: str
    track_name: str
    start: otio.opentime.RationalTime  # where the new clip starts on its track
    timeline_start: otio.opentime.RationalTime  # the timeline's global start (for timecode)
    duration: otio.opentime.RationalTime
    job_id: str
    result: JobResult
    handles: int = 0
    seam: dict | None = None  # seam.seam_score at the cut, and of the source's own last two frames

    def timecode(self) -> str:
        return otio.opentime.to_timecode(self.timeline_start + self.start, self.start.rate)

    def describe(self) -> str:
        text = (f"{self.clip_name!r} landed on track {self.track_name} at {self.timecode()} (frame "
                f"{self.start.to_frames()}), {self.duration.to_frames()} frames; timeline saved to "
                f"{self.timeline}; media {self.media}")
        if self.seam is not None:
            cut = self.seam["cut"]
            text += f"; seam: CIEDE2000 {cut['ciede2000']:.2f}, PSNR {cut['psnr']:.1f} dB"
        sound = self.result.settings.get("ambience")
        if sound:
            text += f"; sound: {sound}"
        return text

    def to_json(self) -> dict:
        """What ``magic141 extend --json`` prints (README, "Extend a clip of a timeline")."""
        return {
            "version": EXTEND_REPORT_VERSION, "timeline": str(self.timeline), "media": str(self.media),
            "clip": self.clip_name, "track": self.track_name, "job_id": self.job_id,
            "start_frame": self.start.to_frames(), "timecode": self.timecode(),
            "frames": self.duration.to_frames(), "handles": self.handles, "seam": self.seam,
            "result": self.result.to_json(),
        }


def media_dir_for(timeline: Path) -> Path:
    """Where generated media for a timeline goes: ``NAME_magic141/`` beside it."""
    return timeline.parent / f"{timeline.stem}_magic141"


def seam_scores(ref: tl.ClipRef, frame: int, media: Path, placed_frame: int, rate: Fraction) -> dict:
    """The cut's seam score (source ``frame`` -> the media's ``placed_frame``), beside the same score
    for the source's own step into ``frame``: a cut scoring like that one does not show."""
    import numpy as np

    from magic141.engine import media as video
    from magic141.engine.seam import seam_score

    last = np.asarray(tl.grab_frame(ref, frame))
    scores = {"cut": seam_score(last, np.asarray(video.grab_frame(media, Fraction(placed_frame) / rate)))}
    if frame > 0:
        scores["source_step"] = seam_score(np.asarray(tl.grab_frame(ref, frame - 1)), last)
    return scores


def job_spec(ref: tl.ClipRef, frame: int | None, *, prompt: str, seconds: Fraction, rate: Fraction,
             media_dir: Path, job_id: str, seed: int = 0, model: str = DEFAULT_MODEL, quant: str = "none",
             steps: int | None = None, codec: str | None = None, color_match: float = 1.0,
             ambience: float = DEFAULT_AMBIENCE_SECONDS, handles: int = 0,
             loras: tuple[tuple[str, float, str], ...] = ()) -> JobSpec:
    """The engine job that continues ``ref`` after ``frame`` at the timeline's rate, or (frame None)
    makes a clip from the prompt alone to go after ``ref``. ``codec`` None: ProRes 422 HQ (10-bit) when
    the source is more than 8-bit, H.264 otherwise.

    With ``handles``, the job continues from ``handles`` frames earlier and runs that much longer, so
    its media starts with that many frames under the source's last ones, for a host's dissolve."""
    if isinstance(handles, bool) or not isinstance(handles, int) or handles < 0:
        raise InvalidInput(f"must be a whole number of frames, 0 or more, got {handles!r}", field="handles")
    if frame is None:
        if handles:
            raise InvalidInput("need a source frame to overlap: a clip from the prompt alone has none",
                               field="handles")
        source, kind = Source("none"), "text"
    else:
        if ref.media_path is None or ref.offline:
            raise TimelineError(f"clip {ref.name!r} is offline: {ref.reason}")
        if handles > frame:
            raise InvalidInput(f"{handles} handle frames need {handles} frames of clip {ref.name!r} before "
                               f"frame {frame}; it has {frame}", field="handles")
        if codec is None:
            from magic141.engine import media  # PyAV only, no torch

            codec = "prores" if media.picture_format(ref.media_path).bit_depth > 8 else "h264"
        start = tl.media_seconds(ref, frame - handles)
        source, kind = Source("media", str(ref.media_path.resolve()), start), "ext"
        seconds += Fraction(handles) / rate
    codec = codec or "h264"
    return JobSpec(
        source=source, prompt=prompt, seconds=seconds, fps=rate, seed=seed, model=model_field(model),
        quant=quant, steps=steps, codec=codec, output_dir=str(media_dir.resolve()),
        output_name=output_name(ref.name, kind, job_id, codec), color_match=color_match,
        ambience=ambience, loras=loras,
    )


def extend_clip(
    timeline: str | Path,
    clip: str,
    *,
    prompt: str,
    seconds: Fraction,
    run_job: Callable[[str, JobSpec], JobResult],
    at: int | None = None,
    mode: str = "insert",
    out: str | Path | None = None,
    seed: int = 0,
    model: str = DEFAULT_MODEL,
    quant: str = "none",
    steps: int | None = None,
    color_match: float = 1.0,
    ambience: float = DEFAULT_AMBIENCE_SECONDS,
    handles: int = 0,
    codec: str | None = None,
    loras: tuple[tuple[str, float, str], ...] = (),
) -> ExtendResult:
    """Everything after the editor's choices: check them, run the job, edit and save the timeline."""
    if mode not in edits.MODES:
        raise InvalidInput(f"must be one of {', '.join(edits.MODES)}, got {mode!r}", field="mode")
    doc = tl.open_timeline(timeline)
    ref = tl.find_clip(doc, clip)
    frame = tl.last_frame(ref) if at is None else at
    out = Path(out) if out is not None else Path(timeline)
    tl.check_writable(out)
    job_id = uuid.uuid4().hex[:12]
    spec = job_spec(ref, frame, prompt=prompt, seconds=seconds, rate=doc.rate,
                    media_dir=media_dir_for(out), job_id=job_id, seed=seed, model=model,
                    quant=quant, steps=steps, color_match=color_match, ambience=ambience,
                    handles=handles, codec=codec, loras=loras)
    result = run_job(job_id, spec)
    metadata = clip_record(job_id, spec, result, source_clip=ref.name, source_frame=frame, handles=handles)
    new_clip = edits.add_generated_clip(doc, ref, Path(result.path), result.frames, doc.rate, metadata, mode,
                                        handles=handles, audio_frames=result.sound_frames)
    saved = tl.save_timeline(doc, out)
    placed = new_clip.range_in_parent()
    origin = doc.timeline.global_start_time or otio.opentime.RationalTime(0, float(doc.rate))
    scores = seam_scores(ref, frame, Path(result.path), handles, doc.rate) if frame is not None else None
    return ExtendResult(timeline=saved, media=Path(result.path), clip_name=new_clip.name,
                        track_name=new_clip.parent().name, start=placed.start_time, timeline_start=origin,
                        duration=placed.duration, job_id=job_id, result=result, handles=handles, seam=scores)
