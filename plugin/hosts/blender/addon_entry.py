"""Magic141 for Blender's Video Sequence Editor: the add-on's ``__init__.py``.

``magic141 install-blender-addon`` fills in the three lines below with the Python that magic141 is
installed in, and zips this file as ``magic141_vse/__init__.py``. At register time it puts that
Python's site-packages on Blender's path (``.pth`` files included, so editable installs work) and
registers ``magic141.plugin.hosts.blender.addon``. If that cannot work (Blender runs another Python
version, the virtual environment moved) the sidebar's Magic141 tab says why instead.
"""

bl_info = {
    "name": "Magic141",
    "author": "Magic141",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "Sequencer > Sidebar > Magic141; File > Import / Export > OpenTimelineIO [Magic141]",
    "description": "Extend movie strips with generated video; exchange cuts as OpenTimelineIO",
    "category": "Sequencer",
}

PYTHON = ""  # filled in by install: the interpreter that runs the engine service
PYTHON_VERSION = ""  # filled in by install: "3.11"; compiled packages load only in the same version
SITE_DIRS: list[str] = []  # filled in by install: where magic141 and its dependencies are installed

problem = ""  # why the add-on could not load, shown in the sidebar
_addon = None
_problem_panel = None


def _add_site_dirs():
    import site
    import sys

    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if running != PYTHON_VERSION:
        raise ImportError(f"magic141 is installed for Python {PYTHON_VERSION} ({PYTHON}) and Blender runs "
                          f"Python {running}: install magic141 into a Python {running} and run "
                          "'magic141 install-blender-addon' with it")
    before = list(sys.path)
    for folder in SITE_DIRS:
        site.addsitedir(folder)
    # Ours first: Blender's own Python may hold other versions of OTIO or PyAV.
    sys.path[:] = [entry for entry in sys.path if entry not in before] + before


def _show_problem():
    import bpy

    class SEQUENCER_PT_magic141_problem(bpy.types.Panel):
        bl_space_type = "SEQUENCE_EDITOR"
        bl_region_type = "UI"
        bl_category = "Magic141"
        bl_label = "Magic141"

        def draw(self, context):
            self.layout.label(text="Magic141 could not load:", icon="ERROR")
            for start in range(0, len(problem), 60):
                self.layout.label(text=problem[start:start + 60])

    bpy.utils.register_class(SEQUENCER_PT_magic141_problem)
    return SEQUENCER_PT_magic141_problem


def register():
    global _addon, _problem_panel, problem
    try:
        _add_site_dirs()
        from magic141.plugin.hosts.blender import addon
    except Exception as exc:  # noqa: BLE001 (ImportError, or a compiled module that cannot load: say so)
        problem = str(exc) or type(exc).__name__
        print(f"Magic141: {problem}")
        _problem_panel = _show_problem()
        return
    addon.register(python=PYTHON)
    _addon = addon


def unregister():
    global _addon, _problem_panel
    if _addon is not None:
        _addon.unregister()
        _addon = None
    if _problem_panel is not None:
        import bpy

        bpy.utils.unregister_class(_problem_panel)
        _problem_panel = None
