"""The generation engine: models, pipeline, media, CLI commands. Imports torch; never plugin/ or ui/."""

# This folder installs as magic141.engine. Imported as a top-level `engine` (from the repo's root, say) every
# module would load a second time, and `except magic141.errors.X` would miss the copy's errors.
if __name__ != "magic141.engine":
    raise ImportError(f"import magic141.engine, not {__name__}: this folder is part of the magic141 package")
