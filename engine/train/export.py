"""Stage 5: write the trained runs as the shipped model folder (diffusers format + sidecar).

    python -m magic141.engine.train.export --vae-run runs/vae --teacher-run runs/teacher \\
        --student-run runs/dmd2-4 --student8-run runs/dmd2-8 --t2i-run runs/t2i --out resources/world

The folder is a ``HunyuanVideoImageToVideoPipeline`` directory that ``models.load_model`` loads
like any other (``--model world`` names it), with:

* ``transformer/``: the default DiT, run with 4 steps and no CFG: the 4-step DMD2 student, or with
  ``--default teacher`` the teacher with 4 Euler steps (whichever ``magic141 eval`` scores better);
  ``magic141.json`` says which;
* ``variants/transformer_{teacher,4step,8step}/``: the teacher (EMA) and the 4- and 8-step students,
  but not the one in ``transformer/``, for ``magic141 eval``; the pipeline loader ignores folders it is
  not told of;
* ``t2i/``: the text-to-image ``FluxPipeline`` for first frames;
* ``probe/``: the world probe (``probe.py``) whose features ``magic141 eval`` takes the world-FVD on;
* ``training.json``: what each stage ran (steps, wall time, device, physics), read by the model card;
  a teacher fine-tuned from another run (``--init-run``) brings that run's record too (``teacher_init``).

Weights are stored as float16 safetensors (the loader casts them to the compute dtype); the folder
is written beside its destination and swapped in, so a failed export leaves the old model intact.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from . import common
from .components import (
    FPS,
    HEIGHT,
    WIDTH,
    WINDOW_FRAMES,
    build_dit,
    build_t2i_transformer,
    build_t2i_vae,
    build_vae,
)
from .data import LatentPool
from .teacher import trained_text_components

STORE_DTYPE = torch.float16
DEFAULTS = ("dmd2", "teacher")  # which DiT goes in transformer/
SIDECAR = {
    "name": "world",
    "distilled": True,
    "conditioning": "world",  # engine/conditioning.py: the split it was trained with
    "native_fps": str(FPS),
    "window_frames": WINDOW_FRAMES,
    "default_size": [HEIGHT, WIDTH],
}


def _cast(*modules: torch.nn.Module) -> None:
    """Plain ``nn.Module.to``: diffusers' own ``to`` logs a warning per model about fp32 modules it keeps."""
    for module in modules:
        torch.nn.Module.to(module, dtype=STORE_DTYPE)


def _dit_from(run: Path, name: str):
    dit = build_dit()
    dit.load_state_dict(common.load_weights(run, name))
    return dit.eval()


def _save_dit(dit, folder: Path) -> None:
    _cast(dit)
    dit.save_pretrained(folder, safe_serialization=True)


def export(
    out: Path,
    *,
    vae_run: Path,
    teacher_run: Path,
    student_run: Path,
    student8_run: Path | None,
    t2i_run: Path | None,
    default: str = "dmd2",
    probe_run: Path | None = None,
) -> Path:
    if default not in DEFAULTS:
        raise ValueError(f"default must be one of {', '.join(DEFAULTS)}, got {default!r}")
    from diffusers import FluxPipeline, HunyuanVideoImageToVideoPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    out = Path(out)
    staging = out.with_name(f".{out.name}.export")
    shutil.rmtree(staging, ignore_errors=True)
    pool = LatentPool.load(Path(teacher_run) / "pool")

    vae = build_vae()
    vae.load_state_dict(common.load_weights(vae_run, "vae"))
    vae.register_to_config(scaling_factor=pool.scaling_factor)
    text = trained_text_components(teacher_run)
    dit = _dit_from(student_run, "student") if default == "dmd2" else _dit_from(teacher_run, "ema")
    pipe = HunyuanVideoImageToVideoPipeline(**text, transformer=dit, vae=vae.eval())  # text: + the scheduler
    _cast(*(c for c in pipe.components.values() if isinstance(c, torch.nn.Module)))
    pipe.save_pretrained(staging, safe_serialization=True)
    sidecar = {**SIDECAR, "default_transformer": default}
    (staging / "magic141.json").write_text(json.dumps(sidecar, indent=1) + "\n")
    variants = staging / "variants"
    if default != "teacher":  # no second copy of the DiT that transformer/ holds
        _save_dit(_dit_from(teacher_run, "ema"), variants / "transformer_teacher")
    if default != "dmd2":
        _save_dit(_dit_from(student_run, "student"), variants / "transformer_4step")
    training = {"vae": common.run_summary(vae_run)}
    taught = common.run_summary(teacher_run)
    if taught.get("init_run"):  # fine-tuned from a sibling run: its cost is part of the recipe
        training["teacher_init"] = common.run_summary(Path(teacher_run).parent / taught["init_run"])
    training.update(teacher=taught, dmd2_4step=common.run_summary(student_run))
    if student8_run is not None:
        _save_dit(_dit_from(student8_run, "student"), variants / "transformer_8step")
        training["dmd2_8step"] = common.run_summary(student8_run)
    if t2i_run is not None:
        from .t2i import frozen_t2i_text

        flux = frozen_t2i_text()
        folder = common.finished_checkpoint(t2i_run)
        if (folder / "model-clip.safetensors").is_file():  # CLIP trained along with the transformer
            flux.text_encoder.load_state_dict(common.load_weights(t2i_run, "clip"))
        t2i_vae = build_t2i_vae()
        t2i_vae.load_state_dict(common.load_weights(t2i_run, "vae"))
        summary = common.run_summary(t2i_run)
        t2i_vae.register_to_config(**summary["vae_factors"])
        transformer = build_t2i_transformer()
        transformer.load_state_dict(common.load_weights(t2i_run, "transformer"))
        t2i = FluxPipeline(**{**flux.components, "vae": t2i_vae.eval(), "transformer": transformer.eval()})
        _cast(*(c for c in t2i.components.values() if isinstance(c, torch.nn.Module)))
        t2i.save_pretrained(staging / "t2i", safe_serialization=True)
        training["t2i"] = summary
    if probe_run is not None:
        from .probe import save_probe

        save_probe(probe_run, staging / "probe")
        training["probe"] = common.run_summary(probe_run)
    (staging / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    for keep in ("README.md", "scores.json"):  # the card and its scores are written by `magic141 eval`
        if (out / keep).is_file():
            shutil.copy2(out / keep, staging / keep)
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magic141.engine.train.export", 
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--vae-run", type=Path, required=True)
    parser.add_argument("--teacher-run", type=Path, required=True)
    parser.add_argument("--student-run", type=Path, required=True, help="the 4-step DMD2 run")
    parser.add_argument("--student8-run", type=Path)
    parser.add_argument("--t2i-run", type=Path)
    parser.add_argument("--probe-run", type=Path, help="the world probe (for magic141 eval's world-FVD)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--default", choices=DEFAULTS, default="dmd2",
                        help="the DiT in transformer/ (see above)")
    return common.run_cli(parser, export, argv)


if __name__ == "__main__":
    raise SystemExit(main())
