"""Timeline and host integration, and the engine client. Never imports torch, nor ui/."""

# This folder installs as magic141.plugin. Imported as a top-level `plugin` (from the repo's root, say) every
# module would load a second time, and `except magic141.errors.X` would miss the copy's errors.
if __name__ != "magic141.plugin":
    raise ImportError(f"import magic141.plugin, not {__name__}: this folder is part of the magic141 package")
