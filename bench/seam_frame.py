"""Which generated frame goes first on the timeline after the source frame: measured on the world model.

    python bench/seam_frame.py [--clips 48]

An image-to-video model's first frame reproduces its conditioning frame (the source frame), so placing
it holds the source's instant for one more frame. The other choice starts from the model's next frame.
For held-out world clips (the truth known), this prints where the ball is in the first placed frame
against where it truly is one frame after the source frame, for both choices, and the same over a
whole clip conformed from the model's 24 fps to 30000/1001 (drop the first native frame, or place the
frame at each next timeline instant). Paired differences with their standard errors; positive means
the second choice is closer to the truth. About 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import PIL.Image

from magic141.cli import _quiet_third_party

_quiet_third_party()  # before the engine imports diffusers/transformers

from magic141.engine import media, world  # noqa: E402
from magic141.engine.generate import Engine  # noqa: E402
from magic141.engine.scores import psnr  # noqa: E402
from magic141.protocol import JobSpec, Source  # noqa: E402

HEIGHT, WIDTH = 32, 48  # the world model's native size: no resize in the way of the positions


def _clips(engine: Engine, tmp: Path, count: int, seed: int, frames: int):
    """Yield (state, true frames, generated frames) for ``count`` held-out clips whose ball is tracked."""
    rng = np.random.default_rng(seed)
    made = 0
    while made < count:
        state = world.sample_state(rng, clear=0.5)
        truth = world.render(state, frames, HEIGHT, WIDTH)
        PIL.Image.fromarray(truth[0]).save(tmp / "first.png")
        spec = JobSpec(source=Source("image", str(tmp / "first.png")), prompt=world.caption(state, 1.0),
                       seconds=Fraction(frames, 24), fps=Fraction(24), seed=made, output_dir=str(tmp),
                       output_name="out.mp4")
        engine.generate(spec, tmp / "out.mp4")
        generated = media.read_frames(tmp / "out.mp4")
        if np.isnan(world.track(generated, world.background(state, HEIGHT, WIDTH)).centres).any():
            continue  # the tracker lost the ball: no position to compare
        made += 1
        yield state, truth, generated


def _paired(name: str, a: list[float], b: list[float], unit: str, labels=("keep", "drop")) -> None:
    d = np.asarray(a) - np.asarray(b)
    print(f"{name}: {labels[0]} {np.mean(a):.3f}, {labels[1]} {np.mean(b):.3f} {unit}; "
          f"paired {labels[0]} - {labels[1]} {d.mean():+.3f} +- {d.std(ddof=1) / np.sqrt(len(d)):.3f} (SE)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=48)
    args = parser.parse_args()
    engine = Engine.load("world", device="cpu")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        keep_px, drop_px, keep_db, drop_db = [], [], [], []
        for state, truth, generated in _clips(engine, tmp, args.clips, seed=7, frames=26):
            centres = world.track(generated, world.background(state, HEIGHT, WIDTH)).centres
            true_next = world.track(truth[:2], world.background(state, HEIGHT, WIDTH)).centres[1]
            keep_px.append(float(np.linalg.norm(centres[0] - true_next)))
            drop_px.append(float(np.linalg.norm(centres[1] - true_next)))
            keep_db.append(psnr(generated[0], truth[1]))
            drop_db.append(psnr(generated[1], truth[1]))
        print(f"{len(keep_px)} held-out clips at {WIDTH}x{HEIGHT}, 24 fps; "
              "first placed frame against the true next frame")
        _paired("ball position error", keep_px, drop_px, "px")
        _paired("PSNR (higher is closer)", keep_db, drop_db, "dB")

        rate, placed = Fraction(30000, 1001), 24
        native = Fraction(24)
        drop_native, next_instant = [], []
        for state, _, generated in _clips(engine, tmp, args.clips * 2 // 3, seed=11, frames=26):
            centres = world.track(generated, world.background(state, HEIGHT, WIDTH)).centres
            truth = world.centres_px(state, placed + 1, HEIGHT, fps=rate)[1:]  # at (i + 1) / rate
            # drop the first native frame, then conform; or sample at the next timeline instants
            first = [1 + int(i * native / rate + Fraction(1, 2)) for i in range(placed)]
            after = [int((i + 1) * native / rate + Fraction(1, 2)) for i in range(placed)]
            drop_native.append(float(np.linalg.norm(centres[first] - truth, axis=1).mean()))
            next_instant.append(float(np.linalg.norm(centres[after] - truth, axis=1).mean()))
        print(f"{len(drop_native)} clips conformed from 24 fps to 30000/1001, {placed} placed frames each:")
        _paired("mean ball position error", drop_native, next_instant, "px",
                labels=("drop first native frame", "next timeline instant"))


if __name__ == "__main__":
    main()
