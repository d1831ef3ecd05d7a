"""Scores of a generated clip against the world's ground truth.

Every score is computed from pixels, the way a viewer would judge the clip, using ``world.track``
to find the object:

* ``psnr``: first-frame fidelity to the conditioning image (dB; higher is better).
* ``trajectory_error``: mean distance in pixels between the tracked object and the world's true
  continuation, frame by frame (a frame where the object is lost counts as the frame's diagonal).
* ``direction_of``: which of the four directions the object moves in over its first frames; the
  caption adherence score compares it with the prompt's direction.
* ``pan_of``: which way the camera pans (left, right or not at all), from how far the background's
  column profile slides over the same first frames; the caption adherence score compares it with
  the prompt's pan (none when the prompt names none).
* ``colour_of``: the palette colour nearest to the tracked object's median colour.
* ``flicker``: mean absolute change of background pixels from one frame to the next (0-255), less
  the true clip's own change where it is known (a panning camera moves the background), so the
  true clip's flicker is 0.
* ``background_drift``: mean absolute difference between the background of the last frames and the
  true background (0-255), for the 60-second sliding-window run.

Traps avoided: the object's own motion is excluded from flicker (pixels the object covers in either
frame, grown by one pixel, are masked), and a missing object is a large error, not a skipped frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from magic141.errors import InvalidInput

from . import world

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


PAN_MARGIN = 0.7  # a shift is a pan when it matches this much better than no shift,
PAN_MIN_GAIN = 0.5  # and by this many levels (0-255)
MAX_PAN_PX = 5  # pans are at most 3.7 pixels per DIRECTION_FRAMES at 32 px, under half the posts' spacing


def pan_of(frames, object_masks: np.ndarray, frames_used: int = DIRECTION_FRAMES) -> str | None:
    """The camera's pan over the first ``frames_used`` frames: ``left``, ``right`` or None (still).

    The background's column profile (the object's columns left out) of the last of those frames is
    matched against the first's at whole-pixel shifts; content sliding left means the camera pans right.
    """
    pixels = _float255(frames)[:frames_used]
    masks = _grow(np.asarray(object_masks, bool)[:frames_used])
    if len(pixels) < 2:
        return None
    keep = ~(masks[0] | masks[-1])
    weight = keep.sum(axis=0)  # [W]: rows of background in each column
    a = np.where(keep[..., None], pixels[0], 0).sum(axis=0) / np.maximum(weight, 1)[:, None]
    b = np.where(keep[..., None], pixels[-1], 0).sum(axis=0) / np.maximum(weight, 1)[:, None]
    width = pixels.shape[2]
    errors = {}
    for shift in range(-MAX_PAN_PX, MAX_PAN_PX + 1):
        cols = np.arange(max(0, -shift), min(width, width - shift))
        cols = cols[(weight[cols] > 0) & (weight[cols + shift] > 0)]
        if len(cols) >= width // 2:
            # less each profile's mean: a brightness change is not a pan (on a plain gradient, where
            # the two would look alike, no pan is seen at all)
            first, last = a[cols], b[cols + shift]
            errors[shift] = float(np.abs((first - first.mean(0)) - (last - last.mean(0))).mean())
    if 0 not in errors:
        return None
    best = min(errors, key=lambda shift: errors[shift])
    if best == 0 or errors[best] > PAN_MARGIN * errors[0] or errors[0] - errors[best] < PAN_MIN_GAIN:
        return None
    return "left" if best > 0 else "right"


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


def flicker(frames, object_masks: np.ndarray, true_backgrounds=None) -> float:
    """Mean |frame[t] - frame[t-1]| (0-255) over pixels that are background in both frames; with the
    true backgrounds ([n, H, W, 3] in [0, 1]), their change is subtracted first."""
    pixels = _float255(frames)
    if len(pixels) < 2:
        return 0.0
    grown = _grow(np.asarray(object_masks, bool))
    keep = ~(grown[1:] | grown[:-1])
    step = pixels[1:] - pixels[:-1]
    if true_backgrounds is not None:
        truth = np.round(np.asarray(true_backgrounds, np.float64) * 255)  # as the true clip was written
        step = step - (truth[1:] - truth[:-1])
    change = np.abs(step).mean(axis=-1)
    return float(change[keep].mean()) if keep.any() else 0.0


def background_drift(frames, object_masks: np.ndarray, background_rgb: np.ndarray) -> float:
    """Mean |frame - true background| (0-255) over background pixels of ``frames``; the background is
    [H, W, 3] or one per frame [n, H, W, 3], in [0, 1]."""
    pixels = _float255(frames)
    keep = ~_grow(np.asarray(object_masks, bool))
    truth = np.asarray(background_rgb, np.float64)
    diff = np.abs(pixels - (truth if truth.ndim == 4 else truth[None]) * 255).mean(axis=-1)
    return float(diff[keep].mean()) if keep.any() else float("nan")


@dataclass(frozen=True)
class ClipScores:
    psnr_first: float
    trajectory_px: float
    direction_ok: bool
    colour_ok: bool
    pan_ok: bool  # the camera pans the way the prompt says (or stays still when it says nothing)
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
    true_backgrounds = world.backgrounds(state, world.frame_times(n, fps), height, width)
    found = world.track(frames, true_backgrounds)
    terms = world.prompt_terms(prompt)
    true_centres = world.centres_px(state, n, height, fps=fps)
    return ClipScores(
        psnr_first=psnr(frames[0], condition),
        trajectory_px=trajectory_error(found.centres, true_centres, float(np.hypot(height, width))),
        direction_ok=direction_of(found.centres) == terms["direction"],
        colour_ok=colour_of(found.colours) == terms["colour"],
        pan_ok=pan_of(frames, found.masks) == terms["pan"],
        found=float(found.found.mean()),
        flicker=flicker(frames, found.masks, true_backgrounds),
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
        pan_ok=pan_of(frames, found.masks) == terms["pan"],
        found=float(found.found.mean()),
        flicker=flicker(frames, found.masks),
    )


def summarise(scores: list[ClipScores]) -> dict[str, float]:
    """Means over clips (booleans become rates)."""
    if not scores:
        raise InvalidInput("no clips to summarise")
    keys = ClipScores.__dataclass_fields__
    return {k: float(np.mean([float(getattr(s, k)) for s in scores])) for k in keys}
