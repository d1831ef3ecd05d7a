"""The Blender sequencer add-on: exact rates and placements on plain records, and the add-on itself
in real Blender against a real engine service on the tiny model.

In each Blender (tests/blender_hosts.py: Debian's 3.4 as ``blender -b``, and the PyPI ``bpy`` wheels
4.2, 4.5 and 5.0) one session (tests/blender_session.py) builds a scene at 24000/1001 fps, installs
the add-on from the zip that ``magic141 install-blender-addon --out`` writes, and drives its
operators: bad input, a retimed strip, Channel Above and Insert After from the playhead and from the
strip's end, export to OTIO and import back. The tests below check what it saw.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from blender_hosts import BPY_VERSIONS
from blender_hosts import command as host_command
from conftest import stop_service

from magic141.cli import main as magic141
from magic141.engine import media
from magic141.errors import TimelineError
from magic141.plugin import markers
from magic141.plugin import timeline as tl
from magic141.plugin.client import EngineClient
from magic141.plugin.hosts.blender import exchange
from magic141.plugin.hosts.blender import strips as vse
from magic141.plugin.hosts.blender.strips import Cut, Placement, Strip, place, scene_rate
from magic141.rational import frame_count

ROOT = Path(__file__).resolve().parents[1]
PLATE = ROOT / "resources" / "samples" / "plate.mp4"  # 72 frames at 24 fps, 96x64
SESSION = Path(__file__).with_name("blender_session.py")
NTSC = Fraction(24000, 1001)


def float32(value: float) -> float:
    """What Blender stores for a float property such as ``fps_base``."""
    return struct.unpack("f", struct.pack("f", value))[0]


# Without Blender: rates, placements, OTIO ---------------------------------------------------


def test_scene_rates_are_exact_however_blender_writes_them():
    assert scene_rate(24, float32(1.001)) == NTSC  # Blender's preset: 24 and 1.001 (1.00100004673...)
    assert scene_rate(24000, float32(1001.0)) == NTSC
    assert scene_rate(30, float32(1.001)) == Fraction(30000, 1001)
    assert scene_rate(60, float32(1.001)) == Fraction(60000, 1001)
    assert scene_rate(25, 1.0) == 25
    assert scene_rate(25, float32(2.0)) == Fraction(25, 2)
    for rate in (NTSC, Fraction(30000, 1001), Fraction(24), Fraction(25, 2), Fraction(50)):
        fps, base = vse.blender_fps(rate)
        assert scene_rate(fps, float32(base)) == rate
    assert vse.blender_fps(NTSC) == (24, 1.001)
    with pytest.raises(TimelineError, match="frame rate must be positive"):
        scene_rate(0, 1.0)


def strip(name: str, channel: int, start: int, duration: int, **fields) -> Strip:
    return Strip(name, channel, start, duration, path=PLATE, **fields)


def test_insert_shifts_the_channel_after_the_source_and_above_finds_a_free_channel():
    source = strip("A", 2, 1, 10)
    strips = [source, strip("B", 2, 20, 5), strip("C", 2, 11, 4), strip("D", 1, 30, 5), strip("E", 3, 8, 4),
              strip("F", 4, 15, 10)]
    assert place(strips, source, 6, "insert") == Placement(2, 11, ("B", "C"))  # rightmost first
    assert place(strips, source, 6, "above").channel == 5  # 3 is taken at frame 11, 4 at frame 15
    assert place(strips, source, 4, "above").channel == 4  # frames 11 to 14 are free on 4
    # A cut inside the source (From Playhead): the new strip starts there, as Blender's split cuts.
    assert place(strips, source, 6, "insert", cut=5) == Placement(2, 5, ("B", "C"), split=True)
    assert place(strips, source, 6, "above", cut=5) == Placement(4, 5)  # 3 is taken from frame 8
    assert place(strips, source, 2, "above", cut=5) == Placement(3, 5)  # frames 5 and 6 are free on 3
    for outside in (1, 12):
        with pytest.raises(TimelineError, match=f"a cut at frame {outside} is not inside strip 'A': it must "
                                                "be from frame 2 to 11"):
            place(strips, source, 6, "above", cut=outside)
    with pytest.raises(TimelineError, match="placement: must be one of insert, above") as caught:
        place(strips, source, 6, "overwrite")
    assert caught.value.field == "placement"
    full = [source] + [strip(f"S{n}", n, 1, 100) for n in range(3, 129)]
    with pytest.raises(TimelineError, match="no channel above 2 is free from frame 11 to 16"):
        place(full, source, 6, "above")


def test_strips_go_to_otio_and_back_with_the_same_ranges(tmp_path):
    strips = (strip("Plate A", 1, 1, 36, media_start=0), strip("Plate B", 1, 37, 20, media_start=40),
              strip("Top", 3, 10, 12, media_start=5, metadata={"job_id": "abc"}),
              Strip("Color", 2, 5, 10, kind="COLOR"), Strip("Music", 4, 1, 90, kind="SOUND"))
    cut = Cut("cut", Fraction(24), strips, (("magic141: keep rolling seconds=1", 45), ("note", 3)))
    saved, warnings = exchange.save(cut, tmp_path / "cut.otio")
    assert warnings == ["1 sound strips are left out"]
    back, warnings = exchange.load(saved)
    assert warnings == ["clip 'Color' is left out: it has no media reference"]
    assert set(back.strips) == {s for s in strips if s.kind == "MOVIE"}  # channel, start, length, media frame
    assert next(s for s in back.strips if s.name == "Top").metadata == {"job_id": "abc"}
    assert sorted(back.markers) == sorted(cut.markers)
    (job,) = markers.marker_jobs(tl.open_timeline(saved), model="tiny")
    # The marker at frame 45 is frame 8 of "Plate B", media frame 48: 2 s at 24 fps.
    assert (job.ref.name, job.frame, job.spec.source.time) == ("Plate B", 8, 2)


def test_a_strip_whose_media_runs_at_another_rate_keeps_its_place_and_first_frame(tmp_path):
    cut = Cut("ntsc", NTSC, (strip("Plate", 1, 1, 30, media_start=12),))  # 24 fps media in a 23.976 scene
    saved, warnings = exchange.save(cut, tmp_path / "ntsc.otio")
    assert "its media runs at 24 fps and the scene at 24000/1001" in warnings[0]
    doc = tl.open_timeline(saved)
    assert doc.rate == NTSC and tl.clip_frames(tl.video_clips(doc)[0], NTSC) == 30  # as long on the timeline
    assert tl.media_seconds(tl.video_clips(doc)[0], 0) == Fraction(12, 24)  # media frame 12, at its rate
    back, _ = exchange.load(saved)
    assert back.strips == cut.strips


# In Blender ------------------------------------------------------------------------------------

HOSTS = ("debian", *BPY_VERSIONS)


def unavailable(reason: str):
    if os.environ.get("MAGIC141_REQUIRE_BLENDER"):
        pytest.fail(f"{reason}, but MAGIC141_REQUIRE_BLENDER is set (.ci/run installs every Blender)")
    pytest.skip(reason)


def host_python(run: list[str]) -> list[str]:
    """The Python version a Blender runs, as ["3", "11"]."""
    script = "import sys; print('PYTHON', *sys.version_info[:2])"
    args = [*run[:-1], "--python-expr", script] if run[-1] == "--python" else [*run, "-c", script]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    return next((line.split()[1:] for line in done.stdout.splitlines() if line.startswith("PYTHON ")), ["?"])


@pytest.fixture(scope="module", params=HOSTS)
def host(request):
    """The command that runs a script in one Blender: Debian's, or a bpy wheel's Python."""
    run, reason = host_command(request.param)
    if run is None:
        unavailable(reason)
    # The add-on loads this Python's compiled packages (PyAV, OTIO): Blender's must be the same version.
    found = host_python(run)
    if found != [str(part) for part in sys.version_info[:2]]:
        unavailable(f"{request.param} Blender runs Python {'.'.join(found)}, these tests "
                    f"Python {sys.version.split()[0]}")
    return request.param, run


def blender_env(folder: Path, home: Path) -> dict:
    """Blender's user scripts and preferences in ``folder``: tests never touch the user's own."""
    return {**os.environ, "MAGIC141_HOME": str(home), "BLENDER_USER_SCRIPTS": str(folder / "scripts"),
            "BLENDER_USER_CONFIG": str(folder / "config")}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One engine service for every Blender: it stays warm from one to the next."""
    home = tmp_path_factory.mktemp("engine-home")
    yield home
    stop_service(home)


@pytest.fixture(scope="module")
def session(host, home, tmp_path_factory):
    name, run = host
    folder = tmp_path_factory.mktemp(f"blender-{name}")
    plate = folder / "plate 2398.mp4"  # a space in the name, 1 s at 24000/1001, 48x32
    with media.VideoWriter(plate, fps=NTSC, codec="h264", width=48, height=32) as writer:
        writer.write(media.read_frames(PLATE)[:24, ::2, ::2])
    assert magic141(["install-blender-addon", "--out", str(folder / "magic141_vse.zip")]) == 0
    config = {"folder": str(folder), "plate": str(plate), "zip": str(folder / "magic141_vse.zip"),
              "empty_home": str(folder / "empty_home"), "report": str(folder / "report.json")}
    (folder / "config.json").write_text(json.dumps(config))
    done = subprocess.run([*run, str(SESSION), "--", str(folder / "config.json")], capture_output=True,
                          text=True, timeout=400, env=blender_env(folder, home), check=False)
    report = folder / "report.json"
    assert report.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(report.read_text())
    assert "crash" not in seen, seen["crash"]
    return {**seen, "host": name, "folder": folder, "home": home, "plate": plate}


def spec_of(session, new: dict) -> dict:
    client = EngineClient(session["home"]).connect(start=False)
    return client.job(new["metadata"]["job_id"])["spec"]


def check_media(new: dict) -> None:
    info = media.probe_video(new["path"])
    assert info.frames == new["duration"] == frame_count(Fraction(1, 2), NTSC) == 12
    assert info.fps == NTSC


def continued_time(session, new: dict) -> Fraction:
    """The media time of the plate frame the new strip continues."""
    source = spec_of(session, new)["source"]
    assert source["kind"] == "media" and source["path"] == str(session["plate"])
    return Fraction(source["time"])


@pytest.mark.slow
def test_the_addon_loads_and_reports_bad_input_in_plain_words(session):
    if session["host"] != "debian":
        assert session["version"][:2] == [int(part) for part in session["host"].split(".")[:2]]
    assert session["addon_problem"] == ""
    errors = session["errors"]
    assert errors["no_active"] == "Error: No active strip: click a movie strip in the sequencer first"
    assert errors["not_movie"] == "Error: strip 'Color' is a color strip: choose a movie strip"
    assert errors["missing_media"].startswith("Error: strip 'Gone': its media ") and "is missing" in errors[
        "missing_media"]
    assert errors["outside"] == ("Error: the playhead (frame 30) must be inside strip 'Plate', after its "
                                 "first frame: from frame 4 to 24")
    assert errors["bad_seconds"].startswith("Error: seconds=soon is not a number")
    # An engine that cannot start: the operator returns at once, the failure arrives from the worker.
    assert errors["unreachable_operator"] == "FINISHED"
    assert errors["unreachable"] == errors["unreachable_status"] == (
        "cannot start the engine service with /nonexistent/python3: No such file or directory")
    # A retimed strip does not show its media frame for frame: refused, saying how to undo it.
    speed = ("plays at speed 2" if session["version"][0] < 4 else
             "is retimed (3 retiming keys; Strip > Retiming > Reset Retiming plays it frame for frame again)")
    assert errors["retimed"] == (f"Error: strip 'Fast' {speed}: Magic141 continues movie strips that show "
                                 "their media frame for frame")
    assert session["retimed_frames"] < 24  # it does play faster
    assert errors["strips_unchanged"]
    assert session["torch_imported"] is False


@pytest.mark.slow
def test_blender_5_edits_the_sequencer_scene_not_the_window_scene(session):
    if session["version"][0] < 5:
        assert session["edit_scene"] == session["window_scene"]  # one scene before 5.0
        return
    assert session["edit_scene"] != session["window_scene"]
    # Every extend above found its strips in the workspace's sequencer scene, and import shows its scene.
    assert session["insert_end"]["operator"] == "FINISHED" and session["round_trip"]["shown"]


@pytest.mark.slow
def test_channel_above_from_the_playhead_starts_the_new_strip_at_the_playhead(session):
    before, seen = session["source_before"], session["above_playhead"]
    assert (before["start"], before["duration"], before["media_start"]) == (3, 21, 3)  # trimmed and held
    assert seen["operator"] == "FINISHED" and seen["history"][1] == "done"
    new = seen["strips"]["Plate ext"]
    assert (new["channel"], new["start"]) == (4, 13)  # channel 3 holds "Other" from frame 24
    check_media(new)
    assert Path(new["path"]).parent == session["folder"] / "project_magic141"  # beside the .blend
    # The playhead at frame 13 cuts there: frame 12 is continued, media frame 12 (hold 1 + trim 2 + 9).
    assert continued_time(session, new) == Fraction(12 * 1001, 24000)
    assert (new["metadata"]["source_frame"], new["metadata"]["source_time"]) == (9, "1001/2000")
    assert {name: s for name, s in seen["strips"].items() if name != "Plate ext"} == session["before_extend"]
    assert seen["frame_end"] == 30  # the new strip ends at 24, inside the scene


@pytest.mark.slow
def test_insert_after_the_strip_shifts_its_channel_and_the_scene_end(session):
    seen = session["insert_end"]
    after = seen["strips"]
    new = after["Plate ext.001"]
    assert (new["channel"], new["start"]) == (2, 24)
    check_media(new)
    assert continued_time(session, new) == Fraction(23023, 24000)  # the strip's last frame, 23
    assert after["Later"]["start"] == 40 + 12
    assert after["Other"] == session["before_extend"]["Other"]  # other channels stay
    assert after["Plate"] == session["source_before"]
    assert seen["frame_end"] == 30 + 12  # the scene's end ripples with the insert
    spec = spec_of(session, new)
    assert spec["fps"] == "24000/1001" and spec["seed"] == 3 and spec["model"] == "tiny"
    assert "scene end moved to frame 42" in seen["history"][2]


@pytest.mark.slow
def test_insert_from_the_playhead_cuts_the_strip_there_and_shifts_its_tail(session):
    seen, was = session["insert_playhead"], session["insert_end"]["strips"]
    after = seen["strips"]
    new = after["Plate ext.002"]
    assert (new["channel"], new["start"], new["duration"]) == (2, 10, 12)
    assert continued_time(session, new) == Fraction(9 * 1001, 24000)  # frame 9 shows media frame 9
    # "Plate" ends at the cut; its tail, from media frame 10, goes after the new strip.
    assert (after["Plate"]["start"], after["Plate"]["duration"]) == (3, 7)
    tail = after["Plate.001"]
    assert (tail["channel"], tail["start"], tail["duration"], tail["media_start"]) == (2, 22, 14, 10)
    assert after["Plate ext.001"]["start"] == was["Plate ext.001"]["start"] + 12
    assert after["Later"]["start"] == was["Later"]["start"] + 12
    assert after["Plate ext"] == was["Plate ext"] and after["Other"] == was["Other"]
    assert seen["frame_end"] == session["insert_end"]["frame_end"] + 12
    assert "'Plate' cut at frame 10; 3 strips moved right by 12 frames" in seen["history"][2]


@pytest.mark.slow
def test_a_scene_goes_to_otio_and_back_with_the_same_ranges_and_a_frame_range_that_holds_them(session):
    trip = session["round_trip"]
    assert session["export"] == session["import"] == "FINISHED"
    movies = {name: s for name, s in trip["original"].items() if s["type"] == "MOVIE" and name != "Gone"}
    assert trip["imported"] == movies  # channel, start, length, first media frame, file, metadata
    assert scene_rate(*trip["fps"]) == NTSC and trip["frame_start"] == 1
    assert trip["frame_end"] == max(s["start"] + s["duration"] for s in movies.values()) - 1 == 87
    assert trip["markers"] == [["cut here", 5], ["magic141: the ball keeps rolling seconds=1/2", 6]]
    # The marker queue reads the exported cut: the marker sits on "Plate" at frame 6, media frame 6.
    doc = tl.open_timeline(session["folder"] / "cut.otio")
    (job,) = markers.marker_jobs(doc, model="tiny")
    assert (job.ref.name, job.frame, job.spec.source.time, job.seconds) == (
        "Plate", 3, Fraction(1001, 4000), Fraction(1, 2))
    generated = {s["metadata"]["job_id"] for s in movies.values() if s["metadata"]}
    assert len(generated) == 3 and markers.generated_job_ids(doc) == generated


def test_install_command_installs_and_enables_the_addon(tmp_path):
    run, reason = host_command("debian")  # a Blender executable: the bpy wheels have none
    if run is None:
        unavailable(reason)
    home = tmp_path / "home"
    done = subprocess.run([sys.executable, "-m", "magic141", "install-blender-addon", "--blender", run[0]],
                          capture_output=True, text=True, timeout=300, env=blender_env(tmp_path, home),
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "installed and enabled magic141_vse" in done.stdout
    assert (tmp_path / "scripts" / "addons" / "magic141_vse" / "__init__.py").is_file()
    assert (tmp_path / "config" / "userpref.blend").is_file()  # enabled for the next start
    assert (home / "blender" / "magic141_vse.zip").is_file()
