"""The add-on inside Blender: settings, operators, the sidebar panel and the File menu entries.

Sequencer > View > Sidebar > Magic141 tab: pick a movie strip (the active strip), a frame, a prompt,
seconds, seed and placement, and press Extend. The operator checks the choices, reporting mistakes
with ``self.report({'ERROR'}, ...)``, and hands the job to ``jobs``, which follows it with a timer
and adds the finished movie as a strip. Export to OTIO and Import OTIO are in the panel and in
File > Export / File > Import.
"""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from magic141.errors import Magic141Error, TimelineError
from magic141.plugin.extend import media_dir_for
from magic141.plugin.markers import parse_seconds
from magic141.protocol import DEFAULT_MODEL

from . import compat, exchange, jobs
from . import scene as scene_io
from .worker import ExtendRequest

# Settings ------------------------------------------------------------------------------------


class Magic141Settings(bpy.types.PropertyGroup):
    """Per scene, saved with the .blend."""

    prompt: StringProperty(name="Prompt", description="What happens next")
    seconds: StringProperty(name="Seconds", default="2",
                            description="Length of the new clip, exact: 2, 2.5 or 5/2")
    seed: IntProperty(name="Seed", min=0, default=0)
    use_playhead: BoolProperty(
        name="From Playhead", default=False,
        description="Cut at the playhead: the new strip starts there, continuing the frame before it "
                    "(off: after the strip's last frame)")
    placement: EnumProperty(name="Placement", default="insert", items=[
        ("insert", "Insert After",
         "At the cut on the strip's channel: the strip is cut there, and what follows on that channel "
         "moves right"),
        ("above", "Channel Above", "At the cut, on the first channel above that is free"),
    ])
    model: StringProperty(name="Model", default=DEFAULT_MODEL, description="world, tiny, or a model folder")
    steps: IntProperty(name="Steps", min=0, default=0, description="Sampling steps; 0: the model's default")


class Magic141Status(bpy.types.PropertyGroup):
    """Per session (on the window manager, never saved)."""

    running: BoolProperty(default=False)
    progress: FloatProperty(name="Progress", subtype="PERCENTAGE", min=0.0, max=100.0, precision=0)
    text: StringProperty(name="Status")


# Operators -----------------------------------------------------------------------------------


def _media_dir() -> Path:
    if bpy.data.filepath:
        return media_dir_for(Path(bpy.path.abspath(bpy.data.filepath)))
    from magic141 import home

    return home.home() / "outputs" / "blender"


def _cut(scene, strip) -> int:
    """Where the new strip starts: the playhead, or the strip's end; the frame before it is continued."""
    if not scene.magic141.use_playhead:
        return strip.end
    cut = scene.frame_current
    if not strip.can_cut(cut):
        raise TimelineError(f"the playhead (frame {cut}) must be inside strip {strip.name!r}, after its "
                            f"first frame: from frame {strip.start + 1} to {strip.end}")
    return cut


class MAGIC141_OT_extend_strip(bpy.types.Operator):
    """Continue the active movie strip with generated video"""

    bl_idname = "magic141.extend_strip"
    bl_label = "Extend"

    def execute(self, context):
        scene = compat.sequencer_scene(context)
        editor = scene.sequence_editor
        active = editor.active_strip if editor else None
        if active is None:
            self.report({"ERROR"}, "No active strip: click a movie strip in the sequencer first")
            return {"CANCELLED"}
        settings = scene.magic141
        try:
            strip = scene_io.top_level(scene, active)
            strip.check_movie()
            frame = _cut(scene, strip) - 1
            request = ExtendRequest(
                scene=scene.name, blend_file=bpy.data.filepath, strip=strip, frame=frame,
                prompt=settings.prompt,
                seconds=parse_seconds(settings.seconds), rate=scene_io.rate_of(scene),
                placement=settings.placement, media_dir=_media_dir(), seed=settings.seed,
                model=settings.model.strip() or DEFAULT_MODEL, steps=settings.steps or None)
        except Magic141Error as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        jobs.current().start(request)
        self.report({"INFO"}, f"Magic141: extending {strip.name!r} from frame {frame} (job {request.job_id})")
        return {"FINISHED"}


class MAGIC141_OT_cancel(bpy.types.Operator):
    """Cancel the Magic141 jobs this Blender waits for"""

    bl_idname = "magic141.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        count = jobs.current().cancel()
        self.report({"INFO"}, f"Magic141: cancelling {count} jobs" if count else "Magic141: no job runs")
        return {"FINISHED"}


class MAGIC141_OT_report(bpy.types.Operator):
    """Show a Magic141 message in the status bar and the Info log"""

    bl_idname = "magic141.report"
    bl_label = "Magic141 Message"
    bl_options = {"INTERNAL"}

    level: EnumProperty(items=[(name, name.title(), "") for name in ("INFO", "WARNING", "ERROR")])
    message: StringProperty()

    def execute(self, context):
        self.report({self.level}, f"Magic141: {self.message}")
        return {"FINISHED"}


class MAGIC141_OT_export_otio(bpy.types.Operator, ExportHelper):
    """Write the scene's sequencer strips as an OpenTimelineIO timeline"""

    bl_idname = "magic141.export_otio"
    bl_label = "Export to OTIO"
    filename_ext = ".otio"
    check_extension = None  # keep what the editor typed: .otioz and .mlt are written too
    filter_glob: StringProperty(default="*.otio;*.otioz;*.mlt", options={"HIDDEN"})

    def execute(self, context):
        try:
            cut = scene_io.read_cut(compat.sequencer_scene(context))
            saved, warnings = exchange.save(cut, self.filepath)
        except Magic141Error as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        for warning in warnings:
            self.report({"WARNING"}, warning)
        self.report({"INFO"}, f"Exported {len(cut.strips)} strips to {saved}")
        return {"FINISHED"}


class MAGIC141_OT_import_otio(bpy.types.Operator, ImportHelper):
    """Open an OpenTimelineIO timeline (or any format OTIO reads) as a new scene"""

    bl_idname = "magic141.import_otio"
    bl_label = "Import OTIO"
    filter_glob: StringProperty(default="*.otio;*.otioz;*.otiod;*.edl;*.xml;*.aaf", options={"HIDDEN"})

    def execute(self, context):
        try:
            cut, warnings = exchange.load(self.filepath)
            scene = scene_io.build_scene(cut)
        except (Magic141Error, RuntimeError) as exc:  # RuntimeError: Blender refused a movie
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        compat.show_scene(context, scene)
        for warning in warnings:
            self.report({"WARNING"}, warning)
        self.report({"INFO"}, f"Imported {len(cut.strips)} strips into scene {scene.name!r}")
        return {"FINISHED"}


# The panel and menus -------------------------------------------------------------------------


class SEQUENCER_PT_magic141(bpy.types.Panel):
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "Magic141"
    bl_label = "Magic141"

    def draw(self, context):
        layout = self.layout
        scene = compat.sequencer_scene(context)
        settings = scene.magic141
        status = context.window_manager.magic141
        editor = scene.sequence_editor
        active = editor.active_strip if editor else None
        box = layout.box()
        if active is None:
            box.label(text="No active strip", icon="ERROR")
        else:
            strip = scene_io.strip_record(active)
            box.label(text=strip.name, icon="SEQUENCE")
            box.label(text=f"Channel {strip.channel}, frames {strip.start} to {strip.end - 1}")
            cut = scene.frame_current if settings.use_playhead else strip.end
            if strip.can_cut(cut):
                box.label(text=f"Cut at frame {cut}, continuing frame {cut - 1}")
            else:
                box.label(text=f"The playhead (frame {cut}) is outside the strip", icon="ERROR")
        layout.prop(settings, "use_playhead")
        layout.prop(settings, "prompt")
        layout.prop(settings, "seconds")
        layout.prop(settings, "seed")
        layout.prop(settings, "placement", expand=True)
        row = layout.row(align=True)
        row.prop(settings, "model")
        row.prop(settings, "steps")
        layout.operator(MAGIC141_OT_extend_strip.bl_idname, icon="PLAY")
        if status.running:
            bar = layout.row()
            bar.enabled = False
            bar.prop(status, "progress", slider=True)
            layout.operator(MAGIC141_OT_cancel.bl_idname, icon="CANCEL")
        if status.text:
            layout.label(text=status.text)
        layout.separator()
        row = layout.row(align=True)
        row.operator(MAGIC141_OT_export_otio.bl_idname, icon="EXPORT")
        row.operator(MAGIC141_OT_import_otio.bl_idname, icon="IMPORT")


def _export_menu(self, context):
    self.layout.operator(MAGIC141_OT_export_otio.bl_idname, text="OpenTimelineIO (.otio) [Magic141]")


def _import_menu(self, context):
    self.layout.operator(MAGIC141_OT_import_otio.bl_idname, text="OpenTimelineIO (.otio) [Magic141]")


CLASSES = (Magic141Settings, Magic141Status, MAGIC141_OT_extend_strip, MAGIC141_OT_cancel, MAGIC141_OT_report,
           MAGIC141_OT_export_otio, MAGIC141_OT_import_otio, SEQUENCER_PT_magic141)


def register(python: str | None = None) -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.magic141 = PointerProperty(type=Magic141Settings)
    bpy.types.WindowManager.magic141 = PointerProperty(type=Magic141Status)
    bpy.types.TOPBAR_MT_file_export.append(_export_menu)
    bpy.types.TOPBAR_MT_file_import.append(_import_menu)
    jobs.start(python)


def unregister() -> None:
    jobs.stop()
    bpy.types.TOPBAR_MT_file_import.remove(_import_menu)
    bpy.types.TOPBAR_MT_file_export.remove(_export_menu)
    del bpy.types.WindowManager.magic141
    del bpy.types.Scene.magic141
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
