"""The tested half of the DaVinci Resolve bridge: runs in Magic141's Python, never inside Resolve.

The script in Resolve's Scripts menu (``menu_script.py``, stdlib only) exports the current timeline
as OTIO and calls ``python -m magic141.plugin.hosts.resolve edit EXPORTED --plan PLAN.json``.
This module copies the timeline into a persistent work folder, lets the editor work on it (the
panel, or the ``magic141:`` markers through the render queue), and writes a *plan*: plain JSON
the Resolve script follows with a handful of API calls::

    {"version": PLAN_VERSION, "mode": "append" | "import",
     "timeline": "/.../timeline.otio", "timeline_name": "Cut 3 magic141", "rate": "24000/1001",
     "lanes": 1,
     "clips": [{"name", "path", "frames", "record_frame", "lane", "job_id"}, ...]}

``import`` brings the edited timeline in as a new timeline (``ImportTimelineFromFile``), ripple
edits included. ``append`` leaves the current timeline's cut alone and lays each new clip on video
tracks added above the existing ones (lane 1 = the first new track), starting at the frame where
its source clip ends (``MediaPool.AppendToTimeline`` with ``recordFrame``).

Traps avoided:
- The panel or the queue may have *inserted* clips, rippling later items on that track: a new
  clip's start in the edited timeline is not its place in Resolve's timeline. Each new clip is
  placed where the original item it follows ends *in the exported timeline* (plus the new clips
  chained before it). That item is found on the matching track by what it is (kind, name, media,
  source out-point; the n-th of identical ones), not by index: an overwrite trims, splits and
  removes items after its edit point, and a trimmed item keeps its out-point.
- Resolve's record frames count from the timeline's start timecode (01:00:00:00 is frame 86400 at
  24 fps): the exported ``global_start_time`` is added.
- New clips that overlap in time go to different lanes, so none hides another.
- Media goes next to the work copy under ``$MAGIC141_HOME/resolve/``, not a temporary folder that
  the system may clean while Resolve still links to it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import opentimelineio as otio

from magic141 import atomic
from magic141.errors import InvalidInput, Magic141Error, TimelineError
from magic141.plugin import timeline as tl
from magic141.protocol import DEFAULT_MODEL
from magic141.rational import rate_from_float, rational_text

# The plan's format; its reader (menu_script.py) runs in Resolve's own Python, which cannot import
# magic141, so the constant lives with its writer.
PLAN_VERSION = 1
MODES = ("append", "import")
ACTIONS = ("panel", "markers")
SCRIPT = Path(__file__).with_name("menu_script.py")


def _job_id(item) -> str | None:
    made = item.metadata.get(tl.NAMESPACE) if isinstance(item, otio.schema.Clip) else None
    if made is None or not hasattr(made, "get") or not made.get("job_id"):
        return None
    return str(made.get("job_id"))


def _job_ids(doc: tl.TimelineDoc) -> set[str]:
    return {ident for clip in doc.timeline.find_clips() if (ident := _job_id(clip))}


def _frames(time: otio.opentime.RationalTime, rate: Fraction) -> int:
    return round(Fraction(time.value) / rate_from_float(time.rate) * rate)


def _is_new_track(track: otio.schema.Track, new: set[str]) -> bool:
    """A track the edit added: only gaps and new clips (the ``newtrack`` mode's ``magic141 N``)."""
    items = [item for item in track if not isinstance(item, otio.schema.Gap)]
    return bool(items) and all(_job_id(item) in new for item in items)


def plan(exported: tl.TimelineDoc, edited: tl.TimelineDoc, mode: str = "append") -> dict:
    """What Resolve must do to show the clips ``edited`` has and ``exported`` lacks."""
    if mode not in MODES:
        raise InvalidInput(f"must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
    rate = exported.rate
    new = _job_ids(edited) - _job_ids(exported)
    start = exported.timeline.global_start_time
    origin = _frames(start, rate) if start is not None else 0
    original_tracks = list(exported.timeline.video_tracks())
    edited_tracks = [t for t in edited.timeline.video_tracks() if not _is_new_track(t, new)]
    if new and len(edited_tracks) != len(original_tracks):
        raise TimelineError(f"the edited timeline has {len(edited_tracks)} of the original video tracks, "
                            f"the exported one {len(original_tracks)}: bring it back with import instead")
    matching = dict(zip((id(t) for t in edited_tracks), original_tracks, strict=True))
    clips = []
    for track in edited.timeline.video_tracks():
        original = matching.get(id(track))
        previous = None  # the last original item seen on this track
        seen: dict[tuple, int] = {}  # identity -> how many such items so far
        chained = 0  # frames of new clips since that item
        for item in track:
            if isinstance(item, otio.schema.Transition):
                continue
            ident = _job_id(item)
            if ident not in new:
                key = _identity(item)
                seen[key] = seen.get(key, 0) + 1
                previous, chained = (key, seen[key]), 0
                continue
            frames = _frames(item.trimmed_range().duration, rate)
            if original is None:  # on a track of its own: nothing rippled it
                at = _frames(item.range_in_parent().start_time, rate)
            elif previous is None:
                at = chained
            else:
                at = _frames(_find(original, *previous, item.name).range_in_parent().end_time_exclusive(),
                             rate) + chained
            clips.append({"name": item.name, "path": str(_media(edited, item)), "frames": frames,
                          "record_frame": origin + at, "job_id": ident})
            chained += frames
    lanes: list[int] = []  # end frame of the last clip on each lane
    for clip in sorted(clips, key=lambda c: c["record_frame"]):
        lane = next((n for n, end in enumerate(lanes) if end <= clip["record_frame"]), len(lanes))
        if lane == len(lanes):
            lanes.append(0)
        lanes[lane] = clip["record_frame"] + clip["frames"]
        clip["lane"] = lane + 1
    return {"version": PLAN_VERSION, "mode": mode, "timeline": str(edited.path),
            "timeline_name": f"{exported.timeline.name or edited.path.stem} magic141",
            "rate": rational_text(rate), "lanes": len(lanes), "clips": clips}


def _identity(item) -> tuple:
    reference = getattr(item, "media_reference", None)
    # The file's name, not its URL: the work copy was saved elsewhere, so relative URLs were rebased.
    url = PurePosixPath(unquote(urlsplit(getattr(reference, "target_url", "") or "").path)).name
    # The source *out* point: an overwrite trims the heads of the items after its edit point, and
    # what is left of one still ends where it did.
    end = item.trimmed_range().end_time_exclusive() if isinstance(item, otio.schema.Clip) else None
    out_point = None if end is None else str(Fraction(end.value) / Fraction(end.rate))
    return (type(item).__name__, item.name, url, out_point)


def _find(track: otio.schema.Track, key: tuple, nth: int, before: str):
    count = 0
    for item in track:
        if not isinstance(item, otio.schema.Transition) and _identity(item) == key:
            count += 1
            if count == nth:
                return item
    raise TimelineError(f"cannot find the item before new clip {before!r} in the exported timeline "
                             "(bring it back with import instead)")


def _media(doc: tl.TimelineDoc, clip: otio.schema.Clip) -> Path:
    for ref in tl.video_clips(doc):
        if ref.clip is clip:
            if ref.media_path is None:
                raise TimelineError(f"new clip {clip.name!r} has no media file")
            return ref.media_path.resolve()
    raise TimelineError(f"new clip {clip.name!r} is not on a video track")


def write_plan(data: dict, path: Path) -> Path:
    return atomic.write_json(path, data, indent=2)


def work_copy(exported: Path, root: Path) -> Path:
    """Save the exported timeline into a new ``root/<name>-<time>-<random>/`` (media URLs rebased)."""
    doc = tl.open_timeline(exported)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", doc.timeline.name or exported.stem).strip("._") or "timeline"
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-{stamp}-", dir=root))  # two runs in a second: two folders
    return tl.save_timeline(doc, folder / "timeline.otio")


def edit(exported: Path, plan_path: Path, *, action: str, mode: str, home: str | None = None,
         seconds: Fraction = Fraction(5), model: str = DEFAULT_MODEL) -> dict:
    """Copy the exported timeline, let the editor work on it, write and return the plan."""
    from magic141 import home as home_dir

    if action not in ACTIONS:
        raise InvalidInput(f"must be one of {', '.join(ACTIONS)}, got {action!r}", field="action")
    root = home_dir.home(home) / "resolve"
    edited = work_copy(Path(exported), root)
    if action == "markers":
        from magic141.plugin.client import EngineClient
        from magic141.plugin.markers import queue_from_timeline

        report = queue_from_timeline(edited, lambda: EngineClient(home).connect(), apply=True,
                                     seconds=seconds, model=model,
                                     say=lambda line: print(line, file=sys.stderr))
        if report.failed:
            print(f"{len(report.failed)} jobs failed; the others are placed", file=sys.stderr)
    else:
        import subprocess

        command = [sys.executable, "-m", "magic141.ui.app", str(edited)] + (["--home", home] if home else [])
        closed = subprocess.run(command, check=False)  # the editor saves (or not) and closes the panel
        if closed.returncode != 0:
            raise Magic141Error(f"the panel exited with status {closed.returncode}; Resolve's timeline is "
                                     f"unchanged (the work copy is {edited})")
    data = plan(tl.open_timeline(Path(exported)), tl.open_timeline(edited), mode)
    write_plan(data, plan_path)
    return data


# Installing the Resolve script ----------------------------------------------------------------


def scripts_folder() -> Path:
    """Resolve's per-user ``Fusion/Scripts/Utility`` folder (its Workspace > Scripts menu)."""
    if sys.platform == "darwin":
        base = Path.home() / "Library/Application Support/Blackmagic Design/DaVinci Resolve"
    elif sys.platform == "win32":
        roaming = Path(os.environ.get("APPDATA", Path.home() / "AppData/Roaming"))
        base = roaming / "Blackmagic Design/DaVinci Resolve/Support"
    else:
        base = Path.home() / ".local/share/DaVinciResolve"
    return base / "Fusion" / "Scripts" / "Utility"


def install(folder: Path | None = None, *, python: str = sys.executable, mode: str = "append") -> list[Path]:
    """Write ``Magic141 Panel.py`` and ``Magic141 Markers.py`` into Resolve's scripts folder, each
    pointing at this Python (where magic141 is installed)."""
    if mode not in MODES:
        raise InvalidInput(f"must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
    folder = Path(folder) if folder is not None else scripts_folder()
    folder.mkdir(parents=True, exist_ok=True)
    source = SCRIPT.read_text(encoding="utf-8")
    written = []
    for action in ACTIONS:
        text = source
        for name, value in (("MAGIC141_PYTHON", python), ("ACTION", action), ("MODE", mode)):
            text, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", text, count=1, flags=re.MULTILINE)
            if count != 1:
                raise Magic141Error(f"{SCRIPT.name} has no line '{name} = ...' to fill in")
        written.append(atomic.write_text(folder / f"Magic141 {action.capitalize()}.py", text))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m magic141.plugin.hosts.resolve",
                                     description="Magic141's DaVinci Resolve bridge.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("edit", help="edit an exported timeline and write the plan for Resolve")
    run.add_argument("exported", type=Path)
    run.add_argument("--plan", type=Path, required=True)
    run.add_argument("--action", choices=ACTIONS, default="panel")
    run.add_argument("--mode", choices=MODES, default="append")
    run.add_argument("--home")
    setup = commands.add_parser("install", help="put the scripts into Resolve's Workspace > Scripts menu")
    setup.add_argument("--scripts-dir", type=Path, help=f"default: {scripts_folder()}")
    setup.add_argument("--mode", choices=MODES, default="append")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            for path in install(args.scripts_dir, mode=args.mode):
                print(path)
            return 0
        data = edit(args.exported, args.plan, action=args.action, mode=args.mode, home=args.home)
        print(f"{len(data['clips'])} new clips; plan written to {args.plan}")
        return 0
    except Magic141Error as exc:
        print(f"error: {exc.phrase(default='--{}')}", file=sys.stderr)
        return 2
