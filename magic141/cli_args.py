"""What every ``magic141`` command line shares: value types that parse exactly and errors that
read as one line. Stdlib only, so ``magic141 --help`` stays instant.

A bad value prints ``magic141 generate: --seconds: must be positive, got '0'`` and a pointer to
``--help``, never argparse's whole usage block.
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from typing import NoReturn

from .errors import InvalidInput
from .protocol import MAX_AMBIENCE_SECONDS, QUANTS
from .rational import parse_rate, parse_rational

QUANT_CHOICES = QUANTS
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (sub-commands inherit it)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _typed(flag: str, parse):
    def convert(text: str):
        try:
            return parse(text)
        except InvalidInput as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    convert.__name__ = flag  # argparse names the flag in "argument --seconds: ..."
    return convert


def _positive_seconds(text: str) -> Fraction:
    return parse_rational(text, "seconds", positive=True)


seconds = _typed("seconds", _positive_seconds)  # "2", "2.5", "5/2": exact
rate = _typed("fps", parse_rate)  # "24", "24000/1001", "29.97" (-> 30000/1001)


def _parse_seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidInput(f"must be a whole number, got {text!r}", field="seed") from None
    if not 0 <= value < 2**63:
        raise InvalidInput(f"must be between 0 and 2**63-1, got {value}", field="seed")
    return value


seed = _typed("seed", _parse_seed)


def whole(flag: str, minimum: int):
    """A whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise InvalidInput(f"must be a whole number, got {text!r}", field=flag) from None
        if value < minimum:
            raise InvalidInput(f"must be at least {minimum}, got {value}", field=flag)
        return value

    return _typed(flag, parse)


def positive(flag: str):
    """A whole number >= 1 (steps, sizes, counts)."""
    return whole(flag, 1)


def _between(field: str, low: float, high: float, unit: str = ""):
    """A number from ``low`` to ``high`` (``unit`` names it in messages)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise InvalidInput(f"must be a number from {low:g} to {high:g}{unit}, got {text!r}",
                               field=field) from None
        if not low <= value <= high:
            raise InvalidInput(f"must be from {low:g} to {high:g}{unit}, got {text}", field=field)
        return value

    return _typed(field, parse)


strength = _between("color_match", 0, 1)  # 0 (off) to 1 (full)
ambience = _between("ambience", 0, MAX_AMBIENCE_SECONDS, " seconds")  # of the source's sound, carried on
