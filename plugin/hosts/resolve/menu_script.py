"""Magic141 for DaVinci Resolve: Workspace > Scripts > Magic141 Panel (or Magic141 Markers).

A template: ``python -m magic141.plugin.hosts.resolve install`` writes one copy per action
("Magic141 Panel.py", "Magic141 Markers.py"; Resolve names menu items after files) with the three
settings below filled in. It runs inside the Python Resolve finds (3.6 or later: no
``capture_output``/``text`` in subprocess), so it uses the standard library and Resolve's API only
(it cannot import magic141); the work happens in Magic141's Python (``bridge.py``), which this
script calls and which answers with a plan of API calls (``bridge.PLAN_VERSION``).

1. export the current timeline as OTIO (``Timeline.Export``; Resolve 18.5 or later),
2. run the bridge: the panel opens on it (or the ``magic141:`` markers are rendered), and it
   writes the plan,
3. follow the plan: import the edited timeline as a new one, or add the new clips on video tracks
   above the current ones (``MediaPool.ImportMedia`` + ``AppendToTimeline`` with ``recordFrame``).

Works in the free DaVinci Resolve up to 21.0 (a script started from the Workspace > Scripts menu is
internal scripting) and in Resolve Studio; from 21.1 Python scripting is a Studio feature, and the free
version goes by hand (the README). Running Resolve scripts from outside the application (a terminal,
another program) needs Resolve Studio with Preferences > System > General > External scripting using:
Local.
Messages go to Workspace > Console.
"""

import json
import os
import subprocess
import sys
import tempfile

MAGIC141_PYTHON = None  # the Python where magic141 is installed (filled in by install)
ACTION = "panel"  # "panel": edit in the Magic141 panel; "markers": render the magic141: markers
MODE = "append"  # "append": new clips onto this timeline; "import": the edited timeline as a new one


class ScriptError(Exception):
    """Something the editor must fix; printed as one line in Resolve's console."""


def resolve_app():
    app = globals().get("resolve")  # Resolve defines it for scripts started from its menu
    if app is not None:
        return app
    fusion_bmd = globals().get("bmd")
    if fusion_bmd is not None:
        return fusion_bmd.scriptapp("Resolve")
    try:
        import DaVinciResolveScript  # external scripting (Resolve Studio)
    except ImportError:
        return None
    return DaVinciResolveScript.scriptapp("Resolve")


def clean_environment():
    """Resolve's PYTHONHOME/PYTHONPATH describe its Python, and would break Magic141's."""
    env = dict(os.environ)
    for name in ("PYTHONHOME", "PYTHONPATH"):
        env.pop(name, None)
    return env


def run_bridge(exported, plan_path):
    if not MAGIC141_PYTHON:
        raise ScriptError("this script is not installed: run  "
                          "python -m magic141.plugin.hosts.resolve install")
    command = [MAGIC141_PYTHON, "-m", "magic141.plugin.hosts.resolve", "edit", exported, "--plan", plan_path,
               "--action", ACTION, "--mode", MODE]
    done = subprocess.run(command, env=clean_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,  # noqa: UP022
                          universal_newlines=True, check=False)  # noqa: UP021 (Python 3.6)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise ScriptError(lines[-1] if lines else f"magic141 exited with status {done.returncode}")
    with open(plan_path) as handle:
        return json.load(handle)


def apply_plan(project, timeline, plan):
    """Follow the bridge's plan with Resolve's API; returns what was done, in words."""
    media_pool = project.GetMediaPool()
    if plan["mode"] == "import":
        options = {"timelineName": plan["timeline_name"]}
        imported = media_pool.ImportTimelineFromFile(plan["timeline"], options)
        if not imported:
            raise ScriptError(f"Resolve could not import {plan['timeline']}")
        project.SetCurrentTimeline(imported)
        return f"imported the edited timeline as {plan['timeline_name']!r}"
    if not plan["clips"]:
        return "no new clips"
    first = timeline.GetTrackCount("video")
    for _ in range(plan["lanes"]):
        if not timeline.AddTrack("video"):
            raise ScriptError("Resolve could not add a video track")
    for clip in plan["clips"]:
        items = media_pool.ImportMedia([clip["path"]])
        if not items:
            raise ScriptError(f"Resolve could not import {clip['path']}")
        # startFrame/endFrame are the first and last frame of the media used (inclusive).
        placed = media_pool.AppendToTimeline([{
            "mediaPoolItem": items[0], "startFrame": 0, "endFrame": clip["frames"] - 1, "mediaType": 1,
            "trackIndex": first + clip["lane"], "recordFrame": clip["record_frame"],
        }])
        if not placed:
            raise ScriptError(f"Resolve could not place {clip['name']} at frame {clip['record_frame']}")
    return f"added {len(plan['clips'])} clips on {plan['lanes']} new video tracks"


def main():
    app = resolve_app()
    if app is None:
        raise ScriptError("run this from DaVinci Resolve's Workspace > Scripts menu")
    project = app.GetProjectManager().GetCurrentProject()
    timeline = project.GetCurrentTimeline() if project else None
    if timeline is None:
        raise ScriptError("open a timeline first")
    work = tempfile.mkdtemp(prefix="magic141-resolve-")
    exported = os.path.join(work, "exported.otio")
    if not timeline.Export(exported, app.EXPORT_OTIO, app.EXPORT_NONE):
        raise ScriptError("Resolve could not export the timeline as OTIO (this needs Resolve 18.5 or later)")
    plan = run_bridge(exported, os.path.join(work, "plan.json"))
    print("Magic141: " + apply_plan(project, timeline, plan))


if not globals().get("__package__"):  # run by Resolve (or as a file), not imported by the tests
    try:
        main()
    except ScriptError as exc:
        print("Magic141: " + str(exc))
        sys.stdout.flush()
