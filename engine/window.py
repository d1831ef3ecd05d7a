"""Sliding window for long video: plan the windows, blend their seams, anchor their colour.

Window k > 1 is conditioned on the last ``K`` latent frames of the video so far: its last
``4(K-1)+1`` output frames are encoded again by the causal VAE (so the condition latents have the
same causal structure as a first window's), placed in the condition channels, and marked by the
mask channel. The window regenerates those frames too; where old and new overlap they are
cross-faded. Each window's colour statistics are matched to the first window's, so exposure and
colour do not drift over a minute of chained windows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from magic141.errors import InvalidInput


@dataclass(frozen=True)
class WindowPlan:
    index: int  # 1-based
    frames: int  # native frames the pipeline generates (4k+1)
    condition_frames: int  # pixel frames of the condition (1 = the image)
    start: int  # global index of the window's first output frame (after dropped frames)
    blend: int  # how many of its first output frames overlap frames already made


def _round_up(n: int, multiple: int) -> int:
    """Smallest ``multiple*k + 1 >= n``."""
    return max(1, -(-(n - 1) // multiple)) * multiple + 1


def plan_windows(
    total: int, *, window_frames: int, overlap_latents: int, dropped: int = 0, multiple: int = 4
) -> list[WindowPlan]:
    """Windows that together give exactly ``total`` output frames (windows are trimmed, not padded)."""
    if total < 1:
        raise InvalidInput(f"the video needs at least one frame, got {total}")
    if overlap_latents < 1:
        raise InvalidInput(f"must be at least 1 latent frame, got {overlap_latents}", field="window_overlap")
    overlap = (overlap_latents - 1) * multiple + 1
    if overlap - dropped < 1:
        raise InvalidInput(
            f"{overlap_latents} latent frames leave nothing to blend after {dropped} dropped frames; "
            f"use at least {dropped // multiple + 2}", field="window_overlap"
        )
    if window_frames - overlap < multiple:
        raise InvalidInput(
            f"{overlap_latents} latent frames leave no new frames in a {window_frames}-frame window",
            field="window_overlap"
        )
    first = min(window_frames, _round_up(total + dropped, multiple))
    plans = [WindowPlan(1, first, 1, 0, 0)]
    made = first - dropped
    while made < total:
        frames = min(window_frames, _round_up(overlap + total - made, multiple))
        start = made - overlap + dropped
        plans.append(WindowPlan(len(plans) + 1, frames, overlap, start, overlap - dropped))
        made = start + frames - dropped
    return plans


def crossfade(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Blend overlapping frames [n, H, W, 3]: the weight moves linearly from old to new."""
    n = old.shape[0]
    weight = torch.arange(1, n + 1, dtype=old.dtype).div(n + 1).view(n, 1, 1, 1)
    return old * (1 - weight) + new * weight


class ColourAnchor:
    """Per-channel mean and standard deviation of the first window; later windows are matched to it."""

    def __init__(self, reference: torch.Tensor, strength: float = 1.0) -> None:
        self.mean, self.std = self._stats(reference)
        self.strength = strength

    @staticmethod
    def _stats(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = frames.reshape(-1, frames.shape[-1]).double()
        return flat.mean(0), flat.std(0).clamp_min(1e-4)

    def apply(self, frames: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(frames)
        matched = (frames.double() - mean) * (self.std / std) + self.mean
        out = frames.double() + self.strength * (matched - frames.double())
        return out.clamp(0, 1).to(frames.dtype)


def chain_windows(
    plans: list[WindowPlan],
    run_window: Callable[[WindowPlan, torch.Tensor | None], torch.Tensor],
    anchor_strength: float = 1.0,
) -> Iterator[torch.Tensor]:
    """Run the planned windows and yield the video's frames [n, H, W, 3] in order, as they become final.

    ``run_window(plan, condition)`` returns a window's frames; ``condition`` is None for the first
    window, else the last frames so far as pixels [1, 3, n, H, W] in [-1, 1]. The frames a later
    window conditions on and blends over are held back until it has run.
    """
    tail = torch.empty(0)
    anchor: ColourAnchor | None = None
    for number, plan in enumerate(plans):
        condition = None
        if plan.index > 1:
            condition = tail[-plan.condition_frames :].permute(3, 0, 1, 2)[None] * 2 - 1
        frames = run_window(plan, condition)
        if anchor is None:
            anchor = ColourAnchor(frames, anchor_strength)
        else:
            frames = anchor.apply(frames)
        if plan.blend:
            blended = crossfade(tail[-plan.blend :], frames[: plan.blend])
            frames = torch.cat([tail[: -plan.blend], blended, frames[plan.blend :]])
        keep = plans[number + 1].condition_frames if number + 1 < len(plans) else 0
        yield frames[: frames.shape[0] - keep]
        tail = frames[frames.shape[0] - keep :]


class WindowAudio:
    """The sound of a sliding-window run (families that make sound), as the writer reads it.

    Each window's sound starts at its first native frame's time; where windows overlap, the sound
    is cross-faded as the frames are. ``samples`` is the track from ``start`` (seconds) on, as far as
    windows have made it; ``finish`` pads it to ``length`` samples. It grows as windows finish, which
    is before their frames reach the writer, so the writer interleaves it as it goes.
    """

    def __init__(self, rate: int, native_fps, *, start: float, length: int) -> None:
        self.rate, self.native_fps, self.length = rate, native_fps, length
        self.first = round(start * rate)
        self.track = torch.zeros(2, 0)
        self.layout = "stereo"  # a mono model's sound is written on both channels

    def _sample(self, native_frame: int) -> int:
        return round(native_frame * self.rate / self.native_fps)

    def add(self, plan: WindowPlan, sound: torch.Tensor) -> None:
        """``sound`` [channels, n]: the window's, from its first frame."""
        sound = (sound.expand(2, -1) if sound.shape[0] == 1 else sound).float().clamp(-1, 1)
        at = self._sample(plan.start)
        fade = max(0, min(self.track.shape[1] - at, sound.shape[1]))
        if fade:
            ramp = torch.arange(1, fade + 1, dtype=sound.dtype).div(fade + 1)
            sound = torch.cat([self.track[:, at: at + fade] * (1 - ramp) + sound[:, :fade] * ramp,
                               sound[:, fade:]], dim=1)
        self.track = torch.cat([self.track[:, :at], sound], dim=1)

    def finish(self) -> None:
        short = self.first + self.length - self.track.shape[1]
        if short > 0:
            self.track = torch.cat([self.track, self.track.new_zeros(self.track.shape[0], short)], dim=1)

    @property
    def samples(self):
        return self.track[:, self.first: self.first + self.length].numpy()  # a view: read per chunk
