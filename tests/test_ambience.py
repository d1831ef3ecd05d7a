"""The source's ambience carried on past the cut: read from the right place in real files (PyAV
encode/decode), continued at its level with no click at the seam nor anywhere later, the same for the
same seed; silent, dialogue-like and too-short sources refused with a note saying why."""

from __future__ import annotations

from fractions import Fraction
from functools import cache

import av
import numpy as np
import pytest

from magic141.engine import ambience

RATE = 48000


def room_tone(seconds: float = 4.0, seed: int = 0, dbfs: float = -25.0, rate: int = RATE,
              channels: int = 2) -> ambience.SourceAudio:
    """Brown-ish noise (amplitude falling as 1/f above 40 Hz) at ``dbfs`` RMS: room tone, traffic.

    Shaped by FFT, which makes noise circular (its end runs on into its start, so a plain loop of it
    would be seamless); the middle of a take twice as long is not."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    spectrum = rng.standard_normal((channels, n + 1)) + 1j * rng.standard_normal((channels, n + 1))
    hertz = np.fft.rfftfreq(2 * n, 1 / rate)
    spectrum *= np.where(hertz > 0, 1 / np.maximum(hertz, 40.0), 0)
    x = np.fft.irfft(spectrum, 2 * n, axis=1)[:, n // 2: n // 2 + n]
    x *= 10 ** (dbfs / 20) / np.sqrt(np.mean(x**2, axis=1, keepdims=True))
    return ambience.SourceAudio(x.astype(np.float32), rate, "stereo" if channels == 2 else "mono")


def swelling(source: ambience.SourceAudio, gain: np.ndarray) -> ambience.SourceAudio:
    return ambience.SourceAudio((source.samples * gain).astype(np.float32), source.rate, source.layout)


def dialogue(seconds: float = 4.0, seed: int = 0, voiced: bool = True,
             room_dbfs: float | None = None) -> ambience.SourceAudio:
    """Speech-like, at -20 dBFS: syllables of 0.12-0.25 s (a voiced tone at 110-220 Hz with harmonics,
    or noise, Hann-gated: about 4-8 a second), 1-4 to a word, 0.1-0.4 s gaps between words; over
    silence, or over room tone at ``room_dbfs``."""
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE)
    x, at = np.zeros(n), int(rng.uniform(0, 0.2) * RATE)
    while at < n:
        for _ in range(rng.integers(1, 5)):
            if at >= n:
                break
            length = int(rng.uniform(0.12, 0.25) * RATE)
            if voiced:
                t, f0 = np.arange(length) / RATE, rng.uniform(110, 220)
                syllable = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))
            else:
                syllable = rng.standard_normal(length)
            syllable = syllable * np.hanning(length) * rng.uniform(0.5, 1.0)
            x[at: at + length] += syllable[: n - at]
            at += length
        at += int(rng.uniform(0.1, 0.4) * RATE)
    x = np.stack([x, x]) * 0.1 / np.sqrt(np.mean(x**2))
    if room_dbfs is not None:
        x = x + room_tone(seconds, seed + 100, room_dbfs).samples
    return ambience.SourceAudio(x.astype(np.float32), RATE, "stereo")


def largest_step(samples: np.ndarray) -> float:
    return float(np.abs(np.diff(samples, axis=1)).max())


def rms_db(samples: np.ndarray) -> np.ndarray:
    return 10 * np.log10(np.mean(np.square(samples, dtype=np.float64), axis=1))


def worst_click(source: np.ndarray, out: np.ndarray, seconds: float | None = None) -> float:
    """The largest sample-to-sample step from the source's end on into ``out`` (its first ``seconds``,
    or all of it), over the largest step within the source."""
    n = out.shape[1] if seconds is None else round(seconds * RATE)
    return largest_step(np.concatenate([source[:, -1:], out[:, :n]], axis=1)) / largest_step(source)


# What a click looks like: a plain loop of the tail, or grains butted together from random places.
def pulsing(samples: np.ndarray) -> float:
    """How far the strongest line of the loudness spectrum (5 ms frames, 5-50 Hz) stands above its
    median: a level beating at the grain rate, as grains that fade their sum but not their power."""
    channels, n = samples.shape
    step = RATE // 200
    power = np.mean(np.square(samples[:, : n // step * step].reshape(channels, -1, step),
                              dtype=np.float64), axis=(0, 2))
    spectrum = np.abs(np.fft.rfft(power / power.mean() - 1)) ** 2
    hertz = np.fft.rfftfreq(power.size, step / RATE)
    band = spectrum[(hertz >= 5) & (hertz <= 50)]
    return float(band.max() / np.median(band))


def looped(source: np.ndarray, n: int) -> np.ndarray:
    return np.tile(source, (1, -(-n // source.shape[1])))[:, :n]


def restarted(source: np.ndarray, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    starts = rng.integers(0, source.shape[1] - RATE // 10, -(-n // (RATE // 10)))
    return np.concatenate([source[:, s: s + RATE // 10] for s in starts], axis=1)[:, :n]


def write_file(path, sound: np.ndarray | None, rate: int = RATE, codec: str = "pcm_s16le",
               video: bool = True) -> None:
    """A real file: 8 frames of 64x64 mpeg4 video (optional), then ``sound`` (float [channels, n])."""
    with av.open(str(path), "w") as container:
        if video:
            picture = container.add_stream("mpeg4", rate=24)
            picture.width = picture.height = 64
            picture.pix_fmt = "yuv420p"
        if sound is not None:
            layout = "stereo" if sound.shape[0] == 2 else "mono"
            stream = container.add_stream(codec, rate=rate, layout=layout)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(sound, np.float32), format="fltp",
                                               layout=layout)
            frame.rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
            # pcm_s16le takes packed s16; aac takes float planar, in frames of its own size
            encoder_format = stream.codec_context.format.name
            to_encoder = av.AudioResampler(format=encoder_format, layout=layout, rate=rate,
                                           frame_size=stream.codec_context.frame_size or None)
            for converted in [*to_encoder.resample(frame), *to_encoder.resample(None)]:
                container.mux(stream.encode(converted))
            container.mux(stream.encode(None))
        if video:
            for i in range(8):
                image = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 30, np.uint8), format="rgb24")
                container.mux(picture.encode(image.reformat(format="yuv420p")))
            container.mux(picture.encode(None))


@pytest.mark.parametrize("channels,rate", [(2, 48000), (1, 44100)])
def test_read_audio_returns_the_sound_just_before_the_cut(tmp_path, channels, rate):
    sound = room_tone(3.0, seed=4, rate=rate, channels=channels).samples
    path = tmp_path / "clip.mov"
    write_file(path, sound, rate)
    end = Fraction(60, 24)  # the frame continued from: 2.5 s in
    tail = ambience.read_audio(path, end, tail_seconds=1.5)
    assert tail is not None
    assert (tail.samples.shape, tail.rate, tail.layout, tail.samples.dtype) == (
        (channels, round(1.5 * rate)), rate, "stereo" if channels == 2 else "mono", np.float32)
    # 16-bit PCM: exactly the samples of [1.0 s, 2.5 s), to 16-bit precision
    np.testing.assert_allclose(tail.samples, sound[:, rate: round(2.5 * rate)], atol=2**-15)
    early = ambience.read_audio(path, 1.0, tail_seconds=4.0)  # the window starts before the clip
    np.testing.assert_allclose(early.samples, sound[:, :rate], atol=2**-15)
    late = ambience.read_audio(path, 3.5, tail_seconds=1.0)  # ... or ends after its sound does
    np.testing.assert_allclose(late.samples, sound[:, round(2.5 * rate):], atol=2**-15)


def test_read_audio_of_aac_keeps_the_tail_length_and_level(tmp_path):
    sound = room_tone(3.0, seed=5).samples
    path = tmp_path / "clip.m4a"
    write_file(path, sound, codec="aac", video=False)
    tail = ambience.read_audio(path, 2.5, tail_seconds=2.0)
    assert tail is not None and (tail.samples.shape[0], tail.rate, tail.layout) == (2, RATE, "stereo")
    assert abs(tail.samples.shape[1] - 2 * RATE) <= 1024  # within one AAC frame
    assert np.all(np.abs(rms_db(tail.samples) - rms_db(sound)) < 1.0)


def test_read_audio_finds_no_sound_in_a_video_only_file_or_before_the_clip(tmp_path):
    write_file(tmp_path / "picture.mp4", None)
    assert ambience.read_audio(tmp_path / "picture.mp4", Fraction(1, 3)) is None
    write_file(tmp_path / "clip.mov", room_tone(1.0).samples)
    assert ambience.read_audio(tmp_path / "clip.mov", 0) is None  # the cut at the very start


def test_the_continuation_has_the_length_level_and_layout_asked_for_and_its_seed_decides_it():
    source = room_tone(4.0)
    out = ambience.continue_ambience(source, 2.5, seed=7)
    assert out.shape == (2, round(2.5 * RATE)) and out.dtype == np.float32
    assert ambience.continue_ambience(source, Fraction(1001, 24000), seed=7).shape == (2, 2002)
    assert np.all(np.abs(rms_db(out) - rms_db(source.samples)) < 1.5), rms_db(out)
    assert np.abs(out).max() <= 1.0
    again = ambience.continue_ambience(source, 2.5, seed=7)
    other = ambience.continue_ambience(source, 2.5, seed=8)
    assert np.array_equal(out, again) and not np.allclose(out, other, atol=1e-3)
    assert not np.allclose(out[0], out[1], atol=1e-3)  # independent channels stay independent


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_continuation_starts_where_the_source_stops(seed):
    source = room_tone(4.0, seed=seed).samples
    out = ambience.continue_ambience(ambience.SourceAudio(source, RATE, "stereo"), 1.0, seed=seed)
    assert np.abs(out[:, 0] - source[:, -1]).max() <= 0.2 * largest_step(source)
    assert worst_click(source, out, seconds=0.1) <= 1.5
    # The bound catches a cut: the tail played again from its start (its seam steps 2.4-11 times the
    # source's largest step), or grains from random places butted together (5-12 times within 1 s).
    assert worst_click(source, looped(source, out.shape[1]), seconds=0.1) > 1.5
    assert worst_click(source, restarted(source, out.shape[1])) > 1.5


def test_a_continuation_longer_than_the_tail_never_clicks():
    source = room_tone(4.0, seed=3).samples
    out = ambience.continue_ambience(ambience.SourceAudio(source, RATE, "stereo"), 8.0, seed=11)
    assert worst_click(source, out) <= 1.5
    assert worst_click(source, looped(source, out.shape[1])) > 1.5
    assert worst_click(source, restarted(source, out.shape[1])) > 1.5
    # ... and keeps its level all the way: no second 1.5 dB off the source's level, and no beat at the
    # grain rate (the source's own strongest line stands 11 times above the median; Hann-windowed
    # grains beat 3 dB at 13 Hz: 52-88 times)
    assert pulsing(out) < 25 and pulsing(source) < 25
    for second in range(8):
        level = rms_db(out[:, second * RATE: (second + 1) * RATE]) - rms_db(source)
        assert np.all(np.abs(level) < 1.5), (second, level)


def test_too_long_or_empty_continuations_are_refused():
    assert ambience.MAX_SECONDS == 10
    for seconds in (ambience.MAX_SECONDS + 0.5, 0, -1):
        with pytest.raises(ValueError):
            ambience.continue_ambience(room_tone(1.0), seconds, seed=0)
    ambience.continue_ambience(room_tone(1.0), ambience.MAX_SECONDS, seed=0)  # the cap itself is fine


@cache
def ambiences() -> dict[str, ambience.SourceAudio]:
    t = np.arange(4 * RATE) / RATE
    return {
        "room tone": room_tone(),
        "quiet room tone": room_tone(seed=1, dbfs=-45),
        "wind gusting at 0.5 Hz": swelling(room_tone(seed=2), 0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t)),
        "wind gusting at 1 Hz": swelling(room_tone(seed=3), 0.2 + 0.4 * (1 + np.sin(2 * np.pi * t))),
        "a car passing": swelling(room_tone(seed=4), 0.05 + 0.95 * np.sin(np.pi * t / 4) ** 2),
    }


@cache
def dialogues() -> dict[str, ambience.SourceAudio]:
    return {
        **{f"voiced {seed}": dialogue(seed=seed) for seed in range(4)},
        **{f"unvoiced {seed}": dialogue(seed=seed, voiced=False) for seed in range(4)},
        "over quiet room tone": dialogue(seed=5, room_dbfs=-45),
        "over room tone 10 dB under it": dialogue(seed=6, room_dbfs=-30),
    }


@pytest.mark.parametrize("name", list(ambiences()))
def test_ambience_is_carried_on(name):
    verdict = ambience.assess(ambiences()[name])
    assert verdict.ok and "ambience continued from the source's last 4.0 s" in verdict.note, verdict.note


@pytest.mark.parametrize("name", list(dialogues()))
def test_dialogue_is_refused(name):
    verdict = ambience.assess(dialogues()[name])
    assert not verdict.ok and "dialogue" in verdict.note, verdict.note


def test_silent_and_short_sources_are_refused():
    zeros = ambience.SourceAudio(np.zeros((2, 2 * RATE), np.float32), RATE, "stereo")
    for silent in (zeros, room_tone(2.0, dbfs=-80)):
        verdict = ambience.assess(silent)
        assert not verdict.ok and "silent" in verdict.note, verdict.note
    assert "-80.0 dBFS" in ambience.assess(room_tone(2.0, dbfs=-80)).note
    short = ambience.assess(room_tone(0.3))
    assert not short.ok and "too short" in short.note
