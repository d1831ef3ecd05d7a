"""Scores of a generated clip against the world's ground truth.

Every score is computed from pixels, the way a viewer would judge the clip, using ``world.track``
to find the object:

* ``psnr``: first-frame fidelity to the conditioning image (dB; higher is better).
* ``trajectory_error``: mean distance in pixels between the tracked object and the world's true
  continuation, frame by frame (a frame where the object is lost counts as the frame's diagonal).
* ``direction_of``: which of the four directions the object moves in over its first frames; the
  caption adherence score compares it with the prompt's direction (any motion when it names none).
* ``pan_of``: which way the camera pans (left, right or not at all), from how far the background's
  column profile slides over the same first frames; the caption adherence score compares it with
  the prompt's pan (none when the prompt names none).
* ``colour_of``: the palette colour nearest to the tracked object's median colour.
* ``flicker``: mean absolute change of background pixels from one frame to the next (0-255), less
  the true clip's own change where it is known (a panning camera moves the background), so the
  true clip's flicker is 0.
* ``background_drift``: mean absolute difference between the background of the last frames and the
  true background (0-255), for the 60-second sliding-window run.
* ``object_iou``: mean per-frame intersection over union of the pixels tracked as the object and the
  pixels the true object covers at least half of (1 = the object is where and as big as it should be).
* ``edge_sharpness``: mean gradient magnitude around the true object's edge, over the same of the
  true clip (1 = as sharp as the truth, lower = blurred).
* ``spread``: RMS distance of points to their centroid, for seed diversity: where the object ends up
  across the seeds of one case, against the same for plausible true continuations.

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
    return _decibels(float(np.mean((a - b) ** 2)))


def _decibels(mse: float) -> float:
    return 99.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def masked_psnr(frames, truth, mask: np.ndarray) -> float:
    """PSNR in dB of ``frames`` against ``truth`` (both [n, H, W, 3]) over the pixels of ``mask`` [n, H, W]
    (every channel); NaN when the mask is empty, 99 when identical there."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return float("nan")
    return _decibels(float(np.mean((_float255(frames)[mask] - _float255(truth)[mask]) ** 2)))


def background_and_object_psnr(frames, truth, cover: np.ndarray) -> tuple[float, float]:
    """``masked_psnr`` where the true object is not (``cover`` 0) and where it covers any part of a pixel."""
    cover = np.asarray(cover)
    return masked_psnr(frames, truth, cover == 0), masked_psnr(frames, truth, cover > 0)


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


def direction_ok(centres: np.ndarray, asked: str | None) -> bool:
    """The object moves the way the prompt asks; a prompt that names no direction asks for motion
    in any (the multimodal world's "a red circle moves")."""
    seen = direction_of(centres)
    return seen is not None if asked is None else seen == asked


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


def object_iou(masks: np.ndarray, cover: np.ndarray) -> float:
    """Mean over frames of IoU(``masks``, ``cover >= 0.5``): tracked masks [n, H, W] bool against the true
    coverage [n, H, W] (``world.coverage``); a frame where both are empty counts 1, only one empty 0."""
    masks, truth = np.asarray(masks, bool), np.asarray(cover, np.float64) >= 0.5
    if masks.shape != truth.shape:
        raise InvalidInput(f"masks {masks.shape} and coverage {truth.shape} differ in shape")
    inter = (masks & truth).sum(axis=(1, 2))
    union = (masks | truth).sum(axis=(1, 2))
    return float(np.mean(np.where(union == 0, 1.0, inter / np.maximum(union, 1))))


def _gradient(frames) -> np.ndarray:
    """Per-pixel gradient magnitude [n, H, W] (0-255 per pixel): central differences in each RGB channel,
    the largest over channels (so an edge between two colours of one brightness still counts)."""
    pixels = _float255(frames)
    dy, dx = np.gradient(pixels, axis=(1, 2))
    return np.hypot(dx, dy).max(axis=-1)


def edge_sharpness(frames, truth, cover: np.ndarray) -> float:
    """Mean gradient magnitude of ``frames`` in a band around the true object's edge, over the same of
    ``truth`` (the true frames); both [n, H, W, 3]. The band is the pixels the object partly covers
    (0 < ``cover`` < 1), grown by one pixel. 1 = as sharp as the truth, lower = blurred; NaN when the
    band is empty."""
    cover = np.asarray(cover, np.float64)
    frames, truth = np.asarray(frames), np.asarray(truth)
    if frames.shape != truth.shape or frames.shape[:3] != cover.shape:
        raise InvalidInput(f"frames {frames.shape}, truth {truth.shape} and coverage {cover.shape} differ")
    band = _grow((cover > 0) & (cover < 1))
    if not band.any():
        return float("nan")
    reference = float(_gradient(truth)[band].mean())
    return float(_gradient(frames)[band].mean() / reference) if reference > 0 else float("nan")


def spread(points: np.ndarray) -> float:
    """RMS distance of points [K, 2] to their centroid (rows with a NaN left out; NaN if under 2 remain)."""
    points = np.asarray(points, np.float64)
    if points.ndim != 2:
        raise InvalidInput(f"points must be [K, 2], got shape {points.shape}")
    points = points[~np.isnan(points).any(axis=1)]
    if len(points) < 2:
        return float("nan")
    return float(np.sqrt(np.mean(np.sum((points - points.mean(axis=0)) ** 2, axis=1))))


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
    iou: float  # object_iou against the true object (NaN for text-to-video)
    sharpness: float  # edge_sharpness against the true clip (NaN for text-to-video)
    psnr_background: float  # masked_psnr against the true clip where the true object is not (NaN for t2v)
    psnr_object: float  # the same where it covers any part of a pixel (the VAE's bar is 30 dB on both)

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
    cover = world.coverage(state, world.frame_times(n, fps), height, width)
    background, obj = background_and_object_psnr(frames, truth, cover)
    return ClipScores(
        psnr_first=psnr(frames[0], condition),
        trajectory_px=trajectory_error(found.centres, true_centres, float(np.hypot(height, width))),
        direction_ok=direction_ok(found.centres, terms["direction"]),
        colour_ok=colour_of(found.colours) == terms["colour"],
        pan_ok=pan_of(frames, found.masks) == terms["pan"],
        found=float(found.found.mean()),
        flicker=flicker(frames, found.masks, true_backgrounds),
        iou=object_iou(found.masks, cover),
        sharpness=edge_sharpness(frames, truth, cover),
        psnr_background=background,
        psnr_object=obj,
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
        direction_ok=direction_ok(found.centres, terms["direction"]),
        colour_ok=colour_of(found.colours) == terms["colour"],
        pan_ok=pan_of(frames, found.masks) == terms["pan"],
        found=float(found.found.mean()),
        flicker=flicker(frames, found.masks),
        iou=float("nan"),
        sharpness=float("nan"),
        psnr_background=float("nan"),
        psnr_object=float("nan"),
    )


def summarise(scores: list[ClipScores]) -> dict[str, float]:
    """Means over clips (booleans become rates).

    The scores against the true clip (IoU, sharpness, masked PSNRs) average the clips that have them
    (NaN only when none has: text-to-video clips, or an empty edge band); every other score is a plain
    mean, NaN if any clip's is.
    """
    if not scores:
        raise InvalidInput("no clips to summarise")
    out = {}
    for key in ClipScores.__dataclass_fields__:
        values = np.array([float(getattr(s, key)) for s in scores])
        if key in _NAN_SKIPPED:
            values = values[~np.isnan(values)]
            out[key] = float(values.mean()) if len(values) else float("nan")
        else:
            out[key] = float(values.mean())
    return out


_NAN_SKIPPED = ("iou", "sharpness", "psnr_background", "psnr_object")
