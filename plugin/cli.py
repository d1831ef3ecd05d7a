"""``magic141 extend``: the panel's whole flow from the command line, without the GUI."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    from magic141 import cli_args
    from magic141.cli_args import QUANT_CHOICES
    from magic141.engine.cli import add_lora_option
    from magic141.protocol import CODECS, DEFAULT_AMBIENCE_SECONDS, DEFAULT_MODEL

    from .edits import MODES

    extend = commands.add_parser("extend",
                                 help="extend a clip of a timeline and write the result back into it")
    extend.add_argument("timeline", help=".otio, .otioz, .otiod or any timeline OTIO's adapters read")
    extend.add_argument("--clip", required=True, help="clip name, or its 0-based index among video clips")
    extend.add_argument("--at", type=int, metavar="FRAME_IN_CLIP",
                        help="frame to continue from (default: last)")
    extend.add_argument("--prompt", required=True)
    extend.add_argument("--seconds", type=cli_args.seconds, required=True)
    extend.add_argument("--mode", choices=MODES, default="insert")
    extend.add_argument("--model", default=DEFAULT_MODEL,
                        help="world (default); tiny, tiny-wan, tiny-hv15, tiny-ltx2; a model folder, a "
                             "repository id in the Hugging Face cache, or a DiT checkpoint")
    extend.add_argument("--quant", choices=QUANT_CHOICES, default="none")
    add_lora_option(extend)
    extend.add_argument("--steps", type=cli_args.positive("steps"))
    extend.add_argument("--seed", type=cli_args.seed, default=0)
    colour = extend.add_mutually_exclusive_group()
    colour.add_argument("--color-match", type=cli_args.strength, default=1.0, metavar="STRENGTH",
                        help="match the extension's colour to the source frame, 0-1 (default 1)")
    colour.add_argument("--no-color-match", dest="color_match", action="store_const", const=0.0,
                        help="leave the model's colours as they come")
    sound = extend.add_mutually_exclusive_group()
    sound.add_argument("--ambience", type=cli_args.ambience, default=DEFAULT_AMBIENCE_SECONDS,
                       metavar="SECONDS",
                       help="carry the source's ambience under the extension, at most SECONDS (0-10, "
                       "default 10); refused, with a note, for silent or dialogue-like sound")
    sound.add_argument("--no-ambience", dest="ambience", action="store_const", const=0.0,
                       help="video only")
    extend.add_argument("--codec", choices=tuple(CODECS), default=None,
                        help="h264 (.mp4) or prores (.mov, 422 HQ, 10-bit); default: prores for a source of "
                        "more than 8 bits, h264 otherwise")
    extend.add_argument("--handles", type=cli_args.whole("handles", 0), default=0, metavar="N",
                        help="N more frames at the head of the new media, under the source's last N, for a "
                        "dissolve in the host (the clip still starts after the source; default 0)")
    extend.add_argument("--json", action="store_true",
                        help="print where the clip landed and its seam score as JSON (README: Extend a clip)")
    extend.add_argument("--device")
    extend.add_argument("--out", help="where to save the edited timeline (default: in place, with a backup)")
    extend.set_defaults(handler=run_extend)


def run_extend(args: argparse.Namespace) -> int:
    from magic141.engine.cli import spec_loras
    from magic141.errors import JobCancelled, Magic141Error
    from magic141.protocol import JobResult, JobSpec, JobState

    from .extend import extend_clip

    def run_job(job_id: str, spec: JobSpec) -> JobResult:
        # Imported here: torch loads only after the timeline, clip and output were checked, so
        # a mistake is reported at once.
        from magic141.engine.cli import ProgressBar
        from magic141.engine.worker import JobRunner

        runner = JobRunner(args.device, previews=False)
        bar = ProgressBar()
        try:
            outcome = runner.execute(job_id, spec, progress=bar)
        finally:
            bar.close()
        if outcome.state == JobState.CANCELLED:
            raise JobCancelled("the job was cancelled; the timeline is unchanged")
        if outcome.state != JobState.DONE or outcome.result is None:
            raise Magic141Error(outcome.reason or "the job did not finish", field=outcome.field)
        return outcome.result

    result = extend_clip(args.timeline, args.clip, prompt=args.prompt, seconds=args.seconds, run_job=run_job,
                         at=args.at, mode=args.mode, out=args.out, seed=args.seed, model=args.model,
                         quant=args.quant, steps=args.steps, color_match=args.color_match,
                         ambience=args.ambience, handles=args.handles, codec=args.codec,
                         loras=spec_loras(args))
    if args.json:
        import json

        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.describe())
    return 0
