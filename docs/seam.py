"""The contact sheet of the README's main job's cut: the plate's last 6 frames over the first 6 placed
frames, with and without the colour match, and the seam's colour difference for each.

    python docs/seam.py  # writes docs/seam-contact.png and prints the figures (about a minute on CPU)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image

from magic141.engine import media, seam

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "resources" / "world_sample"
PROMPT = "a red circle moves right and bounces off the wall"


def extend(folder: Path, *flags: str) -> np.ndarray:
    out = folder / "extended.otio"
    subprocess.run([sys.executable, "-m", "magic141", "extend", str(SAMPLE / "world.otio"), "--clip", "Ball",
                    "--prompt", PROMPT, "--seconds", "1", "--out", str(out), *flags],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (made,) = (folder / "extended_magic141").glob("*.mp4")
    return media.read_frames(made)


def main() -> None:
    plate = media.read_frames(SAMPLE / "plate.mp4")
    rows = {"plate, last 6": plate[-6:]}
    step = seam.seam_score(plate[-2], plate[-1])
    print(f"the plate's own last step: CIEDE2000 {step['ciede2000']:.2f}, PSNR {step['psnr']:.2f} dB")
    with tempfile.TemporaryDirectory() as tmp:
        runs = (("placed, colour matched", ()), ("placed, --no-color-match", ("--no-color-match",)))
        for label, flags in runs:
            folder = Path(tmp) / label.replace(" ", "_").replace(",", "")
            folder.mkdir()
            frames = extend(folder, *flags)
            rows[label] = frames[:6]
            score = seam.seam_score(plate[-1], frames[0])
            print(f"{label}: {frames.shape[2]}x{frames.shape[1]}; seam CIEDE2000 {score['ciede2000']:.2f}, "
                  f"PSNR {score['psnr']:.2f} dB, mean linear colour difference "
                  f"{seam.mean_colour_difference(plate[-1], frames[0]):.4f}")
    height, width = plate.shape[1:3]
    sheet = np.full((len(rows) * (height + 4), 6 * (width + 4), 3), 255, np.uint8)
    for r, frames in enumerate(rows.values()):
        for c, frame in enumerate(seam.resize(frames, width, height)):
            top, left = r * (height + 4), c * (width + 4)
            sheet[top: top + height, left: left + width] = frame
    PIL.Image.fromarray(sheet).save(ROOT / "docs" / "seam-contact.png")
    print("rows:", "; ".join(rows))


if __name__ == "__main__":
    main()
