"""The sound under an extension: the source's ambience, carried on past the cut.

A clip continued from a video with sound should not fall silent at the cut. Room tone, wind and
traffic are textures: any stretch of them sounds like any other, so a continuation is built from the
source's last seconds (``TAIL_SECONDS``) by granular overlap-add:

- grains of ``GRAIN_SECONDS`` are taken from random places in the tail (a numpy generator seeded by
  the job's seed: a job redone sounds the same), shaped by a sine window and overlap-added at 50%;
  sine windows are power-complementary (sin² + cos² = 1), so uncorrelated grains add up to a steady
  level with no flutter at the grain rate, and no grain edge ever shows (no loop click);
- each channel is scaled to the tail's RMS level;
- the first ``BRIDGE_SECONDS`` crossfade (equal power) from the source's own last samples played
  backwards (``x[-1], x[-2], ...``: continuous with where the source stops) into the texture, so the
  cut has no step at the sample level.

What is not a texture is refused (``assess``), and the extension is then video only, with a note:
silence (below ``SILENCE_DBFS``: nothing to carry on) and speech. Speech is told apart by its
loudness: words come at a syllable rate of about 2-8 Hz with deep dips between them, where ambience
is steady (see ``assess`` for the figures).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from magic141.protocol import MAX_AMBIENCE_SECONDS, JobSpec

MAX_SECONDS = MAX_AMBIENCE_SECONDS  # the longest continuation (the spec's cap, 10 s by default)
SILENCE_DBFS = -60.0  # RMS below this: nothing to carry on
TAIL_SECONDS = 4.0  # how much of the source's end the grains come from
MIN_SECONDS = 0.5  # a shorter source is refused: too little to draw grains from
GRAIN_SECONDS = 0.15
BRIDGE_SECONDS = 0.08
FADE_SECONDS = 0.5  # a continuation shorter than its clip fades out over this
# Speech: loudness (20 ms frames, dB, dips floored DIALOGUE_FLOOR_DB under the loud frames: a gap is a
# gap) whose 10th-90th percentile spread is at least DIALOGUE_DEPTH_DB, with at least
# DIALOGUE_SYLLABIC_SHARE of its variation at 2-8 Hz. Measured on the 4 s signals of
# tests/test_ambience.py and tests/test_sound.py (spread, share): steady noise (brown, low-passed)
# 1.8-5.0 dB, 0.21-0.30; wind gusting at 0.5-1 Hz 13.6-14.5 dB, 0.03-0.07; a car passing 9.7-23.4 dB,
# 0.01-0.02 (so a spread alone will not do); dialogue (voiced tones or noise in syllables of 0.12-0.3 s,
# with gaps) 30 dB (the floor), 0.48-0.85; the same over room tone 10 dB under its RMS 17.6 dB, 0.51.
# Without the floor, words between digital silence dip 85 dB and that square wave puts the variation
# at the word rate (1-2 Hz): shares 0.29-0.59, and a threshold of 0.4 let half of them through.
DIALOGUE_DEPTH_DB = 15.0
DIALOGUE_SYLLABIC_SHARE = 0.2
DIALOGUE_FLOOR_DB = 30.0
_ENVELOPE_SECONDS = 0.02


@dataclass(frozen=True)
class SourceAudio:
    """Sound as float32 samples ``[channels, n]`` in [-1, 1] at ``rate`` Hz, with PyAV's layout name."""

    samples: np.ndarray
    rate: int
    layout: str  # "mono", "stereo", "5.1", ...

    @property
    def seconds(self) -> float:
        return self.samples.shape[1] / self.rate


@dataclass(frozen=True)
class Verdict:
    ok: bool
    note: str  # one line for the user


def read_audio(path: str | os.PathLike, end_seconds: Fraction | float,
               tail_seconds: float = TAIL_SECONDS) -> SourceAudio | None:
    """The first audio stream's samples in ``[end_seconds - tail_seconds, end_seconds)`` (file time,
    from 0), as float planar at the stream's own rate and layout; None without audio or samples there."""
    with av.open(os.fspath(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate, layout = stream.rate, stream.layout.name
        end = round(Fraction(end_seconds) * rate)
        start = max(0, end - round(tail_seconds * rate))
        if start and stream.time_base:
            container.seek(int(Fraction(start, rate) / stream.time_base), stream=stream, backward=True)
        to_float = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        chunks, position = [], None
        for frame in container.decode(stream):
            if frame.pts is not None and frame.time_base is not None:
                position = round(frame.pts * frame.time_base * rate)
            position = position or 0
            for converted in to_float.resample(frame):
                samples = converted.to_ndarray()
                first, last = max(start, position), min(end, position + samples.shape[1])
                if last > first:
                    chunks.append(samples[:, first - position: last - position])
                position += samples.shape[1]
            if position >= end:
                break
    if not chunks:
        return None
    return SourceAudio(np.concatenate(chunks, axis=1).astype(np.float32), rate, layout)


def _dbfs(samples: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(np.square(samples, dtype=np.float64))) + 1e-20)


def assess(source: SourceAudio) -> Verdict:
    """Whether ``source`` is ambience to carry on (module docstring), with a note saying why not."""
    if source.seconds < MIN_SECONDS:
        return Verdict(False, f"the source's sound before the cut is too short ({source.seconds:.2f} s; "
                              f"at least {MIN_SECONDS} s is needed)")
    level = _dbfs(source.samples)
    if level < SILENCE_DBFS:
        return Verdict(False, f"the source's sound is silent ({level:.1f} dBFS)")
    step = round(_ENVELOPE_SECONDS * source.rate)
    channels, length = source.samples.shape
    frames = source.samples[:, : length // step * step].reshape(channels, -1, step)
    envelope = 10 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=(0, 2)) + 1e-10)
    envelope = np.maximum(envelope, np.percentile(envelope, 90) - DIALOGUE_FLOOR_DB)  # a gap is a gap
    depth = float(np.percentile(envelope, 90) - np.percentile(envelope, 10))
    spectrum = np.abs(np.fft.rfft(envelope - envelope.mean())) ** 2
    hertz = np.fft.rfftfreq(envelope.size, _ENVELOPE_SECONDS)
    syllabic = float(spectrum[(hertz >= 2) & (hertz <= 8)].sum() / max(spectrum[1:].sum(), 1e-20))
    if depth >= DIALOGUE_DEPTH_DB and syllabic >= DIALOGUE_SYLLABIC_SHARE:
        return Verdict(False, f"the source's sound is dialogue-like (loudness dips {depth:.0f} dB at a "
                              "syllable rate): it cannot be carried on")
    return Verdict(True, f"ambience continued from the source's last {source.seconds:.1f} s "
                         f"({level:.1f} dBFS)")


def continue_ambience(source: SourceAudio, seconds: Fraction | float, seed: int) -> np.ndarray:
    """``seconds`` of ``source``'s texture, starting where it stops: float32 ``[channels, n]``."""
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be more than 0 and at most {MAX_SECONDS}, got {seconds}")
    tail: np.ndarray = source.samples.astype(np.float64)
    channels, available = tail.shape
    n = round(Fraction(seconds) * source.rate)
    grain = min(2 * round(GRAIN_SECONDS * source.rate / 2), available // 2 * 2)
    if grain < 2:
        raise ValueError(f"the source has {available} samples: too few to continue")
    hop = grain // 2
    window = np.sin(np.pi * (np.arange(grain) + 0.5) / grain)  # sine: power-complementary at 50%
    rng = np.random.default_rng(seed)
    texture = np.zeros((channels, n + 3 * grain))
    for at in range(0, n + grain, hop):
        take = int(rng.integers(0, available - grain + 1))
        texture[:, at: at + grain] += tail[:, take: take + grain] * window
    texture = texture[:, hop: hop + n]  # from the first point two grains overlap

    def rms(x: np.ndarray) -> np.ndarray:
        return np.maximum(np.sqrt(np.mean(x**2, axis=1, keepdims=True)), 1e-12)

    texture *= rms(tail) / rms(texture)
    bridge = min(round(BRIDGE_SECONDS * source.rate), available, n)
    turn = (np.arange(bridge) + 0.5) / bridge * np.pi / 2
    texture[:, :bridge] = tail[:, ::-1][:, :bridge] * np.cos(turn) + texture[:, :bridge] * np.sin(turn)
    return np.clip(texture, -1, 1).astype(np.float32)


def for_extension(spec: JobSpec, frames: int) -> tuple[SourceAudio | None, str]:
    """The sound for a job continuing a video (``spec.source``) by ``frames`` frames at ``spec.fps``,
    or None, and the note the job's settings keep: what the sound is, or why there is none."""
    if spec.ambience <= 0:
        return None, "video only: ambience off"
    assert spec.source.path is not None and spec.source.time is not None
    start = spec.source.time + 1 / spec.fps  # the extension's first frame follows the source frame
    try:
        source = read_audio(spec.source.path, start)
    except (av.FFmpegError, OSError) as exc:
        return None, f"video only: the source's sound cannot be read ({exc})"
    if source is None:
        return None, "video only: the source has no sound"
    verdict = assess(source)
    if not verdict.ok:
        return None, f"video only: {verdict.note}"
    placed = min(frames, math.floor(Fraction(spec.ambience) * spec.fps))
    samples = continue_ambience(source, Fraction(placed) / spec.fps, spec.seed)
    if placed < frames:  # it stops before the clip does: fade out rather than cut off
        fade = min(round(FADE_SECONDS * source.rate), samples.shape[1])
        samples[:, samples.shape[1] - fade:] *= np.cos(np.linspace(0, np.pi / 2, fade)).astype(np.float32)
    return SourceAudio(samples, source.rate, source.layout), verdict.note
