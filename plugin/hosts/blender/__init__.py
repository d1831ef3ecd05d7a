"""Blender's Video Sequence Editor (tested with 3.4, 4.2, 4.5 and 5.0): an add-on that extends movie
strips and moves cuts to and from OpenTimelineIO.

Everything that can be tested without Blender works on plain records and never imports ``bpy``:

- ``strips``: a scene's strips as records, its exact frame rate, and where a generated strip goes.
- ``exchange``: those records to and from OTIO timelines, and a strip as the ``ClipRef`` that
  ``magic141.plugin.extend.job_spec`` turns into an engine job.
- ``probe``: a movie's exact rate and frame count (PyAV), never Blender's float.
- ``worker``: one extend job on a background thread (engine client, no ``bpy``), reporting
  through a queue that Blender's main thread drains.
- ``install``: the add-on zip and ``magic141 install-blender-addon``.

Inside Blender only: ``compat`` (the API that moved between Blender versions), ``scene`` (reads and
edits strips through ``bpy``), ``jobs`` (the timer that follows extend jobs and places their movies)
and ``addon`` (settings, operators, the sidebar panel).
``addon_entry.py`` is the zip's ``__init__.py``: it puts the Python that magic141 is installed in on
Blender's path, then registers ``addon``.

This package imports nothing at import time, so tools that walk ``magic141.plugin`` stay clear of ``bpy``.
"""
