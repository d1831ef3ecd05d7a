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


def build_parser() -> argparse.ArgumentParser:
    from magic141.engine import cli as engine_cli

    parser = argparse.ArgumentParser(prog="magic141", description="Extend video clips with Magic 1-For-1.")
    parser.add_argument("--version", action="version", version=f"magic141 {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    engine_cli.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from magic141.engine.errors import JobCancelled, Magic141Error

    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except JobCancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Magic141Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # the last line of defence: one clear line, traceback on request
        if os.environ.get("MAGIC141_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set MAGIC141_DEBUG=1 for details)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
