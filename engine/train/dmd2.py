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
real clips from noised student clips, and the student is trained to fool it.

As DMD2 and its reference code do, the fake score and the head take ``--fake-updates`` (5) steps per
student step (the two time-scale update rule), each on a fresh batch: new conditions, new noise and
a new student sample (backward simulation again, without gradients), so the fake score tracks the
student's current distribution rather than one batch of it. Every noise level the losses draw (the
distribution-matching level, the GAN's, the fake score's flow matching) is shifted by the student's
own schedule shift, so they concentrate where the student's steps are.

``--task i2v`` distils image-to-video (with sliding-window continuations); ``--task t2v`` the same
teacher's text-to-video mode. Every ``--eval-every`` iterations the student's samples on held-out
conditions are decoded and scored (``evaluate.py``) into ``log.jsonl``: the convergence curves. With
``--probe-run`` (a trained world probe, ``probe.py``) they include the world-FVD of those samples
against the true clips, a continuous score for both tasks; iteration 0 also logs the teacher's
50-step samples (``eval_teacher50_*``), the level the gap to close is measured against.
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
    shift_sigmas,
    velocity,
)
from .teacher import load_trained_vae, refresh_pooled, trained_text_components

TASK_MODES = {"i2v": {"i2v": 0.75, "continue": 0.25}, "t2v": {"t2v": 1.0}}
EVAL_MODE = {"i2v": "i2v", "t2v": "t2v"}
DM_SIGMA_RANGE = (0.02, 0.98)
TEACHER_EVAL_STEPS = 50  # the teacher's samples at iteration 0: the level a student could reach


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


def dm_sigmas(generator: torch.Generator, n: int, device, shift: float = 1.0) -> torch.Tensor:
    """Noise levels for the distribution-matching and GAN terms: uniform in ``DM_SIGMA_RANGE``, then
    shifted like the student's schedule."""
    lo, hi = DM_SIGMA_RANGE
    return shift_sigmas(lo + (hi - lo) * torch.rand(n, generator=generator), shift).to(device)


def student_sample(student, data: Batch, steps: int, shift: float, noise: torch.Tensor, k: int,
                   predict=None) -> torch.Tensor:
    """The student's clean latents from step ``k`` of its schedule (backward simulation to there);
    ``predict`` (the student, or its DDP wrapper) is called with gradients, if given."""
    x_k, sigma_k = student_inputs(student, data, steps, shift, noise, k)
    sig = torch.full((x_k.shape[0],), sigma_k, device=x_k.device)
    if predict is None:
        with torch.no_grad():
            return x_k - sigma_k * velocity(student, x_k, sig, data)
    return x_k - sigma_k * velocity(predict, x_k, sig, data)


def train(
    run_dir: Path, teacher_run: Path, vae_run: Path, *, iterations: int, student_steps: int = 4,
    task: str = "i2v", batch: int = 8, lr: float = 2e-5, fake_lr: float = 1e-4, fake_updates: int = 5,
    gan_weight: float = 0.02, shift: float = 5.0, eval_every: int = 50, eval_clips: int = 32,
    probe_run: Path | None = None, checkpoint_every: int = 100, **options: Any,
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
    probe = None
    if probe_run is not None and eval_every:
        from .probe import Probe

        probe = Probe()
        probe.load_state_dict(common.load_weights(probe_run, "probe"))
        probe = probe.to(dist.device).eval().requires_grad_(False)
    weights = TASK_MODES[task]
    steps = run.steps()
    values: dict = {}
    if eval_every and run.start == 0 and dist.main:
        first = _evaluate(student, vae, held_out, task, student_steps, shift, seed, probe)
        reference = _evaluate(teacher, vae, held_out, task, TEACHER_EVAL_STEPS, shift, seed, probe)
        run.log(0, **first, **{k.replace("eval_", "eval_teacher50_"): v for k, v in reference.items()})

    def draw(step: int, stream: int):
        """Fresh conditions and a student step (every rank draws the global batch, keeps its share)."""
        rng = common.step_rng(seed, step, 0, stream)
        rows = common.shard(rng.integers(len(pool), size=batch), dist)
        modes = list(common.shard(draw_modes(rng, batch, weights), dist))
        return make_batch(pool, rows, modes).to(dist.device), int(rng.integers(student_steps))

    for step in steps:
        gen = common.step_generator(seed, step, dist.rank)
        data, k = draw(step, 0)
        n = len(data)

        # 1. Student: backward simulation to a random step k, then x0 with gradients.
        x0 = student_sample(student, data, student_steps, shift, noise_like(data.x0, gen), k, predict=g_model)

        # 2. Distribution matching: fake minus real score at a random noise level.
        sigma = dm_sigmas(gen, n, dist.device, shift)
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
        gan_sigma = dm_sigmas(gen, n, dist.device, shift)
        _, logit = fake(noised(x0, gan_sigma, noise_like(x0, gen)), gan_sigma, data, with_logit=True)
        fake.requires_grad_(True)
        g_gan = F.softplus(-logit).mean()
        common.optimize(dm_loss + gan_weight * g_gan, [opt_g], student.parameters())

        # 4. Fake score (flow matching on the student's clips) and the head (real vs student), each
        #    update on a fresh batch and a fresh student sample, in one forward over [student clips for
        #    flow matching, noised real clips, noised student clips]: one forward per backward keeps
        #    DistributedDataParallel's bookkeeping simple.
        for update in range(fake_updates):
            fresh, fresh_k = draw(step, 1 + update)
            fgen = common.step_generator(seed, step, dist.rank, stream=1 + update)
            sample = student_sample(student, fresh, student_steps, shift, noise_like(fresh.x0, fgen), fresh_k)
            triple = concat_batches([fresh, fresh, fresh])
            fm_sigma = sample_training_sigmas(fgen, n, shift).to(dist.device)
            fm_noise = noise_like(sample, fgen)
            d_sigma = dm_sigmas(fgen, n, dist.device, shift)
            d_noise = noise_like(sample, fgen)
            inputs = torch.cat(
                [
                    noised(sample, fm_sigma, fm_noise),
                    noised(fresh.x0, d_sigma, d_noise),
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
            values.update(_evaluate(student, vae, held_out, task, student_steps, shift, seed, probe))
        run.log(done, **values)
        run.checkpoint(
            done, modules, optimizers, task=task, student_steps=student_steps, batch=batch, lr=lr,
            fake_lr=fake_lr, fake_updates=fake_updates, gan_weight=gan_weight, shift=shift,
            iterations=iterations, physics=pool.physics, eval_clips=eval_clips,
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
def _evaluate(
    student, vae, held: LatentPool, task: str, steps: int, shift: float, seed: int, probe=None
) -> dict:
    from .. import stats, world
    from .data import state_from_json
    from .flow import euler_sample

    was_training = student.training
    student.eval()
    rows = np.arange(len(held))
    data = make_batch(held, rows, [EVAL_MODE[task]] * len(rows)).to(next(student.parameters()).device)
    noise = torch.randn(data.x0.shape, generator=torch.Generator().manual_seed(seed + 5)).to(data.x0.device)
    latents = euler_sample(student, data, steps, shift, noise)
    frames = decode(vae, latents, held.scaling_factor)
    result = (score_i2v if task == "i2v" else score_t2v)(frames, held, rows).to_json()
    if probe is not None:
        truth = np.stack([world.render(state_from_json(s), frames.shape[1], *frames.shape[2:4])
                          for s in held.states])
        result["fvd"] = round(stats.frechet_distance(probe.features(frames), probe.features(truth)), 4)
    student.train(was_training)
    return {f"eval_{k}": v for k, v in result.items()}


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
    parser.add_argument("--fake-updates", type=int, default=5, help="fake-score updates per student update")
    parser.add_argument("--gan-weight", type=float, default=0.02)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-clips", type=int, default=32)
    parser.add_argument("--probe-run", type=Path, help="a world-probe run: adds the world-FVD to evaluations")
    return common.run_cli(parser, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
