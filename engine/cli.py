"""The engine's commands: ``magic141 generate`` and ``magic141 info``.

Parsing stays import-light (no torch) so ``magic141 --help`` is instant; handlers import the engine.
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magic141 import cli_args
from magic141 import home as home_dir
from magic141.cli_args import QUANT_CHOICES
from magic141.protocol import CODECS, CONDITIONINGS, DEFAULT_MODEL, JobSpec, Source, codec_for, model_field
from magic141.rational import rational_text

if TYPE_CHECKING:
    from .generate import Engine


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=DEFAULT_MODEL,
                       help="world (default); tiny, tiny-wan, tiny-hv15, tiny-ltx2 (random weights); a "
                            "diffusers folder of any family, or its repository id in the Hugging Face cache; "
                            "or a DiT checkpoint file")
    group.add_argument("--components",
                       help="for a single-file checkpoint: where the VAE and text encoders are")
    group.add_argument(
        "--allow-pickle", action="store_true", help="allow .pt/.pth/.ckpt checkpoints (loaded weights_only)"
    )
    group.add_argument("--quant", choices=QUANT_CHOICES, default="none", help="DiT weights (default: none)")
    group.add_argument("--text-quant", choices=QUANT_CHOICES, default="none", help="text encoder weights")
    group.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when present)")
    group.add_argument("--offload", action="store_true",
                       help="lowest memory: one component on the device at a time")
    group.add_argument("--group-offload", action="store_true",
                       help="stream the DiT's blocks to the device one at a time (diffusers' group offload): "
                            "the DiT's memory down to two blocks; slower")
    group.add_argument("--vae-tiling", action="store_true",
                       help="decode in tiles (less memory for large frames)")
    add_lora_option(group)


def add_lora_option(parser) -> None:
    parser.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE][@transformer_2]",
                        type=_lora,
                        help="a .safetensors LoRA fused into the weights, e.g. a 4-step distillation LoRA "
                             "(repeatable; scale default 1; @transformer_2: into Wan 2.2's low-noise expert)")


def spec_loras(args: argparse.Namespace) -> tuple[tuple[str, float, str], ...]:
    """``--lora`` as a job spec's ``loras``."""
    return tuple(lora.spec for lora in args.lora)


def _lora(text: str):
    from magic141.errors import InvalidInput

    from .lora import Lora

    try:
        return Lora.parse(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


_lora.__name__ = "lora"  # argparse names the option in its one-line error


def add_job_options(gen: argparse.ArgumentParser, *, out_required: bool = True) -> None:
    """The options of one generation job (``generate`` and ``queue add`` share them)."""
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--image", type=Path, help="first frame; without it a text-to-image model makes one")
    gen.add_argument("--out", type=Path, required=out_required, help="output .mp4 (h264) or .mov (prores)")
    gen.add_argument("--seconds", type=cli_args.seconds, default=Fraction(5))
    gen.add_argument("--fps", type=cli_args.rate, default=Fraction(24),
                     help="e.g. 24, 25, 24000/1001 (kept exact)")
    gen.add_argument("--seed", type=cli_args.seed, default=0)
    gen.add_argument("--steps", type=cli_args.positive("steps"),
                     help="default: 4 for distilled weights, 50 for base")
    gen.add_argument("--shift", type=float, default=5.0, help="flow-matching timestep shift (default 5)")
    gen.add_argument("--cfg", type=float, help="true CFG scale; 1 disables (default: 1 distilled, 6 base)")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--height", type=cli_args.positive("height"))
    gen.add_argument("--width", type=cli_args.positive("width"))
    gen.add_argument("--codec", choices=tuple(CODECS), help="default: from the --out suffix")
    gen.add_argument("--conditioning", choices=CONDITIONINGS, help="default: what the weights expect")
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
    serve.add_argument("--idle-exit", type=_idle_seconds, default=home_dir.IDLE_EXIT, metavar="SECONDS",
                       help=f"stop after this long with no job and no client; 0: never "
                            f"(default {home_dir.IDLE_EXIT:g})")
    serve.set_defaults(handler=run_serve)

    info = commands.add_parser("info", help="describe a model: architecture, parameters, dtype, memory")
    add_model_options(info)
    info.add_argument("--families", action="store_true",
                      help="list the model families instead: what each needs per memory mode, and what "
                           "is installed")
    info.add_argument("--json", action="store_true", help="with --families: as JSON")
    info.set_defaults(handler=run_info)


class ProgressBar:
    """One tqdm bar per window, on stderr."""

    def __init__(self) -> None:
        self._bar: Any = None  # tqdm's bar of the current window
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


# The model options (add_model_options) as Engine.load takes them.
ENGINE_OPTIONS = ("device", "quant", "text_quant", "offload", "group_offload", "vae_tiling", "components",
                  "allow_pickle")


def _load_engine(args: argparse.Namespace, t2i: str | None = None) -> Engine:
    from .generate import Engine

    return Engine.load(args.model, t2i=t2i, loras=args.lora,
                       **{name: getattr(args, name) for name in ENGINE_OPTIONS})


def job_spec(args: argparse.Namespace) -> JobSpec:
    """The job ``generate``'s options ask for; the output path is checked here, before the model loads."""
    from . import media

    out = media.check_output_path(args.out.expanduser(), codec_for(args.out, args.codec)).resolve()
    image = args.image
    source = Source("image", str(image.expanduser().resolve())) if image is not None else Source("none")
    return JobSpec(
        source=source, prompt=args.prompt, output_dir=str(out.parent), output_name=out.name,
        seconds=args.seconds, fps=args.fps, seed=args.seed, model=model_field(args.model), steps=args.steps,
        quant=args.quant, height=args.height, width=args.width, codec=codec_for(out, args.codec),
        shift=args.shift, guidance=args.cfg, negative_prompt=args.negative_prompt,
        conditioning=args.conditioning, window_overlap=args.window_overlap,
        loras=spec_loras(args),
    )


def run_generate(args: argparse.Namespace) -> int:
    import signal

    from .pipeline_output import CancelToken, cancelled_by

    spec = job_spec(args)
    engine = _load_engine(args, t2i=args.t2i)
    bar = ProgressBar()
    try:
        with cancelled_by(signal.SIGINT, CancelToken()) as cancel:  # Ctrl-C: stop at the next step
            result = engine.generate(spec, args.out, progress=bar, cancel=cancel)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        windows = f", {result.windows} windows" if result.windows > 1 else ""
        print(
            f"wrote {result.path}: {result.frames} frames at {rational_text(result.fps)} fps, "
            f"{result.width}x{result.height} {result.codec}{windows}, in {result.timings['total']:.1f} s"
        )
    return 0


def _idle_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 (never) or a number of seconds, got {text!r}")
    return value


_idle_seconds.__name__ = "idle-exit"  # argparse names the option in its one-line error


def run_serve(args: argparse.Namespace) -> int:
    root = home_dir.home(args.home)
    lock = home_dir.ServiceLock(root)
    if not lock.acquire():  # before torch loads: a second service learns it at once
        pid = home_dir.service_pid(root)
        print(f"the engine service for {root} is already running (pid {pid or 'unknown'})")
        return 0
    from .service import serve

    serve(root, lock, device=args.device, idle_exit=args.idle_exit)
    return 0


def run_info(args: argparse.Namespace) -> int:
    if args.families:
        from .families.catalog import catalog, describe

        data = catalog()
        print(json.dumps(data, indent=2) if args.json else describe(data))
        return 0
    print(_load_engine(args).describe())
    return 0
