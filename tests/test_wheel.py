"""A normal (non-editable) install works on its own: the wheel carries the world model and samples.

The wheel is built from this checkout and installed, without its dependencies, into a fresh
virtual environment whose only other packages are this one's (a path line, so no editable
finder comes along); the README's main job then runs from a folder outside the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")  # setuptools' build/ folder, outside the checkout
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, cwd=build, capture_output=True)
    (found,) = out.glob("magic141-*.whl")
    return found


def test_the_wheel_carries_the_model_and_samples(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("magic141/resources/world/model_index.json",
                     "magic141/resources/world/transformer/diffusion_pytorch_model.safetensors",
                     "magic141/resources/world_sample/world.otio",
                     "magic141/resources/world_sample/plate.mp4",
                     "magic141/plugin/hosts/otio/plugin_manifest.json", "magic141/ui/style.qss"):
        assert expected in names
    assert not any(name.split("/")[0] in ("engine", "plugin", "ui", "resources") for name in names)


def test_the_readme_main_job_runs_from_an_installed_wheel(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"

    def ask(code: str) -> str:
        return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True,
                              cwd=tmp_path).stdout.strip()

    site = Path(ask("import sysconfig; print(sysconfig.get_path('purelib'))"))
    # The wheel, unpacked as pip would, then this environment's packages behind it.
    zipfile.ZipFile(wheel).extractall(site)
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    where = ask("import magic141.engine.models as m; print(m.__file__)")
    assert where.startswith(str(site))  # the installed copy, not the checkout
    sample = ask("import importlib.resources as r; print(r.files('magic141.resources') / 'world_sample')")
    work = tmp_path / "work"
    shutil.copytree(sample, work)
    env = {**os.environ, "MAGIC141_HOME": str(tmp_path / "home")}
    run = subprocess.run(
        [python, "-m", "magic141", "extend", "world.otio", "--clip", "Ball", "--prompt",
         "a red circle moves right and bounces off the wall", "--seconds", "1", "--out", "out/extended.otio"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "landed on track" in run.stdout
    saved = json.loads((work / "out" / "extended.otio").read_text())
    assert "magic141 generated" in json.dumps(saved)
    assert list((work / "out" / "extended_magic141").glob("*.mp4"))
