"""The package's shape: one import name, a stdlib-only core, and imports that flow one way.

    magic141 (core: errors, protocol, rational, atomic, home, cli_args)   stdlib only
      ^            ^              ^
    engine/      plugin/  -->   ui/          engine never imports plugin or ui; ui never imports engine
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("engine", "plugin", "ui")
ENTRY_POINTS = {"magic141.cli", "magic141.__main__"}  # they register every part's commands


def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] != "magic141":
        parts.insert(0, "magic141")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for folder in ("magic141", *PARTS):
        for path in sorted((ROOT / folder).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (lazy imports inside functions too), made absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = _modules()


def _violations(source_prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for name, path in MODULES.items():
        if name == source_prefix or name.startswith(source_prefix + "."):
            for target in sorted(_imports(name, path)):
                if any(target == f or target.startswith(f + ".") for f in forbidden):
                    bad.append(f"{name} imports {target}")
    return bad


def test_the_walk_sees_every_part():
    assert {"magic141.protocol", "magic141.engine.service", "magic141.plugin.markers", "magic141.ui.panel",
            "magic141.plugin.hosts.otio.markers_hook"} <= set(MODULES)


def test_the_engine_never_imports_the_plugin_or_the_ui():
    assert _violations("magic141.engine", ("magic141.plugin", "magic141.ui")) == []


def test_the_ui_never_imports_the_engine():
    assert _violations("magic141.ui", ("magic141.engine", "torch")) == []


def test_the_plugin_never_imports_the_ui_or_torch():
    assert _violations("magic141.plugin", ("magic141.ui", "torch")) == []


def test_the_core_imports_only_the_standard_library_and_itself():
    core = {name for name in MODULES if name.count(".") == 1 and name.split(".")[1] not in PARTS}
    assert "magic141.protocol" in core and "magic141.errors" in core
    allowed = set(sys.stdlib_module_names) | {"__future__", "platformdirs"}  # platformdirs: lazily, in home()
    bad = []
    for name in sorted(core - ENTRY_POINTS):
        for target in _imports(name, MODULES[name]):
            top = target.split(".")[0]
            if top == "magic141":
                if any(target.startswith(f"magic141.{part}") for part in PARTS):
                    bad.append(f"{name} imports {target}")
            elif top not in allowed:
                bad.append(f"{name} imports {target}")
    assert bad == []


@pytest.mark.parametrize("part", PARTS)
def test_a_part_imported_by_its_folder_name_refuses_to_load_twice(part):
    # From the repo's root `import engine` would find the folder: a second copy of every module.
    run = subprocess.run([sys.executable, "-c", f"import {part}"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0
    assert f"import magic141.{part}, not {part}" in run.stderr


@pytest.mark.slow  # imports torch and diffusers in a fresh process
def test_no_generic_top_level_name_leaks_into_a_host_python():
    def needs_bpy(name: str) -> bool:  # Blender's own modules load only inside Blender
        lines = MODULES[name].read_text().splitlines()
        return any(line.startswith(("import bpy", "from bpy")) for line in lines)

    skip = ("magic141.plugin.hosts.resolve.__main__", "magic141.__main__")  # they run on import
    names = [n for n in MODULES
             if n not in skip and not needs_bpy(n) and not n.startswith("magic141.engine.train.")]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(n for n in sys.modules if n in ('engine', 'plugin', 'ui')))\n")
    # Run outside the repo: what a host's Python sees after `pip install magic141`.
    run = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"
    assert not {"engine", "plugin", "ui"} & set(sys.modules)  # nor into this test session
