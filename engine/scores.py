"""Scores of a generated clip against the world's ground truth.

Every score is computed from pixels, the way a viewer would judge the clip, using ``world.track``
to find the object:

* ``psnr``: first-frame fidelity to the conditioning image (dB; higher is better).
* ``trajectory_error``: mean distance in pixels between the tracked object and the world's true
  continuation, frame by frame (a frame where the object is lost counts as the frame's diagonal).
* ``direction_of``: which of the four directions the object moves in over its first frames; the
  caption adherence score compares it with the prompt's direction.
* ``colour_of``: the palette colour nearest to the tracked object's median colour.
* ``flicker``: mean absolute change of background pixels from one frame to the next (0-255); the
  true clip's background is static, so its flicker is 0.
* ``background_drift``: mean absolute difference between the background of the last frames and the
  true background (0-255), for the 60-second sliding-window run.

Traps avoided: the object's own motion is excluded from flicker (pixels the object covers in either
frame, grown by one pixel, are masked), and a missing object is a large error, not a skipped frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import world
from .errors import InvalidInput

DIRECTION_FRAMES = 8  # a third of a second: long enough to see 5+ pixels of motion, short of most bounces
MIN_MOTION_PX = 1.0


def _float255(frames) -> np.ndarray:
    frames = np.asarray(frames)
    return frames.astype(np.float64) if frames.dtype == np.uint8 else np.asarray(frames, np.float64) * 255


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB of two images (uint8, or floats in [0, 1]); 99 when identical."""
    a, b = _float255(a), _float255(b)
    if a.shape != b.shape:
        raise InvalidInput(f"psnr needs images of one shape, got {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return 99.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def trajectory_error(tracked: np.ndarray, truth: np.ndarray, diagonal: float) -> float:
    """Mean per-frame distance (pixels) between tracked and true centres; lost frames cost ``diagonal``."""
    tracked, truth = np.asarray(tracked, np.float64), np.asarray(truth, np.float64)
    if tracked.shape != truth.shape:
        raise InvalidInput(f"tracked {tracked.shape} and true {truth.shape} trajectories differ in length")
    dist = np.linalg.norm(tracked - truth, axis=1)
    return float(np.mean(np.where(np.isnan(dist), diagonal, dist)))


def direction_of(centres: np.ndarray, frames: int = DIRECTION_FRAMES) -> str | None:
    """The direction of the net motion over the first ``frames`` frames (None: lost or not moving)."""
    centres = np.asarray(centres, np.float64)[:frames]
    found = centres[~np.isnan(centres[:, 0])]
    if len(found) < 2:
        return None
    dx, dy = found[-1] - found[0]
    if max(abs(dx), abs(dy)) < MIN_MOTION_PX:
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def colour_of(colours: np.ndarray) -> str | None:
    colours = np.asarray(colours, np.float64)
    found = colours[~np.isnan(colours[:, 0])]
    return world.nearest_colour(np.median(found, axis=0)) if len(found) else None


def _grow(mask: np.ndarray) -> np.ndarray:
    """Grow [n, H, W] masks by one pixel (4-neighbourhood)."""
    out = mask.copy()
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def flicker(frames, object_masks: np.ndarray) -> float:
    """Mean |frame[t] - frame[t-1]| (0-255) over pixels that are background in both frames."""
    pixels = _float255(frames)
    if len(pixels) < 2:
        return 0.0
    grown = _grow(np.asarray(object_masks, bool))
    keep = ~(grown[1:] | grown[:-1])
    change = np.abs(pixels[1:] - pixels[:-1]).mean(axis=-1)
    return float(change[keep].mean()) if keep.any() else 0.0


def background_drift(frames, object_masks: np.ndarray, background_rgb: np.ndarray) -> float:
    """Mean |frame - true background| (0-255) over background pixels of ``frames``."""
    pixels = _float255(frames)
    keep = ~_grow(np.asarray(object_masks, bool))
    diff = np.abs(pixels - np.asarray(background_rgb)[None] * 255).mean(axis=-1)
    return float(diff[keep].mean()) if keep.any() else float("nan")


@dataclass(frozen=True)
class ClipScores:
    psnr_first: float
    trajectory_px: float
    direction_ok: bool
    colour_ok: bool
    found: float  # fraction of frames where the object was found
    flicker: float

    def to_json(self) -> dict:
        return asdict(self)


def score_clip(frames, state: world.WorldState, prompt: str, condition=None, *, fps=world.FPS) -> ClipScores:
    """All per-clip scores of ``frames`` (uint8 [n, H, W, 3]) generated from ``state`` and ``prompt``.

    ``condition`` is the image the clip was conditioned on (default: the world's first frame);
    text-to-video clips pass ``None`` and their PSNR is against the true first frame.
    """
    frames = np.asarray(frames)
    n, height, width = frames.shape[:3]
    truth = world.render(state, n, height, width, fps=fps)
    condition = truth[0] if condition is None else condition
    found = world.track(frames, world.background(state, height, width))
    terms = world.prompt_terms(prompt)
    true_centres = world.centres_px(state, n, height, fps=fps)
    return ClipScores(
        psnr_first=psnr(frames[0], condition),
        trajectory_px=trajectory_error(found.centres, true_centres, float(np.hypot(height, width))),
        direction_ok=direction_of(found.centres) == terms["direction"],
        colour_ok=colour_of(found.colours) == terms["colour"],
        found=float(found.found.mean()),
        flicker=flicker(frames, found.masks),
    )


def score_prompt(frames, prompt: str, first_image=None) -> ClipScores:
    """The scores a clip with no true continuation has (text-to-video): is the prompt's object found, in
    its colour, moving its way, tracked against the clip's own background; PSNR of the first frame
    against ``first_image`` when given; no trajectory."""
    frames = np.asarray(frames)
    found = world.track(frames, world.estimate_background(frames))
    terms = world.prompt_terms(prompt)
    return ClipScores(
        psnr_first=float("nan") if first_image is None else psnr(frames[0], np.asarray(first_image)),
        trajectory_px=float("nan"),
        direction_ok=direction_of(found.centres) == terms["direction"],
        colour_ok=colour_of(found.colours) == terms["colour"],
        found=float(found.found.mean()),
        flicker=flicker(frames, found.masks),
    )


def summarise(scores: list[ClipScores]) -> dict[str, float]:
    """Means over clips (booleans become rates)."""
    if not scores:
        raise InvalidInput("no clips to summarise")
    keys = ClipScores.__dataclass_fields__
    return {k: float(np.mean([float(getattr(s, k)) for s in scores])) for k in keys}
