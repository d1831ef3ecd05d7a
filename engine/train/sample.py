"""The world sample timeline shipped in ``resources/world_sample/``: a plate the world model knows.

    python -m magic141.engine.train.sample --out resources/world_sample

One shot, "Ball": a red circle rolling right over a navy-to-teal gradient for one second, rendered
at 4x the model's size (128x192; the engine fits any frame to the model's 32x48) and written with
the engine's own writer. Extending it by a second should show the ball reaching the right wall and
bouncing back, which is what the world's true continuation does (``world.WorldState.advance``).
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import opentimelineio as otio

from .. import media, world

STATE = world.WorldState(
    shape="circle", colour="red", background=("navy", "teal"), x=0.2, y=0.55, direction="right", speed=0.7
)
FRAMES = 24
SCALE = 4
PROMPT = "a red circle moves right and bounces off the wall"


def write_sample(out: Path) -> Path:
    """Write ``plate.mp4`` and ``world.otio`` into ``out``; returns the timeline's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    height = 32 * SCALE
    width = round(height * STATE.aspect)
    frames = world.render(STATE, FRAMES, height, width)
    plate = out / "plate.mp4"
    with media.VideoWriter(plate, fps=world.FPS, codec="h264", width=width, height=height) as writer:
        writer.write(frames)
    rate = float(world.FPS)
    timeline = otio.schema.Timeline(name="World sample")
    track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    timeline.tracks.append(track)
    reference = otio.schema.ExternalReference(
        target_url=plate.name,
        available_range=otio.opentime.TimeRange(
            otio.opentime.RationalTime(0, rate), otio.opentime.RationalTime(FRAMES, rate)
        ),
    )
    clip = otio.schema.Clip(
        name="Ball",
        media_reference=reference,
        source_range=otio.opentime.TimeRange(
            otio.opentime.RationalTime(0, rate), otio.opentime.RationalTime(FRAMES, rate)
        ),
    )
    clip.metadata["world"] = {
        "state": {**STATE.__dict__, "background": list(STATE.background), "aspect": str(STATE.aspect)},
        "prompt": PROMPT,
    }
    track.append(clip)
    path = out / "world.otio"
    otio.adapters.write_to_file(timeline, str(path))
    return path


def last_frame_state() -> world.WorldState:
    """The world state at the plate's last frame: where an extension starts."""
    return STATE.advance(Fraction(FRAMES - 1) / world.FPS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m magic141.engine.train.sample", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True)
    print(write_sample(parser.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
