"""Tables for the model card from what the runs recorded (nothing here re-measures anything).

    python -m magic141.engine.train.report --model resources/world \\
        --i2v-run runs/dmd2-i2v4 --t2v-run runs/dmd2-t2v4

* compute: each stage's steps, batch, wall time, device and threads, from ``training.json``;
* convergence (the paper's Figure 5 at toy scale): the held-out score of the image-to-video and the
  text-to-video students at each evaluation of their distillation runs, and the fraction of the gap
  between the teacher's 4-step Euler samples (iteration 0) and the best score each run reached.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import common

STAGES = {
    "vae": "video VAE",
    "teacher_init": "I2V/T2V teacher (flow matching), basic world",
    "teacher": "I2V/T2V teacher (flow matching)",
    "dmd2_4step": "DMD2 4-step student (I2V)",
    "dmd2_8step": "DMD2 8-step student (I2V)",
    "t2i": "text-to-image (VAE + transformer)",
    "dmd2_t2v_4step": "DMD2 4-step student (T2V, for the comparison)",
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


def _evals(run: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in common.read_log(run) if key in r]


def convergence_table(i2v_run: Path, t2v_run: Path, key: str = "eval_valid") -> str:
    i2v, t2v = dict(_evals(i2v_run, key)), dict(_evals(t2v_run, key))
    steps = sorted(set(i2v) & set(t2v))
    if not steps:
        return "(no common evaluation points)"

    def gap(series: dict[int, float], step: int) -> str:
        start, best = series[min(series)], max(series.values())
        if best <= start:
            return "–"
        return f"{(series[step] - start) / (best - start):.2f}"

    lines = [
        "| iteration | I2V valid | I2V gap closed | T2V valid | T2V gap closed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for step in steps:
        lines.append(f"| {step} | {i2v[step]:.3f} | {gap(i2v, step)} | {t2v[step]:.3f} | {gap(t2v, step)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magic141.engine.train.report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the exported model folder")
    parser.add_argument("--i2v-run", type=Path, required=True)
    parser.add_argument("--t2v-run", type=Path, required=True)
    args = parser.parse_args(argv)
    training = json.loads((args.model / "training.json").read_text())
    print(compute_table(training, {"dmd2_t2v_4step": common.run_summary(args.t2v_run)}))
    print()
    print(convergence_table(args.i2v_run, args.t2v_run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
