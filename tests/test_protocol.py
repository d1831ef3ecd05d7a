"""The wire contract: versioned JSON, exact rationals, migrations, and refusals that name the field."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from fractions import Fraction

import pytest

from magic141 import atomic, protocol
from magic141.errors import InvalidInput, Magic141Error, SchemaTooNew
from magic141.protocol import Event, EventType, JobResult, JobSpec, JobState, Source
from magic141.rational import parse_rate, rate_from_float, rational_text

BASE = {"version": protocol.SPEC_VERSION,
        "source": {"kind": "media", "path": "/plates/010.mov", "time": "1001/24"},
        "prompt": "push in", "seconds": "5/2", "fps": "24000/1001", "output_dir": "/renders"}


def test_round_trip_keeps_rationals_exact():
    spec = JobSpec.from_json(BASE)
    assert spec.source.time == Fraction(1001, 24) and spec.fps == Fraction(24000, 1001)
    assert spec.seconds == Fraction(5, 2)
    data = spec.to_json()
    assert data["fps"] == "24000/1001" and data["source"]["time"] == "1001/24"
    assert data["version"] == protocol.SPEC_VERSION
    assert JobSpec.from_json(data) == spec
    assert spec.output_path("abc") == "/renders/magic141_abc.mp4"


@pytest.mark.parametrize(
    "change,field",
    [
        ({"version": "1"}, "version"),
        ({"prompt": "  "}, "prompt"),
        ({"seconds": "0"}, "seconds"),
        ({"seconds": 2.5}, "seconds"),  # a float is refused: rationals travel as strings
        ({"fps": "24/0"}, "fps"),
        ({"seed": -1}, "seed"),
        ({"height": 30}, "height"),
        ({"codec": "vp9"}, "codec"),
        ({"quant": "int4"}, "quant"),
        ({"output_dir": "relative/dir"}, "output_dir"),
        ({"output_name": "../escape.mp4"}, "output_name"),
        ({"output_name": ".hidden.mp4"}, "output_name"),
        ({"output_name": "a\\b.mp4"}, "output_name"),
        ({"source": {"kind": "image", "path": "frame.png"}}, "source.path"),
        ({"source": {"kind": "clip"}}, "source.kind"),
        ({"source": {"kind": "media", "path": "/a.mov", "time": "-1"}}, "source.time"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_fields_are_named(change, field):
    with pytest.raises(InvalidInput) as error:
        JobSpec.from_json({**BASE, **change})
    assert error.value.field == field and str(error.value).startswith(f"{field}:")


@pytest.mark.parametrize("name", ["take (2).mp4", "café.mov", "Ball_ext_mk-01.mp4"])
def test_output_names_may_be_any_plain_file_name(name):
    assert JobSpec.from_json({**BASE, "output_name": name}).output_name == name


def test_a_newer_spec_is_refused_as_too_new():
    newer, current = protocol.SPEC_VERSION + 1, protocol.SPEC_VERSION
    with pytest.raises(SchemaTooNew, match=f"version {newer}.*reads up to version {current}.*upgrade"):
        JobSpec.from_json({**BASE, "version": newer})


def test_a_spec_built_in_code_is_checked_as_one_read_from_json():
    source = Source("media", "/plates/010.mov", Fraction(1001, 24))
    spec = JobSpec(source=source, prompt="push in", output_dir="/renders", seconds=Fraction(5, 2),
                   fps=Fraction(24000, 1001))
    assert spec == JobSpec.from_json(BASE)
    with pytest.raises(InvalidInput) as error:
        JobSpec(source=source, prompt="push in", output_dir="/renders", fps=23.976)  # type: ignore[arg-type]
    assert error.value.field == "fps"
    with pytest.raises(InvalidInput) as error:
        spec.replace(height=30)
    assert error.value.field == "height"


RESULT = {"path": "/renders/a.mp4", "frames": 24, "fps": "24000/1001", "width": 48, "height": 32,
          "codec": "h264", "windows": 1, "settings": {"steps": 4}, "timings": {"total": 1.5}}


def test_results_are_versioned_and_old_unversioned_ones_still_read():
    result = JobResult.from_json({**RESULT, "version": 1})
    assert result.fps == Fraction(24000, 1001)
    assert result.to_json() == {**RESULT, "version": protocol.RESULT_VERSION}
    # Results stored before versions wrote fps as "24/1": they read back as version 1.
    old = JobResult.from_json({**RESULT, "fps": "24/1"})
    assert old.fps == 24 and old.to_json()["fps"] == "24" and old.to_json()["version"] == 1
    with pytest.raises(InvalidInput) as error:
        JobResult.from_json({**RESULT, "frames": 0})
    assert error.value.field == "frames"
    for name in ("codec", "width"):
        with pytest.raises(InvalidInput, match="is missing") as error:
            JobResult.from_json({key: value for key, value in RESULT.items() if key != name})
        assert error.value.field == name
    with pytest.raises(SchemaTooNew):
        JobResult.from_json({**RESULT, "version": 99})


def test_events_round_trip_and_one_vocabulary_maps_states_to_their_last_event():
    event = Event("j1", EventType.STEP, seq=3, step=2, total=4, window=2, windows=2)
    data = event.to_json()
    assert data == {"version": 1, "job": "j1", "type": "step", "seq": 3, "time": 0.0, "step": 2, "total": 4,
                    "window": 2, "windows": 2}
    assert Event.from_json(json.loads(json.dumps(data))) == event
    assert event.fraction == 0.75
    finished = Event.ending("j1", JobState.DONE, {**RESULT, "version": 1}, None)
    assert finished.type is EventType.FINISHED and finished.type.terminal
    assert finished.result == JobResult.from_json(RESULT)
    assert Event.from_json(finished.to_json()) == finished
    assert {EventType.ending(s) for s in protocol.TERMINAL_STATES} == protocol.TERMINAL_EVENTS
    assert not any(s.terminal for s in protocol.ACTIVE_STATES | {JobState.PENDING})
    with pytest.raises(InvalidInput) as error:
        Event.from_json({"version": 1, "job": "j1", "type": "exploded"})
    assert error.value.field == "type"


def test_output_names_parse_back_to_their_job_id():
    name = protocol.output_name("Ball shot (v2)", "ext", "mk-0123456789abcdef0123", "prores")
    assert name == "Ball_shot_v2_ext_mk-0123456789abcdef0123.mov"
    assert protocol.job_id_of(f"/media/{name}") == "mk-0123456789abcdef0123"
    assert protocol.job_id_of(protocol.output_name("a_text_b", "text", "abc123", "h264")) == "abc123"
    assert protocol.job_id_of("plate.mp4") is None and protocol.job_id_of("Ball_ext_.mp4") is None
    with pytest.raises(InvalidInput):
        protocol.output_name("Ball", "ext", "has_underscore", "h264")  # would not parse back


def test_clip_record_is_versioned_and_exact():
    spec = JobSpec.from_json(BASE)
    result = JobResult.from_json(RESULT)
    record = protocol.clip_record("j1", spec, result, source_clip="Ball", source_frame=12)
    assert record["version"] == protocol.CLIP_RECORD_VERSION
    assert record["source_time"] == "1001/24" and record["seconds"] == "5/2" and record["steps"] == 4
    json.dumps(record)


def test_errors_name_their_field_and_each_front_end_phrases_it():
    error = InvalidInput("must be positive, got '0'", field="seconds")
    assert str(error) == "seconds: must be positive, got '0'"
    assert error.phrase(default="--{}") == "--seconds: must be positive, got '0'"
    assert error.phrase({"seconds": "Seconds"}) == "Seconds: must be positive, got '0'"
    assert Magic141Error("plain").phrase(default="--{}") == "plain"


def test_rationals_stay_exact():
    assert parse_rate("29.97") == Fraction(30000, 1001) and parse_rate("24000/1001") == Fraction(24000, 1001)
    assert rate_from_float(24000 / 1001) == Fraction(24000, 1001) and rate_from_float(25.0) == 25
    assert rational_text(Fraction(48, 2)) == "24" and rational_text(Fraction(5, 2)) == "5/2"
    for bad in ("0", "1001", "fast", 24.0):
        with pytest.raises(InvalidInput) as error:
            parse_rate(bad)
        assert error.value.field == "fps"


def test_atomic_writes_keep_the_old_file_on_failure_and_use_normal_modes(tmp_path):
    target = tmp_path / "cut.mlt"
    atomic.write_text(target, "first")
    old_umask = os.umask(0o022)
    os.umask(old_umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~old_umask
    with pytest.raises(RuntimeError), atomic.replacing(target) as temp:
        temp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "first" and sorted(tmp_path.iterdir()) == [target]
    atomic.write_json(tmp_path / "token.json", {"a": 1}, mode=atomic.PRIVATE)
    assert stat.S_IMODE((tmp_path / "token.json").stat().st_mode) == 0o600
    with pytest.raises(ValueError):
        atomic.write_json(tmp_path / "nan.json", {"a": float("nan")})
    assert not (tmp_path / "nan.json").exists()


def test_the_core_imports_nothing_but_the_standard_library():
    code = ("import sys; before = set(sys.modules); import magic141.errors, magic141.protocol, "
            "magic141.rational, magic141.atomic, magic141.home, magic141.cli_args; import json; "
            "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout))
    assert "magic141" in loaded
    assert loaded - set(sys.stdlib_module_names) == {"magic141"}, "the core must stay stdlib-only"


def test_older_specs_keep_their_meaning_and_the_cut_settings_are_checked():
    old = JobSpec.from_json({**BASE, "version": 1})  # queued before version 2: no conform, no colour match
    assert (old.match_source, old.color_match) == (False, 0.0)
    new = JobSpec.from_json(BASE)
    assert (new.match_source, new.color_match) == (True, 1.0)
    assert JobSpec.from_json({**BASE, "version": 2}).ambience == 0.0  # version 2 made video only
    assert new.ambience == protocol.MAX_AMBIENCE_SECONDS
    for bad, field in (({"color_match": 1.5}, "color_match"), ({"color_match": True}, "color_match"),
                       ({"match_source": "yes"}, "match_source"), ({"ambience": 11}, "ambience"),
                       ({"ambience": -1}, "ambience")):
        with pytest.raises(InvalidInput) as caught:
            JobSpec.from_json({**BASE, **bad})
        assert caught.value.field == field
