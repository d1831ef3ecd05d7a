"""Flow matching on the DiT, as the pipeline samples it: batches, the loss, and an Euler sampler.

The DiT is called exactly as ``Magic141Pipeline._velocity`` calls it: the 33 input channels are
``[x_t, condition latents, mask]``, the timestep is ``1000 * sigma``, and the text stream holds the
image tokens first, then the prompt's tokens. With ``x_t = (1 - s) x0 + s noise`` the target
velocity is ``noise - x0``, so ``x0 = x_t - s v``.

Three kinds of sample train one DiT:

* ``i2v``: the first frame is given (``cond1``, mask on latent frame 0, its image tokens);
* ``continue``: a sliding window's condition (``cond2``: two latent frames, the previous window's
  tail), prompted with an older caption and image, as later windows are;
* ``t2v``: nothing is given (zero condition and mask, no image tokens): text-to-video, the task the
  paper contrasts with image-to-video when distilling.

Traps avoided: a text-to-video sample's text stream puts the prompt first and padding after it,
because the DiT's key mask treats the first ``mask.sum()`` tokens as the valid ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..pipeline import flow_sigmas
from .components import HEIGHT
from .data import LatentPool

MODES = ("i2v", "continue", "t2v")


def shift_sigmas(sigmas, shift: float):
    """The scheduler's timestep shift: ``s' = shift s / (1 + (shift - 1) s)``."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def schedule(steps: int, shift: float) -> list[float]:
    """Sigmas of an Euler sampler of ``steps`` steps, then 0, as ``pipeline.make_scheduler`` sets them."""
    sigmas = shift_sigmas(flow_sigmas(steps), shift)
    return [float(s) for s in sigmas] + [0.0]


@dataclass
class Batch:
    """Everything the DiT sees besides x_t and the timestep."""

    x0: torch.Tensor  # [B, C, T, h, w] (data; zeros when only conditions are needed)
    cond: torch.Tensor  # [B, C, T, h, w]
    mask: torch.Tensor  # [B, 1, T, h, w]
    embeds: torch.Tensor  # [B, L, D]
    embeds_mask: torch.Tensor  # [B, L]
    pooled: torch.Tensor  # [B, P]
    index: torch.Tensor  # [B] pool rows
    caption: torch.Tensor  # [B] rows of the pool's caption table (for pooled vectors computed live)
    modes: list[str]

    def to(self, device) -> Batch:
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.__dict__.items()}
        return Batch(**moved)

    def __len__(self) -> int:
        return self.x0.shape[0]


def make_batch(
    pool: LatentPool, index: np.ndarray, modes: list[str], *, stale_captions: bool = True
) -> Batch:
    """Rows ``index`` of the pool, each conditioned as its mode says.

    ``stale_captions=False`` prompts continuations with their own clip's caption instead of an
    older one (their image tokens stay the older image's, as in a chained window).
    """
    index_t = torch.as_tensor(index, dtype=torch.long)
    x0 = pool.latents[index_t]
    cond = torch.zeros_like(x0)
    mask = torch.zeros((len(index), 1, *x0.shape[2:]))
    n_img = pool.image_tokens.shape[1]
    embeds, masks, pooled, captions = [], [], [], []
    for row, (i, mode) in enumerate(zip(index_t.tolist(), modes, strict=True)):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        stale = mode == "continue" and stale_captions
        caption = int(pool.stale_caption_index[i] if stale else pool.caption_index[i])
        text, text_mask = pool.text[caption], pool.text_mask[caption]
        pooled.append(pool.pooled[caption])
        captions.append(caption)
        if mode == "t2v":
            embeds.append(torch.cat([text, text.new_zeros(n_img, text.shape[1])]))
            masks.append(torch.cat([text_mask, text_mask.new_zeros(n_img)]))
            continue
        given = pool.cond1[i] if mode == "i2v" else pool.cond2[i]
        cond[row, :, : given.shape[1]] = given
        mask[row, :, : given.shape[1]] = 1
        image = pool.image_tokens[i] if mode == "i2v" else pool.stale_image_tokens[i]
        embeds.append(torch.cat([image, text]))
        masks.append(torch.cat([text_mask.new_ones(n_img), text_mask]))
    return Batch(
        x0,
        cond,
        mask,
        torch.stack(embeds),
        torch.stack(masks),
        torch.stack(pooled),
        index_t,
        torch.tensor(captions),
        list(modes),
    )


def concat_batches(batches: list[Batch]) -> Batch:
    first = batches[0]
    joined = {
        k: torch.cat([getattr(b, k) for b in batches])
        for k, v in first.__dict__.items()
        if torch.is_tensor(v)
    }
    return Batch(**joined, modes=[m for b in batches for m in b.modes])


def draw_modes(rng: np.random.Generator, n: int, weights: dict[str, float]) -> list[str]:
    names = list(weights)
    p = np.array([weights[k] for k in names], dtype=np.float64)
    return [names[i] for i in rng.choice(len(names), size=n, p=p / p.sum())]


def velocity(dit, x_t: torch.Tensor, sigma: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The DiT's velocity at ``x_t`` and noise level ``sigma`` ([B]), called as the pipeline calls it."""
    dtype = next(dit.parameters()).dtype
    return dit(
        hidden_states=torch.cat([x_t, batch.cond, batch.mask], dim=1).to(dtype),
        timestep=(sigma * 1000).to(dtype),
        encoder_hidden_states=batch.embeds.to(dtype),
        encoder_attention_mask=batch.embeds_mask.to(dtype),
        pooled_projections=batch.pooled.to(dtype),
        return_dict=False,
    )[0].float()


def sample_training_sigmas(generator: torch.Generator, n: int, shift: float = 5.0) -> torch.Tensor:
    """Half uniform, half shifted toward high noise (where few-step sampling spends its steps)."""
    u = torch.rand(n, generator=generator)
    shifted = torch.rand(n, generator=generator) < 0.5
    return torch.where(shifted, shift_sigmas(u, shift), u).clamp(1e-3, 1.0)


def noise_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator).to(x.device)


def fm_loss(
    predict, batch: Batch, x0: torch.Tensor, generator: torch.Generator, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Flow-matching loss on data ``x0`` under ``batch``'s conditions, optionally weighted per latent.

    ``predict(x_t, sigma, batch)`` returns the velocity (a ``TextConditionedDiT``, or a DiT wrapped
    by ``lambda x, s, b: velocity(dit, x, s, b)``).
    """
    sigma = sample_training_sigmas(generator, x0.shape[0]).to(x0.device)
    noise = noise_like(x0, generator)
    s = sigma.view(-1, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    err = (predict(x_t, sigma, batch) - (noise - x0)).pow(2)
    return (err if weight is None else err * weight).mean()


def object_weight(pool: LatentPool, index, extra: float, spatial: int | None = None, temporal: int = 4
                  ) -> torch.Tensor:
    """1 + ``extra`` on the latent cells the object covers (grown by a cell), [B, 1, T, h, w].

    The object is a few percent of each frame; where it goes is what the prompt decides, and an
    unweighted loss is dominated by the background, which the condition already gives away.
    """
    from .. import world
    from .data import state_from_json

    _, _, t, h, w = pool.latents.shape
    spatial = spatial or HEIGHT // h  # the VAE's spatial compression
    frames = (t - 1) * temporal + 1
    height = h * spatial
    centres_y = (np.arange(h) + 0.5) * spatial
    centres_x = (np.arange(w) + 0.5) * spatial
    out = torch.ones((len(index), 1, t, h, w))
    for row, i in enumerate(np.asarray(index).tolist()):
        state = state_from_json(pool.states[i])
        reach = state.reach * height + spatial
        path = world.centres_px(state, frames, height)
        for j in range(t):
            group = path[:1] if j == 0 else path[(j - 1) * temporal + 1 : j * temporal + 1]
            dy = centres_y[None, :, None] - group[:, 1, None, None]
            dx = centres_x[None, None, :] - group[:, 0, None, None]
            near = (np.hypot(dx, dy) < reach).any(axis=0)
            out[row, 0, j] += extra * torch.from_numpy(near.astype(np.float32))
    return out


class TextConditionedDiT(torch.nn.Module):
    """The DiT and the CLIP text model it trains with, as one module (one DDP forward per step)."""

    def __init__(self, dit, pooler) -> None:
        super().__init__()
        self.dit = dit
        self.pooler = pooler

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, batch: Batch) -> torch.Tensor:
        pooled = self.pooler()[batch.caption.to(x_t.device)]
        return velocity(self.dit, x_t, sigma, replace(batch, pooled=pooled))


@torch.no_grad()
def euler_sample(dit, batch: Batch, steps: int, shift: float, noise: torch.Tensor) -> torch.Tensor:
    """``steps`` Euler steps from ``noise`` (the pipeline's sampler, batched): clean latents."""
    sigmas = schedule(steps, shift)
    x = noise
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        sigma = torch.full((x.shape[0],), s, device=x.device)
        x = x + (s_next - s) * velocity(dit, x, sigma, batch)
    return x


class EMA:
    """Exponential moving average of a module's weights (the sampled teacher is the average)."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        import copy

        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for avg, live in zip(self.module.parameters(), module.parameters(), strict=True):
            avg.lerp_(live.detach(), 1 - decay)
