"""Run inside Blender by tests/test_blender.py: ``blender -b --factory-startup --python THIS -- CONFIG.json``.

Builds a scene at 24000/1001 fps (24 and 1.001, as Blender's preset writes it), installs the add-on
from the zip ``magic141 install-blender-addon --out`` wrote, drives its operators as an editor
would, and writes what Blender shows as JSON. The checks live in the test, where pytest shows them.
"""

import json
import os
import shutil
import sys
import traceback
from pathlib import Path

import bpy

config = json.loads(Path(sys.argv[sys.argv.index("--") + 1]).read_text())
folder = Path(config["folder"])
seen: dict = {}


def strips(scene) -> dict:
    return {s.name: {"type": s.type, "channel": s.channel, "start": s.frame_final_start,
                     "duration": s.frame_final_duration,
                     "path": bpy.path.abspath(s.filepath) if s.type == "MOVIE" else None,
                     "media_start": s.animation_offset_start + int(s.frame_final_start - s.frame_start)
                     if s.type == "MOVIE" else None,
                     "metadata": json.loads(s["magic141"]) if "magic141" in s else None}
            for s in scene.sequence_editor.sequences}


def run(operator, **properties) -> str:
    """'FINISHED' / 'CANCELLED', or the ERROR the operator reported."""
    try:
        return min(operator(**properties))
    except RuntimeError as exc:
        return str(exc).strip()


def movie(editor, name, channel, frame_start, path=config["plate"]):
    return editor.sequences.new_movie(name, path, channel, frame_start)


def build_scene():
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 24, 1.001
    editor = scene.sequence_editor_create()
    plate = movie(editor, "Plate", 2, 1)
    plate.animation_offset_start = 1  # hold offset: media frame 1 at frame 1
    plate.frame_offset_start = 2  # trim: the strip shows frames 3 to 23, media frames 3 to 23
    movie(editor, "Later", 2, 40)  # on the same channel, after a gap: insert shifts it
    movie(editor, "Other", 3, 24)  # channel 3 is taken where the new strip would go: "above" uses 4
    editor.sequences.new_effect("Color", "COLOR", 5, frame_start=1, frame_end=10)
    gone = folder / "gone.mp4"
    shutil.copy(config["plate"], gone)
    movie(editor, "Gone", 6, 200, str(gone))
    gone.unlink()
    scene.timeline_markers.new("cut here", frame=5)
    scene.timeline_markers.new("magic141: the ball keeps rolling seconds=1/2", frame=12)
    bpy.ops.wm.save_as_mainfile(filepath=str(folder / "project.blend"))
    return scene


def install():
    bpy.ops.preferences.addon_install(filepath=config["zip"])
    bpy.ops.preferences.addon_enable(module="magic141_vse")
    seen["addon_problem"] = sys.modules["magic141_vse"].problem
    from magic141.plugin.hosts.blender import jobs

    return jobs.current()  # the extend jobs being followed: pump() runs the timer's function


def errors(scene, jobs):
    editor = scene.sequence_editor
    settings = scene.magic141
    settings.prompt, settings.seconds, settings.model = "the ball keeps rolling", "1/2", "tiny"
    found = {}
    editor.active_strip = None
    found["no_active"] = run(bpy.ops.magic141.extend_strip)
    editor.active_strip = editor.sequences["Color"]
    found["not_movie"] = run(bpy.ops.magic141.extend_strip)
    editor.active_strip = editor.sequences["Gone"]
    found["missing_media"] = run(bpy.ops.magic141.extend_strip)
    editor.active_strip = editor.sequences["Plate"]
    settings.use_playhead, scene.frame_current = True, 30
    found["outside"] = run(bpy.ops.magic141.extend_strip)
    scene.frame_current, settings.seconds = 10, "soon"
    found["bad_seconds"] = run(bpy.ops.magic141.extend_strip)
    settings.seconds = "1/2"
    # No engine: a Python that is not there, in a home where no service runs. The operator starts
    # the job; the failure arrives later, from the worker thread, through the timer's function.
    python, home = jobs.python, os.environ["MAGIC141_HOME"]
    jobs.python, os.environ["MAGIC141_HOME"] = "/nonexistent/python3", config["empty_home"]
    found["unreachable_operator"] = run(bpy.ops.magic141.extend_strip)
    jobs.pump(timeout=60)
    found["unreachable"] = jobs.history[-1][2]
    found["unreachable_status"] = bpy.context.window_manager.magic141.text
    jobs.python, os.environ["MAGIC141_HOME"] = python, home
    found["strips_unchanged"] = len(editor.sequences) == 5
    seen["errors"] = found


def extend(scene, jobs, placement, use_playhead):
    settings = scene.magic141
    settings.placement, settings.use_playhead, settings.seed = placement, use_playhead, 3
    scene.sequence_editor.active_strip = scene.sequence_editor.sequences["Plate"]
    result = run(bpy.ops.magic141.extend_strip)
    jobs.pump(timeout=240)
    seen[placement] = {"operator": result, "history": jobs.history[-1], "strips": strips(scene)}


def round_trip(scene):
    path = folder / "cut.otio"
    seen["export"] = run(bpy.ops.magic141.export_otio, filepath=str(path))
    seen["import"] = run(bpy.ops.magic141.import_otio, filepath=str(path))
    imported = next(other for other in bpy.data.scenes if other != scene)
    seen["round_trip"] = {"original": strips(scene), "imported": strips(imported),
                          "fps": [imported.render.fps, imported.render.fps_base],
                          "markers": sorted((m.name, m.frame) for m in imported.timeline_markers),
                          "frame_start": imported.frame_start, "scenes": len(bpy.data.scenes)}


try:
    scene = build_scene()
    seen["source_before"] = strips(scene)["Plate"]
    jobs = install()
    errors(scene, jobs)
    extend(scene, jobs, "insert", True)
    extend(scene, jobs, "above", False)
    round_trip(scene)
    seen["torch_imported"] = "torch" in sys.modules
except Exception:  # noqa: BLE001 (any crash goes to the report the tests read)
    seen["crash"] = traceback.format_exc()
Path(config["report"]).write_text(json.dumps(seen, indent=1, default=str))
