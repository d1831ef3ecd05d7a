"""The Blenders the add-on is tested in: Debian's ``blender`` (3.4) and the PyPI ``bpy`` wheels.

Each wheel is Blender as a Python module, for CPython 3.11 only, and one version per environment:
``python tests/blender_hosts.py install`` (run by .ci/run) makes ``.bpy/VERSION/`` beside the
project for each version below, all at once (about 370 MB each, from pip's cache after the first
time; about 1 minute). A version whose wheel cannot be installed here gets ``.bpy/VERSION.skip``
saying why, and its tests skip with that reason (fail when ``MAGIC141_REQUIRE_BLENDER`` is set).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

BPY_VERSIONS = ("4.2.23", "4.5.15", "5.0.1")  # the LTS lines 4.2 and 4.5, and 5.0
FOLDER = Path(__file__).resolve().parents[1] / ".bpy"


def python(version: str) -> Path:
    return FOLDER / version / "bin" / "python"


def _installed(version: str) -> bool:
    if not python(version).is_file():
        return False
    done = subprocess.run([str(python(version)), "-c", "import bpy; print(bpy.app.version_string)"],
                          capture_output=True, text=True, timeout=120, check=False)
    return done.returncode == 0 and done.stdout.split()[:1] == [version]


def command(host: str) -> tuple[list[str] | None, str]:
    """How to run a Python script in ``host`` ("debian" or a bpy version), or None and why not."""
    if host == "debian":
        path = shutil.which("blender")
        if path is None:
            return None, "blender is not installed (apt-get install blender)"
        return [path, "-b", "--factory-startup", "--python"], ""
    skip = FOLDER / f"{host}.skip"
    if skip.is_file():
        return None, f"bpy {host}: {skip.read_text().strip()}"
    if not python(host).is_file():
        return None, f"bpy {host} is not installed (python tests/blender_hosts.py install)"
    return [str(python(host))], ""


def install() -> int:
    """Install every missing version at once; returns the number that failed."""
    FOLDER.mkdir(exist_ok=True)
    running = {}
    for version in BPY_VERSIONS:
        (FOLDER / f"{version}.skip").unlink(missing_ok=True)
        if _installed(version):
            continue
        shutil.rmtree(FOLDER / version, ignore_errors=True)
        pip = [str(python(version)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        script = shlex.join([sys.executable, "-m", "venv", str(FOLDER / version)]) + " && " + shlex.join(
            [*pip, f"bpy=={version}"])
        running[version] = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)
    failed = 0
    for version, process in running.items():
        output, _ = process.communicate()
        if process.returncode == 0 and _installed(version):
            print(f"bpy {version}: installed in {FOLDER / version}")
            continue
        failed += 1
        lines = [line for line in output.splitlines() if line.strip() and "WARNING" not in line]
        reason = lines[-1] if lines else f"pip exited with status {process.returncode}"
        (FOLDER / f"{version}.skip").write_text(f"the wheel cannot be installed here: {reason}\n")
        print(f"bpy {version}: not installed: {reason}")
    return failed


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python tests/blender_hosts.py install")
    install()
