"""``magic141 install-blender-addon``: the add-on zip, bound to this Python, and its installation.

    magic141 install-blender-addon                 # zip into $MAGIC141_HOME/blender/, install, enable
    magic141 install-blender-addon --blender PATH  # ... with that Blender executable
    magic141 install-blender-addon --out ZIP       # only the zip (Edit > Preferences > Add-ons > Install...)

Installing runs Blender in the background with the user's preferences (never ``--factory-startup``,
which would save factory settings over them): ``preferences.addon_install``, ``addon_enable``,
``wm.save_userpref``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from magic141 import atomic
from magic141.errors import InvalidInput, Magic141Error

ADDON = "magic141_vse"  # the add-on's module name in Blender
ENTRY = Path(__file__).with_name("addon_entry.py")
_INSTALL = """
import bpy, addon_utils, sys
bpy.ops.preferences.addon_install(filepath={zip!r}, overwrite=True)
bpy.ops.preferences.addon_enable(module={name!r})
addon = sys.modules.get({name!r})
if addon is None or addon.problem or not addon_utils.check({name!r})[1]:
    print("MAGIC141_PROBLEM", getattr(addon, "problem", "") or "the add-on did not load")
    sys.exit(1)
bpy.ops.wm.save_userpref()
print("MAGIC141_INSTALLED", bpy.utils.user_resource("SCRIPTS", path="addons"))
"""


def site_dirs() -> list[str]:
    """Where this Python finds magic141 and its dependencies."""
    paths = sysconfig.get_paths()
    dirs = [paths["purelib"], paths["platlib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [folder for index, folder in enumerate(dirs)
            if folder not in dirs[:index] and Path(folder).is_dir()]


def entry_source(python: str = sys.executable) -> str:
    """``addon_entry.py`` with this Python's executable, version and site folders filled in."""
    text = ENTRY.read_text(encoding="utf-8")
    values = {"PYTHON": python, "PYTHON_VERSION": f"{sys.version_info.major}.{sys.version_info.minor}",
              "SITE_DIRS": site_dirs()}
    for name, value in values.items():
        line = f"{name} = {value!r}".replace("\\", "\\\\")  # a Windows path's backslashes stay literal
        text, count = re.subn(rf"^{name}(?:: [^=]+)? = .*$", line, text, count=1, flags=re.MULTILINE)
        if count != 1:
            raise Magic141Error(f"{ENTRY.name} has no line '{name} = ...' to fill in")
    return text


def build_zip(out: str | os.PathLike, python: str = sys.executable) -> Path:
    """Write the add-on zip (``magic141_vse/__init__.py``) atomically; returns its path."""
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    source = entry_source(python)
    with atomic.replacing(out) as temp, zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{ADDON}/__init__.py", source)
    return out


def install(zip_path: Path, blender: str) -> str:
    """Install and enable the zip in ``blender``'s user preferences; returns its add-ons folder."""
    try:
        script = _INSTALL.format(zip=str(zip_path), name=ADDON)
        done = subprocess.run([blender, "-b", "--python-expr", script], capture_output=True, text=True,
                              timeout=300, check=False)
    except OSError as exc:
        raise InvalidInput(f"cannot run Blender {blender}: {exc.strerror or exc}", field="blender") from exc
    for line in done.stdout.splitlines():
        if line.startswith("MAGIC141_INSTALLED "):
            return line.split(" ", 1)[1]
        if line.startswith("MAGIC141_PROBLEM "):
            raise Magic141Error(f"Blender installed the add-on but cannot load it: {line.split(' ', 1)[1]}")
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    raise Magic141Error(f"Blender {blender} did not install the add-on (exit status {done.returncode}): "
                   + " | ".join(tail))


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "install-blender-addon", help="install the Blender sequencer add-on (or write its zip with --out)",
        description="Build the Magic141 add-on for Blender's Video Sequence Editor, bound to this Python, "
                    "and install and enable it in Blender's user preferences.")
    parser.add_argument("--out", type=Path, metavar="ZIP",
                        help="only write the zip here; install it with "
                             "Edit > Preferences > Add-ons > Install...")
    parser.add_argument("--blender", metavar="PATH", help="the Blender executable (default: blender on PATH)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    if args.out is not None:
        print(build_zip(args.out))
        return 0
    blender = args.blender or shutil.which("blender")
    if blender is None:
        raise InvalidInput("no blender on PATH: name the Blender executable, or write the zip only and "
                           "install it with Edit > Preferences > Add-ons > Install...", field="blender")
    from magic141 import home

    zip_path = build_zip(home.home() / "blender" / f"{ADDON}.zip")
    folder = install(zip_path, blender)
    print(f"installed and enabled {ADDON} in {folder} (from {zip_path}); in the sequencer: View > Sidebar, "
          "tab Magic141")
    return 0
