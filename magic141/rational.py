"""Exact time: rates and durations as ``Fraction``, written as text such as "24000/1001". Stdlib only.

A float rate never crosses a boundary: what a user types (``29.97``), what OTIO stores
(``23.976023976023978``) and what a file says all come back to the exact rate they stand for.
"""

from __future__ import annotations

from fractions import Fraction

from .errors import InvalidInput

MAX_FPS = 1000
# Drop-frame-era decimals people type, mapped to the rates they mean.
NTSC_DECIMALS = {
    "23.976": Fraction(24000, 1001),
    "23.98": Fraction(24000, 1001),
    "29.97": Fraction(30000, 1001),
    "47.952": Fraction(48000, 1001),
    "59.94": Fraction(60000, 1001),
    "119.88": Fraction(120000, 1001),
}
# Rates whose float form must map back to an exact NTSC fraction.
_NTSC = tuple(Fraction(n * 1000, 1001) for n in (24, 30, 48, 60, 120))


def rational_text(value: Fraction | int) -> str:
    """``Fraction(24000, 1001)`` -> "24000/1001", ``Fraction(24)`` -> "24": what every JSON we write holds."""
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def parse_rational(raw: object, field: str, *, minimum: Fraction | int | None = None,
                   positive: bool = False) -> Fraction:
    """An exact number from text or an int ("5", "5/2", "2.5", 3); ``field`` names it in the error.

    Floats are refused: 23.976 as a float is not the rate anyone meant, so it must arrive as text.
    """
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise InvalidInput(f'must be an exact number written as text such as "24000/1001", got {raw!r}',
                           field=field)
    try:
        value = Fraction(str(raw).strip())
    except (ValueError, ZeroDivisionError):
        raise InvalidInput(f"is not a number: {raw!r}", field=field) from None
    if positive and value <= 0:
        raise InvalidInput(f"must be positive, got {raw!r}", field=field)
    if minimum is not None and value < minimum:
        raise InvalidInput(f"must be at least {rational_text(Fraction(minimum))}, got {raw!r}", field=field)
    return value


def parse_rate(raw: object, field: str = "fps") -> Fraction:
    """'24', '25', '24000/1001', '29.97' (-> 30000/1001), '12.5' -> an exact rate, 0 < rate <= 1000."""
    text = str(raw).strip() if isinstance(raw, (str, int)) and not isinstance(raw, bool) else raw
    if isinstance(text, str) and text in NTSC_DECIMALS:
        return NTSC_DECIMALS[text]
    try:
        rate = parse_rational(text, field, positive=True)
    except InvalidInput:
        raise InvalidInput(f"must be a rate such as 24, 25, 24000/1001 or 29.97, got {raw!r}",
                           field=field) from None
    if rate > MAX_FPS:
        raise InvalidInput(f"must be at most {MAX_FPS}, got {raw!r}", field=field)
    return rate


def rate_from_float(rate: float, field: str = "rate") -> Fraction:
    """A float rate (OTIO's) as the exact rate it stands for: 23.976023976023978 -> 24000/1001."""
    if not rate or rate <= 0:
        raise InvalidInput(f"frame rate must be positive, got {rate!r}", field=field)
    for exact in _NTSC:
        if abs(float(exact) - rate) < 1e-6:
            return exact
    return Fraction(rate).limit_denominator(1001)


def frame_count(seconds: Fraction, fps: Fraction) -> int:
    """round(seconds * fps), exactly; at least one frame."""
    if seconds <= 0:
        raise InvalidInput(f"must be positive, got {rational_text(seconds)}", field="seconds")
    count = round(Fraction(seconds) * Fraction(fps))
    if count < 1:
        raise InvalidInput(f"{rational_text(seconds)} s at {rational_text(fps)} fps is less than one frame",
                           field="seconds")
    return count
