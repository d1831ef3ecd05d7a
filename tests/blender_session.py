"""Run inside Blender by tests/test_blender.py: ``blender -b --factory-startup --python THIS -- CONFIG.json``,
or ``python THIS -- CONFIG.json`` with a ``bpy`` wheel (tests/blender_hosts.py).

Builds a scene at 24000/1001 fps (24 and 1.001, as Blender's preset writes it), installs the add-on
from the zip ``magic141 install-blender-addon --out`` wrote, drives its operators as an editor
would, and writes what Blender shows as JSON. The checks live in the test, where pytest shows them.

It writes scenes with each version's own API (``top``, ``trim``, ``effect`` below, not the add-on's
``compat``, which is what is tested). In Blender 5.0 and later the edit is in a scene of its own, set
as the workspace's sequencer scene, while the window's scene is another, empty one.
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
seen: dict = {"version": list(bpy.app.version)}


def top(editor):
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def strips(scene) -> dict:
    return {s.name: {"type": s.type, "channel": s.channel, "start": s.frame_final_start,
                     "duration": s.frame_final_duration,
                     "path": bpy.path.abspath(s.filepath) if s.type == "MOVIE" else None,
                     "media_start": s.animation_offset_start + int(s.frame_final_start - s.frame_start)
                     if s.type == "MOVIE" else None,
                     "metadata": json.loads(s["magic141"]) if "magic141" in s else None}
            for s in top(scene.sequence_editor)}


def run(operator, **properties) -> str:
    """'FINISHED' / 'CANCELLED', or the ERROR the operator reported."""
    try:
        return min(operator(**properties))
    except RuntimeError as exc:
        return str(exc).strip()


def movie(editor, name, channel, frame_start, path=config["plate"]):
    return top(editor).new_movie(name, path, channel, frame_start)


def trim(strip, frames):
    setattr(strip, "handle_offset_start" if hasattr(strip, "handle_offset_start") else "frame_offset_start",
            frames)  # renamed in 5.1


def effect(editor, name, kind, channel, start, end):
    parameters = top(editor).bl_rna.functions["new_effect"].parameters
    length = {"length": end - start} if "length" in parameters else {"frame_end": end}  # 5.0
    return top(editor).new_effect(name, kind, channel, frame_start=start, **length)


def retime(scene, strip):
    """Speed a strip up as an editor would: retiming keys (4.0 and later), else speed_factor."""
    if not hasattr(strip, "retiming_keys"):
        strip.speed_factor = 2.0
        seen["retimed_frames"] = strip.frame_final_duration
        return
    for other in top(scene.sequence_editor):
        other.select = other == strip  # the retiming operators act on the selected strips
    scene.sequence_editor.active_strip = strip
    bpy.ops.sequencer.retiming_key_add(timeline_frame=strip.frame_final_start + 10)
    scene.frame_current = strip.frame_final_start + 15  # in the second segment: it plays twice as fast
    bpy.ops.sequencer.retiming_segment_speed_set(speed=200.0)
    seen["retimed_frames"] = strip.frame_final_duration


def build_scene():
    scene = bpy.context.scene
    if hasattr(bpy.context.workspace, "sequencer_scene"):  # 5.0: the sequencer shows a scene of its own
        scene = bpy.data.scenes.new("Edit")
        bpy.context.workspace.sequencer_scene = scene
    scene.render.fps, scene.render.fps_base = 24, 1.001
    scene.frame_end = 30  # an extend past it moves it
    editor = scene.sequence_editor_create()
    plate = movie(editor, "Plate", 2, 1)
    plate.animation_offset_start = 1  # hold offset: media frame 1 at frame 1
    trim(plate, 2)  # the strip shows frames 3 to 23, media frames 3 to 23
    movie(editor, "Later", 2, 40)  # on the same channel, after a gap: insert shifts it
    movie(editor, "Other", 3, 24)  # channel 3 is taken where the new strip would go: "above" uses 4
    effect(editor, "Color", "COLOR", 5, 1, 10)
    retime(scene, movie(editor, "Fast", 7, 300))
    gone = folder / "gone.mp4"
    shutil.copy(config["plate"], gone)
    movie(editor, "Gone", 6, 200, str(gone))
    gone.unlink()
    scene.timeline_markers.new("cut here", frame=5)
    scene.timeline_markers.new("magic141: the ball keeps rolling seconds=1/2", frame=6)
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
    editor.active_strip = top(editor)["Color"]
    found["not_movie"] = run(bpy.ops.magic141.extend_strip)
    editor.active_strip = top(editor)["Gone"]
    found["missing_media"] = run(bpy.ops.magic141.extend_strip)
    editor.active_strip = top(editor)["Plate"]
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
    editor.active_strip = top(editor)["Fast"]
    settings.use_playhead = False
    found["retimed"] = run(bpy.ops.magic141.extend_strip)
    found["strips_unchanged"] = len(top(editor)) == 6
    top(editor).remove(top(editor)["Fast"])  # it would come back from OTIO at speed 1
    seen["errors"] = found


def extend(scene, jobs, label, placement, playhead=None):
    """Extend "Plate" from the playhead at ``playhead`` (None: from its end)."""
    settings = scene.magic141
    settings.placement, settings.use_playhead, settings.seed = placement, playhead is not None, 3
    scene.frame_current = playhead or 1
    scene.sequence_editor.active_strip = top(scene.sequence_editor)["Plate"]
    result = run(bpy.ops.magic141.extend_strip)
    jobs.pump(timeout=240)
    seen[label] = {"operator": result, "history": jobs.history[-1], "strips": strips(scene),
                   "frame_end": scene.frame_end}


def round_trip(scene):
    path = folder / "cut.otio"
    before = set(bpy.data.scenes)
    seen["export"] = run(bpy.ops.magic141.export_otio, filepath=str(path))
    seen["import"] = run(bpy.ops.magic141.import_otio, filepath=str(path))
    (imported,) = set(bpy.data.scenes) - before
    workspace = bpy.context.workspace
    seen["round_trip"] = {"original": strips(scene), "imported": strips(imported),
                          "fps": [imported.render.fps, imported.render.fps_base],
                          "markers": sorted((m.name, m.frame) for m in imported.timeline_markers),
                          "frame_start": imported.frame_start, "frame_end": imported.frame_end,
                          "shown": getattr(workspace, "sequencer_scene", imported).name == imported.name}


try:
    scene = build_scene()
    seen["source_before"] = strips(scene)["Plate"]
    seen["window_scene"] = bpy.context.scene.name
    seen["edit_scene"] = scene.name
    jobs = install()
    errors(scene, jobs)
    seen["before_extend"] = strips(scene)
    extend(scene, jobs, "above_playhead", "above", playhead=13)
    extend(scene, jobs, "insert_end", "insert")
    extend(scene, jobs, "insert_playhead", "insert", playhead=10)
    round_trip(scene)
    seen["torch_imported"] = "torch" in sys.modules
except Exception:  # noqa: BLE001 (any crash goes to the report the tests read)
    seen["crash"] = traceback.format_exc()
Path(config["report"]).write_text(json.dumps(seen, indent=1, default=str))
