"""Stage 3: train the text-to-image model that makes first frames (FLUX classes, toy size).

    python -m magic141.engine.train.t2i --run-dir runs/t2i --vae-steps 1500 --steps 4000

Two phases in one run, one step counter: the image VAE (``AutoencoderKL``, 8x, 4 latent channels)
for ``--vae-steps``, then the ``FluxTransformer2DModel`` with flow matching on its latents, FLUX's
2x2 packing and position ids taken from ``FluxPipeline`` itself so that training sees what the
pipeline feeds. The text encoders start as the ``tiny`` text-to-image model's: T5 stays frozen and
CLIP, whose pooled vector modulates every block, trains along with the transformer (frozen, it
gave a transformer that drew crisp objects in random colours: it had not learned to read them).
The images are world first frames, captioned in the world's grammar.

FLUX attends to every text token (it has no text mask), so prompts are padded to the 256 tokens
that ``t2i.generate_first_frame`` uses for schnell-like pipelines, in training as at inference.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import FluxPipeline

from .. import world
from . import common
from .components import FPS, HEIGHT, WIDTH, WINDOW_FRAMES, build_t2i_transformer, build_t2i_vae
from .flow import sample_training_sigmas
from .vae import lr_at

MAX_SEQUENCE_LENGTH = 256

def frozen_t2i_text() -> FluxPipeline:
    """The tiny FLUX pipeline; only its text encoders, tokenizers and scheduler are used."""
    from ..t2i import build_tiny_t2i

    pipe = build_tiny_t2i(seed=0)
    pipe.text_encoder.requires_grad_(False)
    pipe.text_encoder_2.requires_grad_(False)
    return pipe


def render_images(
    rng: np.random.Generator, batch: int, physics: str = "basic"
) -> tuple[torch.Tensor, list[str]]:
    """World first frames [B, 3, H, W] in [-1, 1] and their clip captions (what T2V is prompted with)."""
    seconds = float(Fraction(WINDOW_FRAMES - 1) / FPS)
    states = [world.sample_state(rng, aspect=Fraction(WIDTH, HEIGHT), physics=physics) for _ in range(batch)]
    frames = np.stack([world.render(s, 1, HEIGHT, WIDTH)[0] for s in states])
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, [world.caption(s, seconds) for s in states]


class PromptCache:
    def __init__(self, pipe: FluxPipeline, device) -> None:
        self.pipe, self.device = pipe, device
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for p in prompts:
            if p not in self.cache:
                embeds, pooled, ids = self.pipe.encode_prompt(
                    prompt=p, prompt_2=None, device=self.device, max_sequence_length=MAX_SEQUENCE_LENGTH
                )
                self.cache[p] = (embeds[0], pooled[0], ids)
        embeds = torch.stack([self.cache[p][0] for p in prompts])
        pooled = torch.stack([self.cache[p][1] for p in prompts])
        return embeds, pooled, self.cache[prompts[0]][2]


def packed_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """Images -> FLUX's packed, shifted and scaled latents [B, h*w/4, 4C]."""
    latents = vae.encode(images).latent_dist.mode()
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def flux_velocity(transformer, x_t, sigma, embeds, pooled, text_ids, image_ids) -> torch.Tensor:
    """The transformer called as ``FluxPipeline.__call__`` calls it (timestep as sigma, no guidance)."""
    return transformer(
        hidden_states=x_t, timestep=sigma, guidance=None, pooled_projections=pooled,
        encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=image_ids, return_dict=False,
    )[0]


class FluxWithText(torch.nn.Module):
    """The FLUX transformer and the CLIP text model whose pooled vector it reads, trained together.

    The T5 stream stays frozen (its features are cached per prompt); CLIP is tokenised exactly as
    ``FluxPipeline._get_clip_prompt_embeds`` does. One module, so one DDP forward per step.
    """

    def __init__(self, transformer, clip) -> None:
        super().__init__()
        self.transformer = transformer
        self.clip = clip

    def forward(self, x_t, sigma, embeds, clip_ids, text_ids, image_ids) -> torch.Tensor:
        pooled = self.clip(clip_ids, output_hidden_states=False).pooler_output
        return flux_velocity(self.transformer, x_t, sigma, embeds, pooled, text_ids, image_ids)


def clip_ids(pipe: FluxPipeline, prompts: list[str]) -> torch.Tensor:
    return pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids


def image_ids_for(device, dtype=torch.float32) -> torch.Tensor:
    return FluxPipeline._prepare_latent_image_ids(1, HEIGHT // 16, WIDTH // 16, device, dtype)


@torch.no_grad()
def calibrate(vae, seed: int, physics: str, count: int = 256) -> None:
    """Set the VAE's shift and scaling factors so that latents have zero mean and unit variance."""
    images, _ = render_images(np.random.default_rng([seed, 99]), count, physics)
    latents = vae.encode(images.to(next(vae.parameters()).device)).latent_dist.mode()
    vae.register_to_config(shift_factor=float(latents.mean()), scaling_factor=float(1 / latents.std()))


def train(
    run_dir: Path, *, steps: int, vae_steps: int = 1500, batch: int = 32, lr: float = 5e-4,
    vae_lr: float = 1e-3, physics: str = "basic", checkpoint_every: int = 250, **options: Any,
) -> dict:
    """``vae_steps`` of the image VAE, then the transformer up to ``steps`` in all; ``options`` are
    ``common.Run``'s (seed, device, threads, ...)."""
    run = common.Run(run_dir, "t2i", steps=steps, checkpoint_every=checkpoint_every, milestones=(vae_steps,),
                     **options)
    dist, seed = run.dist, run.seed
    vae = build_t2i_vae(seed).to(dist.device)
    transformer = build_t2i_transformer(seed).to(dist.device)
    flux = frozen_t2i_text().to(dist.device)
    clip = flux.text_encoder.requires_grad_(True)
    vae_opt = torch.optim.AdamW(vae.parameters(), lr=vae_lr, weight_decay=0.0)
    dit_opt = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=0.01)
    clip_opt = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.0)
    modules = {"vae": vae, "transformer": transformer, "clip": clip}
    optims = {"vae": vae_opt, "transformer": dit_opt, "clip": clip_opt}
    if run.latest is not None:
        # runs saved before CLIP was trained along have no clip weights: it starts from its seed then
        present = {k: v for k, v in modules.items() if (run.latest / f"model-{k}.safetensors").is_file()}
        state = run.resume(present, {k: optims[k] for k in present})
        vae.register_to_config(**state["meta"]["vae_factors"])
    text = PromptCache(flux, dist.device)
    vae_model = common.wrap(_VAELoss(vae), dist)
    dit_model = common.wrap(FluxWithText(transformer, clip), dist)
    per_rank = max(1, batch // dist.world)
    image_ids = image_ids_for(dist.device)
    values: dict = {}
    for step in run.steps():
        images, prompts = render_images(common.step_rng(seed, step, dist.rank), per_rank, physics)
        images = images.to(dist.device)
        generator = common.step_generator(seed, step, dist.rank)
        if step < vae_steps:
            vae.train()
            common.set_lr(lr_at(step, vae_steps, vae_lr), vae_opt)
            loss = vae_model(images)
            chosen, params = [vae_opt], vae.parameters()
        else:
            vae.eval().requires_grad_(False)
            if step == vae_steps:  # once, before the first transformer step; resumed runs read it back
                calibrate(vae, seed, physics)
            common.set_lr(lr_at(step - vae_steps, steps - vae_steps, lr, warmup=100), dit_opt, clip_opt)
            with torch.no_grad():
                x0 = packed_latents(vae, images)
            embeds, _, text_ids = text(prompts)
            sigma = sample_training_sigmas(generator, x0.shape[0], shift=3.0).to(dist.device)
            noise = torch.randn(x0.shape, generator=generator).to(dist.device)
            s = sigma.view(-1, 1, 1)
            x_t = (1 - s) * x0 + s * noise
            ids = clip_ids(flux, prompts).to(dist.device)
            pred = dit_model(x_t, sigma, embeds, ids, text_ids, image_ids)
            loss = (pred - (noise - x0)).pow(2).mean()
            chosen, params = [dit_opt, clip_opt], [*transformer.parameters(), *clip.parameters()]
        common.optimize(loss, chosen, params)
        values = run.averaged(**{"vae_loss" if step < vae_steps else "loss": loss})
        run.log(step + 1, **values)
        factors = {"shift_factor": float(vae.config.shift_factor or 0.0),
                   "scaling_factor": float(vae.config.scaling_factor)}
        run.checkpoint(step + 1, modules, optims, batch=batch, lr=lr, vae_lr=vae_lr, steps=steps,
                       vae_steps=vae_steps, physics=physics, vae_factors=factors)
    return run.finish(values)


class _VAELoss(torch.nn.Module):
    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(images).latent_dist
        recon = self.vae.decode(posterior.mode()).sample
        err = recon - images
        weight = 1 + 4 * (images - images.median(dim=-1, keepdim=True).values).abs().amax(1, keepdim=True).gt(
            0.05
        )
        return (weight * (err.abs() + err.pow(2))).mean() + 1e-4 * posterior.kl().mean() / posterior.mean[
            0
        ].numel()


def main(argv: list[str] | None = None) -> int:
    parser = common.stage_parser("t2i", __doc__, checkpoint_every=250, renders=True)
    parser.add_argument("--steps", type=int, default=4000, help="total steps, the VAE's included")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    return common.run_cli(parser, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
