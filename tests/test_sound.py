"""A clip continued from a video with sound carries its ambience on: muxed into the media, the right
length, no click at the seam, the same every time; placed on the timeline's audio track; and a silent
source gets video only, with a note saying why."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import opentimelineio as otio
import pytest

from magic141.engine import ambience, media
from magic141.engine.generate import Engine
from magic141.plugin import timeline as tl
from magic141.protocol import CODECS, JobSpec, Source

RATE = 48000
FPS = Fraction(24)
FRAMES = 12  # the plate: half a second


def rumble(seconds: float, level: float = 0.05, seed: int = 0) -> ambience.SourceAudio:
    """Room tone: low-passed stereo noise, about -26 dBFS."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal((2, round(seconds * RATE)))
    smooth = np.apply_along_axis(lambda x: np.convolve(x, np.hanning(64) / 32, "same"), 1, white)
    return ambience.SourceAudio((smooth * level / smooth.std()).astype(np.float32), RATE, "stereo")


def words(seconds: float = 4, seed: int = 0, room: float = 0.0) -> ambience.SourceAudio:
    """Speech-like: a voiced tone (140 Hz and harmonics) in words of 0.12-0.3 s with 0.05-0.25 s gaps,
    over room tone of ``room`` RMS."""
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE)
    t = np.arange(n) / RATE
    voice = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((140, 280, 420, 560)))
    gate, at = np.zeros(n), 0
    while at < n:
        word, gap = int(rng.uniform(0.12, 0.3) * RATE), int(rng.uniform(0.05, 0.25) * RATE)
        gate[at: at + word] = np.hanning(word)[: n - at]
        at += word + gap
    x = 0.1 * voice * gate + room * rng.standard_normal(n)
    return ambience.SourceAudio(np.stack([x, x]).astype(np.float32), RATE, "stereo")


def test_ambience_is_carried_on_and_silence_speech_and_scraps_are_refused():
    swell = np.sin(np.pi * np.arange(4 * RATE) / (4 * RATE)) ** 2  # a car passing by, over 4 s
    passing = ambience.SourceAudio((rumble(4).samples * (0.3 + 0.7 * swell)).astype(np.float32), RATE,
                                   "stereo")
    for texture in (rumble(4), rumble(4, seed=1), passing):
        verdict = ambience.assess(texture)
        assert verdict.ok and "ambience continued" in verdict.note, verdict.note
    for speech in (words(), words(seed=2), words(room=0.003)):
        verdict = ambience.assess(speech)
        assert not verdict.ok and "dialogue-like" in verdict.note
    quiet = ambience.SourceAudio(rumble(4).samples * 0.001, RATE, "stereo")  # about -86 dBFS
    assert "silent" in ambience.assess(quiet).note and not ambience.assess(quiet).ok
    assert "too short" in ambience.assess(rumble(0.3)).note
    with pytest.raises(ValueError):
        ambience.continue_ambience(rumble(4), ambience.MAX_SECONDS + 1, seed=0)
    seeded = [ambience.continue_ambience(rumble(4), 1, seed=s) for s in (0, 0, 1)]
    assert np.array_equal(seeded[0], seeded[1]) and not np.array_equal(seeded[0], seeded[2])


def plate(path, sound: ambience.SourceAudio | None, codec: str = "prores", count: int = FRAMES):
    frames = np.zeros((count, 64, 96, 3), np.uint8)
    frames[..., 2] = np.arange(count)[:, None, None] * 4 + 60
    with media.VideoWriter(path, fps=FPS, codec=codec, width=96, height=64, audio=sound) as writer:
        writer.write(frames)
    return path


def sound_of(path) -> np.ndarray | None:
    """Every audio sample of the file, float [channels, n], or None without an audio stream."""
    whole = ambience.read_audio(path, end_seconds=3600, tail_seconds=3600)
    return None if whole is None else whole.samples


@pytest.fixture(scope="module")
def engine():
    return Engine.load("tiny", device="cpu")


def continue_plate(engine, source, tmp_path, name, *, at: int = FRAMES - 1, seconds=Fraction(1),
                   codec="prores", **changes):
    spec = JobSpec(Source("media", str(source), Fraction(at) / FPS), "the room hums on", str(tmp_path),
                   seconds=seconds, fps=FPS, seed=5, codec=codec, **changes)
    return engine.generate(spec, tmp_path / name)


def largest_step(samples: np.ndarray) -> float:
    return float(np.abs(np.diff(samples, axis=1)).max())


@pytest.mark.parametrize("codec", ["prores", "h264"])
def test_the_writer_muxes_sound_of_the_right_length_beside_the_frames(tmp_path, codec):
    sound = rumble(0.5)
    path = plate(tmp_path / f"plate{CODECS[codec]}", sound, codec)
    back = sound_of(path)
    assert media.probe_video(path).frames == FRAMES
    if codec == "prores":  # 24-bit PCM: the samples come back to 24-bit precision
        np.testing.assert_allclose(back, sound.samples, atol=2**-22)
    else:  # AAC: whole 1024-sample frames, the signal kept
        assert sound.samples.shape[1] <= back.shape[1] <= sound.samples.shape[1] + 2048
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            assert (stream.codec_context.name, stream.rate, stream.layout.name) == ("aac", RATE, "stereo")
            assert stream.duration * stream.time_base == Fraction(1, 2)


def test_a_continued_clip_carries_the_sources_ambience_on_without_a_click(engine, tmp_path):
    sound = rumble(0.5)
    source = plate(tmp_path / "plate.mov", sound)
    result = continue_plate(engine, source, tmp_path, "ext.mov")
    made = sound_of(result.path)
    assert made is not None and made.shape == (2, RATE)  # exactly the clip's second
    assert result.sound_frames == 24 and "ambience" in result.settings["ambience"]
    joined = np.concatenate([sound.samples, made], axis=1)  # the cut, as a host plays it
    seam = joined[:, RATE // 2 - 200: RATE // 2 + 200]
    assert largest_step(seam) <= 1.5 * largest_step(sound.samples)
    assert largest_step(made) <= 1.5 * largest_step(sound.samples)  # and no loop click later on
    level = 20 * np.log10(np.sqrt((made**2).mean()) / np.sqrt((sound.samples**2).mean()))
    assert abs(level) < 1.5  # as loud as the room it continues
    again = continue_plate(engine, source, tmp_path, "again.mov")
    np.testing.assert_array_equal(sound_of(again.path), made)  # the same job makes the same sound


def test_continued_from_inside_the_clip_the_sound_follows_that_frame(engine, tmp_path):
    sound = rumble(2)
    source = plate(tmp_path / "plate.mov", sound, count=48)
    result = continue_plate(engine, source, tmp_path, "mid.mov", at=29, seconds=Fraction(1, 4))
    made = sound_of(result.path)
    start = 30 * RATE // 24  # the extension starts one frame after frame 29
    joined = np.concatenate([sound.samples[:, :start], made], axis=1)
    assert largest_step(joined[:, start - 200: start + 200]) <= 1.5 * largest_step(sound.samples)
    assert made.shape[1] == RATE // 4


def test_the_ambience_is_capped_and_fades_out(engine, tmp_path):
    source = plate(tmp_path / "plate.mov", rumble(0.5))
    result = continue_plate(engine, source, tmp_path, "capped.mov", seconds=Fraction(2), ambience=0.5)
    made = sound_of(result.path)
    assert made.shape[1] == RATE // 2 and result.sound_frames == 12  # 0.5 s of a 2 s clip
    assert np.abs(made[:, -48:]).max() < 0.01  # faded, not cut off


@pytest.mark.parametrize("sound, word", [(None, "no sound"), ("silence", "silent"), ("off", "off"),
                                         ("short", "too short")])
def test_no_sound_to_continue_gives_video_only_with_a_note(engine, tmp_path, sound, word):
    silence = ambience.SourceAudio(np.zeros((2, RATE // 2), np.float32), RATE, "stereo")
    audio = {None: None, "silence": silence}
    source = plate(tmp_path / "plate.mov", audio.get(sound, rumble(0.5)))
    changes = {"off": {"ambience": 0.0}, "short": {"at": 5}}.get(sound, {})  # 0.25 s before frame 6
    result = continue_plate(engine, source, tmp_path, "ext.mov", **changes)
    assert sound_of(result.path) is None and result.sound_frames == 0
    assert word in result.settings["ambience"]


def _timeline_with_sound(folder, media_path) -> str:
    r = float(FPS)
    whole = otio.opentime.TimeRange(otio.opentime.RationalTime(0, r), otio.opentime.RationalTime(FRAMES, r))
    timeline = otio.schema.Timeline(name="room")
    for kind, name in ((otio.schema.TrackKind.Video, "V1"), (otio.schema.TrackKind.Audio, "A1")):
        track = otio.schema.Track(name=name, kind=kind)
        track.append(otio.schema.Clip(name="Room", source_range=whole,
                                      media_reference=otio.schema.ExternalReference(
                                          target_url=media_path.name, available_range=whole)))
        timeline.tracks.append(track)
    path = folder / "room.otio"
    otio.adapters.write_to_file(timeline, str(path))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("silent", [False, True], ids=["room-tone", "silent"])
def test_extend_puts_the_ambience_on_the_audio_track_and_a_silent_source_gets_none(tmp_path, silent):
    sound = (ambience.SourceAudio(np.zeros((2, RATE // 2), np.float32), RATE, "stereo") if silent
             else rumble(0.5))
    source = plate(tmp_path / "room.mp4", sound, codec="h264")
    command = [sys.executable, "-m", "magic141", "extend", _timeline_with_sound(tmp_path, source), "--clip",
               "Room", "--prompt", "the room hums on", "--seconds", "1", "--model", "tiny"]
    done = subprocess.run(command + ["--out", str(tmp_path / "told.otio")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert ("; sound: video only: the source's sound is silent" in done.stdout) == silent
    done = subprocess.run(command + ["--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    doc = tl.open_timeline(tmp_path / "room.otio")
    video, audio = doc.timeline.tracks
    def layout(track):
        return [(c.name or "gap", c.range_in_parent().start_time.to_frames(),
                 c.range_in_parent().duration.to_frames()) for c in track]

    assert layout(video) == [("Room", 0, 12), ("Room ext", 12, 24)]
    placed = layout(audio)
    made = sound_of(report["media"])
    if silent:
        assert placed == [("Room", 0, 12), ("gap", 12, 24)]  # no sound clip; the track keeps sync
        assert made is None and "silent" in report["result"]["settings"]["ambience"]
    else:
        assert placed == [("Room", 0, 12), ("Room ext", 12, 24)]
        assert audio[1].media_reference.target_url == video[1].media_reference.target_url
        assert made is not None and abs(made.shape[1] - RATE) <= 2048


@pytest.mark.slow
def test_an_ltx2_extension_carries_the_model_s_own_sound_under_the_clip(tmp_path):
    """LTX-2 makes sound with the picture: the extension's sound is the model's (not the source's
    ambience), as long as the clip, on the audio track under it."""
    source = plate(tmp_path / "room.mp4", rumble(0.5), codec="h264")
    command = [sys.executable, "-m", "magic141", "extend", _timeline_with_sound(tmp_path, source), "--clip",
               "Room", "--prompt", "the room hums on", "--seconds", "1", "--model", "tiny-ltx2", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    settings = report["result"]["settings"]
    assert settings["ambience"] == "made with the picture by LTX-2 image-to-video with sound"
    assert settings["family"] == "ltx2"
    made = ambience.read_audio(report["media"], end_seconds=3600, tail_seconds=3600)
    assert made is not None and made.rate == 24000  # the vocoder's
    assert abs(made.samples.shape[1] - made.rate) <= 1024 + 600  # one second (an AAC frame of padding)
    video, audio = tl.open_timeline(tmp_path / "room.otio").timeline.tracks
    assert audio[1].media_reference.target_url == video[1].media_reference.target_url
