"""``magic141 eval``: score a world-trained model against the procedural world's ground truth.

    magic141 eval [--model world] [--quick] [--physics basic|full|multimodal] [--json] [--out scores.json]

Image-to-video clips are sampled in batches exactly as the engine's ``Magic141Pipeline`` samples them
(``train/measure.py``; a test checks the two agree), on held-out world states:

1. Steps (the paper's Table 1 at toy scale): the VAE's reconstruction of the true clips (the ceiling
   every row is bounded by), the teacher with 50, 8, 4, 2 and 1 Euler steps, and the DMD2 students
   with 8 and 4 steps. Every score has a paired-bootstrap 95 % interval, and every row its gap to the
   50-step teacher with its own interval: first-frame PSNR, trajectory, direction, colour and pan as
   prompted, object found, flicker, object IoU, edge sharpness and PSNR on the background and on the
   object against the truth, the world-FVD
   (the world probe's features, when the model folder has ``probe/``), and seed diversity against
   the truth's conditional spread.
2. Precision: the model's default transformer (4 steps) with fp32 (or bf16 on CUDA) compute, bf16,
   int8 and fp8 weights (``engine/quant.py``); and the default's scores split by kind of motion
   (moving, falling, spinning, under a panning or a still camera).
3. Text-to-video, through the pipeline: the text-to-image model's first frame, then the default.
4. A 60-second sliding-window run: background and object colour drift, object still found.
5. The seam of the README's main job (the sample plate, extended): CIEDE2000 and PSNR between the
   plate's last frame and the first placed frame, with and without the colour match, beside the
   same for the world's true next frame and for the plate's own last step.

The held-out states come from the world the model was trained on (its ``training.json``);
``--physics`` scores it on another one instead. ``--quick`` scores 8 clips per row and one long run
(under 3 minutes on 2 CPU cores); the default scores 512 clips per row (seed diversity on the first
128, four seeds each) and three long runs. Parsing stays torch-free so ``magic141 --help`` stays
instant.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

QUICK_CLIPS = 8
FULL_CLIPS = 512
TEACHER_STEPS = 50
TEACHER_STEP_COUNTS = (TEACHER_STEPS, 8, 4, 2, 1)
DIVERSITY_CASES = 128  # the first cases, each sampled with measure.DIVERSITY_SEEDS more seeds
LONG_SECONDS = 60
CEILING = "VAE reconstruction of the truth"
RESULT_FORMAT = 2  # 2: every row has ``ci`` (intervals and gaps); 1 had means only


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


COLUMNS = (  # (key, heading, digits) of the tables; every row's ``ci`` holds these keys' intervals
    ("psnr_first", "PSNR first (dB)", 2), ("trajectory_px", "trajectory (px)", 2),
    ("direction_ok", "direction", 3), ("colour_ok", "colour", 3), ("pan_ok", "pan", 3),
    ("found", "found", 3), ("flicker", "flicker", 2), ("iou", "IoU", 3), ("sharpness", "sharpness", 3),
    ("psnr_background", "PSNR bg (dB)", 2), ("psnr_object", "PSNR object (dB)", 2),
    ("fvd", "world-FVD", 3), ("spread_ratio", "spread / truth", 2),
)


def _rows_table(title: str, rows: list[dict]) -> str:
    """Each metric's mean with its 95 % interval in brackets; columns no row has are left out."""
    columns = [c for c in COLUMNS if any(r.get("ci", {}).get(c[0]) or r.get(c[0]) is not None for r in rows)]
    head = "| variant | steps | " + " | ".join(c[1] for c in columns) + " | s/clip |"
    lines = [f"### {title}", "", head, "|" + " --- |" * (len(columns) + 3)]
    for r in rows:
        cells = [_cell(r, key, digits) for key, _, digits in columns]
        steps = "–" if r["steps"] is None else r["steps"]
        seconds = _f(r.get("seconds_per_clip"), 3)
        lines.append(f"| {r['variant']} | {steps} | " + " | ".join(cells) + f" | {seconds} |")
    return "\n".join(lines)


def _cell(row: dict, key: str, digits: int) -> str:
    interval = row.get("ci", {}).get(key)
    if interval is None:
        return _f(row.get(key), digits)
    return f"{_f(interval['mean'], digits)} [{_f(interval['lo'], digits)}, {_f(interval['hi'], digits)}]"


def _gaps_table(title: str, rows: list[dict], reference: str) -> str:
    """Each row's gap to ``reference`` (row minus reference) with its paired 95 % interval."""
    columns = [c for c in COLUMNS if any(r.get("ci", {}).get(c[0], {}).get("gap") is not None for r in rows)]
    lines = [f"### {title} (minus {reference}; paired 95 % intervals)", "",
             "| variant | steps | " + " | ".join(c[1] for c in columns) + " |",
             "|" + " --- |" * (len(columns) + 2)]
    for r in rows:
        cells = []
        for key, _, digits in columns:
            value = r.get("ci", {}).get(key, {})
            if value.get("gap") is None:
                cells.append("–")
                continue
            low, high = f"{value['gap_lo']:+.{digits}f}", f"{value['gap_hi']:+.{digits}f}"
            cells.append(f"{value['gap']:+.{digits}f} [{low}, {high}]")
        if any(c != "–" for c in cells):
            steps = "–" if r["steps"] is None else r["steps"]
            lines.append(f"| {r['variant']} | {steps} | " + " | ".join(cells) + " |")
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
        print(_gaps_table("Gaps", result["steps"], result["reference"]))
        print()
        diversity = result["diversity"]
        print(f"spread / truth: where the object ends up over {diversity['seeds']} seeds of each of the "
              f"first {diversity['cases']} cases, against {diversity['truth_draws']} true continuations of "
              f"each (their mean spread {diversity['truth_spread_px']:.2f} px)")
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


def _transformers(folder: Path, default, default_name: str, dtype) -> dict[str, object]:
    """The teacher and the 4- and 8-step students the folder has (``transformer/`` holds the default)."""
    variant = {"teacher": "transformer_teacher", "dmd2": "transformer_4step", "dmd2-8": "transformer_8step"}
    return {name: default if default_name == name else _variant_transformer(folder, path, dtype)
            for name, path in variant.items()}


def evaluate(
    model: str,
    *,
    clips: int,
    long_runs: int,
    long_seconds: int = LONG_SECONDS,
    physics: str | None = None,
    device=None,
    progress=lambda line: None,
    draws: int = 1000,
) -> dict:
    """Every section as JSON-ready dicts (see the module docstring)."""
    import copy

    import numpy as np
    import torch

    from magic141.errors import InvalidInput

    from .generate import _model_width
    from .models import load_model, model_path
    from .pipeline import Magic141Pipeline
    from .quant import DEFAULT_MIN_FEATURES, quantize
    from .train import evaluate as ev
    from .train import measure

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
    default_name = json.loads((folder / "magic141.json").read_text()).get("default_transformer", "dmd2")
    dits = _transformers(folder, info["transformer"], default_name, dtype)
    vae = info["vae"]
    held = measure.held_out(vae, info, cases, frames, physics)
    probe = None
    if (folder / "probe" / "config.json").is_file():
        from .train.probe import load_probe

        probe = load_probe(folder / "probe").to(device)
    spread_cases = min(clips, DIVERSITY_CASES)
    seeds = [case.seed for case in cases]

    def dit_row(variant: str, dit, steps: int, *, spread: bool = True) -> measure.Row:
        row = measure.measure_row(
            variant, steps, lambda: measure.sample(dit, vae, held, steps, seeds), held, probe=probe,
            spread_of=(lambda: measure.diversity(dit, vae, held, steps, spread_cases)) if spread else None,
        )
        means = {k: measure.measured_mean(v) for k, v in row.per_clip.items()}
        progress(f"{row.name}: PSNR {means['psnr_first']:.2f} dB, trajectory {means['trajectory_px']:.2f} "
                 f"px, direction {means['direction_ok']:.2f}")
        return row

    ceiling = measure.measure_row(CEILING, None, lambda: measure.reconstruct(vae, held), held, probe=probe)
    steps_rows = [ceiling]
    if dits["teacher"] is not None:
        steps_rows += [dit_row("teacher, Euler", dits["teacher"], n) for n in TEACHER_STEP_COUNTS]
    if dits["dmd2-8"] is not None:
        steps_rows.append(dit_row("DMD2 student", dits["dmd2-8"], 8))
    if dits["dmd2"] is not None:
        steps_rows.append(dit_row("DMD2 student", dits["dmd2"], 4))
    same = "teacher, Euler, 4 steps" if default_name == "teacher" else "DMD2 student, 4 steps"
    default_row = next(r for r in steps_rows if r.name == same)
    reference = f"teacher, Euler, {TEACHER_STEPS} steps"
    truth = dict(truth_features=probe.features(held.truth) if probe is not None else None,
                 truth_spread_=measure.truth_spread(held, spread_cases))
    ci = measure.intervals(steps_rows, reference, draws=draws, **truth)

    kind_rows = [
        {"variant": f"{kind} ({len(members)} clip{'' if len(members) == 1 else 's'})", "steps": 4,
         "clips": len(members),
         **{k: measure.measured_mean(v[members]) for k, v in default_row.per_clip.items()}}
        for kind, members in ev.kinds([case.state for case in cases]).items()
    ]

    base = "bf16" if dtype == torch.bfloat16 else "fp32"
    precision = [measure.Row(f"default, {base}", 4, default_row.per_clip, default_row.seconds_per_clip,
                             default_row.features)]
    default = info["transformer"]
    if base == "fp32":
        precision.append(dit_row("default, bf16", copy.deepcopy(default).to(torch.bfloat16), 4, spread=False))
    for mode in ("int8", "fp8"):
        quantised = copy.deepcopy(default).cpu()
        quantize(quantised, mode, compute_dtype=dtype,
                 min_features=min(DEFAULT_MIN_FEATURES, _model_width(quantised)))
        precision.append(dit_row(f"default, {mode} weights", quantised.to(device), 4, spread=False))
    precision_ci = measure.intervals(precision, precision[0].name, draws=draws,
                                     truth_features=truth["truth_features"])

    def pipe_with(transformer):
        return Magic141Pipeline(**{**info, "transformer": transformer}, device=device)

    t2v_rows = []
    if (folder / "t2i" / "model_index.json").is_file():
        from .t2i import load_t2i

        t2i = load_t2i(str(folder / "t2i"), device=device)
        t2v, per_clip = ev.run_t2v(t2i, pipe_with(default), cases, steps=4, frames=frames)
        progress(f"text-to-video: colour {t2v.colour_ok:.2f}, direction {t2v.direction_ok:.2f}")
        arrays = {k: np.array([float(getattr(c, k)) for c in per_clip]) for k in measure.CLIP_METRICS}
        t2v_row = measure.Row("T2I + default", 4, arrays)
        t2v_rows.append(_json_row(t2v_row, measure.intervals([t2v_row], None, draws=draws)[t2v_row.name]))

    long_rows = []
    for case in cases[:long_runs]:
        long_rows.append(
            ev.run_long(pipe_with(default), case, seconds=long_seconds, window_frames=frames, steps=4)
        )
        progress(f"{long_seconds} s run: background drift {long_rows[-1]['background_drift']}")
    seam_table = seam_rows(model, device=device)
    progress(f"seam: CIEDE2000 {seam_table[0]['ciede2000']:.2f} colour matched, "
             f"{seam_table[1]['ciede2000']:.2f} unmatched, {seam_table[2]['ciede2000']:.2f} the truth")
    truth_spread = measure.measured_mean(truth["truth_spread_"])
    return {
        "format": RESULT_FORMAT,
        "model": loaded.info.name,
        "default": default_name,
        "device": str(device),
        "clips": clips,
        "physics": physics,
        "trained_on": trained_on,
        "frames": frames,
        "size": [height, width],
        "reference": reference,
        "diversity": {"cases": spread_cases, "seeds": measure.DIVERSITY_SEEDS,
                      "truth_draws": measure.TRUTH_DRAWS, "truth_spread_px": truth_spread},
        "steps": [_json_row(r, ci[r.name]) for r in steps_rows],
        "precision": [_json_row(r, precision_ci[r.name]) for r in precision],
        "kinds": kind_rows,
        "t2v": t2v_rows,
        "long": long_rows,
        "seam": seam_table,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _json_row(row, intervals: dict[str, dict]) -> dict:
    """A table row: each metric's mean at the top level (as format 1 had them), and ``ci``: every
    metric's interval and gap to the reference."""
    means = {metric: value["mean"] for metric, value in intervals.items()}
    return {"variant": row.variant, "steps": row.steps, "clips": len(next(iter(row.per_clip.values()))),
            **means, "seconds_per_clip": row.seconds_per_clip, "ci": intervals}
