"""Stage 1: train the causal video VAE (``AutoencoderKLHunyuanVideo``) on world clips.

    python -m magic141.engine.train.vae --run-dir runs/vae --steps 3000
    torchrun --nproc_per_node=4 -m magic141.engine.train.vae --run-dir runs/vae --steps 3000

Loss: L1 + MSE of the reconstruction, weighted up on the object's pixels (a few percent of each
frame, and what every score looks at), plus a small KL term so that latents stay well scaled.
The decoder reconstructs from the posterior's mode, which is also what the pipeline encodes with:
decoding sampled latents (unit noise at the start) learned several times slower at this budget.
Clips are 9 frames (3 latent frames: the causal first frame and two groups of four), enough for
the VAE's temporal receptive field; the DiT stages encode 25-frame clips with it.

The first ``--image-steps`` steps train on single frames instead (``--image-batch`` of them): the
causal VAE encodes a first frame alone, with the same convolutions, and a frame costs a ninth of a
clip, so the spatial picture (colours, edges, the posts) is learnt several times faster per second of
CPU; the video steps after them learn time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import common
from .components import build_vae
from .data import render_clips

KL_WEIGHT = 1e-4


def lr_at(step: int, steps: int, lr: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item()))


class VAELoss(torch.nn.Module):
    """The VAE and its loss as one module, so DistributedDataParallel sees a single ``forward``."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, video: torch.Tensor, weight: torch.Tensor):
        posterior = self.vae.encode(video).latent_dist
        recon = self.vae.decode(posterior.mode()).sample
        err = recon - video
        rec = (weight * (err.abs() + err.pow(2))).mean()
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        return rec + KL_WEIGHT * kl, rec.detach(), kl.detach()


def train(
    run_dir: Path, *, steps: int, batch: int = 8, frames: int = 9, lr: float = 1e-3, physics: str = "basic",
    image_steps: int = 0, image_batch: int = 32, checkpoint_every: int = 200, **options: Any,
) -> dict:
    """Train (or resume) to ``steps``; returns the last logged values and the wall time spent.
    ``options``: those of ``common.Run`` (seed, device, threads, stop_at, quiet)."""
    run = common.Run(run_dir, "vae", steps=steps, checkpoint_every=checkpoint_every, **options)
    dist, seed = run.dist, run.seed
    vae = build_vae(seed).to(dist.device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    if run.latest is not None:
        run.resume({"vae": vae}, {"vae": optimizer})
    model = common.wrap(VAELoss(vae), dist)
    per_rank = max(1, batch // dist.world)
    values: dict = {}
    for step in run.steps():
        images = step < image_steps
        count, length = (max(1, image_batch // dist.world), 1) if images else (per_rank, frames)
        clips = render_clips(common.step_rng(seed, step, dist.rank), count, length, physics=physics)
        common.set_lr(lr_at(step, steps, lr), optimizer)
        loss, rec, kl = model(clips.video.to(dist.device), clips.weight.to(dist.device))
        common.optimize(loss, [optimizer], vae.parameters())
        values = run.averaged(rec=rec, kl=kl)
        run.log(step + 1, loss=float(loss.detach()), **values)
        settings = dict(batch=batch, frames=frames, lr=lr, steps=steps, physics=physics,
                        image_steps=image_steps, image_batch=image_batch)
        run.checkpoint(step + 1, {"vae": vae}, {"vae": optimizer}, **settings)
    return run.finish(values)


def main(argv: list[str] | None = None) -> int:
    parser = common.stage_parser("vae", __doc__, checkpoint_every=200, renders=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=8, help="global batch (split across ranks)")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-steps", type=int, default=0, help="first steps on single frames (see above)")
    parser.add_argument("--image-batch", type=int, default=32)
    return common.run_cli(parser, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
