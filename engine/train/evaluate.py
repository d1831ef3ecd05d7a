"""Scoring latents during and after training: decode with the VAE, track, compare with the world.

Used by the distillation stage (its convergence curves) and by ``magic141 eval`` (through the
pipeline). Image-to-video clips are scored against the true continuation of their first frame;
text-to-video clips have no true first frame, so they are scored on what their prompt asks for
(the object found, its colour and direction), tracked against their own temporal-median background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import scores, world
from .data import LatentPool, state_from_json


@torch.no_grad()
def decode(vae, latents: torch.Tensor, scaling_factor: float, batch: int = 16) -> np.ndarray:
    """Scaled latents [B, C, T, h, w] -> uint8 frames [B, F, H, W, 3], as ``Magic141Pipeline.decode``."""
    out = []
    for start in range(0, latents.shape[0], batch):
        chunk = latents[start : start + batch].to(next(vae.parameters()).device, vae.dtype)
        video = vae.decode(chunk / scaling_factor).sample.float()
        video = (video / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)
        out.append(video.mul(255).round().to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


@dataclass(frozen=True)
class TaskScores:
    """Means over clips; ``valid`` is the rate of clips whose object is found in 90 % of frames and
    has the prompt's colour and direction (defined for both tasks)."""

    valid: float
    found: float
    colour_ok: float
    direction_ok: float
    pan_ok: float
    flicker: float
    psnr_first: float  # image-to-video only (NaN for text-to-video)
    trajectory_px: float  # image-to-video only

    def to_json(self) -> dict:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


def score_i2v(frames: np.ndarray, pool: LatentPool, rows) -> TaskScores:
    per_clip = []
    for clip, row in zip(frames, rows, strict=True):
        row = int(row)
        state = state_from_json(pool.states[row])
        prompt = pool.captions[int(pool.caption_index[row])]
        per_clip.append(scores.score_clip(clip, state, prompt, pool.first_frames[row].numpy()))
    return _summary(per_clip, i2v=True)


def score_t2v(frames: np.ndarray, pool: LatentPool, rows) -> TaskScores:
    per_clip = [scores.score_prompt(clip, pool.captions[int(pool.caption_index[int(row)])])
                for clip, row in zip(frames, rows, strict=True)]
    return _summary(per_clip, i2v=False)


def _summary(per_clip: list[scores.ClipScores], *, i2v: bool) -> TaskScores:
    mean = scores.summarise(per_clip)
    valid = np.mean([c.found >= 0.9 and c.colour_ok and c.direction_ok for c in per_clip])
    return TaskScores(
        valid=float(valid),
        found=mean["found"],
        colour_ok=mean["colour_ok"],
        direction_ok=mean["direction_ok"],
        pan_ok=mean["pan_ok"],
        flicker=mean["flicker"],
        psnr_first=mean["psnr_first"] if i2v else float("nan"),
        trajectory_px=mean["trajectory_px"] if i2v else float("nan"),
    )


# Through the pipeline (``magic141 eval``) --------------------------------------------------------

EVAL_SEED = 20_250_207
CLEAR_SECONDS = 0.34  # no turn (wall, floor, top of a fall) in the frames that decide the direction


@dataclass(frozen=True)
class Case:
    """One held-out test: a world state, its caption, and its first frame (the conditioning image)."""

    state: world.WorldState
    prompt: str
    image: np.ndarray  # uint8 [H, W, 3]
    seed: int


def eval_cases(
    count: int, *, height: int, width: int, frames: int, seed: int = EVAL_SEED, physics: str = "basic"
) -> list[Case]:
    """``count`` held-out cases, the same for every model scored on the same ``physics``."""
    from fractions import Fraction

    rng = np.random.default_rng([seed])
    seconds = float(Fraction(frames - 1) / world.FPS)
    cases = []
    for i in range(count):
        state = world.sample_state(rng, aspect=Fraction(width, height), clear=CLEAR_SECONDS, physics=physics)
        cases.append(
            Case(state, world.caption(state, seconds), world.render(state, 1, height, width)[0], seed + i)
        )
    return cases


def _uint8(frames: torch.Tensor) -> np.ndarray:
    return frames.mul(255).round().clamp(0, 255).to(torch.uint8).numpy()


def _sampling(case: Case, steps: int, shift: float) -> dict:
    """The pipeline arguments every eval clip shares, as the engine samples: the case's size, CFG-free,
    the world model's conditioning."""
    height, width = case.image.shape[:2]
    return dict(
        height=height,
        width=width,
        num_inference_steps=steps,
        shift=shift,
        guidance_scale=1.0,
        conditioning="world",
    )


def _continue(pipe, image, case: Case, *, steps: int, frames: int, shift: float) -> np.ndarray:
    """One clip from ``image`` and the case's prompt and seed; uint8 frames."""
    out = pipe(
        image,
        case.prompt,
        num_frames=frames,
        generator=torch.Generator("cpu").manual_seed(case.seed),
        **_sampling(case, steps, shift),
    )
    return _uint8(out.frames)


def kinds(states: list[world.WorldState]) -> dict[str, list[int]]:
    """Indices of the states in each kind of motion (a state may be in several; empty kinds left out)."""
    tests = {
        "moves": lambda s: s.motion == "moves",
        "falls": lambda s: s.motion == "falls",
        "spinning": lambda s: bool(s.spin),
        "panning": lambda s: bool(s.pan),
        "still camera": lambda s: not s.pan,
    }
    groups = {kind: [i for i, s in enumerate(states) if test(s)] for kind, test in tests.items()}
    return {kind: members for kind, members in groups.items() if members}


def run_t2v(
    t2i, pipe, cases: list[Case], *, steps: int, frames: int, shift: float = 5.0
) -> tuple[TaskScores, list[scores.ClipScores]]:
    """Text-to-video the engine's way: the text-to-image model makes the first frame, then image-to-video;
    the scores, and each clip's own."""

    from ..t2i import generate_first_frame

    per_clip = []
    for case in cases:
        height, width = case.image.shape[:2]
        image = generate_first_frame(t2i, case.prompt, height=height, width=width, seed=case.seed)
        clip = _continue(pipe, image, case, steps=steps, frames=frames, shift=shift)
        per_clip.append(scores.score_prompt(clip, case.prompt, image))
    result = _summary(per_clip, i2v=False)
    return TaskScores(**{**result.__dict__, "psnr_first": scores.summarise(per_clip)["psnr_first"]}), per_clip


def run_long(
    pipe, case: Case, *, seconds: int, window_frames: int, steps: int, overlap: int = 2, shift: float = 5.0
) -> dict:
    """A ``seconds``-long sliding-window run from one case, as ``Engine.generate`` chains windows.

    Returns the background's mean error against the true background in the first and the last
    second (0-255) and their difference (the drift), the object's colour error in the last five
    seconds, and how often the object is still found there.
    """
    import PIL.Image

    from ..window import chain_windows, plan_windows

    height, width = case.image.shape[:2]
    image = PIL.Image.fromarray(case.image)
    fps = int(world.FPS)
    total = seconds * fps
    embeds = pipe.encode_prompt(image, case.prompt, "world")
    generator = torch.Generator("cpu").manual_seed(case.seed)
    plans = plan_windows(
        total, window_frames=window_frames, overlap_latents=overlap, multiple=pipe.frame_multiple
    )

    def run_window(plan, condition):
        return pipe(
            image,
            case.prompt,
            num_frames=plan.frames,
            condition_video=condition,
            prompt_embeds=embeds,
            generator=generator,
            **_sampling(case, steps, shift),
        ).frames

    video = _uint8(torch.cat(list(chain_windows(plans, run_window))))[:total]
    truth_bg = world.backgrounds(case.state, world.frame_times(total), height, width)
    found = world.track(video, truth_bg)
    first, last = slice(0, fps), slice(total - fps, total)
    tail = slice(total - 5 * fps, total)
    bg_first = scores.background_drift(video[first], found.masks[first], truth_bg[first])
    bg_last = scores.background_drift(video[last], found.masks[last], truth_bg[last])
    colours = found.colours[tail]
    colours = colours[~np.isnan(colours[:, 0])]
    target = np.array(world.COLOURS[case.state.colour], dtype=np.float64)
    object_error = float(np.abs(colours - target).mean()) if len(colours) else float("nan")
    return {
        "seconds": seconds,
        "windows": len(plans),
        "background_error_first_s": round(bg_first, 2),
        "background_error_last_s": round(bg_last, 2),
        "background_drift": round(bg_last - bg_first, 2),
        "object_colour_error_last_5s": round(object_error, 2),
        "object_found_last_5s": round(float(found.found[tail].mean()), 3),
        "flicker": round(scores.flicker(video, found.masks, truth_bg), 3),
    }
