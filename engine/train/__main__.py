"""Train the built-in ``world`` model from scratch: every stage in order, then export.

    python -m magic141.engine.train --runs runs/world --out resources/world [--threads 2] [--physics basic]

The recipe is a curriculum (``stages``): the VAE and the world probe learn the model's world
(``--physics``, default multimodal); the teacher learns the basic world first (constant velocity and
walls), then is fine-tuned on the model's world (gravity, spin, camera pans, two speed bands and
captions that leave things open); distillation and the text-to-image model train on it. After the
shipped students, the card's comparisons run: image- and text-to-video students at equal budgets
with three seeds (the paper's finding ii) and the DMD2 ablations. ``--physics basic`` distils the
basic teacher instead.

This is the exact recipe of the shipped weights (``resources/world/README.md`` reports what it cost).
Every stage resumes from its run folder, so an interrupted run (a session's end, ``kill``) continues
where it stopped when the same command runs again; a stage that already reached its step count is
skipped. A finished stage is frozen (``common.freeze``: its last weights as float16, its log, no
optimiser state), small enough to commit: the run folders under ``runs/world/`` in the repository
are the stages trained so far, so a fresh clone continues the recipe after them. Stages run one after
another in this process; to spread one stage over several GPUs, run that stage's module under
``torchrun`` (see each module's docstring).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType

from .. import world
from . import common, dmd2, export, probe, t2i, teacher, vae

VAE_STEPS, VAE_IMAGE_STEPS, VAE_LR = 5000, 800, 3e-4  # the first 800 on single frames (vae.py)
PROBE_STEPS = 1500
TEACHER_STEPS = 3000
T2I_STEPS, T2I_VAE_STEPS = 1500, 500
WORLD_TEACHER_STEPS, WORLD_TEACHER_LR = 3000, 3e-4  # the fine-tune on the model's world
DMD2_ITERATIONS, DMD2_8STEP_ITERATIONS = 600, 300  # the shipped students (version 1: 400 and 200 iterations
# with 2 fake-score updates each; now 5 each)
CURVE_ITERATIONS, CURVE_BATCH = 100, 4  # each convergence and ablation run: equal budgets, to fit a CPU
CURVE_SEEDS = (0, 1, 2)
CURVE_EVAL = ["--eval-every", "25", "--eval-clips", "64"]
ABLATIONS = {"ratio1": ["--fake-updates", "1"], "gan0": ["--gan-weight", "0"]}  # against the defaults
PHYSICS = "multimodal"  # what the shipped weights learnt (resources/world/README.md)
DEFAULT = "teacher"  # which DiT transformer/ holds; the card says which scores better


def stages(runs: Path, threads: list[str], physics: str = "basic") -> list[tuple[str, ModuleType, list[str]]]:
    """(run folder name, stage module, its argv) in the order they must run.

    The curriculum: the VAE and the world probe on ``physics``; a teacher on the basic world, then
    (unless ``physics`` is basic) fine-tuned on ``physics``; the shipped students and the
    text-to-image model on it; then the card's comparisons, each at ``CURVE_ITERATIONS``: image- and
    text-to-video students with ``CURVE_SEEDS`` (finding ii) and the DMD2 ablations.
    """
    world_ = ["--physics", physics]
    vae_run, probe_run = ["--vae-run", str(runs / "vae")], ["--probe-run", str(runs / "probe")]
    learn = [
        ("vae", vae, ["--steps", str(VAE_STEPS), "--image-steps", str(VAE_IMAGE_STEPS), "--lr", str(VAE_LR),
                      *world_, *threads]),
        ("probe", probe, ["--steps", str(PROBE_STEPS), *world_, *threads]),
        ("teacher", teacher, [*vae_run, "--steps", str(TEACHER_STEPS), *threads]),
    ]
    teacher_run = "teacher"
    if physics != "basic":
        teacher_run = f"teacher-{physics}"
        fine_tune = ["--init-run", str(runs / "teacher"), "--lr", str(WORLD_TEACHER_LR), *world_]
        tune = [*vae_run, "--steps", str(WORLD_TEACHER_STEPS), *fine_tune, *threads]
        learn.append((teacher_run, teacher, tune))
    distil = ["--teacher-run", str(runs / teacher_run), *vae_run, *probe_run, *threads]

    curve = ["--iterations", str(CURVE_ITERATIONS), "--batch", str(CURVE_BATCH), *CURVE_EVAL, *distil]
    comparisons = [
        (f"curve-{task}-s{seed}", dmd2, [*curve, "--task", task, "--seed", str(seed)])
        for seed in CURVE_SEEDS for task in ("i2v", "t2v")
    ] + [(f"ablation-{name}", dmd2, [*curve, "--task", "i2v", *change]) for name, change in ABLATIONS.items()]
    return [
        *learn,
        ("dmd2-i2v4", dmd2, ["--iterations", str(DMD2_ITERATIONS), *distil, "--student-steps", "4"]),
        ("dmd2-i2v8", dmd2, ["--iterations", str(DMD2_8STEP_ITERATIONS), *distil, "--student-steps", "8"]),
        ("t2i", t2i, ["--steps", str(T2I_STEPS), "--vae-steps", str(T2I_VAE_STEPS), *world_, *threads]),
        *comparisons,
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
    for name, stage, stage_argv in stages(args.runs, threads, args.physics):
        print(f"== {name}", flush=True)
        stage.main(["--run-dir", str(args.runs / name), *stage_argv])
        common.freeze(args.runs / name)
    teacher_run = args.runs / ("teacher" if args.physics == "basic" else f"teacher-{args.physics}")
    export.main([
        "--vae-run", str(args.runs / "vae"), "--teacher-run", str(teacher_run),
        "--student-run", str(args.runs / "dmd2-i2v4"), "--student8-run", str(args.runs / "dmd2-i2v8"),
        "--t2i-run", str(args.runs / "t2i"), "--probe-run", str(args.runs / "probe"), "--out", str(args.out),
        "--default", args.default,
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
