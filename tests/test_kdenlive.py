"""Kdenlive 25's OTIO files: read, marker jobs, and a round trip Kdenlive's importer takes back.

The shape, from KDE/kdenlive ``src/otio/otioexport.cpp`` (the version with mixes, blob of commit
d4d75f5959d2172d3a9890c10b1a5ece51676195; line numbers of that file), and what
``src/otio/otioimport.cpp`` needs back:

- Timeline: a bare ``otio.schema.Timeline`` (l.55): no name, no metadata, ``global_start_time`` null.
  The rate is written nowhere but in every time: the project's fps as a double,
  ``num / (double) den`` (l.200; 24000/1001 -> 23.976023976023978). The importer picks its project
  profile from ``timeline.duration().rate()``.
- Guides: markers on the timeline's stack (``otioTimeline->tracks()``, l.59-61), at the guide's
  timeline frame, 1 frame long (l.61). Every marker (guide or clip marker, ``exportMarker``
  l.184-195): no name, the text in ``comment`` (l.188), ``color`` the OTIO colour nearest the
  marker category's (l.190, ``otioutil.cpp`` ``toOtioMarkerColor``), and
  ``metadata["kdenlive"] = {"type": <category, int64>}`` (l.191-193), which the importer prefers
  over the colour. Development versions before it wrote hex colours and no metadata.
- Tracks: every Kdenlive track, from the top one down (``index = tracksCount - 1 .. 0``, l.66):
  video tracks first (V2, V1), then audio (A1, A2). Kind Video/Audio (or "Subtitle", l.90-95),
  name the ``kdenlive:track_name`` property (usually empty), and a ``source_range`` of
  (0, track duration) (l.97-98): a track's clips past that range are not in it for OTIO, and
  ``otioimport.cpp`` (``trimmed_range_in_parent``) drops them. The importer reads the stack in
  reverse, adding each track on top.
- Gaps: a ``Gap`` (start 0, the blank's length) before each clip that has a blank before it
  (l.127-131); none after a track's last clip.
- Mixes: the clips' overlap is taken out (the second clip starts, and its in point moves,
  ``mixDuration - mixCutPosition`` later, l.108-113; the first ends ``mixCutPosition`` earlier,
  l.115-118), and a ``Transition`` named "Transition", ``SMPTE_Dissolve``, goes between them with
  ``in_offset = mixDuration - mixCutPosition`` and ``out_offset = mixOffset`` at the project fps
  (l.135-141). The importer skips transitions and gaps: it places clips at their
  ``trimmed_range_in_parent`` start.
- Clips: name the clip's name, ``source_range`` (in point, out - in + 1) at the project fps (l.165-168);
  media ``ExternalReference(projectClip->url())`` (l.153-160): the file's plain absolute path, no
  ``file://``, ``available_range`` (0, frame count) at the *media's* own fps; a clip without a file
  (colour, title) gets no reference (``MissingReference``). The importer resolves a target_url
  as a URL's path (decoded) or a path, relative ones against the .otio's folder (``resolveFile``).
- Clip markers: every marker of the *bin* clip (l.172-180) on every timeline clip of it, at
  ``marker frame - clip in point`` (l.176): relative to the clip's first frame, not in the media's
  time as OTIO has it, and written whether or not the clip shows that frame. The importer puts
  them back at ``trimmed_range().start_time + marked start``.

No engine, no model: ``marker_jobs`` only builds specs; the results are small files VideoWriter
encodes.
"""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path
from urllib.parse import unquote, urlsplit

import opentimelineio as otio
import pytest
from kdenlive_shape import KdBin, KdClip, KdMarker, KdTrack, export, write

from magic141.engine import media
from magic141.errors import TimelineError
from magic141.plugin import edits, markers
from magic141.plugin import timeline as tl
from magic141.protocol import JobResult

PLATE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "plate.mp4"  # 72 frames, 96x64
NTSC = Fraction(24000, 1001)
RATES = [Fraction(25), NTSC]
VIDEO, AUDIO = otio.schema.TrackKind.Video, otio.schema.TrackKind.Audio
GENERATED = 12  # frames of each stand-in result

STORM = "magic141: a storm rolls in seconds=1/2"
PUSH = "magic141: the camera pushes in seconds=2 seed=7"
BIRDS = "magic141: a flock of birds seconds=3/2"


@pytest.fixture(scope="module", params=RATES, ids=["25", "24000-1001"])
def footage(request, tmp_path_factory) -> tuple[Fraction, Path]:
    """a.mp4, b.mp4 (48 frames) and gen.mp4 (a result, 12 frames), 48x32, at the project's rate."""
    rate = request.param
    folder = tmp_path_factory.mktemp("kdenlive")
    frames = media.read_frames(PLATE)[:, ::2, ::2]
    for name, picture in (("a.mp4", frames[:48]), ("b.mp4", frames[24:]), ("gen.mp4", frames[:GENERATED])):
        with media.VideoWriter(folder / name, fps=rate, codec="h264", width=48, height=32) as writer:
            writer.write(picture)
    return rate, folder


def project(folder: Path, footage_dir: Path, rate: Fraction, clip_requests: bool = True) -> Path:
    """A Kdenlive project exported to OTIO, tracks top to bottom (frames at ``rate``)::

        V2  gap 30 | Black 30-40 (a colour clip: no file)
        V1  Plate A 0-36 (a.mp4 0-35) | mix | Plate B 36-56 (b.mp4 4-23) | gap 8 | Plate C 64-88 (a.mp4 12-35)
            | Missing 88-98 (gone.mp4, not there)
        A1  Plate A 0-36 | Plate B 36-56 | gap 8 | Plate C 64-88 (the sound of V1's clips)
        A2  empty
        guides: "chapter one" at 0, BIRDS at 70 (over Plate C)

    a.mp4's markers (on Plate A and Plate C, and their sound): "review: too dark" at its frame 3 and
    STORM at 30; b.mp4's: one at its frame 1 (before Plate B's in point) and PUSH at 19."""
    a_marks = [KdMarker(3, "review: too dark", 1, "CYAN")]
    b_marks = [KdMarker(1, "magic141: before the in point", 4, "GREEN")]
    if clip_requests:
        a_marks.append(KdMarker(30, STORM, 2, "YELLOW"))
        b_marks.append(KdMarker(19, PUSH, 4, "GREEN"))
    a = KdBin(footage_dir / "a.mp4", 48, rate, a_marks)
    b = KdBin(footage_dir / "b.mp4", 48, rate, b_marks)
    black = KdBin(None, 250, rate)
    gone = KdBin(folder / "gone.mp4", 48, rate)

    def picture_and_sound(kind: str) -> list[KdClip]:
        clips = [KdClip("Plate A", a, 0, 0, 36), KdClip("Plate B", b, 36, 4, 20, mix_before=(4, 8)),
                 KdClip("Plate C", a, 64, 12, 24)]
        if kind == AUDIO:
            clips[1].mix_before = None  # the sound cuts; only the picture dissolves
            return clips
        return clips + [KdClip("Missing", gone, 88, 0, 10)]

    tracks = [KdTrack(VIDEO, [KdClip("Black", black, 30, 0, 10)]), KdTrack(VIDEO, picture_and_sound(VIDEO)),
              KdTrack(AUDIO, picture_and_sound(AUDIO)), KdTrack(AUDIO)]
    guides = [KdMarker(0, "chapter one", 0, "PURPLE"), KdMarker(70, BIRDS, 3, "ORANGE")]
    return write(export(tracks, guides, rate), folder / "kd.otio")


def plain(path: Path) -> otio.schema.Timeline:
    """The file as plain OTIO reads it (no adapter, no plugin hooks): what Kdenlive's importer gets."""
    return otio.core.deserialize_json_from_file(str(path))


def kdenlive_import(path: Path) -> dict:
    """What otioimport.cpp rebuilds from ``path``: the profile's rate, tracks top to bottom with
    their clips (name, position, length, first source frame, file, markers) and the guides."""
    timeline = plain(path)
    rate = timeline.duration().rate

    def frames(time) -> int:
        return round(time.rescaled_to(rate).value)

    def file_of(clip) -> str | None:
        url = getattr(clip.media_reference, "target_url", None)
        if url is None:
            return None
        found = Path(unquote(urlsplit(url).path))
        return str(found if found.is_absolute() else path.parent / found)

    def category(marker) -> int | str:
        ours = marker.metadata.get("kdenlive")
        return ours["type"] if ours is not None and "type" in ours else marker.color

    tracks = []
    for track in timeline.tracks:
        clips = []
        for item in track:
            if not isinstance(item, otio.schema.Clip):
                continue  # gaps and transitions: the importer only places clips
            try:
                where = item.trimmed_range_in_parent()
            except ValueError:  # past the track's source_range: C++ gets no range and drops the clip
                clips.append((item.name, None))
                continue
            start = frames(item.trimmed_range().start_time)
            marks = [(start + frames(m.marked_range.start_time), m.comment, category(m))
                     for m in item.markers]
            clips.append((item.name, frames(where.start_time), frames(where.duration), start, file_of(item),
                          marks))
        tracks.append((track.name, track.kind, clips))
    guides = [(frames(m.marked_range.start_time), m.comment, category(m)) for m in timeline.tracks.markers]
    return {"rate": rate, "tracks": tracks, "guides": guides}


def results_for(jobs: list[markers.MarkerJob], names: set[str], footage_dir: Path, folder: Path,
                rate: Fraction) -> dict[str, JobResult]:
    """A finished job's result for each job on a clip in ``names``: a real 12-frame file each."""
    results = {}
    for job in jobs:
        if job.ref.name in names:
            made = shutil.copy(footage_dir / "gen.mp4", folder / f"{job.job_id}.mp4")
            results[job.job_id] = JobResult(str(made), GENERATED, rate, 48, 32, "h264")
    return results


# Reading ---------------------------------------------------------------------------------------


def test_the_export_is_shaped_as_kdenlives(footage, tmp_path):
    """The builder's file, checked against the exporter's facts the tests below rely on."""
    rate, footage_dir = footage
    raw = json.loads(project(tmp_path, footage_dir, rate).read_text())
    assert raw["global_start_time"] is None and raw["name"] == "" and raw["metadata"] == {}
    stack = raw["tracks"]
    assert [t["kind"] for t in stack["children"]] == ["Video", "Video", "Audio", "Audio"]
    assert [t["source_range"]["duration"]["value"] for t in stack["children"]] == [40, 98, 88, 0]
    v1 = stack["children"][1]["children"]
    assert [c["OTIO_SCHEMA"].split(".")[0] for c in v1] == [
        "Clip", "Transition", "Clip", "Gap", "Clip", "Clip"]
    assert v1[1]["transition_type"] == "SMPTE_Dissolve" and v1[1]["in_offset"]["rate"] == float(rate)
    plate_a = v1[0]["media_references"]["DEFAULT_MEDIA"]
    assert plate_a["target_url"] == str(footage_dir / "a.mp4")  # a plain path
    guide = stack["markers"][1]
    assert (guide["name"], guide["comment"], guide["metadata"]) == ("", BIRDS, {"kdenlive": {"type": 3}})
    assert [m["marked_range"]["start_time"]["value"] for m in v1[4]["markers"]] == [3 - 12, 30 - 12]


def test_open_timeline_reads_clips_exact_rate_and_offline_state(footage, tmp_path):
    rate, footage_dir = footage
    doc = tl.open_timeline(project(tmp_path, footage_dir, rate))
    assert doc.rate == rate and isinstance(doc.rate, Fraction)  # 23.976023976023978 -> 24000/1001
    refs = tl.video_clips(doc)
    assert [(r.index, r.name, r.offline) for r in refs] == [
        (0, "Black", True), (1, "Plate A", False), (2, "Plate B", False), (3, "Plate C", False),
        (4, "Missing", True)]
    assert refs[0].reason == "it has no media reference"
    assert refs[4].reason == f"its media {tmp_path / 'gone.mp4'} is missing"
    assert refs[1].media_path == footage_dir / "a.mp4"
    # the mix sits between Plate A and Plate B; lookup by name and by index goes past it
    plate_b = tl.find_clip(doc, "Plate B")
    assert tl.find_clip(doc, 2).clip is plate_b.clip
    assert plate_b.track is doc.timeline.tracks[1] and plate_b.track.index(plate_b.clip) == 2
    assert isinstance(plate_b.track[1], otio.schema.Transition)
    assert tl.clip_frames(plate_b) == 20 and tl.clip_frames(plate_b, rate) == 20
    assert tl.to_seconds(plate_b.clip.range_in_parent().start_time) == 36 / rate
    assert tl.media_seconds(plate_b, 0) == 4 / rate  # its in point, exactly
    plate_c = tl.find_clip(doc, "Plate C")
    assert tl.to_seconds(plate_c.clip.range_in_parent().start_time) == 64 / rate
    assert tl.media_seconds(plate_c, 23) == 35 / rate


# Marker jobs -----------------------------------------------------------------------------------


def test_kdenlive_clip_markers_become_jobs_at_the_frame_kdenlive_shows_them(footage, tmp_path):
    """Kdenlive writes a marker's text in its comment and its time from the clip's in point; every
    marker of a bin clip goes on every clip of it, also where that clip does not show the frame."""
    rate, footage_dir = footage
    doc = tl.open_timeline(project(tmp_path, footage_dir, rate))
    jobs = markers.marker_jobs(doc, model="tiny")
    assert [(j.ref.name, j.frame, j.prompt, j.seconds, j.seed) for j in jobs] == [
        ("Plate A", 30, "a storm rolls in", Fraction(1, 2), 0),
        ("Plate B", 15, "the camera pushes in", Fraction(2), 7),  # b.mp4 frame 19, in point 4
        ("Plate C", 18, "a storm rolls in", Fraction(1, 2), 0),  # a.mp4 frame 30, in point 12
        ("Plate C", 6, "a flock of birds", Fraction(3, 2), 0),  # the guide at 70: Plate C starts at 64
    ]
    assert [j.spec.source.time for j in jobs] == [30 / rate, 19 / rate, 30 / rate, 18 / rate]  # media time
    assert [j.spec.fps for j in jobs] == [rate] * 4
    assert len({j.job_id for j in jobs}) == 4
    # b.mp4's marker at frame 1 lies before Plate B's in point: Kdenlive does not show it, no job
    assert all("before the in point" not in j.prompt for j in jobs)
    # the hook that runs on every OTIO read records the request on Kdenlive's marker too
    assert jobs[1].marker.metadata["magic141"] == {"prompt": "the camera pushes in", "seconds": "2",
                                                   "seed": 7}
    assert jobs[1].marker.metadata["kdenlive"] == {"type": 4}


def test_a_guide_continues_the_clip_under_it_and_keeps_doing_so_after_an_insert(footage, tmp_path):
    """A ``magic141:`` guide (a marker on the timeline) continues the top clip under it: Kdenlive
    writes the top track first. Insert edits move the guides after the cut with the clips, so a
    re-run finds the guide's result in the timeline instead of rendering again."""
    rate, footage_dir = footage
    path = project(tmp_path, footage_dir, rate, clip_requests=False)
    doc = tl.open_timeline(path)
    assert doc.timeline.tracks.markers[1].metadata["magic141"] == {"prompt": "a flock of birds",
                                                                  "seconds": "3/2", "seed": None}
    (guide,) = markers.marker_jobs(doc, model="tiny")
    assert (guide.ref.name, guide.frame, guide.spec.source.time) == ("Plate C", 6, 18 / rate)
    # An insert before the guide (Plate B's result goes at frame 56) moves it by the new clip's length.
    plate_b = tl.video_clips(doc)[2]
    assert plate_b.name == "Plate B"
    made = shutil.copy(footage_dir / "gen.mp4", tmp_path / "b-ext.mp4")
    edits.add_generated_clip(doc, plate_b, made, GENERATED, rate, {"job_id": "by-hand"}, mode="insert")
    guides = [round(m.marked_range.start_time.value) for m in doc.timeline.tracks.markers]
    assert guides == [0, 70 + GENERATED]
    (again,) = markers.marker_jobs(doc, model="tiny")
    assert (again.ref.name, again.frame, again.job_id) == ("Plate C", 6, guide.job_id)
    markers.apply_results(doc, [again], results_for([again], {"Plate C"}, footage_dir, tmp_path, rate))
    saved = tl.save_timeline(doc, tmp_path / "back.otio")
    (done,) = markers.marker_jobs(tl.open_timeline(saved), model="tiny")
    assert done.job_id == guide.job_id and done.in_timeline


def test_a_guide_on_no_clip_or_on_an_offline_one_is_refused_before_any_engine(footage, tmp_path):
    rate, footage_dir = footage
    path = project(tmp_path, footage_dir, rate, clip_requests=False)
    doc = tl.open_timeline(path)
    doc.timeline.tracks.markers[1].marked_range = otio.opentime.TimeRange(
        otio.opentime.RationalTime(60, float(rate)), otio.opentime.RationalTime(1, float(rate)))  # the gap
    with pytest.raises(TimelineError, match=r"marker 'magic141: a flock of birds seconds=3/2' at frame 60 of "
                                            r"the timeline is on no clip: move it over the clip to continue"):
        markers.marker_jobs(doc, model="tiny")
    # At frame 35 the top clip is V2's colour clip, which has no media: said, not skipped to V1's.
    doc.timeline.tracks.markers[1].marked_range = otio.opentime.TimeRange(
        otio.opentime.RationalTime(35, float(rate)), otio.opentime.RationalTime(1, float(rate)))
    tl.save_timeline(doc, path)

    def connect():
        raise AssertionError("no engine is needed to refuse")

    with pytest.raises(TimelineError, match=r"is on clip 'Black', which is offline"):
        markers.queue_from_timeline(path, connect, model="tiny")
    doc.timeline.tracks.markers.pop()
    tl.save_timeline(doc, path)
    with pytest.raises(TimelineError, match=r"no clip or guide of kd\.otio has a marker named 'magic141: "):
        markers.queue_from_timeline(path, connect, model="tiny")


# Round trip ------------------------------------------------------------------------------------


def test_results_round_trip_into_a_file_kdenlives_importer_takes_back(footage, tmp_path):
    rate, footage_dir = footage
    source = project(tmp_path, footage_dir, rate)
    before = kdenlive_import(source)
    doc = tl.open_timeline(source)
    jobs = markers.marker_jobs(doc, model="tiny")[:3]  # the clip markers' (the guide's: the test above)
    results = results_for(jobs, {"Plate B", "Plate C"}, footage_dir, tmp_path, rate)
    added = markers.apply_results(doc, jobs, results, mode="insert")
    assert [c.name for c in added] == ["Plate B ext", "Plate C ext"]
    saved = tl.save_timeline(doc, tmp_path / "back.otio")
    after = kdenlive_import(saved)

    assert after["rate"] == before["rate"] == float(rate)
    assert before["guides"] == [(0, "chapter one", 0), (70, BIRDS, 3)]
    assert after["guides"] == [(0, "chapter one", 0), (70 + GENERATED, BIRDS, 3)]  # still over Plate C
    v2, v1, a1, a2 = before["tracks"]
    assert after["tracks"][0] == v2 and after["tracks"][3] == a2  # untouched tracks come back as they were
    b_ext, c_ext = results[jobs[1].job_id].path, results[jobs[2].job_id].path

    def moved(clip, by):
        return (clip[0], clip[1] + by, *clip[2:])

    plate_a, plate_b, plate_c, missing = v1[2]
    assert after["tracks"][1] == (v1[0], VIDEO, [
        plate_a, plate_b,
        ("Plate B ext", 56, GENERATED, 0, b_ext, [(0, "", "PURPLE")]),  # right after its source
        moved(plate_c, GENERATED),  # later clips ripple by the new clip's length
        ("Plate C ext", 100, GENERATED, 0, c_ext, [(0, "", "PURPLE")]),
        moved(missing, 2 * GENERATED)])
    sound_a, sound_b, sound_c = a1[2]
    assert after["tracks"][2] == (a1[0], AUDIO, [sound_a, sound_b, moved(sound_c, GENERATED)])  # in sync

    # what the importer skips but Kdenlive's users keep in the file: the mix, the gaps, the windows
    back = plain(saved)
    v1_items = list(back.tracks[1])
    assert [type(i).__name__ for i in v1_items] == [
        "Clip", "Transition", "Clip", "Clip", "Gap", "Clip", "Clip", "Clip"]
    mix = v1_items[1]
    assert (v1_items[0].name, v1_items[2].name) == ("Plate A", "Plate B")  # still between the same clips
    assert (mix.name, mix.transition_type) == ("Transition", otio.schema.TransitionTypes.SMPTE_Dissolve)
    assert (mix.in_offset, mix.out_offset) == (otio.opentime.RationalTime(4, float(rate)),
                                               otio.opentime.RationalTime(8, float(rate)))
    assert v1_items[4].source_range.duration == otio.opentime.RationalTime(8, float(rate))
    assert [t.source_range.duration.value for t in back.tracks] == [
        40, 98 + 2 * GENERATED, 88 + 2 * GENERATED, 0]
    assert [i.duration().value for i in back.tracks[2] if isinstance(i, otio.schema.Gap)] == [
        GENERATED, 8, GENERATED]  # the results have no sound: silence fills under them
    new = v1_items[3]
    assert new.source_range == otio.opentime.TimeRange(otio.opentime.RationalTime(0, float(rate)),
                                                       otio.opentime.RationalTime(GENERATED, float(rate)))
    assert new.metadata["magic141"]["job_id"] == jobs[1].job_id

    # Kdenlive's own marker data is left as it wrote it (the type stays a JSON integer)
    raw = json.loads(saved.read_text())
    assert [m["metadata"]["kdenlive"] for m in raw["tracks"]["markers"]] == [{"type": 0}, {"type": 3}]
    plate_b_marks = raw["tracks"]["children"][1]["children"][2]["markers"]
    assert [(m["comment"], m["color"], m["metadata"]["kdenlive"]) for m in plate_b_marks] == [
        ("magic141: before the in point", "GREEN", {"type": 4}), (PUSH, "GREEN", {"type": 4})]
    assert raw["tracks"]["children"][1]["children"][0]["media_references"]["DEFAULT_MEDIA"]["target_url"] == \
        str(footage_dir / "a.mp4")  # Kdenlive's plain paths are kept as they are

    # a second run finds the results in the file: nothing is rendered twice
    again = markers.marker_jobs(tl.open_timeline(saved), model="tiny")
    assert [(j.ref.name, j.frame, j.in_timeline) for j in again] == [
        ("Plate A", 30, False), ("Plate B", 15, True), ("Plate C", 18, True), ("Plate C", 6, False)]
    assert [j.job_id for j in again[:3]] == [j.job_id for j in jobs]


def test_inserting_between_a_mix_and_its_clip_is_refused_and_changes_nothing(footage, tmp_path):
    rate, footage_dir = footage
    doc = tl.open_timeline(project(tmp_path, footage_dir, rate))
    jobs = markers.marker_jobs(doc, model="tiny")
    result = results_for(jobs, {"Plate A"}, footage_dir, tmp_path, rate)
    before = doc.timeline.to_json_string()
    with pytest.raises(TimelineError, match=r"^mode: clip 'Plate A' is followed by a transition: use "
                                            r"overwrite or newtrack mode$") as refused:
        markers.apply_results(doc, jobs, result, mode="insert")
    assert refused.value.field == "mode"
    assert doc.timeline.to_json_string() == before
