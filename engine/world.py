"""A procedural world of short videos, with captions and the true continuation of every state.

One shape (a circle or a square) of one colour moves at constant speed in one of four directions
over a background (a solid colour or a horizontal gradient of two), bouncing off the frame's
edges. Everything is analytic, so the world can

* render any state at any size and frame rate (``render``), anti-aliased by supersampling so that
  sub-pixel motion is visible and a model can learn it;
* continue any state exactly (``WorldState.advance``): ``render(advance(s, k/fps))`` equals frames
  ``k..`` of ``render(s)``, which is what generated clips are scored against;
* describe a clip in a fixed grammar (``caption``): ``"a red circle moves right and bounces off
  the wall"``, and read such a prompt back (``prompt_terms``);
* find the object again in any frame, generated or true (``track``), given the background.

Geometry is in units of the frame's height (the frame is ``aspect`` wide and 1 high), so the same
state renders the same picture at 32x48 and at 320x480. Time is in seconds; frame ``i`` of a clip at
``fps`` is the state at ``i / fps`` (fractions stay exact until the final float conversion).

Traps avoided: positions are folded into the allowed range with a triangle wave rather than stepped
frame by frame, so a continuation rendered from any frame is bit-identical to the original clip's
tail; the caption's "bounces" is decided from the same fold, never from rendered pixels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from .errors import InvalidInput

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (222, 52, 48),
    "green": (56, 196, 84),
    "blue": (64, 118, 238),
    "yellow": (232, 204, 52),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "charcoal": (40, 40, 44),
    "navy": (24, 32, 76),
    "teal": (20, 74, 76),
    "plum": (66, 32, 64),
}
SHAPES = ("circle", "square")
DIRECTIONS: dict[str, tuple[int, int]] = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}

RADIUS = 0.125  # of the frame height: a circle 8 pixels across in a 32-pixel-high frame
SQUARE_HALF = 0.9 * RADIUS  # a square of about the circle's area
SPEED_RANGE = (0.45, 0.75)  # frame heights per second: 0.6 to 1 pixel per frame at 32 px and 24 fps
ASPECT = Fraction(3, 2)
FPS = Fraction(24)
SUPERSAMPLE = 4
BOUNCE_PHRASE = " and bounces off the wall"

# Tracking: a pixel belongs to the object when some channel differs from the background by more
# than this (of 255); the object's colour is read from its core, where coverage is nearly full.
TRACK_THRESHOLD = 48
TRACK_MIN_PIXELS = 6


@dataclass(frozen=True)
class WorldState:
    """Everything that determines a clip from this instant on."""

    shape: str
    colour: str
    background: tuple[str, str]  # left and right colours of the gradient (equal: a solid colour)
    x: float  # centre, in frame heights from the left edge
    y: float  # centre, in frame heights from the top edge
    direction: str
    speed: float  # frame heights per second
    aspect: Fraction = ASPECT

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise InvalidInput(f"shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        if self.colour not in COLOURS:
            raise InvalidInput(f"colour must be one of {', '.join(COLOURS)}, got {self.colour!r}")
        if len(self.background) != 2 or any(b not in BACKGROUNDS for b in self.background):
            raise InvalidInput(f"background must be two of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        if self.direction not in DIRECTIONS:
            raise InvalidInput(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        if not self.speed >= 0:
            raise InvalidInput(f"speed must be non-negative, got {self.speed}")
        for name, value, hi in (("x", self.x, float(self.aspect)), ("y", self.y, 1.0)):
            if not RADIUS - 1e-9 <= value <= hi - RADIUS + 1e-9:
                raise InvalidInput(
                    f"{name}={value} puts the object outside the frame [{RADIUS}, {hi - RADIUS}]"
                )

    @property
    def axis(self) -> int:
        """0 when moving horizontally, 1 vertically."""
        return 0 if DIRECTIONS[self.direction][0] else 1

    def _limits(self) -> tuple[float, float]:
        hi = float(self.aspect) if self.axis == 0 else 1.0
        return RADIUS, hi - RADIUS

    def _unfolded(self, seconds) -> np.ndarray:
        """Position along the moving axis as if there were no walls."""
        sign = sum(DIRECTIONS[self.direction])
        start = self.x if self.axis == 0 else self.y
        return start + sign * self.speed * np.asarray(seconds, dtype=np.float64)

    def centres(self, seconds) -> np.ndarray:
        """Object centres [n, 2] (x, y in frame heights) at the given times, walls included."""
        seconds = np.atleast_1d(np.asarray(seconds, dtype=np.float64))
        lo, hi = self._limits()
        along = _fold(self._unfolded(seconds), lo, hi)
        fixed = np.full_like(along, self.y if self.axis == 0 else self.x)
        return np.stack([along, fixed] if self.axis == 0 else [fixed, along], axis=1)

    def bounces(self, seconds: float) -> bool:
        """Whether the object touches a wall and turns within the next ``seconds``."""
        lo, hi = self._limits()
        end = float(self._unfolded(seconds))
        return not lo <= end <= hi

    def advance(self, seconds) -> WorldState:
        """The state ``seconds`` later: the true continuation starts here."""
        lo, hi = self._limits()
        unfolded = float(self._unfolded(float(seconds)))
        along = float(_fold(np.array([unfolded]), lo, hi)[0])
        turns = int(math.floor((unfolded - lo) / (hi - lo))) % 2 if hi > lo else 0
        direction = _OPPOSITE[self.direction] if turns else self.direction
        if self.axis == 0:
            return replace(self, x=along, direction=direction)
        return replace(self, y=along, direction=direction)


_OPPOSITE = {"right": "left", "left": "right", "up": "down", "down": "up"}


def _fold(position: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect positions into [lo, hi] (a triangle wave): bouncing off both walls, exactly."""
    span = hi - lo
    if span <= 0:
        return np.full_like(position, lo)
    u = np.mod(position - lo, 2 * span)
    return lo + np.where(u <= span, u, 2 * span - u)


# Sampling --------------------------------------------------------------------------------------


def sample_state(rng: np.random.Generator, *, aspect: Fraction = ASPECT, clear: float = 0.0) -> WorldState:
    """A random state; with ``clear`` seconds, the object does not reach a wall before then."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    names = list(BACKGROUNDS)
    left = names[rng.integers(len(names))]
    right = left if rng.random() < 0.5 else names[rng.integers(len(names))]
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    speed = float(rng.uniform(*SPEED_RANGE))
    width = float(aspect)
    for _ in range(100):
        x = float(rng.uniform(RADIUS, width - RADIUS))
        y = float(rng.uniform(RADIUS, 1 - RADIUS))
        state = WorldState(shape, colour, (left, right), x, y, direction, speed, aspect)
        if clear <= 0 or not state.bounces(clear):
            return state
    raise InvalidInput(f"no position keeps the object clear of the walls for {clear} s at speed {speed:.2f}")


# Captions --------------------------------------------------------------------------------------


def caption(state: WorldState, seconds: float) -> str:
    """The fixed-grammar caption of the clip that starts at ``state`` and lasts ``seconds``."""
    text = f"a {state.colour} {state.shape} moves {state.direction}"
    return text + (BOUNCE_PHRASE if state.bounces(seconds) else "")


_WORD = re.compile(r"[a-z]+")


def prompt_terms(prompt: str) -> dict[str, str | None]:
    """The colour, shape and direction a prompt asks for (``None`` where it names none).

    Reads free text as well as captions: the first colour, shape and direction word wins.
    """
    words = _WORD.findall(prompt.lower())
    found: dict[str, str | None] = {"colour": None, "shape": None, "direction": None}
    for word in words:
        if found["colour"] is None and word in COLOURS:
            found["colour"] = word
        elif found["shape"] is None and word in SHAPES:
            found["shape"] = word
        elif found["direction"] is None and word in DIRECTIONS:
            found["direction"] = word
    return found


# Rendering -------------------------------------------------------------------------------------


def frame_times(frames: int, fps: Fraction = FPS, start: int = 0) -> np.ndarray:
    """Seconds of frames ``start .. start+frames-1``."""
    return np.array([float(Fraction(start + i) / fps) for i in range(frames)])


def background(state: WorldState, height: int, width: int) -> np.ndarray:
    """The background alone, [H, W, 3] float64 in [0, 1]."""
    left = np.array(BACKGROUNDS[state.background[0]], dtype=np.float64) / 255
    right = np.array(BACKGROUNDS[state.background[1]], dtype=np.float64) / 255
    ramp = (np.arange(width) + 0.5) / width
    row = left[None, :] + (right - left)[None, :] * ramp[:, None]
    return np.broadcast_to(row[None], (height, width, 3)).copy()


def _coverage(state: WorldState, centres: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fraction of each pixel the object covers, [n, H, W], by supersampling."""
    ss = SUPERSAMPLE
    sub = (np.arange(ss) + 0.5) / ss
    ys = ((np.arange(height)[:, None] + sub[None, :]).reshape(-1)) / height  # frame heights
    xs = ((np.arange(width)[:, None] + sub[None, :]).reshape(-1)) / height
    dx = xs[None, None, :] - centres[:, 0, None, None]
    dy = ys[None, :, None] - centres[:, 1, None, None]
    if state.shape == "circle":
        inside = dx * dx + dy * dy <= RADIUS * RADIUS
    else:
        inside = (np.abs(dx) <= SQUARE_HALF) & (np.abs(dy) <= SQUARE_HALF)
    n = centres.shape[0]
    return inside.reshape(n, height, ss, width, ss).mean(axis=(2, 4))


def render(
    state: WorldState, frames: int, height: int = 32, width: int | None = None, *, fps: Fraction = FPS
) -> np.ndarray:
    """``frames`` frames starting at ``state``: uint8 [frames, H, W, 3]."""
    if frames < 1:
        raise InvalidInput(f"frames must be at least 1, got {frames}")
    width = width if width is not None else round(height * state.aspect)
    if height < 4 or width < 4:
        raise InvalidInput(f"frames must be at least 4x4 pixels, got {height}x{width}")
    centres = state.centres(frame_times(frames, fps))
    cover = _coverage(state, centres, height, width)[..., None]
    colour = np.array(COLOURS[state.colour], dtype=np.float64) / 255
    video = background(state, height, width)[None] * (1 - cover) + colour * cover
    return np.round(video * 255).astype(np.uint8)


def centres_px(state: WorldState, frames: int, height: int, *, fps: Fraction = FPS) -> np.ndarray:
    """True object centres [frames, 2] in pixels (x, y; pixel centres at +0.5) at ``height``."""
    return state.centres(frame_times(frames, fps)) * height


# Tracking --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Track:
    """Where the object is in each frame of a clip, as found from its pixels."""

    centres: np.ndarray  # [n, 2] pixels (x, y); NaN where the object was not found
    colours: np.ndarray  # [n, 3] 0-255; NaN where not found
    masks: np.ndarray  # [n, H, W] bool: the pixels taken for the object

    @property
    def found(self) -> np.ndarray:
        return ~np.isnan(self.centres[:, 0])


def _as_float255(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames.astype(np.float64)
    return np.asarray(frames, dtype=np.float64) * 255


def estimate_background(frames: np.ndarray) -> np.ndarray:
    """The per-pixel median over time, [H, W, 3] in [0, 1]: the background wherever the object moved on."""
    return np.median(_as_float255(frames), axis=0) / 255


def track(frames: np.ndarray, background_rgb: np.ndarray) -> Track:
    """Find the object in each frame: pixels far from the background, centroid weighted by distance.

    ``frames`` are uint8 [n, H, W, 3] (or floats in [0, 1]); ``background_rgb`` is [H, W, 3] in [0, 1].
    """
    pixels = _as_float255(frames)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise InvalidInput(f"frames must be [n, H, W, 3], got shape {pixels.shape}")
    diff = np.abs(pixels - background_rgb[None] * 255).max(axis=-1)
    mask = diff > TRACK_THRESHOLD
    n, height, width = mask.shape
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    centres = np.full((n, 2), np.nan)
    colours = np.full((n, 3), np.nan)
    for i in range(n):
        if mask[i].sum() < TRACK_MIN_PIXELS:
            continue
        weight = np.where(mask[i], diff[i], 0.0)
        total = weight.sum()
        centres[i] = (float((xs * weight).sum() / total), float((ys * weight).sum() / total))
        core = mask[i] & (diff[i] >= 0.75 * diff[i][mask[i]].max())
        colours[i] = pixels[i][core].mean(axis=0)
    return Track(centres, colours, mask)


def nearest_colour(rgb) -> str | None:
    """The palette colour nearest to ``rgb`` (0-255), or None for NaN."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if np.isnan(rgb).any():
        return None
    return min(COLOURS, key=lambda name: float(np.sum((np.array(COLOURS[name]) - rgb) ** 2)))
