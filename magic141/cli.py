"""The ``magic141`` command: one entry point, sub-commands registered by each part.

Errors the engine raises on purpose print as one line (``error: ...``) with a non-zero exit; set
``MAGIC141_DEBUG=1`` to see the traceback of an unexpected failure.
"""

from __future__ import annotations

import argparse
import os
import sys

from magic141 import __version__

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
# The flag of each field whose flag is not ``--<field>`` (errors name fields; the command line
# phrases them as flags).
FLAGS = {
    "source": "--image", "source.path": "--image", "output_dir": "--out", "output_name": "--out",
    "guidance": "--cfg", "window_overlap": "--window-overlap", "negative_prompt": "--negative-prompt",
    "text_quant": "--text-quant", "vae_tiling": "--vae-tiling", "allow_pickle": "--allow-pickle",
    "long_runs": "--long-runs", "long_seconds": "--long-seconds",
}


def _quiet_third_party() -> None:
    """Keep library chatter (optional kernels not built for this CPU, deprecations) off the user's terminal.

    Errors still show; ``MAGIC141_DEBUG=1`` keeps everything.
    """
    if os.environ.get("MAGIC141_DEBUG"):
        return
    import logging

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def build_parser() -> argparse.ArgumentParser:
    from magic141.cli_args import Parser
    from magic141.engine import cli as engine_cli
    from magic141.engine import eval_cli
    from magic141.plugin import cli as plugin_cli
    from magic141.plugin import farm, queue_cli
    from magic141.plugin.hosts.blender import install as blender_install

    parser = Parser(prog="magic141", description="Extend video clips with Magic 1-For-1.")
    parser.add_argument("--version", action="version", version=f"magic141 {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    engine_cli.register(commands)
    eval_cli.register(commands)
    queue_cli.register(commands)
    plugin_cli.register(commands)
    farm.register(commands)
    blender_install.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_third_party()
    from magic141.errors import JobCancelled, Magic141Error

    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except JobCancelled as exc:
        print(f"cancelled: {exc.phrase(FLAGS, default='--{}')}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Magic141Error as exc:
        print(f"error: {exc.phrase(FLAGS, default='--{}')}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # the last line of defence: one clear line, traceback on request
        if os.environ.get("MAGIC141_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set MAGIC141_DEBUG=1 for details)",
              file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
