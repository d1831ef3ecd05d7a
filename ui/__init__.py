"""PySide6 widgets. Never imports torch, nor magic141.engine."""

# This folder installs as magic141.ui. Imported as a top-level `ui` (from the repo's root, say) every
# module would load a second time, and `except magic141.errors.X` would miss the copy's errors.
if __name__ != "magic141.ui":
    raise ImportError(f"import magic141.ui, not {__name__}: this folder is part of the magic141 package")
