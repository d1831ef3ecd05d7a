"""Train the built-in ``world`` model from scratch: every stage in order, then export.

    python -m magic141.engine.train --runs runs/world --out resources/world [--threads 2] [--physics basic]

The recipe is a curriculum. The VAE and the teacher learn the basic world first (constant velocity
and walls); a second teacher run fine-tunes that teacher on the full world (gravity, spin, camera
pans), and distillation and the text-to-image model train on the full world. The VAE is not
retrained: the basic one reconstructs full-world clips about as well (``resources/world/README.md``).
``--physics basic`` distils the basic teacher instead, and names its runs without ``-full``.

This is the exact recipe of the shipped weights (``resources/world/README.md`` reports what it cost).
Every stage resumes from its run folder, so an interrupted run continues where it stopped; a stage that
already reached its step count is skipped. Stages run one after another in this process; to spread one
stage over several GPUs, run that stage's module under ``torchrun`` (see each module's docstring).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType

from .. import world
from . import dmd2, export, t2i, teacher, vae

VAE_STEPS = 1500
TEACHER_STEPS = 3000
T2I_STEPS, T2I_VAE_STEPS = 1500, 500
DMD2_ITERATIONS = 400  # the 4-step student; the 8-step and text-to-video runs (for the card's
DMD2_SIDE_ITERATIONS = 200  # comparisons) get half, to fit a CPU budget
FULL_TEACHER_STEPS, FULL_TEACHER_LR = 3000, 3e-4  # the fine-tune on the full world
PHYSICS = "full"  # what the shipped weights learnt (resources/world/README.md)
DEFAULT = "teacher"  # at this budget it scores better with 4 Euler steps than the DMD2 student (card)


def stages(runs: Path, threads: list[str], physics: str = "basic") -> list[tuple[str, ModuleType, list[str]]]:
    """(run folder name, stage module, its argv) in the order they must run."""
    vae_run = ["--vae-run", str(runs / "vae")]
    learn = [
        ("vae", vae, ["--steps", str(VAE_STEPS), *threads]),
        ("teacher", teacher, [*vae_run, "--steps", str(TEACHER_STEPS), *threads]),
    ]
    suffix, teacher_run, on_world = "", "teacher", []
    if physics == "full":
        suffix, teacher_run, on_world = "-full", "teacher-full", ["--physics", "full"]
        fine_tune = ["--init-run", str(runs / "teacher"), "--lr", str(FULL_TEACHER_LR), *on_world]
        full = [*vae_run, "--steps", str(FULL_TEACHER_STEPS), *fine_tune, *threads]
        learn.append((teacher_run, teacher, full))
    teacher_from = ["--teacher-run", str(runs / teacher_run), *vae_run]
    distil = ["--iterations", str(DMD2_ITERATIONS), *threads]
    side = ["--iterations", str(DMD2_SIDE_ITERATIONS), *threads]
    return [
        *learn,
        (f"dmd2-i2v4{suffix}", dmd2, [*teacher_from, "--student-steps", "4", "--task", "i2v", *distil]),
        (f"dmd2-i2v8{suffix}", dmd2, [*teacher_from, "--student-steps", "8", "--task", "i2v", *side]),
        (f"dmd2-t2v4{suffix}", dmd2, [*teacher_from, "--student-steps", "4", "--task", "t2v", *side]),
        (f"t2i{suffix}", t2i, ["--steps", str(T2I_STEPS), "--vae-steps", str(T2I_VAE_STEPS), *on_world,
                               *threads]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magic141.engine.train",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder for the stages' run folders")
    parser.add_argument("--out", type=Path, required=True, help="the exported model folder")
    parser.add_argument("--threads", type=int, help="CPU threads per stage (default: torch's)")
    parser.add_argument("--default", choices=export.DEFAULTS, default=DEFAULT,
                        help=f"the DiT the model runs by default (default: {DEFAULT}; see export.py)")
    parser.add_argument("--physics", choices=world.PHYSICS, default=PHYSICS,
                        help=f"the world the model learns (default: {PHYSICS}; see above)")
    args = parser.parse_args(argv)
    threads = ["--threads", str(args.threads)] if args.threads else []
    runs = {}
    for name, stage, stage_argv in stages(args.runs, threads, args.physics):
        print(f"== {name}", flush=True)
        stage.main(["--run-dir", str(args.runs / name), *stage_argv])
        runs[name.removesuffix("-full")] = str(args.runs / name)  # the last of each kind is exported
    export.main([
        "--vae-run", runs["vae"], "--teacher-run", runs["teacher"],
        "--student-run", runs["dmd2-i2v4"], "--student8-run", runs["dmd2-i2v8"],
        "--t2i-run", runs["t2i"], "--out", str(args.out), "--default", args.default,
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
