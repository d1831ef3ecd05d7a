"""Time the tiny pipeline per stage on CPU and print a table.

    python bench/tiny_pipeline.py [--seconds 2] [--repeats 5]

One warm-up job (loads and first-call costs), then the median of ``--repeats`` jobs for each stage.
CPU timings vary between machines; read the share column (each stage as a fraction of the job)
rather than the absolute seconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from magic141.cli import _quiet_third_party

_quiet_third_party()  # before the engine imports diffusers/transformers

from magic141.engine.generate import Engine  # noqa: E402
from magic141.protocol import JobSpec, Source  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("encode", "condition", "denoise", "decode", "write", "total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", default="2")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    clock = time.perf_counter()
    engine = Engine.load("tiny", device="cpu")
    load = time.perf_counter() - clock
    with tempfile.TemporaryDirectory() as tmp:
        spec = JobSpec(Source("image", str(ROOT / "resources" / "samples" / "first_frame.png")),
                       "a red ball rolls to the right", tmp, seconds=Fraction(args.seconds), model="tiny")
        out = Path(tmp) / "bench.mp4"
        result = engine.generate(spec, out)  # warm-up
        runs = [engine.generate(spec, out).timings for _ in range(args.repeats)]
    median = {stage: statistics.median(run[stage] for run in runs) for stage in STAGES}
    print(f"tiny pipeline, {result.frames} frames {result.width}x{result.height}, "
          f"{result.settings['steps']} steps, {result.windows} window(s); load {load:.2f} s")
    print(f"{'stage':<10} {'median s':>9} {'share':>6}")
    for stage in STAGES:
        print(f"{stage:<10} {median[stage]:>9.4f} {median[stage] / median['total']:>6.1%}")


if __name__ == "__main__":
    main()
