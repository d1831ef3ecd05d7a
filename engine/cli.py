"""The engine's commands: ``magic141 generate`` and ``magic141 info``.

Parsing stays import-light (no torch) so ``magic141 --help`` is instant; handlers import the engine.
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path

from magic141 import cli_args
from magic141.cli_args import QUANT_CHOICES
from magic141.protocol import DEFAULT_MODEL


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", default=DEFAULT_MODEL, help="world (default), tiny, a diffusers directory, or a DiT checkpoint file"
    )
    group.add_argument("--components", help="for a single-file checkpoint: where the VAE and text encoders are")
    group.add_argument(
        "--allow-pickle", action="store_true", help="allow .pt/.pth/.ckpt checkpoints (loaded weights_only)"
    )
    group.add_argument("--quant", choices=QUANT_CHOICES, default="none", help="DiT weights (default: none)")
    group.add_argument("--text-quant", choices=QUANT_CHOICES, default="none", help="text encoder weights")
    group.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when present)")
    group.add_argument("--offload", action="store_true", help="lowest memory: one component on the device at a time")
    group.add_argument("--vae-tiling", action="store_true", help="decode in tiles (less memory for large frames)")


def add_job_options(gen: argparse.ArgumentParser, *, out_required: bool = True) -> None:
    """The options of one generation job (``generate`` and ``queue add`` share them)."""
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--image", type=Path, help="first frame; without it a text-to-image model makes one")
    gen.add_argument("--out", type=Path, required=out_required, help="output .mp4 (h264) or .mov (prores)")
    gen.add_argument("--seconds", type=cli_args.seconds, default=Fraction(5))
    gen.add_argument("--fps", type=cli_args.rate, default=Fraction(24), help="e.g. 24, 25, 24000/1001 (kept exact)")
    gen.add_argument("--seed", type=cli_args.seed, default=0)
    gen.add_argument("--steps", type=cli_args.positive("steps"), help="default: 4 for distilled weights, 50 for base")
    gen.add_argument("--shift", type=float, default=5.0, help="flow-matching timestep shift (default 5)")
    gen.add_argument("--cfg", type=float, help="true CFG scale; 1 disables (default: 1 distilled, 6 base)")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--height", type=cli_args.positive("height"))
    gen.add_argument("--width", type=cli_args.positive("width"))
    gen.add_argument("--codec", choices=("h264", "prores"), help="default: from the --out suffix")
    gen.add_argument("--conditioning", choices=("magic141", "diffusers"), help="default: what the weights expect")
    gen.add_argument("--window-overlap", type=cli_args.positive("window_overlap"), default=2, metavar="K",
                     help="latent frames each sliding window carries over (default 2)")


def register(commands: argparse._SubParsersAction) -> None:
    gen = commands.add_parser("generate", help="generate a video from an image (or from text) and a prompt")
    add_job_options(gen)
    add_model_options(gen)
    gen.add_argument("--t2i", help="text-to-image model for the first frame: tiny or a diffusers directory")
    gen.add_argument("--json", action="store_true", help="print the result as JSON")
    gen.set_defaults(handler=run_generate)

    serve = commands.add_parser("serve", help="run the engine service (a warm worker behind a local API)")
    serve.add_argument("--home", help="state directory (default: $MAGIC141_HOME or the user data folder)")
    serve.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when present)")
    serve.set_defaults(handler=run_serve)

    info = commands.add_parser("info", help="describe a model: architecture, parameters, dtype, memory")
    add_model_options(info)
    info.set_defaults(handler=run_info)


def _codec_for(args) -> str:
    if args.codec:
        return args.codec
    return "prores" if args.out.suffix.lower() == ".mov" else "h264"


class ProgressBar:
    """One tqdm bar per window, on stderr."""

    def __init__(self) -> None:
        self._bar = None
        self._window = 0

    def __call__(self, step) -> None:
        from tqdm import tqdm

        if step.window != self._window:
            self.close()
            self._window = step.window
            label = f"window {step.window}/{step.windows}" if step.windows > 1 else "denoising"
            self._bar = tqdm(total=step.total, desc=label, unit="step", file=sys.stderr, leave=True)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _load_engine(args, t2i=None):
    from .generate import Engine

    return Engine.load(
        args.model,
        device=args.device,
        quant=args.quant,
        text_quant=args.text_quant,
        offload=args.offload,
        vae_tiling=args.vae_tiling,
        components=args.components,
        allow_pickle=args.allow_pickle,
        t2i=t2i,
    )


def run_generate(args) -> int:
    import signal

    from .generate import GenerateRequest
    from .pipeline_output import CancelToken, cancelled_by

    request = GenerateRequest(
        prompt=args.prompt,
        out=args.out,
        image=args.image,
        seconds=args.seconds,
        fps=args.fps,
        seed=args.seed,
        steps=args.steps,
        shift=args.shift,
        guidance=args.cfg,
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        codec=_codec_for(args),
        conditioning=args.conditioning,
        window_overlap=args.window_overlap,
    )
    engine = _load_engine(args, t2i=args.t2i)
    bar = ProgressBar()
    try:
        with cancelled_by(signal.SIGINT, CancelToken()) as cancel:  # Ctrl-C: stop at the next step
            result = engine.generate(request, progress=bar, cancel=cancel)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        fps = f"{result.fps.numerator}/{result.fps.denominator}" if result.fps.denominator != 1 else result.fps
        windows = f", {result.windows} windows" if result.windows > 1 else ""
        print(
            f"wrote {result.path}: {result.frames} frames at {fps} fps, {result.width}x{result.height} "
            f"{result.codec}{windows}, in {result.timings['total']:.1f} s"
        )
    return 0


def run_serve(args) -> int:
    from .service import serve

    serve(args.home, device=args.device)
    return 0


def run_info(args) -> int:
    print(_load_engine(args).describe())
    return 0
