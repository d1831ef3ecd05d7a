"""Stage 1: train the causal video VAE (``AutoencoderKLHunyuanVideo``) on world clips.

    python -m magic141.engine.train.vae --run-dir runs/vae --steps 3000
    torchrun --nproc_per_node=4 -m magic141.engine.train.vae --run-dir runs/vae --steps 3000

Loss: L1 + MSE of the reconstruction, weighted up on the object's pixels (a few percent of each
frame, and what every score looks at), plus a small KL term so that latents stay well scaled.
The decoder reconstructs from the posterior's mode, which is also what the pipeline encodes with:
decoding sampled latents (unit noise at the start) learned several times slower at this budget.
Clips are 9 frames (3 latent frames: the causal first frame and two groups of four), enough for
the VAE's temporal receptive field; the DiT stages encode 25-frame clips with it.
"""

from __future__ import annotations

import time
from pathlib import Path

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
    run_dir: Path,
    *,
    steps: int,
    batch: int = 8,
    frames: int = 9,
    lr: float = 1e-3,
    seed: int = 0,
    physics: str = "basic",
    device: str | None = None,
    threads: int | None = None,
    checkpoint_every: int = 200,
    quiet: bool = False,
    stop_at: int | None = None,
) -> dict:
    """Train (or resume) to ``steps``; returns the last logged values and the wall time spent."""
    dist = common.setup(device, threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    vae = build_vae(seed).to(dist.device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start, wall = 0, 0.0
    if (folder := common.latest_checkpoint(run_dir)) is not None:
        state = common.load_checkpoint(folder, {"vae": vae}, {"vae": optimizer})
        start, wall = state["step"], state["meta"]["wall_seconds"]
    model = common.wrap(VAELoss(vae), dist)
    log = common.RunLog(run_dir, dist, quiet=quiet)
    per_rank = max(1, batch // dist.world)
    values: dict = {}
    clock = time.perf_counter()
    for step in range(start, min(steps, stop_at or steps)):
        rng = common.step_rng(seed, step, dist.rank)
        clips = render_clips(rng, per_rank, frames, physics=physics)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss, rec, kl = model(clips.video.to(dist.device), clips.weight.to(dist.device))
        values = {"rec": float(rec), "kl": float(kl)}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        values = {k: common.mean_across(v, dist) for k, v in values.items()}
        log(step + 1, loss=float(loss.detach()), **values)
        done = step + 1
        if dist.main and (done % checkpoint_every == 0 or done in (steps, stop_at)):
            meta = _meta(dist, wall + time.perf_counter() - clock, batch, frames, lr, seed, steps, physics)
            common.save_checkpoint(run_dir, done, {"vae": vae}, {"vae": optimizer}, meta)
    common.teardown()
    return {**values, "wall_seconds": wall + time.perf_counter() - clock}


def _meta(dist, wall: float, batch: int, frames: int, lr: float, seed: int, steps: int, physics: str) -> dict:
    return {
        "stage": "vae",
        "wall_seconds": wall,
        "device": str(dist.device),
        "world_size": dist.world,
        "threads": torch.get_num_threads(),
        "batch": batch,
        "frames": frames,
        "lr": lr,
        "seed": seed,
        "steps": steps,
        "physics": physics,
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.stage_parser("vae", __doc__, checkpoint_every=200, renders=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=8, help="global batch (split across ranks)")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    result = train(
        args.run_dir,
        steps=args.steps,
        batch=args.batch,
        frames=args.frames,
        lr=args.lr,
        **common.stage_options(args),
    )
    print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
