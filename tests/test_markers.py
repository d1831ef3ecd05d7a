"""Marker-driven render queues, the OTIO plugin, and the Resolve bridge that brings results back.

The round trip runs for real: the ``magic141`` CLI in a subprocess, the engine service it starts,
the tiny model, SQLite, PyAV, OTIO's plugin system through the installed entry point.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import opentimelineio as otio
import pytest

from magic141.cli import main
from magic141.engine import media
from magic141.errors import EngineError, InvalidInput, TimelineError
from magic141.plugin import markers
from magic141.plugin import timeline as tl
from magic141.plugin.client import EngineClient
from magic141.plugin.hosts.resolve import bridge
from magic141.protocol import JobResult, job_id_of

PLATE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "plate.mp4"
RT, TR = otio.opentime.RationalTime, otio.opentime.TimeRange


def _clip(name: str, start: int, frames: int) -> otio.schema.Clip:
    reference = otio.schema.ExternalReference(target_url="plate.mp4",
                                              available_range=TR(RT(0, 24), RT(72, 24)))
    return otio.schema.Clip(name=name, media_reference=reference,
                            source_range=TR(RT(start, 24), RT(frames, 24)))


def _mark(clip: otio.schema.Clip, frame: int, name: str, comment: str = "") -> None:
    marked = TR(RT(frame, 24), RT(0, 24))
    clip.markers.append(otio.schema.Marker(name=name, marked_range=marked, comment=comment))


def marked_timeline(folder: Path) -> Path:
    """V1: Plate A (plate 0-35), Plate B (36-71); V2: 12-frame gap, Plate C (10-29). Three markers."""
    shutil.copy(PLATE, folder / "plate.mp4")
    timeline = otio.schema.Timeline(name="marks", global_start_time=RT(86400, 24))
    v1, v2 = otio.schema.Track(name="V1"), otio.schema.Track(name="V2")
    a, b, c = _clip("Plate A", 0, 36), _clip("Plate B", 36, 36), _clip("Plate C", 10, 20)
    _mark(a, 30, "magic141: a red ball rolls seconds=1/2")
    _mark(b, 40, "Magic141:  seconds=1/2 seed=3", comment="the camera pushes in")  # prompt in the note
    _mark(b, 44, "review: too dark")  # not ours
    _mark(c, 25, "magic141: fade to night seconds=1/2")
    v1.extend([a, b])
    v2.extend([otio.schema.Gap(source_range=TR(RT(0, 24), RT(12, 24))), c])
    timeline.tracks.extend([v1, v2])
    path = folder / "marks.otio"
    otio.adapters.write_to_file(timeline, str(path))
    return path


def layout(path: Path) -> dict[str, list[tuple[str, int, int]]]:
    doc = tl.open_timeline(path)
    return {track.name: [(item.name, item.range_in_parent().start_time.to_frames(),
                          item.duration().to_frames()) for item in track]
            for track in doc.timeline.video_tracks()}


# Parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, comment, expected", [
    ("magic141: a dog runs", "", ("a dog runs", None, None)),
    ("MAGIC141:a dog runs seconds=2.5 seed=7", "", ("a dog runs", Fraction(5, 2), 7)),
    ("magic141: seed=1 a dog seconds=5/2 runs", "", ("a dog runs", Fraction(5, 2), 1)),
    ("magic141:", "a dog runs seconds=3", ("a dog runs", Fraction(3), None)),
])
def test_marker_names_read_as_requests(name, comment, expected):
    marker = otio.schema.Marker(name=name, comment=comment)
    request = markers.parse_marker(marker)
    assert (request.prompt, request.seconds, request.seed) == expected


@pytest.mark.parametrize("name, message", [
    ("magic141: a dog seconds=abc", "seconds=abc is not a number"),
    ("magic141: a dog seconds=0", "must be more than 0"),
    ("magic141: a dog seed=-1", "seed=-1 must be a whole number"),
    ("magic141: a dog seed=1 seed=2", "seed= is given twice"),
    ("magic141:  seconds=2", "it has no prompt"),
])
def test_bad_markers_say_what_is_wrong(name, message):
    with pytest.raises(TimelineError, match=message) as caught:
        markers.parse_marker(otio.schema.Marker(name=name))
    assert name in str(caught.value) and "\n" not in str(caught.value)


def test_other_markers_are_not_requests():
    for name in ("review: too dark", "magic141 generated", ""):
        assert markers.parse_marker(otio.schema.Marker(name=name)) is None


def test_jobs_are_conditioned_on_the_frame_under_each_marker(tmp_path):
    doc = tl.open_timeline(marked_timeline(tmp_path))
    jobs = markers.marker_jobs(doc)
    assert [(j.ref.name, j.frame, j.prompt, j.seconds, j.seed) for j in jobs] == [
        ("Plate A", 30, "a red ball rolls", Fraction(1, 2), 0),
        ("Plate B", 4, "the camera pushes in", Fraction(1, 2), 3),  # source frame 40, clip starts at 36
        ("Plate C", 15, "fade to night", Fraction(1, 2), 0),
    ]
    # seconds into plate.mp4
    assert [j.spec.source.time for j in jobs] == [Fraction(5, 4), Fraction(5, 3), Fraction(25, 24)]
    assert len({j.job_id for j in jobs}) == 3
    # hosts that drop clip metadata keep file names: the job id comes back from the media's name
    assert [job_id_of(j.spec.output_path(j.job_id)) for j in jobs] == [j.job_id for j in jobs]
    again = markers.marker_jobs(tl.open_timeline(doc.path))
    assert [j.job_id for j in again] == [j.job_id for j in jobs]  # stable, so re-runs reuse them


def test_a_marker_off_its_clip_or_on_offline_media_stops_everything(tmp_path):
    path = marked_timeline(tmp_path)
    doc = tl.open_timeline(path)
    clip = doc.timeline.video_tracks()[0][0]
    _mark(clip, 50, "magic141: too late")  # Plate A shows source frames 0-35
    with pytest.raises(TimelineError, match=r"'magic141: too late' on clip 'Plate A' lies outside the clip"):
        markers.marker_jobs(doc)
    (tmp_path / "plate.mp4").unlink()
    with pytest.raises(TimelineError, match=r"offline.*\(and \d more\)"):
        markers.marker_jobs(tl.open_timeline(path))


def test_out_without_apply_is_refused_before_any_work(tmp_path):
    called = []
    path, out = marked_timeline(tmp_path), tmp_path / "x.otio"
    with pytest.raises(InvalidInput) as caught:
        markers.queue_from_timeline(path, lambda: called.append(1), out=out)
    assert not called
    assert caught.value.field == "out" and "--" not in caught.value.message  # the front end names the field
    assert caught.value.phrase(default="--{}").startswith("--out: is written only when the results are")
    assert main(["queue", "from-timeline", str(path), "--out", str(out)]) == 2
    assert not out.exists() and not called


def test_apply_with_out_writes_out_even_when_every_result_is_already_there(tmp_path, capsys):
    """A script runs ``from-timeline --apply --out again.otio`` and reads again.otio next: it must exist."""
    _, edited = edited_copy(marked_timeline(tmp_path), tmp_path, "insert")
    again = tmp_path / "again.otio"
    before = edited.path.read_bytes()
    assert main(["queue", "--home", str(tmp_path / "no-engine"), "from-timeline", str(edited.path), "--apply",
                 "--out", str(again)]) == 0
    said = capsys.readouterr().out
    assert f"0 clips added, 3 already in the timeline, 0 failed; timeline saved to {again}" in said
    assert layout(again) == layout(edited.path) and edited.path.read_bytes() == before
    assert not (tmp_path / "no-engine" / "service.json").exists()  # nothing to render: no engine was started


# The OTIO plugin ----------------------------------------------------------------------------------


def test_otio_plugin_system_finds_the_hook_and_the_mlt_adapter(tmp_path):
    manifest = otio.plugins.ActiveManifest(force_reload=True)
    assert "magic141_markers" in [hook.name for hook in manifest.hook_scripts]
    assert "magic141_markers" in manifest.hooks["post_adapter_read"]
    assert otio.adapters.from_filepath("cut.mlt").name == "magic141_mlt"
    # Any OTIO read now shows what each marker asks for (or why it is wrong).
    path = marked_timeline(tmp_path)
    timeline = otio.adapters.read_from_file(str(path))
    clip = timeline.video_tracks()[0][0]
    _mark(clip, 3, "magic141: x seconds=abc")
    otio.adapters.write_to_file(timeline, str(path))
    notes = {m.name: dict(m.metadata.get("magic141", {}))
             for c in otio.adapters.read_from_file(str(path)).find_clips() for m in c.markers}
    assert notes["magic141: a red ball rolls seconds=1/2"] == {"prompt": "a red ball rolls", "seconds": "1/2",
                                                                "seed": None}
    assert "seconds=abc is not a number" in notes["magic141: x seconds=abc"]["error"]
    assert notes["review: too dark"] == {}


def test_the_markers_hook_costs_no_pyav_or_numpy(tmp_path):
    """The hook runs on every OTIO read in any tool; importing PyAV and numpy once cost 0.28 s a read."""
    path = marked_timeline(tmp_path)
    script = textwrap.dedent(f"""
        import json, sys
        import opentimelineio as otio
        timeline = otio.adapters.read_from_file({str(path)!r})  # OTIO loads our hook from the entry point
        notes = [dict(m.metadata.get("magic141", {{}})) for c in timeline.find_clips() for m in c.markers]
        print(json.dumps({{"notes": notes, "hook": "magic141.plugin.markers" in sys.modules,
                           "heavy": sorted({{"av", "numpy", "torch", "PySide6"}} & set(sys.modules))}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          check=True)
    seen = json.loads(done.stdout)
    assert seen["hook"] and {"prompt": "fade to night", "seconds": "1/2", "seed": None} in seen["notes"]
    assert seen["heavy"] == []


# The render queue, for real ------------------------------------------------------------------------


def cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAGIC141_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "magic141", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


@pytest.mark.slow
def test_three_markers_on_two_tracks_become_three_jobs_and_three_clips_once(tmp_path, home, monkeypatch):
    path = marked_timeline(tmp_path)
    original = path.read_bytes()

    queued = cli("queue", "from-timeline", str(path), home=home)
    assert queued.returncode == 0, queued.stderr
    lines = queued.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("mk-") for line in lines)
    client = EngineClient(home).connect(start=False)
    jobs = {job["id"]: job for job in client.jobs()}
    assert set(jobs) == {line.split()[0] for line in lines}
    assert sorted(job["spec"]["source"]["time"] for job in jobs.values()) == ["25/24", "5/3", "5/4"]
    assert path.read_bytes() == original  # without --apply the timeline is not touched

    out = tmp_path / "applied.otio"
    applied = cli("queue", "from-timeline", str(path), "--apply", "--out", str(out), home=home)
    assert applied.returncode == 0, applied.stderr
    assert "3 clips added, 0 already in the timeline, 0 failed" in applied.stdout
    assert layout(out) == {
        "V1": [("Plate A", 0, 36), ("Plate A ext", 36, 12), ("Plate B", 48, 36), ("Plate B ext", 84, 12)],
        "V2": [("", 0, 12), ("Plate C", 12, 20), ("Plate C ext", 32, 12)],
    }
    doc = tl.open_timeline(out)
    placed = {ref.name: ref for ref in tl.video_clips(doc) if ref.name.endswith(" ext")}
    assert {ref.clip.metadata["magic141"]["job_id"] for ref in placed.values()} == set(jobs)
    for ref in placed.values():
        assert media.probe_video(ref.media_path).frames == 12  # 1/2 s at 24 fps, as asked
    assert placed["Plate B ext"].clip.metadata["magic141"]["prompt"] == "the camera pushes in"
    assert len(client.jobs()) == 3  # the jobs queued before were reused, not submitted again

    before = out.read_bytes()
    again = cli("queue", "from-timeline", str(out), "--apply", home=home)
    assert again.returncode == 0, again.stderr
    assert "0 clips added, 3 already in the timeline" in again.stdout
    assert out.read_bytes() == before and len(client.jobs()) == 3

    # Resolve's side of the same round trip: the plan places each clip where its source clip ends
    # in Resolve's (unrippled) timeline, from 01:00:00:00, on new tracks wherever clips overlap.
    plan = bridge.plan(tl.open_timeline(path), doc, "append")
    assert [(c["name"], c["record_frame"], c["lane"], c["frames"]) for c in plan["clips"]] == [
        ("Plate A ext", 86400 + 36, 2, 12), ("Plate B ext", 86400 + 72, 1, 12),
        ("Plate C ext", 86400 + 32, 1, 12)]
    assert plan["lanes"] == 2

    # The whole Resolve menu script, with a stand-in for Resolve: it exports the timeline, the bridge
    # runs the markers in a copy under $MAGIC141_HOME/resolve/ (the jobs done above are reused, not
    # rendered again), and the plan is followed with Media Pool calls.
    script = importlib.import_module("magic141.plugin.hosts.resolve.menu_script")
    project, timeline = FakeProject(), FakeTimeline(tracks=2)

    def export(target: str, kind: str, subtype: int) -> bool:  # Resolve writes absolute media paths
        exported = otio.adapters.read_from_file(str(path))
        for clip in exported.find_clips():
            clip.media_reference.target_url = str(tmp_path / clip.media_reference.target_url)
        if project.pool.appended:  # what Resolve's timeline now holds: the clips, without our metadata
            track = otio.schema.Track(name="Video 3")
            for info in sorted(project.pool.appended, key=lambda info: info["recordFrame"])[:1]:
                track.append(otio.schema.Gap(source_range=TR(RT(0, 24), RT(info["recordFrame"] - 86400, 24))))
                track.append(_clip("Plate C ext", 0, 12))
                track[-1].media_reference.target_url = info["mediaPoolItem"].removeprefix("item:")
            exported.tracks.append(track)
        otio.adapters.write_to_file(exported, target)
        return kind == "OTIO" and subtype == 0

    timeline.Export = export
    manager = type("Manager", (), {"GetCurrentProject": lambda _: project})()
    app = type("Resolve", (), {"EXPORT_OTIO": "OTIO", "EXPORT_NONE": 0,
                               "GetProjectManager": lambda _: manager})()
    project.GetCurrentTimeline = lambda: timeline
    for name, value in (("resolve", app), ("MAGIC141_PYTHON", sys.executable), ("ACTION", "markers")):
        monkeypatch.setattr(script, name, value, raising=False)
    monkeypatch.setenv("MAGIC141_HOME", str(home))
    script.main()
    assert sorted((i["recordFrame"], i["trackIndex"]) for i in project.pool.appended) == [
        (86432, 3), (86436, 4), (86472, 3)]
    assert len(client.jobs()) == 3  # the media rendered above, not new renders
    assert sorted(project.pool.imported) == sorted(str(ref.media_path.resolve()) for ref in placed.values())
    # Run again on what Resolve now shows: the clip placed there is recognised by its media's name.
    appended = len(project.pool.appended)
    script.main()
    assert len(project.pool.appended) == appended + 2 and len(client.jobs()) == 3


# The Resolve bridge, without Resolve ---------------------------------------------------------------


class FakeMediaPool:
    def __init__(self):
        self.appended, self.imported = [], []

    def ImportMedia(self, paths):
        self.imported += paths
        return [f"item:{path}" for path in paths]

    def AppendToTimeline(self, infos):
        self.appended += infos
        return [object()]

    def ImportTimelineFromFile(self, path, options):
        self.imported.append((path, options))
        return f"timeline:{options['timelineName']}"


class FakeProject:
    def __init__(self):
        self.pool, self.current = FakeMediaPool(), None

    def GetMediaPool(self):
        return self.pool

    def SetCurrentTimeline(self, timeline):
        self.current = timeline
        return True


class FakeTimeline:
    def __init__(self, tracks):
        self.tracks = tracks

    def GetTrackCount(self, kind):
        return self.tracks if kind == "video" else 0

    def AddTrack(self, kind):
        self.tracks += 1
        return True


def edited_copy(path: Path, tmp_path: Path, mode: str) -> tuple[tl.TimelineDoc, tl.TimelineDoc]:
    """The marked timeline with every marker's result placed in ``mode`` (media files stand in)."""
    doc = tl.open_timeline(path)
    jobs = markers.marker_jobs(doc)
    results = {}
    for job in jobs:
        media_file = shutil.copy(PLATE, tmp_path / f"{job.job_id}.mp4")
        results[job.job_id] = JobResult(str(media_file), 12, Fraction(24), 96, 64, "h264")
    markers.apply_results(doc, jobs, results, mode=mode)
    return tl.open_timeline(path), tl.open_timeline(tl.save_timeline(doc, tmp_path / f"{mode}.otio"))


@pytest.mark.parametrize("mode", ["insert", "overwrite", "newtrack"])
def test_resolve_plan_places_clips_where_their_source_clip_ends_whatever_the_edit_mode(tmp_path, mode):
    exported, edited = edited_copy(marked_timeline(tmp_path), tmp_path, mode)
    plan = bridge.plan(exported, edited, "append")
    assert sorted((c["name"], c["record_frame"]) for c in plan["clips"]) == [
        ("Plate A ext", 86436), ("Plate B ext", 86472), ("Plate C ext", 86432)]
    lanes = {}
    for clip in plan["clips"]:  # clips on one lane never overlap
        for other in lanes.setdefault(clip["lane"], []):
            assert clip["record_frame"] >= other[1] or clip["record_frame"] + clip["frames"] <= other[0]
        lanes[clip["lane"]].append((clip["record_frame"], clip["record_frame"] + clip["frames"]))
    assert bridge.plan(exported, exported, "append")["clips"] == []


def test_the_resolve_script_follows_the_plan_with_resolves_api(tmp_path):
    # imported, main() does not run
    script = importlib.import_module("magic141.plugin.hosts.resolve.menu_script")
    exported, edited = edited_copy(marked_timeline(tmp_path), tmp_path, "insert")
    project, timeline = FakeProject(), FakeTimeline(tracks=2)
    said = script.apply_plan(project, timeline, bridge.plan(exported, edited, "append"))
    assert said == "added 3 clips on 2 new video tracks" and timeline.tracks == 4
    placed = sorted((info["recordFrame"], info["trackIndex"], info["endFrame"], info["mediaType"])
                    for info in project.pool.appended)
    assert placed == [(86432, 3, 11, 1), (86436, 4, 11, 1), (86472, 3, 11, 1)]
    said = script.apply_plan(project, timeline, bridge.plan(exported, edited, "import"))
    assert said == "imported the edited timeline as 'marks magic141'"
    assert project.current == "timeline:marks magic141" and project.pool.imported[-1][0] == str(edited.path)


def test_install_writes_menu_scripts_that_know_this_python(tmp_path):
    written = bridge.install(tmp_path / "Scripts" / "Utility", python="/opt/venv/bin/python", mode="import")
    assert sorted(p.name for p in written) == ["Magic141 Markers.py", "Magic141 Panel.py"]
    text = (tmp_path / "Scripts" / "Utility" / "Magic141 Markers.py").read_text()
    assert "MAGIC141_PYTHON = '/opt/venv/bin/python'" in text and "ACTION = 'markers'" in text
    assert "MODE = 'import'" in text
    compile(text, "Magic141 Markers.py", "exec")
    # Run outside Resolve, the installed script says so in one line instead of failing.
    done = subprocess.run([sys.executable, str(written[0])], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and done.stdout.strip() == (
        "Magic141: run this from DaVinci Resolve's Workspace > Scripts menu")


class _RestartingEngine:
    """A client whose service stops answering ``losses`` times in a row, then answers again."""

    def __init__(self, records: list, losses: int = 1) -> None:
        self.records, self.losses, self.connects = list(records), losses, 0

    def job(self, job_id: str) -> dict:
        record = self.records[0]
        if record == "lost":
            if self.losses == 0:
                self.records.pop(0)
                return self.job(job_id)
            self.losses -= 1
            raise EngineError("cannot reach the engine service: connection refused", 0)
        if len(self.records) > 1:
            self.records.pop(0)
        return record

    def connect(self) -> _RestartingEngine:
        self.connects += 1
        return self


def test_a_wait_rides_out_an_engine_restart_and_ends_as_the_queue_says():
    done = {"id": "j1", "state": "DONE", "result": {"path": "/out/a.mp4"}, "error": None}
    engine = _RestartingEngine([{"id": "j1", "state": "RUNNING"}, "lost", done], losses=2)
    said: list[str] = []
    ended = markers.wait_for(engine, ["j1"], poll=0, say=said.append)
    assert ended["j1"]["state"] == "DONE" and engine.connects == 2
    assert sum("reconnecting" in line for line in said) == 2  # and never "FAILED"
    assert not any("FAILED" in line for line in said)


def test_a_wait_gives_up_after_repeated_losses_and_never_on_a_refusal():
    engine = _RestartingEngine([{"id": "j1", "state": "RUNNING"}, "lost"], losses=markers.RECONNECTS + 1)
    with pytest.raises(EngineError, match="cannot reach"):
        markers.wait_for(engine, ["j1"], poll=0, say=lambda line: None)
    assert engine.connects == markers.RECONNECTS

    class Refusing(_RestartingEngine):
        def job(self, job_id):
            raise EngineError("no job with id 'j1'", 404)

    refusing = Refusing([])
    with pytest.raises(EngineError, match="no job"):
        markers.wait_for(refusing, ["j1"], poll=0, say=lambda line: None)
    assert refusing.connects == 0


@pytest.mark.slow
def test_a_wait_follows_its_job_through_a_kill_9_of_the_engine(tmp_path):
    from conftest import SAMPLE_IMAGE, stop_service

    from magic141.protocol import EventType, JobSpec

    root = tmp_path / "home"
    client = EngineClient(root).connect()
    try:
        spec = JobSpec.from_json({
            "version": 1, "source": {"kind": "image", "path": str(SAMPLE_IMAGE)}, "prompt": "a ball",
            "seconds": "6", "fps": "24", "height": 32, "width": 48, "model": "tiny",
            "output_dir": str(tmp_path / "out")})
        client.submit(spec, job_id="long")
        for event in client.events("long"):
            if event.type == EventType.STEP:
                break
        stop_service(root)  # kill -9 mid-job: the queue still holds it RUNNING
        said: list[str] = []
        ended = markers.wait_for(client, ["long"], poll=0.2, say=said.append)
        assert ended["long"]["state"] == "DONE" and ended["long"]["attempts"] == 2
        assert any("reconnecting" in line for line in said)
        assert Path(ended["long"]["result"]["path"]).is_file()
    finally:
        stop_service(root)
