"""Timelines through OTIO: exact time mapping, frame grabs, the three edits, saving, bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import opentimelineio as otio
import pytest

from magic141.engine import media
from magic141.engine.seam import seam_score
from magic141.errors import InvalidInput
from magic141.plugin import edits
from magic141.plugin import timeline as tl
from magic141.plugin.extend import extend_clip
from magic141.protocol import CLIP_RECORD_VERSION, JobResult, JobSpec
from magic141.rational import frame_count, rate_from_float

RT, TR = otio.opentime.RationalTime, otio.opentime.TimeRange
ROOT = Path(__file__).resolve().parents[1]
RATES = [Fraction(24), Fraction(25), Fraction(24000, 1001), Fraction(30000, 1001)]
MEDIA_FRAMES = 40


def make_media(path: Path, rate: Fraction, frames: int = MEDIA_FRAMES, first: int = 0) -> np.ndarray:
    """A video whose every frame differs (a bar moves one column per frame), from the pattern's frame
    ``first`` on; returns a reference decode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    video = np.zeros((frames, 32, 48, 3), np.uint8)
    for j, i in enumerate(range(first, first + frames)):
        video[j, :, i % 48] = 255
        video[j, ..., 1] = 4 * i
    with media.VideoWriter(path, fps=rate, codec="h264", width=48, height=32) as writer:
        writer.write(video)
    return media.read_frames(path)


def make_timeline(folder: Path, rate: Fraction, media_url: str, tc_start: int) -> Path:
    """V1: A (media frames 5..16), B (20..29), C (30..39); media starts at timecode frame ``tc_start``."""
    r = float(rate)
    track = otio.schema.Track(name="V1")
    for name, first, count in (("A", 5, 12), ("B", 20, 10), ("C", 30, 10)):
        track.append(otio.schema.Clip(
            name=name, source_range=TR(RT(tc_start + first, r), RT(count, r)),
            media_reference=otio.schema.ExternalReference(
                target_url=media_url, available_range=TR(RT(tc_start, r), RT(MEDIA_FRAMES, r)))))
    timeline = otio.schema.Timeline(name="cut", global_start_time=RT(86400 * r, r))
    timeline.tracks.append(track)
    path = folder / "cut.otio"
    otio.adapters.write_to_file(timeline, str(path))
    return path


@pytest.fixture(params=RATES, ids=lambda r: str(r).replace("/", "_"))
def cut(request, tmp_path):
    rate = request.param
    if rate == Fraction(24000, 1001):  # a file:// URL to a folder with a space and non-ASCII letters
        plate = tmp_path / "plates été" / "plate 1.mp4"
        reference = make_media(plate, rate)
        url = plate.as_uri()
    else:  # a path relative to the timeline file
        plate = tmp_path / "media" / "plate.mp4"
        reference = make_media(plate, rate)
        url = "media/plate.mp4"
    return make_timeline(tmp_path, rate, url, tc_start=3600 * round(rate)), rate, reference


def positions(track) -> dict[str, tuple[int, int]]:
    return {item.name: (item.range_in_parent().start_time.to_frames(),
                        item.range_in_parent().duration.to_frames()) for item in track}


def test_rates_come_back_exact(tmp_path):
    for rate in RATES:
        assert rate_from_float(float(rate)) == rate
    assert rate_from_float(23.976023976023978) == Fraction(24000, 1001)
    assert rate_from_float(59.94005994005994) == Fraction(60000, 1001)
    doc = tl.open_timeline(make_timeline(tmp_path, Fraction(24000, 1001), "x.mp4", 0))
    assert doc.rate == Fraction(24000, 1001)  # what OTIO stored as 23.976023976... comes back exact


def test_frames_grabbed_are_the_frames_at_that_time(cut):
    path, rate, reference = cut
    doc = tl.open_timeline(path)
    assert doc.rate == rate
    refs = tl.video_clips(doc)
    assert [(r.name, r.offline) for r in refs] == [("A", False), ("B", False), ("C", False)]
    for name, first in (("A", 5), ("B", 20), ("C", 30)):
        ref = tl.find_clip(doc, name)
        for frame in (0, 3, tl.last_frame(ref)):
            assert tl.media_seconds(ref, frame) == Fraction(first + frame) / rate
            grabbed = np.asarray(tl.grab_frame(ref, frame))
            assert np.array_equal(grabbed, reference[first + frame]), (name, frame)


def test_insert_lands_after_the_clip_and_ripples_the_track(cut, tmp_path):
    path, rate, _ = cut
    doc = tl.open_timeline(path)
    generated = tmp_path / "gen" / "A_ext.mp4"
    make_media(generated, rate, frames=7)
    before = positions(doc.timeline.video_tracks()[0])
    metadata = {"job_id": "j1", "prompt": "the bar keeps moving", "seed": 3}
    clip = edits.add_generated_clip(doc, tl.find_clip(doc, "A"), generated, 7, rate, metadata, "insert")
    out = tl.save_timeline(doc, tmp_path / "edited.otio")

    reloaded = tl.open_timeline(out)
    after = positions(reloaded.timeline.video_tracks()[0])
    assert list(after) == ["A", "A ext", "B", "C"]
    assert after["A ext"] == (before["A"][0] + before["A"][1], 7)  # starts exactly where A ends
    assert after["B"] == (before["B"][0] + 7, before["B"][1]) and after["C"] == (before["C"][0] + 7, 10)
    new = tl.find_clip(reloaded, "A ext")
    assert not new.offline and new.media_path == generated.resolve()
    assert rate_from_float(new.clip.source_range.duration.rate) == rate  # at the timeline's rate
    assert new.clip.source_range == new.clip.media_reference.available_range  # the whole media, exactly
    assert new.clip.metadata["magic141"]["prompt"] == "the bar keeps moving"
    assert [m.name for m in new.clip.markers] == [edits.MARKER_NAME]
    assert clip.name == "A ext"
    # the untouched clips still find their media from the new folder (relative URLs were re-based)
    assert not tl.find_clip(reloaded, "B").offline


def test_overwrite_trims_what_follows(cut, tmp_path):
    path, rate, reference = cut
    doc = tl.open_timeline(path)
    generated = tmp_path / "g.mp4"
    make_media(generated, rate, frames=15)
    edits.add_generated_clip(doc, tl.find_clip(doc, "A"), generated, 15, rate, {"job_id": "j"}, "overwrite")
    after = positions(doc.timeline.video_tracks()[0])
    # A 0..12, new 12..27 covers B (12..22) and the first 5 frames of C (22..32)
    assert after == {"A": (0, 12), "A ext": (12, 15), "C": (27, 5)}
    assert np.array_equal(np.asarray(tl.grab_frame(tl.find_clip(doc, "C"), 0)), reference[35])


def test_overwrite_past_the_end_and_new_track(cut, tmp_path):
    path, rate, _ = cut
    generated = tmp_path / "g.mp4"
    make_media(generated, rate, frames=9)
    doc = tl.open_timeline(path)
    edits.add_generated_clip(doc, tl.find_clip(doc, "C"), generated, 9, rate, {}, "overwrite")
    assert positions(doc.timeline.video_tracks()[0])["C ext"] == (32, 9)

    doc = tl.open_timeline(path)
    edits.add_generated_clip(doc, tl.find_clip(doc, "B"), generated, 9, rate, {}, "newtrack")
    v1, above = doc.timeline.video_tracks()
    assert positions(v1) == positions(tl.open_timeline(path).timeline.video_tracks()[0])  # untouched
    assert [item.name for item in above] == ["", "B ext"]
    assert positions(above)["B ext"] == (22, 9)


def test_save_keeps_a_backup_and_replaces_atomically(cut):
    path, rate, _ = cut
    original = path.read_bytes()
    doc = tl.open_timeline(path)
    doc.timeline.video_tracks()[0].pop()
    assert tl.save_timeline(doc) == path
    assert path.with_name("cut.otio.bak").read_bytes() == original
    assert [r.name for r in tl.video_clips(tl.open_timeline(path))] == ["A", "B"]
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_otioz_bundle_carries_the_generated_media(tmp_path):
    rate = Fraction(25)
    plate = tmp_path / "media" / "plate.mp4"
    reference = make_media(plate, rate)
    source = make_timeline(tmp_path, rate, plate.as_uri(), tc_start=0)
    bundle = tmp_path / "cut.otioz"
    otio.adapters.write_to_file(otio.adapters.read_from_file(str(source)), str(bundle))
    doc = tl.open_timeline(bundle)
    ref = tl.find_clip(doc, "B")
    assert np.array_equal(np.asarray(tl.grab_frame(ref, 2)), reference[22])
    generated = tmp_path / "out" / "B ext.mp4"
    make_media(generated, rate, frames=5)
    edits.add_generated_clip(doc, ref, generated, 5, rate, {"job_id": "z"}, "insert")
    tl.save_timeline(doc)
    with zipfile.ZipFile(bundle) as archive:
        assert {"media/plate.mp4", "media/B ext.mp4"} <= set(archive.namelist())
    reopened = tl.open_timeline(bundle)
    assert not tl.find_clip(reopened, "B ext").offline
    assert media.probe_video(tl.find_clip(reopened, "B ext").media_path).frames == 5


# Bad input: a clear message, and nothing changes --------------------------------------------------


def test_unreadable_timelines(tmp_path):
    broken = tmp_path / "broken.otio"
    broken.write_text("{not json")
    with pytest.raises(tl.TimelineError, match="cannot be read"):
        tl.open_timeline(broken)
    odd = tmp_path / "cut.xyz"
    odd.write_text("")
    with pytest.raises(tl.TimelineError, match=r"cannot open \.xyz timelines: OTIO knows .*\.otio"):
        tl.open_timeline(odd)
    with pytest.raises(tl.TimelineError, match="does not exist"):
        tl.open_timeline(tmp_path / "nope.otio")


def test_offline_media_and_missing_references(cut, tmp_path):
    path, rate, _ = cut
    doc = tl.open_timeline(path)
    a = tl.find_clip(doc, "A")
    a.clip.media_reference = otio.schema.MissingReference()
    tl.find_clip(doc, "B").clip.media_reference.target_url = "media/gone.mp4"
    tl.save_timeline(doc)
    saved = path.read_bytes()
    doc = tl.open_timeline(path)
    a, b = tl.find_clip(doc, "A"), tl.find_clip(doc, "B")
    assert (a.offline, a.reason) == (True, "it has no media reference")
    assert b.offline and "gone.mp4 is missing" in b.reason
    for ref in (a, b):
        with pytest.raises(tl.TimelineError, match="offline"):
            tl.grab_frame(ref, 0)

    def never(job_id, spec):
        raise AssertionError("no job may run for an offline clip")

    with pytest.raises(tl.TimelineError, match="offline"):
        extend_clip(path, "B", prompt="x", seconds=Fraction(1), run_job=never)
    assert path.read_bytes() == saved


def test_extend_places_the_result_with_its_clip_record_and_refuses_a_bad_mode(tmp_path):
    """The flow with a stand-in engine: the job is a JobSpec, its JobResult lands in the timeline."""
    rate = Fraction(24)
    plate = tmp_path / "media" / "plate.mp4"
    make_media(plate, rate)
    path = make_timeline(tmp_path, rate, "media/plate.mp4", tc_start=0)
    asked: list[JobSpec] = []

    def run_job(job_id: str, spec: JobSpec) -> JobResult:
        asked.append(spec)
        out = Path(spec.output_path(job_id))
        out.parent.mkdir(parents=True)
        make_media(out, rate, frames=6)
        return JobResult(str(out), 6, rate, 48, 32, spec.codec, settings={"steps": 4})

    done = extend_clip(path, "B", prompt="the bar keeps moving", seconds=Fraction(1, 4), run_job=run_job,
                       at=2, seed=9, model="tiny", out=tmp_path / "out.otio")
    (spec,) = asked
    assert (spec.source.kind, spec.source.time, spec.seconds, spec.fps) == ("media", Fraction(22, 24),
                                                                            Fraction(1, 4), rate)
    assert spec.output_dir == str((tmp_path / "out_magic141").resolve())
    saved = tl.open_timeline(done.timeline)
    record = dict(tl.find_clip(saved, "B ext").clip.metadata["magic141"])
    assert list(record.pop("loras")) == []  # an OTIO list
    assert record == {"version": CLIP_RECORD_VERSION, "job_id": done.job_id, "prompt": "the bar keeps moving",
                      "seed": 9, "model": "tiny", "quant": "none", "steps": 4, "source_clip": "B",
                      "source_frame": 2, "source_time": "11/12", "seconds": "1/4", "native_size": None,
                      "color_match": 1.0, "ambience": None, "family": None, "handles": 0}
    with pytest.raises(InvalidInput) as caught:
        extend_clip(path, "B", prompt="x", seconds=Fraction(1), run_job=run_job, mode="sideways")
    assert caught.value.field == "mode" and "--" not in caught.value.message
    assert "insert, overwrite, newtrack" in caught.value.message and len(asked) == 1


def test_handles_put_media_under_the_sources_end_and_the_seam_is_scored(tmp_path):
    """--handles 3: the job continues from 3 frames earlier for 3 more frames; the clip uses its media
    from frame 3, so the host has 3 frames to dissolve over. A stand-in engine that makes the true
    continuation gives a cut that scores as that step in the source's media does."""
    rate = Fraction(24)
    plate = make_media(tmp_path / "media" / "plate.mp4", rate)
    path = make_timeline(tmp_path, rate, "media/plate.mp4", tc_start=0)
    asked: list[JobSpec] = []

    def run_job(job_id: str, spec: JobSpec) -> JobResult:
        asked.append(spec)
        out = Path(spec.output_path(job_id))
        frames = frame_count(spec.seconds, rate)
        first = round(spec.source.time * rate) + 1  # the frame after the one continued from
        make_media(out, rate, frames=frames, first=first)
        return JobResult(str(out), frames, rate, 48, 32, spec.codec)

    done = extend_clip(path, "B", prompt="the bar keeps moving", seconds=Fraction(1, 4), run_job=run_job,
                       handles=3, out=tmp_path / "out.otio")
    (spec,) = asked
    assert spec.source.time == Fraction(29 - 3, 24) and spec.seconds == Fraction(6 + 3, 24)
    clip = tl.find_clip(tl.open_timeline(done.timeline), "B ext").clip
    assert clip.source_range.start_time.to_frames() == 3 and clip.source_range.duration.to_frames() == 6
    assert clip.media_reference.available_range.duration.to_frames() == 9
    assert clip.metadata["magic141"]["handles"] == 3 and done.duration.to_frames() == 6
    true_cut = seam_score(plate[29], plate[30])  # clip B ends on media frame 29
    assert done.seam["cut"] == pytest.approx(true_cut, rel=0.05)
    assert done.seam["source_step"] == pytest.approx(seam_score(plate[28], plate[29]), rel=0.05)
    with pytest.raises(InvalidInput, match="handle") as caught:
        extend_clip(path, "B", prompt="x", seconds=Fraction(1), run_job=run_job, at=2, handles=3)
    assert caught.value.field == "handles" and len(asked) == 1


def test_saved_files_get_the_usual_permissions(tmp_path):
    """A saved timeline is mode 0666 less the umask, as any program's new file (not a temp file's 0600)."""
    for name in ("sample.otio", "plate.mp4"):
        shutil.copy(ROOT / "resources" / "samples" / name, tmp_path)
    old = os.umask(0o022)
    try:
        doc = tl.open_timeline(tmp_path / "sample.otio")
        modes = {suffix: tl.save_timeline(doc, tmp_path / f"cut{suffix}").stat().st_mode & 0o777
                 for suffix in (".otio", ".otioz")}
        os.umask(0o002)
        modes["umask 002"] = tl.save_timeline(doc, tmp_path / "group.otio").stat().st_mode & 0o777
    finally:
        os.umask(old)
    assert modes == {".otio": 0o644, ".otioz": 0o644, "umask 002": 0o664}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_frames_outside_the_clip_and_unknown_clips(cut):
    path, _, _ = cut
    doc = tl.open_timeline(path)
    ref = tl.find_clip(doc, "A")
    for frame in (-1, 12):
        with pytest.raises(tl.TimelineError, match=r"frame .* is outside clip 'A', which has frames 0 to 11"):
            tl.media_seconds(ref, frame)
    with pytest.raises(tl.TimelineError, match="its video clips are 0: 'A', 1: 'B', 2: 'C'"):
        tl.find_clip(doc, "Z")
    assert tl.find_clip(doc, "2").name == "C"


def test_read_only_storage_fails_before_any_work(tmp_path):
    """A timeline on read-only storage: `extend` says so at once, runs no job, writes nothing."""
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(ROOT / "resources" / "samples" / "sample.otio", folder)
    shutil.copy(ROOT / "resources" / "samples" / "plate.mp4", folder)
    command = [sys.executable, "-m", "magic141", "extend", str(folder / "sample.otio"), "--clip", "Plate A",
               "--prompt", "more", "--seconds", "1", "--model", "tiny"]
    if os.geteuid() == 0:  # root ignores permission bits: make a read-only bind mount in a private namespace
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare: cannot make read-only storage")
        script = (f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} && "
                  + " ".join(f"'{part}'" for part in command))
        command = ["unshare", "-Urm", "sh", "-c", script]
    else:
        folder.chmod(0o555)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        folder.chmod(0o755)
    if "unshare" in command[0] and "mount" in done.stderr and done.returncode != 2:
        pytest.skip(f"no read-only bind mount here: {done.stderr.strip()}")
    assert done.returncode == 2, done.stderr
    assert "read-only" in done.stderr.lower() and "Traceback" not in done.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.slow
def test_extend_command_prints_where_the_clip_landed(tmp_path):
    for name in ("sample.otio", "plate.mp4"):
        shutil.copy(ROOT / "resources" / "samples" / name, tmp_path)
    out = tmp_path / "edited.otio"
    done = subprocess.run(
        [sys.executable, "-m", "magic141", "extend", str(tmp_path / "sample.otio"), "--clip", "Plate A",
         "--prompt", "the ball keeps rolling", "--seconds", "1", "--model", "tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    doc = tl.open_timeline(out)
    track = doc.timeline.video_tracks()[0]
    assert positions(track) == {"Plate A": (0, 36), "Plate A ext": (36, 24), "Plate B": (60, 36)}
    new = tl.find_clip(doc, "Plate A ext")
    assert f"'Plate A ext' landed on track V1 at 01:00:01:12 (frame 36), 24 frames; timeline saved to {out}" \
        in done.stdout
    assert media.probe_video(new.media_path).frames == 24
    info = new.clip.metadata["magic141"]
    assert (info["source_clip"], info["source_frame"], info["source_time"]) == ("Plate A", 35, "35/24")
    shipped = ROOT / "resources" / "samples" / "sample.otio"
    assert (tmp_path / "sample.otio").read_bytes() == shipped.read_bytes()
