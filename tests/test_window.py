"""Sliding window: planning, seams and colour anchoring.

The end-to-end seam test swaps the DiT and VAE for exact stand-ins (an invertible "VAE" and a DiT
oracle that continues the motion it is conditioned on), so the right video is known: a brightness
ramp that must run straight through every seam. An off-by-one in where a window starts, what it is
conditioned on, or what gets blended shows up as a jump.
"""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from magic141.engine import media
from magic141.engine.generate import Engine
from magic141.engine.models import LoadedModel, ModelInfo
from magic141.engine.pipeline import Magic141Pipeline
from magic141.engine.window import ColourAnchor, crossfade, plan_windows
from magic141.errors import InvalidInput
from magic141.protocol import JobSpec, Source

SLOPE = 0.05  # per latent frame, in [-1, 1] pixel units: 0.00625 of full scale per output frame


class ExactVAE(torch.nn.Module):
    """Latent frame i is pixel frame 4i (0 for the first), 8x8 average pooled; decode interpolates back."""

    spatial_compression_ratio = 8
    temporal_compression_ratio = 4

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(scaling_factor=1.0)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a dtype and device

    @property
    def dtype(self):
        return self.anchor.dtype

    def encode(self, video):
        picked = video[:, :, ::4]
        pooled = F.avg_pool3d(picked, (1, 8, 8))
        latents = pooled.repeat(1, 6, 1, 1, 1)[:, :16]
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: latents))

    def decode(self, latents):
        rgb = latents[:, :3]
        frames = (rgb.shape[2] - 1) * 4 + 1
        video = F.interpolate(rgb, size=(frames, rgb.shape[3] * 8, rgb.shape[4] * 8), mode="trilinear",
                              align_corners=True)
        return SimpleNamespace(sample=video)


class ContinuationOracle(torch.nn.Module):
    """Predicts the velocity toward the clean video that continues the given frames' motion."""

    def __init__(self, slope: float = SLOPE, drift: float = 0.0) -> None:
        super().__init__()
        self.slope, self.drift = slope, drift  # drift: brightness each continuation adds (a flawed model)
        self.config = SimpleNamespace(in_channels=33, patch_size=2, patch_size_t=1, num_attention_heads=1,
                                      attention_head_dim=8, num_layers=1, num_single_layers=1)
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @property
    def dtype(self):
        return self.anchor.dtype

    def forward(self, hidden_states, timestep, **_):
        noisy, cond, mask = hidden_states[:, :16], hidden_states[:, 16:32], hidden_states[:, 32:]
        k = int(mask[0, 0, :, 0, 0].sum())
        last = cond[:, :, k - 1 : k]
        if k > 1:
            slope = cond[:, :, k - 1 : k] - cond[:, :, k - 2 : k - 1]
        else:
            slope = torch.full_like(last, self.slope)
        steps = torch.arange(noisy.shape[2], dtype=noisy.dtype).view(1, 1, -1, 1, 1) - (k - 1)
        clean = last + steps * slope + (self.drift if k > 1 else 0.0)
        sigma = timestep.view(-1, 1, 1, 1, 1) / 1000
        return ((noisy - clean) / sigma,)


def _oracle_engine(tiny_components, window_frames=33, **oracle) -> Engine:
    parts = dict(tiny_components, transformer=ContinuationOracle(**oracle), vae=ExactVAE())
    info = ModelInfo(name="oracle", kind="tiny", distilled=True, conditioning="world",  # the VAE's mode
                     window_frames=window_frames, default_size=(32, 48))
    return Engine(LoadedModel(info, parts), Magic141Pipeline(**parts), t2i=None)


def _spec(image, prompt: str, seconds: int, fps: Fraction = Fraction(24)) -> JobSpec:
    return JobSpec(Source("image", str(image)), prompt, str(image.parent), seconds=Fraction(seconds), fps=fps)


def test_four_windows_make_exact_frame_count_and_seamless_motion(tmp_path, tiny_components):
    image = tmp_path / "grey.png"
    PIL.Image.new("RGB", (48, 32), (51, 51, 51)).save(image)  # 0.2 of full scale
    engine = _oracle_engine(tiny_components)
    windows = []
    result = engine.generate(
        _spec(image, "brighter", 4), tmp_path / "long.mp4", colour_anchor=0.0,
        progress=lambda step: windows.append((step.window, step.windows)),
    )
    assert result.windows == 4 and {w for w, _ in windows} == {1, 2, 3, 4}
    frames = media.read_frames(tmp_path / "long.mp4")
    assert frames.shape[0] == result.frames == 96
    means = frames.reshape(96, -1).astype(float).mean(axis=1)
    expected = (0.2 + np.arange(96) * SLOPE / 8) * 255  # SLOPE/4 per frame in [-1,1] units = SLOPE/8 of scale
    # Rounding to 8 bits and H.264 at CRF 16 put a flat frame within ~1.5 code values of the ramp,
    # scattered; a window placed one frame off shifts all its frames by 1.6 code values, so the
    # mean error over any 24 frames would exceed 1.
    error = np.abs(means - expected)
    assert error.max() < 2.0
    assert max(error[i : i + 24].mean() for i in range(0, 96, 24)) < 0.8
    for seam in (28, 56, 84):  # where windows 2, 3 and 4 begin
        assert error[seam - 4 : seam + 4].mean() < 1.0, seam


def test_conformed_rate_follows_the_native_motion(tmp_path, tiny_components):
    image = tmp_path / "grey.png"
    PIL.Image.new("RGB", (48, 32), (51, 51, 51)).save(image)
    fps = Fraction(30000, 1001)
    result = _oracle_engine(tiny_components).generate(
        _spec(image, "brighter", 3, fps), tmp_path / "ntsc.mp4", colour_anchor=0.0
    )
    info = media.probe_video(tmp_path / "ntsc.mp4")
    assert info.fps == fps and info.frames == result.frames == round(3 * fps)
    means = media.read_frames(tmp_path / "ntsc.mp4").reshape(result.frames, -1).astype(float).mean(axis=1)
    native = np.array(media.conform_indices(result.frames, fps, Fraction(24)))
    np.testing.assert_allclose(means, (0.2 + native * SLOPE / 8) * 255, atol=1.5)


@pytest.mark.slow
@pytest.mark.parametrize("anchor", [1.0, 0.0])
def test_a_minute_of_windows_does_not_drift_when_anchored(tmp_path, tiny_components, anchor):
    image = tmp_path / "grey.png"
    PIL.Image.new("RGB", (48, 32), (100, 100, 100)).save(image)
    engine = _oracle_engine(tiny_components, slope=0.0, drift=0.02)  # each window 1.3 code values brighter
    result = engine.generate(_spec(image, "still", 60), tmp_path / "minute.mp4", colour_anchor=anchor)
    assert result.windows == 52 and media.probe_video(tmp_path / "minute.mp4").frames == 1440
    frames = media.read_frames(tmp_path / "minute.mp4").astype(float)
    drift = frames[-24:].mean() - frames[:24].mean()
    if anchor:
        assert abs(drift) < 2.0
    else:  # the control: without the anchor the same model drifts by ~65 code values over the minute
        assert drift > 30


def test_plan_covers_any_length_with_trimmed_last_window():
    for total in (1, 25, 33, 34, 100, 1441):
        plans = plan_windows(total, window_frames=33, overlap_latents=2)
        last = plans[-1]
        # 4k+1 rounding only; a window has at least 2 latent frames (the first one is the condition)
        assert total <= last.start + last.frames < max(total + 4, 6)
        assert all((p.frames - 1) % 4 == 0 and p.frames <= 33 for p in plans)
        for before, after in zip(plans, plans[1:], strict=False):
            assert after.start == before.start + before.frames - 5 and after.blend == 5
    minute = plan_windows(60 * 24 + 1, window_frames=129, overlap_latents=2)
    assert len(minute) == 12


def test_plan_with_dropped_frames_still_overlaps():
    plans = plan_windows(100, window_frames=33, overlap_latents=2, dropped=4)
    assert all(p.blend == 1 for p in plans[1:])
    with pytest.raises(InvalidInput, match="at least 3"):
        plan_windows(100, window_frames=33, overlap_latents=1, dropped=4)


def test_crossfade_moves_from_old_to_new():
    old, new = torch.zeros(3, 1, 1, 3), torch.ones(3, 1, 1, 3)
    assert crossfade(old, new)[:, 0, 0, 0].tolist() == pytest.approx([0.25, 0.5, 0.75])


def test_colour_anchor_pulls_a_drifted_window_back():
    generator = torch.Generator().manual_seed(0)
    first = torch.rand(8, 16, 16, 3, generator=generator) * 0.5 + 0.25
    drifted = (first * 0.7 + torch.tensor([0.2, 0.05, -0.1])).clamp(0, 1)  # darker contrast, colour cast
    anchor = ColourAnchor(first)
    fixed = anchor.apply(drifted)
    assert torch.allclose(fixed.mean((0, 1, 2)), first.mean((0, 1, 2)), atol=1e-3)
    assert torch.allclose(fixed.std((0, 1, 2)), first.std((0, 1, 2)), atol=1e-3)
    assert torch.equal(ColourAnchor(first, strength=0.0).apply(drifted), drifted)


def test_window_sound_is_placed_at_each_window_cross_faded_and_cut_to_the_clip():
    from magic141.engine.window import WindowAudio, WindowPlan

    rate, fps = 1000, Fraction(10)  # 100 samples per native frame
    track = WindowAudio(rate, fps, start=0.1, length=1500)  # from the second frame, 1.5 s
    track.add(WindowPlan(1, 9, 1, 0, 0), torch.full((1, 900), 0.5))  # mono: written on both channels
    track.add(WindowPlan(2, 9, 5, 4, 5), torch.full((2, 900), -0.5))  # starts at frame 4, over 4..8
    track.finish()
    sound = track.samples
    assert sound.shape == (2, 1500) and track.layout == "stereo"
    assert (sound[:, :300] == 0.5).all()  # frames 1-3: the first window's alone
    fade = sound[0, 300:800]  # frames 4-8: both, from the first to the second
    assert fade[0] > 0.49 and fade[-1] < -0.49 and (np.diff(fade) < 0).all()
    assert (sound[:, 800:1200] == -0.5).all() and (sound[:, 1200:] == 0).all()  # then silence to the end
