"""Train the built-in ``world`` model from scratch: every stage in order, then export.

    python -m magic141.engine.train --runs runs/world --out resources/world [--threads 2]

This is the exact recipe of the shipped weights (``resources/world/README.md`` reports what it cost).
Every stage resumes from its run folder, so an interrupted run continues where it stopped; a stage that
already reached its step count is skipped. Stages run one after another in this process; to spread one
stage over several GPUs, run that stage's module under ``torchrun`` (see each module's docstring).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import dmd2, export, t2i, teacher, vae

VAE_STEPS = 1500
TEACHER_STEPS = 3000
T2I_STEPS, T2I_VAE_STEPS = 1500, 500
DMD2_ITERATIONS = 400  # the 4-step student; the 8-step and text-to-video runs (for the card's
DMD2_SIDE_ITERATIONS = 200  # comparisons) get half, to fit a CPU budget
DEFAULT = "teacher"  # at this budget it scores better with 4 Euler steps than the DMD2 student (card)


def stages(runs: Path, threads: list[str]) -> list[tuple[str, object, list[str]]]:
    """(run folder name, stage module, its argv) in the order they must run."""
    teacher_from = ["--teacher-run", str(runs / "teacher"), "--vae-run", str(runs / "vae")]
    distil = ["--iterations", str(DMD2_ITERATIONS), *threads]
    side = ["--iterations", str(DMD2_SIDE_ITERATIONS), *threads]
    return [
        ("vae", vae, ["--steps", str(VAE_STEPS), *threads]),
        ("teacher", teacher, ["--vae-run", str(runs / "vae"), "--steps", str(TEACHER_STEPS), *threads]),
        ("dmd2-i2v4", dmd2, [*teacher_from, "--student-steps", "4", "--task", "i2v", *distil]),
        ("dmd2-i2v8", dmd2, [*teacher_from, "--student-steps", "8", "--task", "i2v", *side]),
        ("dmd2-t2v4", dmd2, [*teacher_from, "--student-steps", "4", "--task", "t2v", *side]),
        ("t2i", t2i, ["--steps", str(T2I_STEPS), "--vae-steps", str(T2I_VAE_STEPS), *threads]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magic141.engine.train", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder for the stages' run folders")
    parser.add_argument("--out", type=Path, required=True, help="the exported model folder")
    parser.add_argument("--threads", type=int, help="CPU threads per stage (default: torch's)")
    parser.add_argument("--default", choices=export.DEFAULTS, default=DEFAULT,
                        help=f"the DiT the model runs by default (default: {DEFAULT}; see export.py)")
    args = parser.parse_args(argv)
    threads = ["--threads", str(args.threads)] if args.threads else []
    for name, stage, stage_argv in stages(args.runs, threads):
        print(f"== {name}", flush=True)
        stage.main(["--run-dir", str(args.runs / name), *stage_argv])
    runs = args.runs
    export.main([
        "--vae-run", str(runs / "vae"), "--teacher-run", str(runs / "teacher"),
        "--student-run", str(runs / "dmd2-i2v4"), "--student8-run", str(runs / "dmd2-i2v8"),
        "--t2i-run", str(runs / "t2i"), "--out", str(args.out), "--default", args.default,
    ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
