"""``magic141 eval``: score a world-trained model against the procedural world's ground truth.

    magic141 eval [--model world] [--quick] [--physics basic|full] [--json] [--out scores.json]

Everything runs through the engine's own ``Magic141Pipeline`` (and, for text-to-video, the engine's
text-to-image stage), on held-out world states:

1. Steps (the paper's Table 1 at toy scale): the many-step teacher with Euler, the teacher with 8
   and 4 Euler steps, and the DMD2 students with 8 and 4 steps, on image-to-video.
2. Precision: the model's default transformer (4 steps) with fp32 (or bf16 on CUDA) compute, bf16,
   int8 and fp8 weights (``engine/quant.py``); and the default's scores split by kind of motion
   (moving, falling, spinning, under a panning or a still camera).
3. Text-to-video: the text-to-image model's first frame, then the default transformer.
4. A 60-second sliding-window run: background and object colour drift, object still found.
5. The seam of the README's main job (the sample plate, extended): CIEDE2000 and PSNR between the
   plate's last frame and the first placed frame, with and without the colour match, beside the
   same for the world's true next frame and for the plate's own last step.

The held-out states come from the world the model was trained on (its ``training.json``);
``--physics`` scores it on the other one instead. ``--quick`` scores 8 clips per row and one long run
(under 5 minutes on a CPU); the default scores 48 clips and three long runs. Parsing stays
torch-free so ``magic141 --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

QUICK_CLIPS = 8
FULL_CLIPS = 48
TEACHER_STEPS = 50
LONG_SECONDS = 60


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval", help="score the world model against the procedural world's ground truth"
    )
    parser.add_argument("--model", default="world", help="world, or a folder written by engine/train/export")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CLIPS} clips per row, one long run")
    parser.add_argument("--clips", type=int, help="clips per row (overrides --quick's and the default count)")
    parser.add_argument("--long-runs", type=int, help="how many 60-second runs (default: 1 quick, 3 full)")
    parser.add_argument("--long-seconds", type=int, default=LONG_SECONDS, help="length of each long run")
    from .world import PHYSICS  # numpy only: parsing stays torch-free

    parser.add_argument(
        "--physics", choices=PHYSICS, help="the world to score on (default: the one it was trained on)"
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of tables")
    parser.add_argument("--out", type=Path, help="also write the result as JSON to this file")
    parser.set_defaults(handler=run_eval)


def _rows_table(title: str, rows: list[dict]) -> str:
    head = (
        "| variant | steps | PSNR first (dB) | trajectory (px) | direction | colour | pan | found | flicker "
        "| s/clip |"
    )
    lines = [f"### {title}", "", head, "|" + " --- |" * 10]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['steps']} | {_f(r['psnr_first'], 2)} | {_f(r['trajectory_px'], 2)} | "
            f"{_f(r['direction_ok'], 3)} | {_f(r['colour_ok'], 3)} | {_f(r['pan_ok'], 3)} | "
            f"{_f(r['found'], 3)} | {_f(r['flicker'], 2)} | {_f(r.get('seconds_per_clip'), 3)} |"
        )
    return "\n".join(lines)


def _f(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _strict_json(value):
    """NaN (a score that could not be measured: no object found to track) as null, which strict
    JSON readers accept."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strict_json(item) for item in value]
    return value


def _long_table(runs: list[dict]) -> str:
    keys = [k for k in runs[0] if k not in ("seconds", "windows")]
    lines = [
        "### Sliding window",
        "",
        "| run | seconds | windows | " + " | ".join(keys) + " |",
        "|" + " --- |" * (3 + len(keys)),
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r['seconds']} | {r['windows']} | " + " | ".join(str(r[k]) for k in keys) + " |"
        )
    return "\n".join(lines)


def _seam_table(rows: list[dict]) -> str:
    lines = ["### Seam (the sample plate's last frame -> the next frame on the timeline)", "",
             "| next frame | CIEDE2000 | PSNR (dB) |", "| --- | --- | --- |"]
    lines += [f"| {r['variant']} | {_f(r['ciede2000'], 2)} | {_f(r['psnr'], 2)} |" for r in rows]
    return "\n".join(lines)


def seam_rows(model: str, *, device, seeds: int = 4) -> list[dict]:
    """Section 5: the sample job's cut, averaged over ``seeds`` seeds, against the world's own."""
    import tempfile
    from fractions import Fraction

    import numpy as np

    from magic141.protocol import JobSpec, Source

    from . import media, seam, world
    from .generate import Engine
    from .train import sample

    plate_path = Path(__file__).resolve().parents[1] / "resources" / "world_sample" / "plate.mp4"
    plate = media.read_frames(plate_path)
    height, width = plate.shape[1:3]
    truth = world.render(sample.last_frame_state(), 2, height, width)[1]
    engine = Engine.load(model, device=str(device))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, strength in (("placed, colour matched", 1.0), ("placed, --no-color-match", 0.0)):
            scores = []
            for seed in range(seeds):
                last = Fraction(sample.FRAMES - 1) / world.FPS
                spec = JobSpec(source=Source("media", str(plate_path), last), prompt=sample.PROMPT,
                               seconds=1 / world.FPS, fps=world.FPS, seed=seed,
                               color_match=strength, output_dir=folder, output_name="next.mp4")
                out = Path(folder) / "next.mp4"
                engine.generate(spec, out)
                scores.append(seam.seam_score(plate[-1], media.read_frames(out)[0]))
            rows.append({"variant": f"{label} ({seeds} seeds)",
                         **{k: float(np.mean([s[k] for s in scores])) for k in scores[0]}})
    return rows + [{"variant": "world's true continuation", **seam.seam_score(plate[-1], truth)},
                   {"variant": "the plate's own last step", **seam.seam_score(plate[-2], plate[-1])}]


def run_eval(args) -> int:
    from .quant import import_torchao_quietly

    import_torchao_quietly()
    result = evaluate(
        args.model,
        clips=args.clips or (QUICK_CLIPS if args.quick else FULL_CLIPS),
        long_runs=args.long_runs if args.long_runs is not None else (1 if args.quick else 3),
        long_seconds=args.long_seconds,
        physics=args.physics,
        device=args.device,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    result = _strict_json(result)
    if args.out:
        from magic141 import atomic

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(args.out, result, indent=1)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(_rows_table("Steps (image-to-video)", result["steps"]))
        print()
        print(_rows_table(f"Precision (default: {result['default']}, 4 steps)", result["precision"]))
        print()
        kinds_title = f"By kind of motion (default: {result['default']}, 4 steps)"
        print(_rows_table(kinds_title, result["kinds"]))
        print()
        t2v_title = "Text-to-video (text-to-image first frame, then the default, 4 steps)"
        print(_rows_table(t2v_title, result["t2v"]))
        print()
        if result["long"]:
            print(_long_table(result["long"]))
            print()
        print(_seam_table(result["seam"]))
        print()
        print(
            f"{result['clips']} clips per row of the {result['physics']} world (trained on the "
            f"{result['trained_on']} one) on {result['device']}, {result['seconds']:.0f} s in all"
        )
    return 0


def _variant_transformer(folder: Path, name: str, dtype):
    from diffusers import HunyuanVideoTransformer3DModel

    path = folder / "variants" / name
    if not (path / "config.json").is_file():
        return None
    return HunyuanVideoTransformer3DModel.from_pretrained(path, local_files_only=True, dtype=dtype).eval()


def evaluate(
    model: str,
    *,
    clips: int,
    long_runs: int,
    long_seconds: int = LONG_SECONDS,
    physics: str | None = None,
    device=None,
    progress=lambda line: None,
) -> dict:
    """All four sections as JSON-ready dicts (see the module docstring)."""
    import copy

    import torch

    from magic141.errors import InvalidInput

    from .generate import _model_width
    from .models import load_model, model_path
    from .pipeline import Magic141Pipeline
    from .quant import DEFAULT_MIN_FEATURES, quantize
    from .train import evaluate as ev

    if clips < 1:
        raise InvalidInput(f"must be at least 1, got {clips}", field="clips")
    folder = model_path(model)
    if not (folder / "training.json").is_file():
        raise InvalidInput(
            f"{model}: magic141 eval scores models trained on the procedural world "
            "(world, or a folder written by engine/train/export); this one has no training.json",
            field="model",
        )
    started = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaded = load_model(str(folder), device=device)
    info = loaded.components
    height, width = loaded.info.default_size
    frames = loaded.info.window_frames
    dtype = info["transformer"].dtype
    trained_on = json.loads((folder / "training.json").read_text())["teacher"].get("physics", "basic")
    physics = physics or trained_on
    cases = ev.eval_cases(clips, height=height, width=width, frames=frames, physics=physics)
    default = info["transformer"]  # what the model runs by default: see its magic141.json
    default_name = json.loads((folder / "magic141.json").read_text()).get("default_transformer", "dmd2")

    def pipe_with(transformer):
        parts = {**info, "transformer": transformer}
        return Magic141Pipeline(**parts, device=device)

    clip_scores = {}

    def row(variant: str, transformer, steps: int) -> dict:
        scores_, seconds, clip_scores[variant, steps] = ev.run_i2v(
            pipe_with(transformer), cases, steps=steps, frames=frames
        )
        progress(
            f"{variant}, {steps} steps: PSNR {scores_.psnr_first:.2f} dB, trajectory "
            f"{scores_.trajectory_px:.2f} px, direction {scores_.direction_ok:.2f}"
        )
        return {
            "variant": variant,
            "steps": steps,
            **scores_.to_json(),
            "seconds_per_clip": round(seconds, 4),
        }

    # transformer/ holds the default
    variant = {"teacher": "transformer_teacher", "dmd2": "transformer_4step"}
    teacher, four = (default if default_name == name else _variant_transformer(folder, variant[name], dtype)
                     for name in ("teacher", "dmd2"))
    eight = _variant_transformer(folder, "transformer_8step", dtype)
    steps_rows = []
    if teacher is not None:
        steps_rows += [row("teacher, Euler", teacher, n) for n in (TEACHER_STEPS, 8, 4)]
    if eight is not None:
        steps_rows.append(row("DMD2 student", eight, 8))
    steps_rows.append(row("DMD2 student", four, 4))
    same = ("teacher, Euler", 4) if default_name == "teacher" else ("DMD2 student", 4)
    default_row = next(r for r in steps_rows if (r["variant"], r["steps"]) == same)
    kind_rows = [
        {"variant": f"{kind} ({count} clip{'' if count == 1 else 's'})", "steps": 4, "clips": count,
         **kind_scores.to_json()}
        for kind, (count, kind_scores) in ev.by_kind(cases, clip_scores[same]).items()
    ]

    base = "bf16" if dtype == torch.bfloat16 else "fp32"
    precision_rows = [{**default_row, "variant": f"default, {base}"}]
    if base == "fp32":
        precision_rows.append(row("default, bf16", copy.deepcopy(default).to(torch.bfloat16), 4))
    for mode in ("int8", "fp8"):
        quantised = copy.deepcopy(default).cpu()
        quantize(
            quantised,
            mode,
            compute_dtype=dtype,
            min_features=min(DEFAULT_MIN_FEATURES, _model_width(quantised)),
        )
        precision_rows.append(row(f"default, {mode} weights", quantised.to(device), 4))

    t2v_rows = []
    if (folder / "t2i" / "model_index.json").is_file():
        from .t2i import load_t2i

        t2i = load_t2i(str(folder / "t2i"), device=device)
        t2v = ev.run_t2v(t2i, pipe_with(default), cases, steps=4, frames=frames)
        progress(f"text-to-video: colour {t2v.colour_ok:.2f}, direction {t2v.direction_ok:.2f}")
        t2v_rows.append({"variant": "T2I + default", "steps": 4, **t2v.to_json()})

    long_rows = []
    for case in cases[:long_runs]:
        long_rows.append(
            ev.run_long(pipe_with(default), case, seconds=long_seconds, window_frames=frames, steps=4)
        )
        progress(f"{long_seconds} s run: background drift {long_rows[-1]['background_drift']}")
    seam_table = seam_rows(model, device=device)
    progress(f"seam: CIEDE2000 {seam_table[0]['ciede2000']:.2f} colour matched, "
             f"{seam_table[1]['ciede2000']:.2f} unmatched, {seam_table[2]['ciede2000']:.2f} the truth")

    return {
        "model": loaded.info.name,
        "default": default_name,
        "device": str(device),
        "clips": clips,
        "physics": physics,
        "trained_on": trained_on,
        "frames": frames,
        "size": [height, width],
        "steps": steps_rows,
        "precision": precision_rows,
        "kinds": kind_rows,
        "t2v": t2v_rows,
        "long": long_rows,
        "seam": seam_table,
        "seconds": round(time.perf_counter() - started, 1),
    }
