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
from magic141.protocol import DEFAULT_MODEL, JobResult, JobSpec, Source, clip_record, model_field, output_name

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

    def describe(self) -> str:
        rate = self.start.rate
        timecode = otio.opentime.to_timecode(self.timeline_start + self.start, rate)
        return (f"{self.clip_name!r} landed on track {self.track_name} at {timecode} (frame "
                f"{self.start.to_frames()}), {self.duration.to_frames()} frames; timeline saved to "
                f"{self.timeline}; media {self.media}")


def media_dir_for(timeline: Path) -> Path:
    """Where generated media for a timeline goes: ``NAME_magic141/`` beside it."""
    return timeline.parent / f"{timeline.stem}_magic141"


def job_spec(ref: tl.ClipRef, frame: int | None, *, prompt: str, seconds: Fraction, rate: Fraction,
             media_dir: Path, job_id: str, seed: int = 0, model: str = DEFAULT_MODEL, quant: str = "none",
             steps: int | None = None, codec: str = "h264", color_match: float = 1.0) -> JobSpec:
    """The engine job that continues ``ref`` from ``frame`` at the timeline's rate, or (frame None)
    makes a clip from the prompt alone to go after ``ref``."""
    if frame is None:
        source, kind = Source("none"), "text"
    else:
        if ref.media_path is None or ref.offline:
            raise TimelineError(f"clip {ref.name!r} is offline: {ref.reason}")
        source, kind = Source("media", str(ref.media_path.resolve()), tl.media_seconds(ref, frame)), "ext"
    return JobSpec(
        source=source, prompt=prompt, seconds=seconds, fps=rate, seed=seed, model=model_field(model),
        quant=quant, steps=steps, codec=codec, output_dir=str(media_dir.resolve()),
        output_name=output_name(ref.name, kind, job_id, codec), color_match=color_match,
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
) -> ExtendResult:
    """Everything after the editor's choices: check them, run the job, edit and save the timeline."""
    if mode not in tl.MODES:
        raise InvalidInput(f"must be one of {', '.join(tl.MODES)}, got {mode!r}", field="mode")
    doc = tl.open_timeline(timeline)
    ref = tl.find_clip(doc, clip)
    frame = tl.last_frame(ref) if at is None else at
    out = Path(out) if out is not None else Path(timeline)
    tl.check_writable(out)
    job_id = uuid.uuid4().hex[:12]
    spec = job_spec(ref, frame, prompt=prompt, seconds=seconds, rate=doc.rate,
                    media_dir=media_dir_for(out), job_id=job_id, seed=seed, model=model,
                    quant=quant, steps=steps, color_match=color_match)
    result = run_job(job_id, spec)
    metadata = clip_record(job_id, spec, result, source_clip=ref.name, source_frame=frame)
    new_clip = tl.add_generated_clip(doc, ref, Path(result.path), result.frames, doc.rate, metadata, mode)
    saved = tl.save_timeline(doc, out)
    placed = new_clip.range_in_parent()
    origin = doc.timeline.global_start_time or otio.opentime.RationalTime(0, float(doc.rate))
    return ExtendResult(timeline=saved, media=Path(result.path), clip_name=new_clip.name,
                        track_name=new_clip.parent().name, start=placed.start_time, timeline_start=origin,
                        duration=placed.duration, job_id=job_id)
