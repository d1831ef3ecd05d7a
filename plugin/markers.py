"""Marker-driven render queues: clip markers named ``magic141: <prompt>`` become engine jobs.

An editor drops a marker on a clip in any host, names it ``magic141: the camera pushes in
seconds=3 seed=7``, and exports the timeline. ``magic141 queue from-timeline`` turns every such
marker into one job conditioned on the frame under the marker; with ``--apply`` it waits and
puts each result right after its marked clip, the same edit the panel makes.

Grammar of a marker name (case-insensitive prefix, options anywhere after it)::

    magic141: <prompt words> [seconds=S] [seed=N]

``S`` is exact (``2.5`` or ``5/2``). When the name holds only options, the prompt is read from
the marker's comment (hosts such as Resolve keep names short and the long text in a note). A marker
with no name at all is read from its comment (Kdenlive writes its markers' text there only).

Traps avoided:
- A marker's ``marked_range`` is in its clip's *source* time (the media's clock), not in track
  time: the frame in the clip is the marker time minus the clip's trimmed start. Except Kdenlive's
  (``metadata["kdenlive"]``): its exporter writes them from the clip's first frame, and puts every
  marker of a bin clip on every clip of it, so one outside the clip is not on it and makes no job.
- Re-running must not render twice. Job ids are derived from what the marker asks for and where
  it sits in the media (clip name, media file name, source in-point, marker time, prompt,
  seconds, seed, model), never from the clip's position on the track, which the previous run's
  inserts have rippled. The queue's submit is idempotent by id, and a marker whose id is already
  in some clip's ``metadata["magic141"]["job_id"]`` (or in its media file's name, read back with
  ``protocol.job_id_of``, for hosts such as Resolve whose export drops clip metadata) is skipped.
- The spec's output folder follows the timeline file, the id does not: a job that an earlier run
  (perhaps from another copy of the timeline) already queued is reused as it is, never submitted
  again with a different spec (the service would refuse the id as conflicting).
- Everything is checked before anything is submitted: one bad marker leaves the queue untouched.
- Several markers on one clip keep their order on the track: each result goes after the
  results of the same clip's earlier markers, not straight after the clip.
- Results are placed from the end of each track backwards: an overwrite after one clip may trim
  the clips to its right, so those are done first, while the clip it follows is still whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import opentimelineio as otio

from magic141.errors import EngineError, InvalidInput, TimelineError
from magic141.protocol import (
    DEFAULT_MODEL,
    MAX_SECONDS,
    JobResult,
    JobSpec,
    JobState,
    clip_record,
    job_id_of,
    model_field,
)
from magic141.rational import rate_from_float, rational_text

from . import edits
from . import timeline as tl
from .extend import job_spec, media_dir_for

PREFIX = "magic141:"
OPTIONS = ("seconds", "seed")
_PREFIX = re.compile(r"^\s*magic141\s*:", re.IGNORECASE)
_OPTION = re.compile(r"^(seconds|seed)=(.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class MarkerRequest:
    """What one marker asks for; ``None`` means "the command's default"."""

    prompt: str
    seconds: Fraction | None = None
    seed: int | None = None


@dataclass(frozen=True)
class MarkerJob:
    """One marker resolved against its timeline: the job to run and where its result goes."""

    ref: tl.ClipRef
    marker: otio.schema.Marker
    frame: int  # frame in the clip (0 = its first frame) under the marker
    prompt: str
    seconds: Fraction
    seed: int
    job_id: str
    spec: JobSpec
    in_timeline: bool  # a clip with this job id is already in the timeline

    def describe(self) -> str:
        return (f"clip {self.ref.name!r} frame {self.frame}: {self.prompt!r} ({self.seconds} s, "
                f"seed {self.seed})")


# Parsing ---------------------------------------------------------------------------------------


KDENLIVE = "kdenlive"  # the metadata key Kdenlive's OTIO export gives every marker


def label(marker: otio.schema.Marker) -> str:
    """What a marker says: its name, or its comment when it has no name (Kdenlive's markers)."""
    return marker.name or getattr(marker, "comment", "") or ""


def is_request(marker: otio.schema.Marker) -> bool:
    return bool(_PREFIX.match(label(marker)))


def parse_seconds(text: str) -> Fraction:
    """A duration as the markers write it: 3, 2.5 or 5/2 seconds, exact."""
    try:
        value = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise TimelineError(f"seconds={text} is not a number (write 3, 2.5 or 5/2)") from None
    if not 0 < value <= MAX_SECONDS:
        raise TimelineError(f"seconds={text} must be more than 0 and at most {MAX_SECONDS}")
    return value


def _seed(text: str) -> int:
    if not text.strip().isdigit() or int(text) >= 2**63:
        raise TimelineError(f"seed={text} must be a whole number from 0 to 2**63-1")
    return int(text)


def _split(text: str, found: dict[str, str]) -> str:
    """Remove ``key=value`` options from ``text`` into ``found``; return the remaining words."""
    words = []
    for word in text.split():
        option = _OPTION.match(word)
        if option is None:
            words.append(word)
            continue
        key = option.group(1).lower()
        if key in found:
            raise TimelineError(f"{key}= is given twice")
        found[key] = option.group(2)
    return " ".join(words)


def parse_marker(marker: otio.schema.Marker) -> MarkerRequest | None:
    """The request in a ``magic141:`` marker, ``None`` for any other marker.

    Raises ``TimelineError`` (naming the marker) when the name is ours but malformed."""
    return _request(marker) if is_request(marker) else None


def _request(marker: otio.schema.Marker) -> MarkerRequest:
    """The request in a marker ``is_request`` accepted."""
    name = label(marker)
    prefix = _PREFIX.match(name)
    found: dict[str, str] = {}
    try:
        prompt = _split(name[prefix.end() if prefix else 0:], found)
        if not prompt and marker.name:  # the prompt may live in the marker's note
            prompt = _split(getattr(marker, "comment", "") or "", found)
        if not prompt:
            raise TimelineError("it has no prompt (write magic141: <what happens next>)")
        return MarkerRequest(
            prompt=prompt,
            seconds=parse_seconds(found["seconds"]) if "seconds" in found else None,
            seed=_seed(found["seed"]) if "seed" in found else None,
        )
    except TimelineError as exc:
        raise TimelineError(f"marker {name!r}: {exc}") from None


def annotate(timeline) -> int:
    """Record each ``magic141:`` marker's parsed request (or why it is wrong) in its metadata.

    The OTIO hook runs this after every read, so any OTIO tool shows what Magic141 will do. It
    never raises for a bad marker: other tools reading the timeline must not break on our syntax.
    Returns how many markers it annotated."""
    count = 0
    find = getattr(timeline, "find_clips", None)
    if find is None:
        return 0
    stack = getattr(timeline, "tracks", None)
    everywhere = [marker for clip in find() for marker in clip.markers] + list(getattr(stack, "markers", []))
    for marker in everywhere:
        if not is_request(marker):
            continue
        try:
            request = _request(marker)
            note = {"prompt": request.prompt,
                    "seconds": None if request.seconds is None else rational_text(request.seconds),
                    "seed": request.seed}
        except TimelineError as exc:
            note = {"error": str(exc)}
        marker.metadata[tl.NAMESPACE] = note
        count += 1
    return count


# Jobs from a timeline --------------------------------------------------------------------------


def _seconds_of(time: otio.opentime.RationalTime) -> Fraction:
    return Fraction(time.value) / rate_from_float(time.rate)


def _frame_in_clip(ref: tl.ClipRef, marker: otio.schema.Marker) -> int | None:
    """The clip's frame under ``marker``; None for a Kdenlive marker the clip does not show."""
    source = ref.clip.trimmed_range()
    rate = rate_from_float(source.duration.rate)
    offset = _seconds_of(marker.marked_range.start_time)
    kdenlive = KDENLIVE in marker.metadata  # timed from the clip's first frame (module docstring)
    if not kdenlive:
        offset -= _seconds_of(source.start_time)
    frame = round(offset * rate)
    frames = tl.clip_frames(ref)
    if not 0 <= frame < frames:
        if kdenlive:
            return None
        raise TimelineError(f"marker {label(marker)!r} on clip {ref.name!r} lies outside the clip (frame "
                            f"{frame}; the clip shows frames 0 to {frames - 1}): move it onto the clip")
    return frame


def generated_job_ids(doc: tl.TimelineDoc) -> set[str]:
    """Job ids of every generated clip already in the timeline (from its metadata or media name)."""
    ids = set()
    for clip in doc.timeline.find_clips():
        made = clip.metadata.get(tl.NAMESPACE)
        if made is not None and hasattr(made, "get") and made.get("job_id"):
            ids.add(str(made.get("job_id")))
        named = job_id_of(getattr(clip.media_reference, "target_url", None) or "")
        if named:
            ids.add(named)
    return ids


def job_id(identity: dict) -> str:
    """A stable id (the queue accepts ``[A-Za-z0-9_.-]{1,64}``) for a marker's request."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"mk-{digest[:20]}"


def _under(doc: tl.TimelineDoc, guide: otio.schema.Marker) -> tuple[tl.ClipRef, int]:
    """The clip a timeline marker (a guide) sits on, and the clip's frame under it. The top clip wins:
    the last video track that has one there, as OTIO stacks tracks; for Kdenlive's guides the first,
    as its exporter writes the top track first."""
    at = _seconds_of(guide.marked_range.start_time)
    under = []
    for ref in tl.video_clips(doc):
        try:
            shown = ref.clip.trimmed_range_in_parent()
        except ValueError:  # past its track's own range: not shown
            continue
        if shown is None:
            continue
        start, end = _seconds_of(shown.start_time), _seconds_of(shown.end_time_exclusive())
        if start <= at < end:
            under.append((ref, at - start))
    if not under:
        raise TimelineError(f"marker {label(guide)!r} at frame {round(at * doc.rate)} of the timeline is on "
                            "no clip: move it over the clip to continue")
    ref, into = under[0] if KDENLIVE in guide.metadata else under[-1]
    return ref, round(into * rate_from_float(ref.clip.trimmed_range().duration.rate))


def marker_jobs(doc: tl.TimelineDoc, *, seconds: Fraction = Fraction(5), seed: int = 0,
                model: str = DEFAULT_MODEL, quant: str = "none", steps: int | None = None,
                media_dir: Path | None = None) -> list[MarkerJob]:
    """Every ``magic141:`` marker on the video clips of ``doc``, and on the timeline itself (a guide
    continues the clip under it, ``_under``), checked and turned into a job spec.

    ``seconds`` and ``seed`` are used where a marker does not say. Generated media goes to
    ``media_dir`` (default: ``<timeline name>_magic141`` beside the timeline). Raises
    ``TimelineError`` naming the first bad marker (and how many more there are)."""
    media_dir = Path(media_dir) if media_dir is not None else media_dir_for(doc.path)
    done = generated_job_ids(doc)
    jobs: list[MarkerJob] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    marked: list[tuple[tl.ClipRef | None, otio.schema.Marker]] = []
    for ref in tl.video_clips(doc):
        on_clip = [m for m in ref.clip.markers if is_request(m)]
        marked += [(ref, m) for m in sorted(on_clip, key=lambda m: _seconds_of(m.marked_range.start_time))]
    guides = [m for m in doc.timeline.tracks.markers if is_request(m)]
    marked += [(None, m) for m in sorted(guides, key=lambda m: _seconds_of(m.marked_range.start_time))]
    for on, marker in marked:
        try:
            request = _request(marker)
            frame: int | None
            if on is None:  # a guide: known by the media frame under it, which an insert moves it with
                ref, frame = _under(doc, marker)
                where = {"guide": str(tl.media_seconds(ref, frame))}
            else:
                ref, frame = on, _frame_in_clip(on, marker)
                where = {"marker": str(_seconds_of(marker.marked_range.start_time))}
            if frame is None:
                continue
            if ref.offline or ref.media_path is None:
                raise TimelineError(f"marker {label(marker)!r} is on clip {ref.name!r}, which is "
                                    f"offline: {ref.reason}")
            wanted = request.seconds if request.seconds is not None else seconds
            chosen_seed = request.seed if request.seed is not None else seed
            identity = {
                "clip": ref.name, "media": ref.media_path.name,
                "source_in": str(_seconds_of(ref.clip.trimmed_range().start_time)), **where,
                "prompt": request.prompt, "seconds": str(wanted), "seed": chosen_seed, "model": model,
                "quant": quant, "steps": steps,
            }
            key = json.dumps(identity, sort_keys=True)
            seen[key] = seen.get(key, 0) + 1
            identity["copy"] = seen[key]  # identical clips with identical markers stay distinct jobs
            ident = job_id(identity)
            spec = job_spec(ref, frame, prompt=request.prompt, seconds=wanted, rate=doc.rate,
                            media_dir=media_dir, job_id=ident, seed=chosen_seed, model=model, quant=quant,
                            steps=steps)
        except InvalidInput as exc:  # a bad marker, or a spec it would make
            problems.append(str(exc))
            continue
        jobs.append(MarkerJob(ref, marker, frame, request.prompt, wanted, chosen_seed, ident, spec,
                              ident in done))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise TimelineError(f"{problems[0]}{more}")
    return jobs


# Writing results back --------------------------------------------------------------------------


def _anchor(job: MarkerJob, siblings: Collection[str]) -> tl.ClipRef:
    """The item to insert after: the marked clip, or the last result of its earlier markers."""
    track = job.ref.track
    index = track.index(job.ref.clip)
    while index + 1 < len(track):
        following = track[index + 1]
        made = following.metadata.get(tl.NAMESPACE) if isinstance(following, otio.schema.Clip) else None
        if made is None or not hasattr(made, "get") or str(made.get("job_id")) not in siblings:
            break
        index += 1
    return dataclasses.replace(job.ref, clip=track[index])


def apply_result(doc: tl.TimelineDoc, job: MarkerJob, result: JobResult, *, mode: str = "insert",
                 siblings: Collection[str] = frozenset()) -> otio.schema.Clip:
    """Place one finished job's media after its marked clip, and after the results of ``siblings``
    (the same clip's other markers) already there; on a new track in ``newtrack`` mode."""
    metadata = clip_record(job.job_id, job.spec, result, source_clip=job.ref.name, source_frame=job.frame,
                           marker=label(job.marker))
    anchor = job.ref if mode == "newtrack" else _anchor(job, siblings)
    return edits.add_generated_clip(doc, anchor, Path(result.path), result.frames, doc.rate, metadata, mode,
                                    audio_frames=result.sound_frames)


def apply_results(doc: tl.TimelineDoc, jobs: list[MarkerJob], results: dict[str, JobResult], *,
                  mode: str = "insert") -> list[otio.schema.Clip]:
    """Place every job that has a result; returns the new clips in ``jobs`` order."""
    siblings: dict[int, set[str]] = {}
    for job in jobs:
        siblings.setdefault(id(job.ref.clip), set()).add(job.job_id)
    order = sorted((job for job in jobs if job.job_id in results),
                   key=lambda job: (-job.ref.index, _seconds_of(job.marker.marked_range.start_time)))
    placed = {job.job_id: apply_result(doc, job, results[job.job_id], mode=mode,
                                       siblings=siblings[id(job.ref.clip)] - {job.job_id}) for job in order}
    return [placed[job.job_id] for job in jobs if job.job_id in placed]


# The queue round trip --------------------------------------------------------------------------


@dataclass
class QueueReport:
    jobs: list[MarkerJob]
    submitted: list[str]  # ids sent to the queue this run (new, already queued, or retried)
    skipped: list[str]  # ids whose result is already in the timeline
    added: list[otio.schema.Clip]
    failed: dict[str, str]  # id -> reason
    saved: Path | None


def submit_jobs(client, jobs: list[MarkerJob], *, priority: int = 0,
                say: Callable[[str], None] = print) -> list[str]:
    """Queue every job not yet in the timeline; one already queued is reused, a failed or cancelled
    one retried. Returns their ids."""
    submitted = []
    for job in jobs:
        if job.in_timeline:
            continue
        try:
            queued = client.job(job.job_id)
        except EngineError as exc:
            if exc.status != 404:
                raise
            queued = client.submit(job.spec, job_id=job.job_id, priority=priority)
        if queued["state"] in (JobState.FAILED, JobState.CANCELLED):
            queued = client.retry(job.job_id)
        submitted.append(job.job_id)
        say(f"{job.job_id}  {queued['state']:<10} {job.describe()}")
    return submitted


RECONNECTS = 3  # engine restarts in a row that a wait rides out before it gives up


def wait_for(client, ids: list[str], *, poll: float = 0.5, say: Callable[[str], None] = print,
             watch: Callable[[dict], None] | None = None) -> dict[str, dict]:
    """Poll until every job is DONE, FAILED or CANCELLED; report each as it ends (and every polled
    record to ``watch``, e.g. for a progress bar). Returns id -> job.

    The queue outlives the engine: when the service stops answering (killed, crashed) the wait
    reconnects, which starts a new service that takes the job up again, and goes on following the
    same ids. Only what the queue's record says ends a job; a lost connection never does."""
    pending = list(ids)
    ended: dict[str, dict] = {}
    lost = 0
    while pending:
        for ident in list(pending):
            try:
                job = client.job(ident)
            except EngineError as exc:
                if exc.status != 0 or lost >= RECONNECTS:
                    raise
                lost += 1
                say(f"lost the engine service ({exc.message}); reconnecting")
                client.connect()
                break
            lost = 0
            if watch is not None:
                watch(job)
            if JobState(job["state"]).terminal:
                pending.remove(ident)
                ended[ident] = job
                detail = job.get("error") or (job.get("result") or {}).get("path") or ""
                say(f"{ident}  {job['state']:<10} {detail}".rstrip())
        if pending:
            time.sleep(poll)
    return ended


def queue_from_timeline(path: str | Path, connect: Callable[[], object], *, apply: bool = False,
                        out: str | Path | None = None, mode: str = "insert", seconds: Fraction = Fraction(5),
                        seed: int = 0, model: str = DEFAULT_MODEL, quant: str = "none",
                        steps: int | None = None, priority: int = 0,
                        say: Callable[[str], None] = print) -> QueueReport:
    """Markers -> queued jobs; with ``apply``, wait and write every result into the timeline
    (``out``, or in place keeping ``NAME.bak``). ``connect()`` gives the engine client; it is only
    called when there is something to submit."""
    if mode not in edits.MODES:
        raise InvalidInput(f"must be one of {', '.join(edits.MODES)}, got {mode!r}", field="mode")
    if out is not None and not apply:
        raise InvalidInput("is written only when the results are applied: without apply the timeline is not "
                           "written", field="out")
    model = model_field(model)  # the engine runs elsewhere: never a relative path
    doc = tl.open_timeline(path)
    jobs = marker_jobs(doc, seconds=seconds, seed=seed, model=model, quant=quant, steps=steps)
    if not jobs:
        raise TimelineError(f"no clip or guide of {doc.path.name} has a marker named '{PREFIX} <prompt>'")
    skipped = [job.job_id for job in jobs if job.in_timeline]
    for job in jobs:
        if job.in_timeline:
            say(f"{job.job_id}  IN TIMELINE {job.describe()}")
    report = QueueReport(jobs, [], skipped, [], {}, None)
    if len(skipped) < len(jobs):
        client = connect()
        report.submitted = submit_jobs(client, jobs, priority=priority, say=say)
        if not apply:
            return report
        results = {}
        for ident, outcome in wait_for(client, report.submitted, say=say).items():
            if outcome["state"] == JobState.DONE:
                results[ident] = JobResult.from_json(outcome["result"])
            else:
                report.failed[ident] = outcome.get("error") or outcome["state"].lower()
        report.added = apply_results(doc, [job for job in jobs if not job.in_timeline], results, mode=mode)
    if apply and (report.added or out is not None):  # a script that reads ``out`` next finds it
        report.saved = tl.save_timeline(doc, out)
    return report
