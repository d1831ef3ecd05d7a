"""The model card's measurements at scale: hundreds of held-out clips per row, sampled in batches,
every score with a paired-bootstrap 95 % interval and its gap to a reference row.

A row is one way of making the held-out cases' continuations: a DiT with a number of Euler steps, or
the VAE's reconstruction of the true clips (the ceiling every row is bounded by). For each case the
row's clip is sampled from the case's first frame, caption and seed exactly as the pipeline samples
(the same conditioning, noise and Euler steps, in batches; a test checks the clips against
``Magic141Pipeline``'s), decoded, and scored:

* per clip (``scores.score_clip``): first-frame PSNR, trajectory error, direction, colour and pan as
  prompted, object found, flicker, object IoU and edge sharpness against the truth, and PSNR against
  the true clip on the background and on the object (for the ceiling row: how well the VAE keeps the
  picture);
* per row: the world-FVD, the Fréchet distance between the world probe's features (``probe.py``) of
  the row's clips and of the true clips;
* seed diversity, on the first cases: where the object ends up across ``DIVERSITY_SEEDS`` seeds, as
  the spread of those points, against the spread of the true continuations the frame and caption
  allow (``world.plausible_states``). A sampler that averages the modes has less spread than the
  truth (a ratio under 1); one that invents motion has more.

Intervals come from resampling cases, the same draws for every row (``stats.paired_bootstrap``), so
a row's gap to the reference has its own, usually much narrower, interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import scores, stats, world
from .data import LatentPool, encode_states
from .evaluate import Case, decode
from .flow import euler_sample, make_batch

ROW_BATCH = 32
DIVERSITY_SEEDS = 4
TRUTH_DRAWS = 16
SEED_STRIDE = 1_000_003  # seed j of a case for diversity: case.seed + (j + 1) * SEED_STRIDE
CLIP_METRICS = ("psnr_first", "trajectory_px", "direction_ok", "colour_ok", "pan_ok", "found", "flicker",
                "iou", "sharpness", "psnr_background", "psnr_object")


@dataclass
class Held:
    """The held-out cases, encoded once: first frames, captions, true clips (and their latents)."""

    cases: list[Case]
    pool: LatentPool
    truth: np.ndarray  # uint8 [N, F, H, W, 3]
    physics: str

    @property
    def frames(self) -> int:
        return self.truth.shape[1]


def held_out(vae, text: dict, cases: list[Case], frames: int, physics: str) -> Held:
    """Encode ``cases`` with the model's VAE and text components (``text``: its text encoders,
    tokenizers and image processor)."""
    states = [case.state for case in cases]
    pool = encode_states(vae, text, states, frames=frames, scaling=float(vae.config.scaling_factor),
                         physics=physics)
    height, width = cases[0].image.shape[:2]
    truth = np.stack([world.render(s, frames, height, width) for s in states])
    return Held(cases, pool, truth, physics)


def case_noise(seeds, shape) -> torch.Tensor:
    """Each case's initial noise, drawn as the pipeline draws it from ``Generator().manual_seed(seed)``."""
    draws = [torch.randn((1, *shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.cat(draws)


@torch.no_grad()
def sample(dit, vae, held: Held, steps: int, seeds, *, shift: float = 5.0, rows=None,
           batch: int = ROW_BATCH) -> np.ndarray:
    """Image-to-video clips (uint8 [n, F, H, W, 3]) of ``rows`` (default: every case) with ``seeds``."""
    device = next(dit.parameters()).device
    rows = np.arange(len(held.cases)) if rows is None else np.asarray(rows)
    seeds = list(seeds)
    out = []
    for start in range(0, len(rows), batch):
        part = rows[start : start + batch]
        data = make_batch(held.pool, part, ["i2v"] * len(part)).to(device)
        noise = case_noise(seeds[start : start + batch], held.pool.latents.shape[1:]).to(device)
        out.append(decode(vae, euler_sample(dit, data, steps, shift, noise), held.pool.scaling_factor))
    return np.concatenate(out)


@torch.no_grad()
def reconstruct(vae, held: Held, batch: int = ROW_BATCH) -> np.ndarray:
    """The VAE's reconstruction of the true clips: what any row could reach at best."""
    return decode(vae, held.pool.latents, held.pool.scaling_factor, batch=batch)


def clip_scores(frames: np.ndarray, held: Held) -> dict[str, np.ndarray]:
    """Every per-clip score of ``CLIP_METRICS``, one value per case."""
    per = [scores.score_clip(clip, case.state, case.prompt, case.image)
           for clip, case in zip(frames, held.cases, strict=True)]
    return {key: np.array([float(getattr(p, key)) for p in per]) for key in CLIP_METRICS}


def end_points(frames: np.ndarray, states: list[world.WorldState]) -> np.ndarray:
    """Where the object is found in each clip's last frame, pixels [n, 2] (NaN where it is lost)."""
    points = []
    for clip, state in zip(frames, states, strict=True):
        n, height, width = clip.shape[:3]
        backgrounds = world.backgrounds(state, world.frame_times(n), height, width)
        points.append(world.track(clip[-1:], backgrounds[-1:]).centres[0])
    return np.array(points)


def diversity(dit, vae, held: Held, steps: int, count: int, *, seeds: int = DIVERSITY_SEEDS,
              shift: float = 5.0) -> np.ndarray:
    """Per case (the first ``count``), the spread in pixels of the object's end points over ``seeds``
    seeds."""
    rows = np.arange(count)
    states = [held.cases[i].state for i in rows]
    ends = np.stack([
        end_points(sample(dit, vae, held, steps, [held.cases[i].seed + (j + 1) * SEED_STRIDE for i in rows],
                          rows=rows, shift=shift), states)
        for j in range(seeds)
    ])  # [seeds, count, 2]
    return np.array([scores.spread(ends[:, i]) for i in rows])


def truth_spread(held: Held, count: int, draws: int = TRUTH_DRAWS) -> np.ndarray:
    """Per case, the spread of the end points of the true continuations its frame and caption allow."""
    seconds = float((held.frames - 1) / world.FPS)
    height = held.truth.shape[2]
    out = []
    for case in held.cases[:count]:
        rng = np.random.default_rng([case.seed, 17])
        states = world.plausible_states(case.state, seconds, rng, draws, physics=held.physics)
        out.append(scores.spread(np.array([world.centres_px(s, held.frames, height)[-1] for s in states])))
    return np.array(out)


@dataclass
class Row:
    """One row's raw measurements, before intervals."""

    variant: str
    steps: int | None
    per_clip: dict[str, np.ndarray]
    seconds_per_clip: float | None = None
    features: np.ndarray | None = None  # world-probe features of its clips [N, D]
    spread: np.ndarray | None = None  # seed spread of the first cases [count]
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.variant if self.steps is None else f"{self.variant}, {self.steps} steps"


def measure_row(variant: str, steps: int | None, frames_of, held: Held, *, probe=None,
                spread_of=None) -> Row:
    """Sample (``frames_of()``, timed), score, and take the probe's features of one row."""
    clock = time.perf_counter()
    frames = frames_of()
    seconds = (time.perf_counter() - clock) / len(frames)
    row = Row(variant, steps, clip_scores(frames, held), round(seconds, 4))
    if probe is not None:
        row.features = probe.features(frames)
    if spread_of is not None:
        row.spread = spread_of()
    return row


def measured_mean(values: np.ndarray) -> float:
    """The mean of the values measured (NaN: no clip in a resample could be measured)."""
    values = np.asarray(values, np.float64)
    return float("nan") if np.isnan(values).all() else float(np.nanmean(values))


def _ratio_of_means(a: np.ndarray, b: np.ndarray) -> float:
    """The row's mean spread over the truth's (NaN where either has no case with a spread: lost objects)."""
    truth = measured_mean(b)
    return measured_mean(a) / truth if truth > 0 else float("nan")


def intervals(rows: list[Row], reference: str | None, *, truth_features=None, truth_spread_=None,
              draws: int = 1000, seed: int = 0) -> dict[str, dict[str, dict]]:
    """``{row name: {metric: Interval JSON}}`` for every metric each row has, paired across rows;
    ``fvd`` against ``truth_features``, ``spread_ratio`` (row spread / true spread) against
    ``truth_spread_``; gaps are to the row named ``reference`` (when it has the metric)."""
    out: dict[str, dict[str, dict]] = {row.name: {} for row in rows}

    def put(metric: str, found: dict[str, stats.Interval]) -> None:
        for name, interval in found.items():
            out[name][metric] = interval.to_json()

    for metric in CLIP_METRICS:
        having = {row.name: row.per_clip[metric] for row in rows
                  if metric in row.per_clip and not np.isnan(row.per_clip[metric]).all()}
        if having:
            ref = reference if reference in having else None
            put(metric, stats.paired_bootstrap(having, ref, draws=draws, seed=seed, statistic=measured_mean))
    with_features = {row.name: row.features for row in rows if row.features is not None}
    if with_features and truth_features is not None and len(truth_features) >= 2:  # a Fréchet distance
        # needs two clips at least
        ref = reference if reference in with_features else None
        put("fvd", stats.paired_bootstrap_sets(with_features, truth_features, stats.frechet_distance, ref,
                                               draws=max(50, draws // 5), seed=seed))
    with_spread = {row.name: row.spread[:, None] for row in rows if row.spread is not None}
    if with_spread and truth_spread_ is not None:
        ref = reference if reference in with_spread else None
        put("spread_ratio", stats.paired_bootstrap_sets(with_spread, truth_spread_[:, None], _ratio_of_means,
                                                        ref, draws=draws, seed=seed))
        put("spread_px", stats.paired_bootstrap({k: v[:, 0] for k, v in with_spread.items()}, ref,
                                                draws=draws, seed=seed, statistic=measured_mean))
    return out
