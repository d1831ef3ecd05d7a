"""Blender's sequencer API as it changed from 3.4 to 5.x, in one place. Runs inside Blender only.

What moved, and where each version has it (checked in Debian's Blender 3.4 and the PyPI ``bpy``
wheels 4.2, 4.5 and 5.0):

- A sequence editor's top-level strips are ``sequences`` up to 4.3, ``strips`` from 4.4 (where
  ``sequences`` is deprecated) and only ``strips`` in 5.0.
- 5.0 gives each workspace its own sequencer scene (``WorkSpace.sequencer_scene``): the scene the
  sequencer shows may not be ``context.scene``. Before 5.0 it is always the window's scene.
- A strip's speed is ``speed_factor`` in 3.3 to 3.6; from 4.0 retiming keys (``retiming_keys``)
  change it and ``speed_factor`` is gone. Retiming keys say only their timeline frame, not the media
  frame they hold, so a retimed strip cannot be mapped back to its media exactly: it is refused.
- 5.1 renames ``frame_offset_start`` / ``frame_offset_end`` (the trim) to ``handle_offset_start`` /
  ``handle_offset_end``. The add-on never uses either: it reads the trim as ``frame_final_start -
  frame_start`` and sets a strip's first media frame with ``animation_offset_start``, which every
  version has.
"""

from __future__ import annotations


def strips(editor):
    """The editor's top-level strips (not those inside meta strips)."""
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def sequencer_scene(context):
    """The scene the sequencer shows: the workspace's sequencer scene (5.0 and later), else the window's."""
    workspace = getattr(context, "workspace", None)
    return getattr(workspace, "sequencer_scene", None) or context.scene


def show_scene(context, scene) -> None:
    """Make ``scene`` the one the window and its sequencer show."""
    if context.window is not None:
        context.window.scene = scene
    workspace = getattr(context, "workspace", None)
    if workspace is not None and hasattr(workspace, "sequencer_scene"):
        workspace.sequencer_scene = scene


def speed_problem(strip) -> str:
    """Why the strip does not play at speed 1, or ""."""
    keys = getattr(strip, "retiming_keys", None)  # Blender 4.0 and later
    if keys is not None and len(keys):
        return (f"is retimed ({len(keys)} retiming keys; Strip > Retiming > Reset Retiming plays it frame "
                "for frame again)")
    speed = getattr(strip, "speed_factor", 1.0)  # Blender 3.3 to 3.6
    if abs(speed - 1.0) > 1e-6:
        return f"plays at speed {speed:g}"
    return ""

