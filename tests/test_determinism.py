"""Same inputs, same frames: the same jobs run in separate processes decode to identical arrays.

Each process runs, through the real command line, the README's extend of the world sample (a frame
grabbed from the plate, the world model, H.264) and ``generate`` on the tiny model in H.264 at its
default size and in ProRes at 48x32 (the width where threaded swscale raced; see ``media.reformat``).
Two processes run at a time, so that they also compete for the CPU as a user's runs would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SAMPLE_IMAGE

RUNS = 5
PROMPT = "a red circle moves right and bounces off the wall"
JOBS = {  # name: the command's arguments (OUT: the run's folder)
    "extend": ["extend", str(ROOT / "resources" / "world_sample" / "world.otio"), "--clip", "Ball",
               "--prompt", PROMPT, "--seconds", "1", "--out", "OUT/extend/world.otio"],
    "h264": ["generate", "--model", "tiny", "--image", str(SAMPLE_IMAGE), "--prompt", PROMPT,
             "--seed", "3", "--seconds", "1", "--out", "OUT/tiny.mp4"],
    "prores": ["generate", "--model", "tiny", "--image", str(SAMPLE_IMAGE), "--prompt", PROMPT,
               "--seed", "3", "--seconds", "1", "--height", "32", "--width", "48", "--out", "OUT/tiny.mov"],
}
# One process runs the three jobs one after another, as three invocations of the command would.
DRIVER = """
import json, sys
from magic141.cli import main
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    if code:
        sys.exit(code)
"""


def _run(folder: Path, home: Path) -> subprocess.CompletedProcess:
    (folder / "extend").mkdir(parents=True)
    argvs = [[a.replace("OUT", str(folder)) for a in argv] for argv in JOBS.values()]
    env = {**os.environ, "MAGIC141_HOME": str(home)}
    return subprocess.run([sys.executable, "-c", DRIVER, json.dumps(argvs)], capture_output=True, text=True,
                          env=env, timeout=600)


def _outputs(folder: Path) -> dict[str, Path]:
    made = sorted((folder / "extend" / "world_magic141").glob("*.mp4"))
    assert len(made) == 1, made
    return {"extend": made[0], "h264": folder / "tiny.mp4", "prores": folder / "tiny.mov"}


@pytest.mark.slow
def test_same_jobs_in_separate_processes_give_identical_frames(tmp_path):
    from magic141.engine import media

    folders = [tmp_path / f"run{i}" for i in range(RUNS)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda f: _run(f, tmp_path / "home"), folders))
    for folder, proc in zip(folders, done, strict=True):
        assert proc.returncode == 0, f"{folder.name}: {proc.stderr[-2000:]}"
    frames = [{name: media.read_frames(path) for name, path in _outputs(f).items()} for f in folders]
    for name in JOBS:
        reference = frames[0][name]
        assert reference.shape[0] == 24, (name, reference.shape)
        for run, other in enumerate(frames[1:], 1):
            got = other[name]
            differing = sorted({int(i) for i in np.argwhere(got != reference)[:, 0]})
            diff = int(np.abs(got.astype(int) - reference).max())
            assert not differing, f"{name}: run {run} differs from run 0 in frames {differing}, by {diff}"
