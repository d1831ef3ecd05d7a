"""The card's measurements: batched clips are the pipeline's clips, and every row gets intervals and gaps."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from magic141.engine import world
from magic141.engine.models import load_model
from magic141.engine.pipeline import Magic141Pipeline
from magic141.engine.train import evaluate, measure


@pytest.fixture(scope="module")
def model():
    loaded = load_model("world")
    cases = evaluate.eval_cases(3, height=32, width=48, frames=25, physics="full")
    parts = loaded.components
    return parts, measure.held_out(parts["vae"], parts, cases, 25, "full")


def test_batched_clips_are_the_pipelines_clips(model):
    parts, held = model
    frames = measure.sample(parts["transformer"], parts["vae"], held, 2, [c.seed for c in held.cases])
    pipe = Magic141Pipeline(**parts)
    for clip, case in zip(frames, held.cases, strict=True):
        one = evaluate._continue(pipe, PIL.Image.fromarray(case.image), case, steps=2, frames=25, shift=5.0)
        assert np.abs(one.astype(int) - clip.astype(int)).max() <= 1  # rounding of the last level
    other = measure.sample(parts["transformer"], parts["vae"], held, 2, [c.seed + 1 for c in held.cases])
    assert np.abs(other.astype(int) - frames.astype(int)).mean() > 0.1  # the seed is the clip's noise


def test_the_vae_ceiling_is_scored_like_any_row_and_rows_get_paired_gaps(model):
    parts, held = model
    truth = measure.measure_row("truth", None, lambda: held.truth, held)
    ceiling = measure.measure_row("ceiling", None, lambda: measure.reconstruct(parts["vae"], held), held)
    assert np.all(truth.per_clip["psnr_first"] == 99.0) and np.all(truth.per_clip["trajectory_px"] < 0.5)
    assert np.all(ceiling.per_clip["psnr_first"] < 99.0)
    found = measure.intervals([truth, ceiling], "truth", draws=50)
    assert found["truth"]["psnr_first"]["gap"] is None
    gap = found["ceiling"]["psnr_first"]
    assert gap["gap"] == pytest.approx(gap["mean"] - 99.0, abs=1e-3) and gap["gap_hi"] < 0
    assert gap["lo"] <= gap["mean"] <= gap["hi"]


def test_seed_diversity_is_measured_against_the_truths_open_continuations(model):
    parts, held = model
    spread = measure.diversity(parts["transformer"], parts["vae"], held, 1, 2, seeds=4)
    assert spread.shape == (2,) and np.all(np.isfinite(spread))

    class Fixed(torch.nn.Module):  # one Euler step that lands where the noise does not matter: no spread
        def __init__(self, dit):
            super().__init__()
            self.dit = dit

        def forward(self, hidden_states, **kwargs):
            blind = hidden_states.clone()
            blind[:, :16] = 0
            x0 = self.dit(hidden_states=blind, **kwargs)[0]
            return (hidden_states[:, :16] - x0,)  # x - 1 * v = x0 at sigma 1

    assert np.allclose(measure.diversity(Fixed(parts["transformer"]), parts["vae"], held, 1, 2, seeds=4), 0,
                       atol=1e-6)
    rng = np.random.default_rng(0)
    drawn = (world.sample_state(rng, physics="multimodal", clear=0.34) for _ in range(400))
    open_case = next(s for s in drawn if s.motion == "moves" and not s.says_direction)
    told = evaluate.Case(open_case, world.caption(open_case, 1.0), world.render(open_case, 1)[0], 7)
    vague = measure.Held([told], held.pool, world.render(open_case, 25)[None], "multimodal")
    assert measure.truth_spread(vague, 1)[0] > 3  # four directions: the truth itself is spread
