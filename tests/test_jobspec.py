"""Job specs: versioned JSON, exact rationals, and refusals that name the field."""

from __future__ import annotations

from fractions import Fraction

import pytest

from magic141.engine.jobspec import InvalidSpec, JobSpec

BASE = {"version": 1, "source": {"kind": "media", "path": "/plates/010.mov", "time": "1001/24"},
        "prompt": "push in", "seconds": "5/2", "fps": "24000/1001", "output_dir": "/renders"}


def test_round_trip_keeps_rationals_exact():
    spec = JobSpec.from_json(BASE)
    assert spec.source.time == Fraction(1001, 24) and spec.fps == Fraction(24000, 1001)
    assert spec.seconds == Fraction(5, 2)
    data = spec.to_json()
    assert data["fps"] == "24000/1001" and data["source"]["time"] == "1001/24" and data["version"] == 1
    assert JobSpec.from_json(data) == spec
    assert spec.output_path("abc") == "/renders/magic141_abc.mp4"


@pytest.mark.parametrize(
    "change,field",
    [
        ({"version": 2}, "version"),
        ({"prompt": "  "}, "prompt"),
        ({"seconds": "0"}, "seconds"),
        ({"seconds": 2.5}, "seconds"),  # a float is refused: rationals travel as strings
        ({"fps": "24/0"}, "fps"),
        ({"seed": -1}, "seed"),
        ({"height": 30}, "height"),
        ({"codec": "vp9"}, "codec"),
        ({"quant": "int4"}, "quant"),
        ({"output_dir": "relative/dir"}, "output_dir"),
        ({"output_name": "../escape.mp4"}, "output_name"),
        ({"source": {"kind": "image", "path": "frame.png"}}, "source.path"),
        ({"source": {"kind": "clip"}}, "source.kind"),
        ({"source": {"kind": "media", "path": "/a.mov", "time": "-1"}}, "time"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_fields_are_named(change, field):
    with pytest.raises(InvalidSpec) as error:
        JobSpec.from_json({**BASE, **change})
    assert error.value.field == field and str(error.value).startswith(f"{field}:")
