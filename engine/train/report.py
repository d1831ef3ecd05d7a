"""Tables for the model card from what the runs recorded (nothing here re-measures anything).

    python -m magic141.engine.train.report --model resources/world --runs runs/world

* compute: each stage's steps, batch, wall time, device and threads, from ``training.json`` and the
  comparison runs;
* the VAE: background and object PSNR of its reconstruction of held-out clips of each physics;
* convergence (the paper's Figure 5 at toy scale): the world-FVD of the image-to-video and the
  text-to-video students at each evaluation of their equal-budget runs, over three seeds, and the
  share of the gap between the teacher with the student's few Euler steps (iteration 0) and the
  teacher's 50 steps each has closed;
* the DMD2 ablations: fake-score updates per student update and the GAN term.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from . import common

STAGES = {
    "vae": "video VAE",
    "teacher_init": "I2V/T2V teacher (flow matching), basic world",
    "teacher": "I2V/T2V teacher (flow matching)",
    "dmd2_4step": "DMD2 4-step student (I2V)",
    "dmd2_8step": "DMD2 8-step student (I2V)",
    "t2i": "text-to-image (VAE + transformer)",
    "probe": "world probe (for the world-FVD)",
}


def compute_table(training: dict, extra: dict[str, dict] | None = None) -> str:
    lines = [
        "| stage | steps | batch | wall time | device | threads |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rows = {**training, **(extra or {})}
    total = 0.0
    for key, meta in rows.items():
        total += meta["wall_seconds"]
        name = STAGES.get(key, key)
        if key == "teacher" and meta.get("init_run"):
            name = f"I2V/T2V teacher, fine-tuned on the {meta['physics']} world"
        lines.append(
            f"| {name} | {meta['step']} | {meta['batch']} | {meta['wall_seconds'] / 60:.1f} min | "
            f"{meta['device']} x{meta['world_size']} | {meta['threads']} |"
        )
    lines.append(f"| **total** | | | **{total / 60:.1f} min** | | |")
    return "\n".join(lines)


def vae_table(vae: dict) -> str:
    """What the VAE's last checkpoint recorded of its held-out reconstruction (``vae.held_out_psnr``)."""
    lines = ["| physics | clips (frames) | background PSNR (dB) | object PSNR (dB) |", "|" + " --- |" * 4]
    lines += [f"| {h['physics']} | {h['clips']} ({h['frames']}) | {h['background_db']:.2f} | "
              f"{h['object_db']:.2f} |" for h in vae.get("held_out", [])]
    return "\n".join(lines)


def _evals(run: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in common.read_log(run) if key in r]


def gap_closed(run: Path, key: str = "eval_fvd") -> dict[int, float]:
    """At each evaluation, the share of the gap between the student at iteration 0 (the teacher with the
    student's few Euler steps) and the teacher's 50 steps that the run has closed (lower ``key`` is
    better; 1: the teacher's level, below 0: worse than it started)."""
    log = common.read_log(run)
    first = next(r for r in log if r["step"] == 0)
    start, target = first[key], first[key.replace("eval_", "eval_teacher50_")]
    if start == target:
        return {}
    return {r["step"]: (start - r[key]) / (start - target) for r in log if key in r}


def seeds_table(runs: dict[str, list[Path]], key: str = "eval_fvd") -> str:
    """Mean and range over seeds of each task's world-FVD and gap closed, at every evaluation: the
    paper's Figure 5 (image-to-video distils faster than text-to-video) at toy scale."""
    series = {task: [dict(_evals(run, key)) for run in found] for task, found in runs.items()}
    closed = {task: [gap_closed(run, key) for run in found] for task, found in runs.items()}
    steps = sorted(set.intersection(*(set(s) for runs_ in series.values() for s in runs_)))
    heads = " | ".join(f"{task} world-FVD | {task} gap closed" for task in runs)
    lines = [f"| iteration | {heads} |", "|" + " --- |" * (1 + 2 * len(runs))]

    def spread(values: list[float], digits: int) -> str:
        return f"{np.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"

    for step in steps:
        cells = []
        for task in runs:
            cells.append(spread([s[step] for s in series[task]], 3))
            gaps = [c[step] for c in closed[task] if step in c]
            cells.append(spread(gaps, 2) if gaps else "–")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


ABLATION_KEYS = {"eval_fvd": "world-FVD", "eval_valid": "valid", "eval_direction_ok": "direction",
                 "eval_trajectory_px": "trajectory (px)"}


def ablation_table(runs: dict[str, Path]) -> str:
    """The last evaluation of each DMD2 variant (same budget, seed and held-out clips), and its cost."""
    lines = ["| variant | iterations | " + " | ".join(ABLATION_KEYS.values()) + " | wall time |",
             "|" + " --- |" * (3 + len(ABLATION_KEYS))]
    for name, run in runs.items():
        last = [r for r in common.read_log(run) if "eval_valid" in r][-1]
        summary = common.run_summary(run)
        cells = [f"{last[k]:.3f}" if k in last else "–" for k in ABLATION_KEYS]
        lines.append(f"| {name} | {last['step']} | " + " | ".join(cells) +
                     f" | {summary['wall_seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magic141.engine.train.report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the exported model folder")
    parser.add_argument("--runs", type=Path, required=True, help="the runs folder of the recipe")
    args = parser.parse_args(argv)
    from .__main__ import ABLATIONS, CURVE_SEEDS

    training = json.loads((args.model / "training.json").read_text())
    curves = {task: [args.runs / f"curve-{task}-s{seed}" for seed in CURVE_SEEDS] for task in ("i2v", "t2v")}
    extra = {run.name: common.run_summary(run) for found in curves.values() for run in found}
    extra.update({f"ablation-{n}": common.run_summary(args.runs / f"ablation-{n}") for n in ABLATIONS})
    print(compute_table(training, extra))
    print()
    print(vae_table(training["vae"]))
    print()
    print(seeds_table(curves))
    print()
    ablations = {"DMD2 (5 fake updates, GAN 0.02)": curves["i2v"][0]}
    ablations.update({name: args.runs / f"ablation-{name}" for name in ABLATIONS})
    print(ablation_table(ablations))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
