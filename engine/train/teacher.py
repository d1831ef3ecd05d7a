"""Stage 2: train the many-step teacher DiT (``HunyuanVideoTransformer3DModel``, latent concat) with
flow matching on VAE latents of world clips.

    python -m magic141.engine.train.teacher --run-dir runs/teacher --vae-run runs/vae --steps 3000
    torchrun --nproc_per_node=4 -m magic141.engine.train.teacher --run-dir runs/teacher --vae-run runs/vae

The first run encodes a pool of clips with the trained VAE (``run/pool/``, reused on resume and by
the distillation stage). Each sample is image-to-video, a sliding-window continuation, or (with the
image dropped) text-to-video; see ``flow.py``. The weights kept are an exponential moving average.

``--init-run`` fine-tunes another teacher run's weights (its EMA) instead of starting from the seed,
with that run's latent scaling: the full recipe learns the basic world first, then the full one
(``--physics full``: gravity, spin and pans; see ``world.sample_state``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from magic141.errors import CheckpointError

from . import common, flow
from .components import build_dit, build_vae, frozen_text_components
from .data import CaptionPooler, LatentPool, build_pool
from .flow import EMA, TextConditionedDiT, draw_modes, fm_loss, make_batch
from .vae import lr_at

MODE_WEIGHTS = {"i2v": 0.45, "continue": 0.2, "t2v": 0.35}  # version 1 had 0.15 text-to-video, and its
# teacher never made a valid text-to-video clip: finding (ii) needs a teacher that can


def load_trained_vae(vae_run: Path, device="cpu"):
    vae = build_vae()
    vae.load_state_dict(common.load_weights(vae_run, "vae"))
    return vae.to(device).eval().requires_grad_(False)


def trained_text_components(teacher_run: Path) -> dict:
    """The frozen text components with the CLIP text model the teacher trained (its EMA)."""
    text = frozen_text_components()
    text["text_encoder_2"].load_state_dict(common.load_weights(teacher_run, "ema_clip"))
    return text


@torch.no_grad()
def refresh_pooled(pool: LatentPool, text: dict) -> LatentPool:
    """Recompute the pool's pooled vectors with ``text``'s CLIP (the trained one)."""
    pool.pooled = CaptionPooler(text["text_encoder_2"], text["tokenizer_2"], pool.captions)().cpu()
    return pool


def ensure_pool(
    run_dir: Path,
    vae_run: Path,
    count: int,
    seed: int,
    frames: int,
    dist: common.Dist,
    physics: str = "basic",
    scaling: float | None = None,
) -> LatentPool:
    """The run's latent pool: built by rank 0 on the first run, loaded by every rank after."""
    folder = Path(run_dir) / "pool"
    if dist.main and not (folder / "pool.json").is_file():
        vae = load_trained_vae(vae_run, dist.device)
        text = frozen_text_components()
        build_pool(vae, text, count, seed, frames, scaling=scaling, physics=physics).save(folder)
    if dist.world > 1:
        torch.distributed.barrier()
    return LatentPool.load(folder)


def train(
    run_dir: Path, vae_run: Path, *, steps: int, batch: int = 16, lr: float = 5e-4, pool_size: int = 4096,
    frames: int = 25, ema_decay: float = 0.999, warmup: int = 100, object_weight: float = 4.0,
    stale_captions: bool = False, physics: str = "basic", init_run: Path | None = None,
    checkpoint_every: int = 250, **options: Any,
) -> dict:
    """Train (or resume) to ``steps``; ``options`` are ``common.Run``'s (seed, device, threads, ...)."""
    run = common.Run(run_dir, "teacher", steps=steps, checkpoint_every=checkpoint_every, **options)
    dist, seed = run.dist, run.seed
    scaling = None
    if init_run is not None:
        scaling = common.run_summary(init_run).get("scaling_factor")
        if scaling is None:
            raise CheckpointError(f"--init-run {init_run} is not a teacher run: it records no scaling_factor")
    pool = ensure_pool(run.dir, vae_run, pool_size, seed, frames, dist, physics, scaling)
    text = frozen_text_components()
    pooler = CaptionPooler(text["text_encoder_2"].requires_grad_(True), text["tokenizer_2"], pool.captions)
    net = TextConditionedDiT(build_dit(seed), pooler).to(dist.device).train()
    if run.latest is None and init_run is not None:
        net.dit.load_state_dict(common.load_weights(init_run, "ema"))
        net.pooler.clip.load_state_dict(common.load_weights(init_run, "ema_clip"))
    ema = EMA(net, ema_decay)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    saved = {"dit": net.dit, "clip": net.pooler.clip}
    saved.update(ema=ema.module.dit, ema_clip=ema.module.pooler.clip)  # the weights kept
    if run.latest is not None:
        run.resume(saved, {"dit": optimizer})
    model = common.wrap(net, dist)
    values: dict = {}
    for step in run.steps():
        rng = common.step_rng(seed, step)
        rows = common.shard(rng.integers(len(pool), size=batch), dist)
        modes = common.shard(draw_modes(rng, batch, MODE_WEIGHTS), dist)
        data = make_batch(pool, rows, list(modes), stale_captions=stale_captions).to(dist.device)
        weight = flow.object_weight(pool, rows, object_weight).to(dist.device) if object_weight else None
        common.set_lr(lr_at(step, steps, lr, warmup=warmup), optimizer)
        loss = fm_loss(model, data, data.x0, common.step_generator(seed, step, dist.rank), weight)
        common.optimize(loss, [optimizer], net.parameters())
        ema.update(net, step)
        values = run.averaged(loss=loss)
        run.log(step + 1, **values)
        run.checkpoint(
            step + 1, saved, {"dit": optimizer}, batch=batch, lr=lr, steps=steps, pool_size=len(pool),
            scaling_factor=pool.scaling_factor, ema_decay=ema_decay, object_weight=object_weight,
            stale_captions=stale_captions, mode_weights=MODE_WEIGHTS, physics=physics,
            init_run=None if init_run is None else Path(init_run).name,
        )
    return run.finish(values)


def main(argv: list[str] | None = None) -> int:
    parser = common.stage_parser("teacher", __doc__, checkpoint_every=250, renders=True)
    parser.add_argument("--vae-run", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16, help="global batch (split across ranks)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--pool-size", type=int, default=4096)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--ema", dest="ema_decay", type=float, default=0.999)
    parser.add_argument("--object-weight", type=float, default=4.0,
                        help="extra loss weight on the object's cells")
    parser.add_argument("--stale-captions", action="store_true",
                        help="prompt continuations with older captions")
    parser.add_argument("--init-run", type=Path,
                        help="a teacher run to fine-tune (its EMA weights and scaling)")
    return common.run_cli(parser, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
