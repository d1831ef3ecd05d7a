"""Stage 4: step distillation with DMD2 (distribution matching + GAN), CFG-free, as Magic 1-For-1 does.

    python -m magic141.engine.train.dmd2 --run-dir runs/dmd2-4 --teacher-run runs/teacher \\
        --vae-run runs/vae --student-steps 4 --iterations 600
    torchrun --nproc_per_node=4 -m magic141.engine.train.dmd2 ...

Three networks start as copies of the teacher (its EMA weights):

* the **student** (generator) samples in ``--student-steps`` Euler steps on the pipeline's shifted
  schedule (4 steps: sigmas 1, 0.9375, 0.8333, 0.625). Each iteration picks one of its steps, runs
  the student's own earlier steps without gradients to reach it (DMD2's backward simulation, so
  training sees the inputs inference will), and predicts clean latents ``x0`` from there;
* the **real score** is the frozen teacher, called without classifier-free guidance;
* the **fake score** learns, by flow matching, the distribution the student currently produces.

The student's ``x0`` is noised to a random level; the difference of the fake and real scores'
clean-latent predictions there, normalised by the teacher's error, is the distribution-matching
gradient (the KL gradient between the student's and the data's noised distributions). A small
classifier head on the fake-score network's features (DMD2's GAN term) is trained to tell noised
real clips from noised student clips, and the student is trained to fool it. The fake score and
the head take ``--fake-updates`` steps per student step (two time-scale updates).

``--task i2v`` distils image-to-video (with sliding-window continuations); ``--task t2v`` the same
teacher's text-to-video mode. Every ``--eval-every`` iterations the student's samples on held-out
conditions are decoded and scored (``evaluate.py``) into ``log.jsonl``: the convergence curves.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import common
from .components import build_dit
from .data import LatentPool, build_pool
from .evaluate import decode, score_i2v, score_t2v
from .flow import (
    Batch,
    concat_batches,
    draw_modes,
    make_batch,
    noise_like,
    sample_training_sigmas,
    schedule,
    velocity,
)
from .teacher import load_trained_vae, refresh_pooled, trained_text_components

TASK_MODES = {"i2v": {"i2v": 0.75, "continue": 0.25}, "t2v": {"t2v": 1.0}}
EVAL_MODE = {"i2v": "i2v", "t2v": "t2v"}
DM_SIGMA_RANGE = (0.02, 0.98)


class FeatureHead(torch.nn.Module):
    """DMD2's discriminator: a small head on the fake-score DiT's video-token features."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.LayerNorm(hidden),
            torch.nn.Linear(hidden, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).mean(dim=(1, 2))  # one logit per clip, averaged over video tokens


class FakeScore(torch.nn.Module):
    """The fake-score DiT with the GAN head reading the output of its last double-stream block."""

    def __init__(self, dit: torch.nn.Module) -> None:
        super().__init__()
        self.dit = dit
        hidden = dit.config.num_attention_heads * dit.config.attention_head_dim
        self.head = FeatureHead(hidden)
        self._features: torch.Tensor | None = None
        dit.transformer_blocks[-1].register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self._features = output[0]

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, batch: Batch, with_logit: bool = False):
        v = velocity(self.dit, x_t, sigma, batch)
        if not with_logit:
            return v, None
        assert self._features is not None  # set by the hook during the forward above
        return v, self.head(self._features[:, None])


def student_inputs(student, batch: Batch, steps: int, shift: float, noise: torch.Tensor, k: int):
    """Run the student's first ``k`` steps without gradients (backward simulation): x at sigma_k."""
    sigmas = schedule(steps, shift)
    x = noise
    with torch.no_grad():
        for s, s_next in zip(sigmas[:k], sigmas[1 : k + 1], strict=True):
            x = x + (s_next - s) * velocity(student, x, torch.full((x.shape[0],), s, device=x.device), batch)
    return x, sigmas[k]


def noised(x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, 1, 1, 1, 1)
    return (1 - s) * x0 + s * noise


def dm_sigmas(generator: torch.Generator, n: int, device) -> torch.Tensor:
    lo, hi = DM_SIGMA_RANGE
    return (lo + (hi - lo) * torch.rand(n, generator=generator)).to(device)


def train(
    run_dir: Path, teacher_run: Path, vae_run: Path, *, iterations: int, student_steps: int = 4,
    task: str = "i2v", batch: int = 8, lr: float = 2e-5, fake_lr: float = 1e-4, fake_updates: int = 2,
    gan_weight: float = 0.02, shift: float = 5.0, eval_every: int = 50, eval_clips: int = 32,
    checkpoint_every: int = 100, **options: Any,
) -> dict:
    """Distil for ``iterations``; ``options`` are ``common.Run``'s (seed, device, threads, ...)."""
    if task not in TASK_MODES:
        raise ValueError(f"task must be one of {', '.join(TASK_MODES)}, got {task!r}")
    run = common.Run(run_dir, "dmd2", steps=iterations, checkpoint_every=checkpoint_every, **options)
    dist, seed = run.dist, run.seed
    text = trained_text_components(teacher_run)
    pool = refresh_pooled(LatentPool.load(Path(teacher_run) / "pool"), text)
    teacher = build_dit()
    teacher.load_state_dict(common.load_weights(teacher_run, "ema"))
    teacher = teacher.to(dist.device).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    fake = FakeScore(copy.deepcopy(teacher).train().requires_grad_(True)).to(dist.device)
    opt_g = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0, betas=(0.0, 0.99))
    opt_f = torch.optim.AdamW(fake.parameters(), lr=fake_lr, weight_decay=0.0, betas=(0.0, 0.99))
    modules, optimizers = {"student": student, "fake": fake}, {"student": opt_g, "fake": opt_f}
    if run.latest is not None:
        run.resume(modules, optimizers)
    g_model, f_model = common.wrap(student, dist), common.wrap(fake, dist)
    vae = load_trained_vae(vae_run, dist.device) if eval_every else None
    held_out = _eval_pool(run.dir, vae, pool, text, seed, eval_clips, dist) if eval_every else None
    weights = TASK_MODES[task]
    steps = run.steps()
    values: dict = {}
    if eval_every and run.start == 0 and dist.main:
        run.log(0, **_evaluate(student, vae, held_out, task, student_steps, shift, seed))
    for step in steps:
        rng = common.step_rng(seed, step)
        gen = common.step_generator(seed, step, dist.rank)
        rows = common.shard(rng.integers(len(pool), size=batch), dist)
        data = make_batch(pool, rows, list(common.shard(draw_modes(rng, batch, weights), dist))).to(
            dist.device
        )
        n = len(data)

        # 1. Student: backward simulation to a random step, then x0 with gradients.
        k = int(rng.integers(student_steps))
        x_k, sigma_k = student_inputs(student, data, student_steps, shift, noise_like(data.x0, gen), k)
        sig_k = torch.full((n,), sigma_k, device=dist.device)
        x0 = x_k - sigma_k * velocity(g_model, x_k, sig_k, data)

        # 2. Distribution matching: fake minus real score at a random noise level.
        sigma = dm_sigmas(gen, n, dist.device)
        x_t = noised(x0.detach(), sigma, noise_like(x0, gen))
        with torch.no_grad():
            s = sigma.view(-1, 1, 1, 1, 1)
            real_x0 = x_t - s * velocity(teacher, x_t, sigma, data)
            fake_x0 = x_t - s * fake(x_t, sigma, data)[0]
            scale = (x0.detach() - real_x0).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-4)
            grad = (fake_x0 - real_x0) / scale
        dm_loss = 0.5 * F.mse_loss(x0, (x0 - grad).detach())

        # 3. GAN, generator side: the head should call the student's clip real.
        fake.requires_grad_(False)
        gan_sigma = dm_sigmas(gen, n, dist.device)
        _, logit = fake(noised(x0, gan_sigma, noise_like(x0, gen)), gan_sigma, data, with_logit=True)
        fake.requires_grad_(True)
        g_gan = F.softplus(-logit).mean()
        common.optimize(dm_loss + gan_weight * g_gan, [opt_g], student.parameters())

        # 4. Fake score (flow matching on the student's clips) and the head (real vs student), in one
        #    forward over [student clips for flow matching, noised real clips, noised student clips]:
        #    one forward per backward keeps DistributedDataParallel's bookkeeping simple.
        sample = x0.detach()
        triple = concat_batches([data, data, data])
        for update in range(fake_updates):
            fgen = common.step_generator(seed, step, dist.rank, stream=1 + update)
            fm_sigma = sample_training_sigmas(fgen, n).to(dist.device)
            fm_noise = noise_like(sample, fgen)
            d_sigma = dm_sigmas(fgen, n, dist.device)
            d_noise = noise_like(sample, fgen)
            inputs = torch.cat(
                [
                    noised(sample, fm_sigma, fm_noise),
                    noised(data.x0, d_sigma, d_noise),
                    noised(sample, d_sigma, d_noise),
                ]
            )
            v, logits = f_model(inputs, torch.cat([fm_sigma, d_sigma, d_sigma]), triple, with_logit=True)
            f_fm = (v[:n] - (fm_noise - sample)).pow(2).mean()
            d_loss = F.softplus(-logits[n : 2 * n]).mean() + F.softplus(logits[2 * n :]).mean()
            common.optimize(f_fm + gan_weight * d_loss, [opt_f], fake.parameters())

        values = run.averaged(dm=dm_loss, g_gan=g_gan, fake_fm=f_fm, d=d_loss)
        done = step + 1
        if eval_every and done % eval_every == 0 and dist.main:
            values.update(_evaluate(student, vae, held_out, task, student_steps, shift, seed))
        run.log(done, **values)
        run.checkpoint(
            done, modules, optimizers, task=task, student_steps=student_steps, batch=batch, lr=lr,
            fake_lr=fake_lr, fake_updates=fake_updates, gan_weight=gan_weight, shift=shift,
            iterations=iterations, physics=pool.physics,
        )
    return run.finish(values)


def _eval_pool(run_dir: Path, vae, pool: LatentPool, text: dict, seed: int, count: int, dist) -> LatentPool:
    """Held-out conditions (not in the training pool, from the same world), built once per run."""
    folder = run_dir / "eval-pool"
    if dist.main and not (folder / "pool.json").is_file():
        frames = (pool.latents.shape[2] - 1) * 4 + 1
        scaling = pool.scaling_factor
        build_pool(
            vae, text, count, seed + 10_000, frames, scaling=scaling, clear=0.34, physics=pool.physics
        ).save(folder)
    if dist.world > 1:
        torch.distributed.barrier()
    return LatentPool.load(folder)


@torch.no_grad()
def _evaluate(student, vae, held: LatentPool, task: str, steps: int, shift: float, seed: int) -> dict:
    from .flow import euler_sample

    was_training = student.training
    student.eval()
    rows = np.arange(len(held))
    data = make_batch(held, rows, [EVAL_MODE[task]] * len(rows)).to(next(student.parameters()).device)
    noise = torch.randn(data.x0.shape, generator=torch.Generator().manual_seed(seed + 5)).to(data.x0.device)
    latents = euler_sample(student, data, steps, shift, noise)
    frames = decode(vae, latents, held.scaling_factor)
    result = (score_i2v if task == "i2v" else score_t2v)(frames, held, rows)
    student.train(was_training)
    return {f"eval_{k}": v for k, v in result.to_json().items()}


def main(argv: list[str] | None = None) -> int:
    parser = common.stage_parser("dmd2", __doc__, checkpoint_every=100)
    parser.add_argument("--teacher-run", type=Path, required=True)
    parser.add_argument("--vae-run", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--student-steps", type=int, default=4)
    parser.add_argument("--task", choices=tuple(TASK_MODES), default="i2v")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--fake-lr", type=float, default=1e-4)
    parser.add_argument("--fake-updates", type=int, default=2)
    parser.add_argument("--gan-weight", type=float, default=0.02)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-clips", type=int, default=32)
    return common.run_cli(parser, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
