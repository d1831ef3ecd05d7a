"""A procedural world of short videos, with captions and the true continuation of every state.

One shape (a circle or a square) of one colour over a background (a solid colour or a gradient of
two). In the basic world the object ``moves`` at constant speed in one of four directions, bouncing
off the frame's edges. The full world
(``sample_state(..., physics="full")``) adds

* ``falls``: under gravity, straight down, bouncing elastically on the floor (the frame's bottom
  edge) back up to the height it fell from;
* spin: a square turning at a constant rate;
* camera pans left or right across the background, which gets a row of faint lighter posts so that a
  pan shows on a solid colour too (the object's motion stays relative to the frame, as if the box it
  bounces in were carried along with the camera).

The multimodal world (``physics="multimodal"``) is the full one with continuations a single frame and
its caption leave open: moving objects are either slow or fast (two separate speed bands), a share of
captions name the speed ("moves right slowly") and a share leave the direction out ("a red circle
moves"). From one frame and such a caption there are several right answers, so a sampler that
averages them (a blurred, middling object) loses to one that picks one; ``plausible_states`` draws
the true continuations a frame and a caption allow, which is what seed diversity is measured against.

Everything is analytic, so the world can

* render any state at any size and frame rate (``render``), anti-aliased by supersampling so that
  sub-pixel motion is visible and a model can learn it;
* continue any state exactly (``WorldState.advance``): ``render(advance(s, k/fps))`` equals frames
  ``k..`` of ``render(s)``, which is what generated clips are scored against;
* describe a clip in a fixed grammar (``caption``): ``"a red circle moves right and bounces off
  the wall"``, ``"a spinning blue square falls and bounces on the floor as the camera pans left"``,
  and read such a prompt back (``prompt_terms``);
* find the object again in any frame, generated or true (``track``), given the background.

Geometry is in units of the frame's height (the frame is ``aspect`` wide and 1 high), so the same
state renders the same picture at 32x48 and at 320x480. Time is in seconds; frame ``i`` of a clip at
``fps`` is the state at ``i / fps`` (fractions stay exact until the final float conversion).

Traps avoided: positions are folded into the allowed range (a triangle wave for walls, a wrapped
parabola for the floor) rather than stepped frame by frame, so a continuation rendered from any frame
is the original clip's tail; the caption's "bounces" is decided from the same fold, never from
rendered pixels; the posts are fainter than the tracker's threshold, so they are never taken for the
object.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from magic141.errors import InvalidInput

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
MOTIONS = ("moves", "falls")
DIRECTIONS: dict[str, tuple[int, int]] = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}

RADIUS = 0.125  # of the frame height: a circle 8 pixels across in a 32-pixel-high frame
SQUARE_HALF = 0.9 * RADIUS  # a square of about the circle's area
SPIN_REACH = SQUARE_HALF * math.sqrt(2)  # a spinning square's corners reach this far from its centre
SPEED_RANGE = (0.45, 0.75)  # frame heights per second: 0.6 to 1 pixel per frame at 32 px and 24 fps
SPEED_BANDS = {"slowly": (0.3, 0.42), "quickly": (0.8, 1.0)}  # the multimodal world's two speeds
GRAVITY = 2.0  # frame heights per second squared: a fall of half the frame takes 0.7 s
MIN_DROP = 0.3  # frame heights from the top of a fall to the floor
SPIN_RANGE = (0.25, 0.6)  # turns per second, either way
PAN_RANGE = (0.15, 0.35)  # frame heights per second: 0.2 to 0.5 pixel per frame at 32 px and 24 fps
POST_SPACING = 0.5  # frame heights between the background's posts
POST_WIDTH = 0.08
POST_LIFT = 22 / 255  # how much lighter a post is than the background (under TRACK_THRESHOLD)
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
    """Everything that determines a clip from this instant on.

    ``direction`` and ``speed`` are the object's velocity: for ``falls`` the direction is ``up`` or
    ``down`` and the speed changes with time; ``angle`` (turns) and ``spin`` (turns per second,
    positive clockwise) turn a square; ``camera`` (frame heights) and ``pan`` (frame heights per
    second, positive to the right) move the view across the background. The defaults are the basic
    world's: moving, not spinning, a still camera, no posts.
    """

    shape: str
    colour: str
    background: tuple[str, str]  # left and right colours of the gradient (equal: a solid colour)
    x: float  # centre, in frame heights from the left edge
    y: float  # centre, in frame heights from the top edge
    direction: str
    speed: float  # frame heights per second
    aspect: Fraction = ASPECT
    motion: str = "moves"
    angle: float = 0.0
    spin: float = 0.0
    camera: float = 0.0
    pan: float = 0.0
    posts: bool = False  # the background's posts (they make a pan visible on a solid colour)
    says_direction: bool = True  # the caption names a moving object's direction
    says_speed: bool = False  # the caption names a moving object's speed band (``SPEED_BANDS``)

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise InvalidInput(f"shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        if self.colour not in COLOURS:
            raise InvalidInput(f"colour must be one of {', '.join(COLOURS)}, got {self.colour!r}")
        if len(self.background) != 2 or any(b not in BACKGROUNDS for b in self.background):
            raise InvalidInput(f"background must be two of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        if self.direction not in DIRECTIONS:
            raise InvalidInput(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        if self.motion not in MOTIONS:
            raise InvalidInput(f"motion must be one of {', '.join(MOTIONS)}, got {self.motion!r}")
        if self.motion == "falls" and self.direction not in ("up", "down"):
            raise InvalidInput(f"a falling object moves up or down, got {self.direction!r}")
        if self.spin and self.shape == "circle":
            raise InvalidInput("only a square can spin (a spinning circle looks the same)")
        if not self.speed >= 0:
            raise InvalidInput(f"speed must be non-negative, got {self.speed}")
        for name in ("angle", "spin", "camera", "pan"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise InvalidInput(f"{name} must be a finite number, got {value}")
        reach = self.reach
        for name, value, hi in (("x", self.x, float(self.aspect)), ("y", self.y, 1.0)):
            if not reach - 1e-9 <= value <= hi - reach + 1e-9:
                raise InvalidInput(
                    f"{name}={value} puts the object outside the frame [{reach}, {hi - reach}]"
                )
        if self.motion == "falls" and self._apex() < reach - 1e-9:
            raise InvalidInput(f"falling at {self.speed} from y={self.y} would leave the top of the frame")

    @property
    def reach(self) -> float:
        """How far the object extends from its centre: where it meets a wall."""
        return SPIN_REACH if self.spin else RADIUS

    @property
    def axis(self) -> int:
        """0 when moving horizontally, 1 vertically."""
        return 0 if DIRECTIONS[self.direction][0] else 1

    def _limits(self) -> tuple[float, float]:
        hi = float(self.aspect) if self.axis == 0 else 1.0
        return self.reach, hi - self.reach

    # Constant velocity: a triangle wave between the walls.

    def _unfolded(self, seconds) -> np.ndarray:
        """Position along the moving axis as if there were no walls."""
        sign = sum(DIRECTIONS[self.direction])
        start = self.x if self.axis == 0 else self.y
        return start + sign * self.speed * np.asarray(seconds, dtype=np.float64)

    # Gravity: a parabola from the apex, wrapped at the floor (an elastic bounce).

    def _apex(self) -> float:
        return self.y - self.speed**2 / (2 * GRAVITY)

    def _fall_time(self) -> float:
        """Seconds from the apex to the floor."""
        return math.sqrt(max(2 * (1.0 - self.reach - self._apex()) / GRAVITY, 0.0))

    def _phase(self) -> float:
        """Seconds since the apex (negative while rising)."""
        return (self.speed if self.direction == "down" else -self.speed) / GRAVITY

    def _wrapped_phase(self, seconds) -> np.ndarray:
        tau = self._fall_time()
        phase = self._phase() + np.asarray(seconds, dtype=np.float64)
        return phase if tau == 0 else np.mod(phase + tau, 2 * tau) - tau

    def centres(self, seconds) -> np.ndarray:
        """Object centres [n, 2] (x, y in frame heights) at the given times, walls included."""
        seconds = np.atleast_1d(np.asarray(seconds, dtype=np.float64))
        if self.motion == "falls":
            ys = self._apex() + GRAVITY * self._wrapped_phase(seconds) ** 2 / 2
            return np.stack([np.full_like(ys, self.x), ys], axis=1)
        lo, hi = self._limits()
        along = _fold(self._unfolded(seconds), lo, hi)
        fixed = np.full_like(along, self.y if self.axis == 0 else self.x)
        return np.stack([along, fixed] if self.axis == 0 else [fixed, along], axis=1)

    def angles(self, seconds) -> np.ndarray:
        """The square's angle (turns) at the given times."""
        return self.angle + self.spin * np.atleast_1d(np.asarray(seconds, dtype=np.float64))

    def cameras(self, seconds) -> np.ndarray:
        """The camera's offset (frame heights) at the given times."""
        return self.camera + self.pan * np.atleast_1d(np.asarray(seconds, dtype=np.float64))

    def events(self, seconds: float) -> set[str]:
        """What turns the object within the next ``seconds``: ``wall``, ``floor`` (a bounce) or ``apex``."""
        if self.motion == "falls":
            phase, tau = self._phase(), self._fall_time()
            found = {"apex"} if phase < 0 <= phase + seconds else set()
            return found | ({"floor"} if phase + seconds > tau else set())
        lo, hi = self._limits()
        return set() if lo <= float(self._unfolded(seconds)) <= hi else {"wall"}

    def bounces(self, seconds: float) -> bool:
        """Whether the object turns (off a wall, the floor, or at the top of a fall) within ``seconds``."""
        return bool(self.events(seconds))

    def advance(self, seconds) -> WorldState:
        """The state ``seconds`` later: the true continuation starts here."""
        seconds = float(seconds)
        angle, camera = float(self.angles(seconds)[0] % 1.0), float(self.cameras(seconds)[0])
        if self.motion == "falls":
            phase = float(self._wrapped_phase(seconds))
            y = self._apex() + GRAVITY * phase**2 / 2
            direction = "down" if phase >= 0 else "up"
            return replace(self, y=y, direction=direction, speed=GRAVITY * abs(phase), angle=angle,
                           camera=camera)
        lo, hi = self._limits()
        unfolded = float(self._unfolded(seconds))
        along = float(_fold(np.array([unfolded]), lo, hi)[0])
        turns = int(math.floor((unfolded - lo) / (hi - lo))) % 2 if hi > lo else 0
        direction = _OPPOSITE[self.direction] if turns else self.direction
        if self.axis == 0:
            return replace(self, x=along, direction=direction, angle=angle, camera=camera)
        return replace(self, y=along, direction=direction, angle=angle, camera=camera)


_OPPOSITE = {"right": "left", "left": "right", "up": "down", "down": "up"}


def _fold(position: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect positions into [lo, hi] (a triangle wave): bouncing off both walls, exactly."""
    span = hi - lo
    if span <= 0:
        return np.full_like(position, lo)
    u = np.mod(position - lo, 2 * span)
    return lo + np.where(u <= span, u, 2 * span - u)


# Sampling --------------------------------------------------------------------------------------

PHYSICS = ("basic", "full", "multimodal")  # basic: constant velocity and walls only; full: gravity, spin
# and pans too; multimodal: the full world with two speed bands and captions that leave things open
FALL_CHANCE = 0.3
SPIN_CHANCE = 0.5  # of squares
PAN_CHANCE = 0.4
UNSAID_DIRECTION_CHANCE = 0.3  # of moving objects in the multimodal world
SAID_SPEED_CHANCE = 0.5


def speed_band(speed: float) -> str:
    """The multimodal world's speed word for ``speed``: ``slowly`` below the middle of the bands."""
    middle = (SPEED_BANDS["slowly"][1] + SPEED_BANDS["quickly"][0]) / 2
    return "slowly" if speed < middle else "quickly"


def _draw_speed(rng: np.random.Generator, physics: str, band: str | None = None) -> float:
    if physics != "multimodal":
        return float(rng.uniform(*SPEED_RANGE))
    band = band or ("slowly" if rng.random() < 0.5 else "quickly")
    return float(rng.uniform(*SPEED_BANDS[band]))


def sample_state(
    rng: np.random.Generator, *, aspect: Fraction = ASPECT, clear: float = 0.0, physics: str = "basic"
) -> WorldState:
    """A random state; with ``clear`` seconds, the object does not turn (``bounces``) before then.

    ``physics="basic"`` draws constant velocity and walls only (the same draws from the same
    generator as before gravity, spin and pans existed); ``"full"`` draws all of them (the same
    draws as before the multimodal world existed); ``"multimodal"`` the full world's, then the speed
    band and what the caption says. The shipped ``world`` model's card says what it learnt.
    """
    if physics not in PHYSICS:
        raise InvalidInput(f"physics must be one of {', '.join(PHYSICS)}, got {physics!r}")
    full = physics != "basic"
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    names = list(BACKGROUNDS)
    left = names[rng.integers(len(names))]
    right = left if rng.random() < 0.5 else names[rng.integers(len(names))]
    motion = "falls" if full and rng.random() < FALL_CHANCE else "moves"
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    speed = float(rng.uniform(*SPEED_RANGE))
    extras: dict = dict(aspect=aspect, motion=motion)
    if full:
        if shape == "square" and rng.random() < SPIN_CHANCE:
            turns = float(rng.uniform(*SPIN_RANGE) * rng.choice((-1, 1)))
            extras.update(spin=turns, angle=float(rng.random()))
        if rng.random() < PAN_CHANCE:
            extras.update(pan=float(rng.uniform(*PAN_RANGE) * rng.choice((-1, 1))))
        extras.update(camera=float(rng.uniform(0, 2 * float(aspect))), posts=True)
    if physics == "multimodal" and motion == "moves":
        speed = _draw_speed(rng, physics)
        extras.update(says_direction=bool(rng.random() >= UNSAID_DIRECTION_CHANCE),
                      says_speed=bool(rng.random() < SAID_SPEED_CHANCE))
    reach = SPIN_REACH if extras.get("spin") else RADIUS
    width = float(aspect)
    for _ in range(100):
        x = float(rng.uniform(reach, width - reach))
        y = float(rng.uniform(reach, 1 - reach))
        if motion == "falls":
            apex = float(rng.uniform(reach, 1 - reach - MIN_DROP))
            tau = math.sqrt(2 * (1 - reach - apex) / GRAVITY)
            phase = float(rng.uniform(-tau, tau))
            y = min(apex + GRAVITY * phase**2 / 2, 1 - reach)
            direction, speed = ("down" if phase >= 0 else "up"), GRAVITY * abs(phase)
        state = WorldState(shape, colour, (left, right), x, y, direction, speed, **extras)
        if clear <= 0 or not state.bounces(clear):
            return state
    raise InvalidInput(
        f"no position keeps the object from turning for {clear} s ({motion}, speed {speed:.2f})"
    )


# Captions --------------------------------------------------------------------------------------

_PAN_WORDS = ("pans", "pan", "panning")  # followed by left or right
# Words a prompt may use for the direction of a fall or a rise.
_VERTICAL_WORDS = {
    "falls": "down", "fall": "down", "falling": "down", "rises": "up", "rise": "up", "rising": "up"
}


def caption(state: WorldState, seconds: float) -> str:
    """The fixed-grammar caption of the clip that starts at ``state`` and lasts ``seconds``."""
    events = state.events(seconds)
    spinning = "spinning " if state.spin else ""
    text = f"a {spinning}{state.colour} {state.shape}"
    if state.motion == "moves":
        text += " moves" + (f" {state.direction}" if state.says_direction else "")
        text += f" {speed_band(state.speed)}" if state.says_speed else ""
        text += BOUNCE_PHRASE if events else ""
    elif state.direction == "down":
        text += " falls" + (" and bounces on the floor" if "floor" in events else "")
    else:
        text += " rises" + (" and falls" if "apex" in events else "")
    if state.pan:
        text += f" as the camera pans {'right' if state.pan > 0 else 'left'}"
    return text


_WORD = re.compile(r"[a-z]+")
_SPEED_WORDS = {"slowly": "slowly", "slow": "slowly", "quickly": "quickly", "quick": "quickly",
                "fast": "quickly"}


def plausible_states(
    state: WorldState, seconds: float, rng: np.random.Generator, count: int, *, physics: str = "multimodal"
) -> list[WorldState]:
    """``count`` true continuations that ``state``'s first frame and caption allow: what the frame
    shows (shape, colour, background, position, angle, camera) is kept; what it cannot show (speed,
    the spin's rate and sign, the pan's speed, and the direction when the caption leaves it out) is
    drawn again from ``physics``'s prior, and a draw is kept when its caption over ``seconds`` is the
    state's. The spread of where the object ends up across them is the truth's conditional spread.
    """
    wanted = caption(state, seconds)
    found: list[WorldState] = []
    for _ in range(200 * count):
        if len(found) == count:
            break
        changes: dict = {}
        if state.motion == "moves":
            band = speed_band(state.speed) if state.says_speed else None
            changes["speed"] = _draw_speed(rng, physics, band)
            if not state.says_direction:
                changes["direction"] = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
        else:  # falling or rising at y: any speed that keeps the apex inside and the drop long enough
            top = math.sqrt(2 * GRAVITY * max(state.y - state.reach, 0.0))
            low = math.sqrt(2 * GRAVITY * max(state.y - (1 - state.reach - MIN_DROP), 0.0))
            changes["speed"] = float(rng.uniform(min(low, top), top))
        if state.spin:
            changes["spin"] = float(rng.uniform(*SPIN_RANGE) * rng.choice((-1, 1)))
        if state.pan:
            changes["pan"] = float(math.copysign(rng.uniform(*PAN_RANGE), state.pan))
        try:
            candidate = replace(state, **changes)
        except InvalidInput:
            continue
        if caption(candidate, seconds) == wanted:
            found.append(candidate)
    if len(found) < count:
        raise InvalidInput(f"only {len(found)} of {count} plausible continuations found for {wanted!r}")
    return found


def prompt_terms(prompt: str) -> dict[str, str | None]:
    """The colour, shape, direction, speed and pan a prompt asks for (``None`` where it names none).

    Reads free text as well as captions: the first colour, shape and direction word wins ("falls"
    and "rises" are directions, down and up); the speed is ``slowly`` or ``quickly`` (a band of
    ``SPEED_BANDS``; "slow" and "fast" read as them); the pan is the direction word after "pans".
    """
    words = _WORD.findall(prompt.lower())
    found: dict[str, str | None] = {"colour": None, "shape": None, "direction": None, "pan": None,
                                    "speed": None}
    for i, word in enumerate(words):
        if word in _PAN_WORDS and i + 1 < len(words) and words[i + 1] in ("left", "right"):
            found["pan"] = words[i + 1]
        elif i > 0 and words[i - 1] in _PAN_WORDS:
            continue
        elif found["speed"] is None and word in _SPEED_WORDS:
            found["speed"] = _SPEED_WORDS[word]
        elif found["colour"] is None and word in COLOURS:
            found["colour"] = word
        elif found["shape"] is None and word in SHAPES:
            found["shape"] = word
        elif found["direction"] is None and (word in DIRECTIONS or word in _VERTICAL_WORDS):
            found["direction"] = _VERTICAL_WORDS.get(word, word)
    return found


# Rendering -------------------------------------------------------------------------------------


def frame_times(frames: int, fps: Fraction = FPS, start: int = 0) -> np.ndarray:
    """Seconds of frames ``start .. start+frames-1``."""
    return np.array([float(Fraction(start + i) / fps) for i in range(frames)])


def backgrounds(state: WorldState, times, height: int, width: int) -> np.ndarray:
    """The background alone at each of ``times`` (seconds), [n, H, W, 3] float64 in [0, 1].

    Across the frame, the gradient runs from the left colour to the right one; beyond the frame it
    repeats mirrored (a triangle wave), so a panning camera always sees the same two colours.
    """
    left = np.array(BACKGROUNDS[state.background[0]], dtype=np.float64) / 255
    right = np.array(BACKGROUNDS[state.background[1]], dtype=np.float64) / 255
    ss = SUPERSAMPLE
    sub = (np.arange(width)[:, None] + (np.arange(ss) + 0.5)[None, :] / ss).reshape(-1)
    sub = sub / height  # frame heights
    world_x = sub[None, :] + state.cameras(times)[:, None]  # [n, W*ss]
    ramp = _fold(world_x / float(state.aspect), 0.0, 1.0)
    post = np.abs(np.mod(world_x, POST_SPACING) - POST_SPACING / 2) <= POST_WIDTH / 2
    n = len(world_x)
    ramp = ramp.reshape(n, width, ss).mean(axis=2)
    post = post.reshape(n, width, ss).mean(axis=2)
    rows = left + (right - left) * ramp[..., None] + POST_LIFT * state.posts * post[..., None]  # [n, W, 3]
    return np.broadcast_to(rows[:, None], (n, height, width, 3)).copy()


def background(state: WorldState, height: int, width: int) -> np.ndarray:
    """The background alone at the state's instant, [H, W, 3] float64 in [0, 1]."""
    return backgrounds(state, [0.0], height, width)[0]


def coverage(state: WorldState, seconds, height: int, width: int) -> np.ndarray:
    """Fraction of each pixel the object covers at each of ``seconds``, [n, H, W] in [0, 1], by supersampling
    (``frame_times`` gives a clip's seconds)."""
    seconds = np.atleast_1d(np.asarray(seconds, dtype=np.float64))
    centres = state.centres(seconds)
    ss = SUPERSAMPLE
    sub = (np.arange(ss) + 0.5) / ss
    ys = ((np.arange(height)[:, None] + sub[None, :]).reshape(-1)) / height  # frame heights
    xs = ((np.arange(width)[:, None] + sub[None, :]).reshape(-1)) / height
    dx = xs[None, None, :] - centres[:, 0, None, None]
    dy = ys[None, :, None] - centres[:, 1, None, None]
    if state.shape == "circle":
        inside = dx * dx + dy * dy <= RADIUS * RADIUS
    else:
        turn = 2 * np.pi * state.angles(seconds)[:, None, None]
        cos, sin = np.cos(turn), np.sin(turn)
        inside = (np.abs(cos * dx + sin * dy) <= SQUARE_HALF) & (np.abs(cos * dy - sin * dx) <= SQUARE_HALF)
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
    times = frame_times(frames, fps)
    cover = coverage(state, times, height, width)[..., None]
    colour = np.array(COLOURS[state.colour], dtype=np.float64) / 255
    video = backgrounds(state, times, height, width) * (1 - cover) + colour * cover
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

    ``frames`` are uint8 [n, H, W, 3] (or floats in [0, 1]); ``background_rgb`` is [H, W, 3] or, for a
    panning camera, one per frame [n, H, W, 3], in [0, 1].
    """
    pixels = _as_float255(frames)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise InvalidInput(f"frames must be [n, H, W, 3], got shape {pixels.shape}")
    background_rgb = np.asarray(background_rgb, dtype=np.float64)
    bg = background_rgb if background_rgb.ndim == 4 else background_rgb[None]
    diff = np.abs(pixels - bg * 255).max(axis=-1)
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
