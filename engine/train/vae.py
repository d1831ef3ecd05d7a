"""Stage 1: train the causal video VAE (``AutoencoderKLHunyuanVideo``) on world clips.

    python -m magic141.engine.train.vae --run-dir runs/vae --steps 5000
    torchrun --nproc_per_node=4 -m magic141.engine.train.vae --run-dir runs/vae --steps 5000

Loss: L1 + MSE of the reconstruction, weighted up on the object's pixels (a few percent of each
frame, and what every score looks at), a small KL term so that latents stay well scaled, and the
error of the background's mean colour in each frame and channel (``COLOUR_WEIGHT``). Without that
last term the object's pixels dominate the gradient and every plain background came back as one
colour for hundreds of steps (at 200-1200 steps, with 1, 4 or 8 norm groups, learning rates of 1e-3
and 2e-3, and with colour-jittered inputs); with it the four backgrounds come back distinct, in the
right order, after 200 steps.
The learning rate is 3e-4: overfitting 4 fixed frames from the default init, 400 steps reached
27.2 / 20.3 dB (background / object) at 1e-3 against 31.0 / 31.5 at 3e-4 (a lone frame padded by
copies of itself probably makes the three time taps act as one kernel that Adam moves three times as
fast). Video steps stalled for another reason, see ``start_frame_by_frame``.
The decoder reconstructs from the posterior's mode, which is also what the pipeline encodes with:
decoding sampled latents (unit noise at the start) learned several times slower at this budget.
Clips are 9 frames (3 latent frames: the causal first frame and two groups of four), enough for
the VAE's temporal receptive field; the DiT stages encode 25-frame clips with it.

The first ``--image-steps`` steps train on single frames instead (``--image-batch`` of them): the
causal VAE encodes a first frame alone, with the same convolutions, and a frame costs a ninth of a
clip, so the spatial picture (colours, edges, the posts) is learnt several times faster per second of
CPU; the video steps after them learn time.

The last checkpoint records ``held_out_psnr`` for each physics: background and object PSNR of the
reconstruction of 32 held-out 25-frame clips (the card's bar is 30 dB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import world
from . import common
from .components import build_vae
from .data import render_clips

KL_WEIGHT = 1e-4
COLOUR_WEIGHT = 4.0  # the background's mean colour error, per frame and channel (see above)


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
        on_background = (weight == 1).to(err)
        colour = ((err * on_background).sum((3, 4)) / on_background.sum((3, 4)).clamp(min=1)).abs().mean()
        return rec + KL_WEIGHT * kl + COLOUR_WEIGHT * colour, rec.detach(), kl.detach()


@torch.no_grad()
def start_frame_by_frame(vae) -> None:
    """Zero every causal convolution's two past time taps (scaling the present one to keep the
    output's variance), except the time downsamplers', so that at the start each frame is encoded and
    decoded on its own, as when a video VAE starts from an image VAE.

    With the default init, a causal convolution pads the clip's front with copies of its first frame,
    and through the stack these copies outweigh everything else: in a 9-frame clip the last latent frame
    depended on the first frame about 40 times as much as on each of its own four frames (1.5 times
    when started frame by frame). Training on moving clips then settled on a still picture (4 fixed
    clips, 700 steps: the latent frames differed by 0.001 and the decoded frames by 0.001 levels
    against the true 1.5, at 21.7 / 17.8 dB). From this start the same clips reached 26.0 / 19.4 dB
    after 200 steps, and the decoded frames moved as the true ones.
    """
    for module in vae.modules():
        conv = getattr(module, "conv", None)
        if isinstance(conv, torch.nn.Conv3d) and conv.kernel_size[0] == 3 and conv.stride[0] == 1:
            conv.weight[:, :, 2] *= 3**0.5
            conv.weight[:, :, :2] = 0


def train(
    run_dir: Path, *, steps: int, batch: int = 8, frames: int = 9, lr: float = 3e-4, physics: str = "basic",
    image_steps: int = 0, image_batch: int = 32, checkpoint_every: int = 200, held_out_clips: int = 32,
    **options: Any,
) -> dict:
    """Train (or resume) to ``steps``; returns the last logged values and the wall time spent.
    ``options``: those of ``common.Run`` (seed, device, threads, stop_at, quiet)."""
    run = common.Run(run_dir, "vae", steps=steps, checkpoint_every=checkpoint_every, **options)
    dist, seed = run.dist, run.seed
    vae = build_vae(seed).to(dist.device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    if run.latest is not None:
        run.resume({"vae": vae}, {"vae": optimizer})
    else:
        start_frame_by_frame(vae)
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
        if step + 1 == steps and dist.main:  # the last checkpoint records how well it keeps the picture
            settings["held_out"] = [held_out_psnr(vae, p, held_out_clips) for p in world.PHYSICS]
        run.checkpoint(step + 1, {"vae": vae}, {"vae": optimizer}, **settings)
    return run.finish(values)


HELD_OUT_SEED = 99  # training draws seed 0's streams; this one's clips are never trained on


@torch.no_grad()
def held_out_psnr(vae, physics: str, clips: int = 32, frames: int = 25, seed: int = HELD_OUT_SEED) -> dict:
    """Mean PSNR (dB) of the VAE's reconstruction (the posterior's mode, as the pipeline encodes) of
    ``clips`` held-out world clips, on the background and on the object
    (``scores.background_and_object_psnr``, as ``magic141 eval`` scores them); the model card's bar is
    30 dB on both, in each physics."""
    from .. import scores

    device = next(vae.parameters()).device
    was_training = vae.training
    vae.eval()
    rendered = render_clips(np.random.default_rng([seed, clips, frames]), clips, frames, physics=physics)
    background, obj = [], []
    for start in range(0, clips, 8):
        video = rendered.video[start : start + 8].to(device)
        recon = vae.decode(vae.encode(video).latent_dist.mode()).sample.clamp(-1, 1)
        pixels = ((recon + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()
        for clip, state in zip(pixels, rendered.states[start : start + 8], strict=True):
            truth = world.render(state, frames, *clip.shape[1:3])
            cover = world.coverage(state, world.frame_times(frames), *clip.shape[1:3])
            pair = scores.background_and_object_psnr(clip, truth, cover)
            background.append(pair[0])
            obj.append(pair[1])
    vae.train(was_training)
    return {"physics": physics, "clips": clips, "frames": frames,
            "background_db": round(float(np.mean(background)), 2), "object_db": round(float(np.mean(obj)), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = common.stage_parser("vae", __doc__, checkpoint_every=200, renders=True)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=8, help="global batch (split across ranks)")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--image-steps", type=int, default=0, help="first steps on single frames (see above)")
    parser.add_argument("--image-batch", type=int, default=32)
    parser.add_argument("--held-out-clips", type=int, default=32, help="clips per physics scored at the end")
    return common.run_cli(parser, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
