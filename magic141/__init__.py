"""Magic141: extend video clips with Magic 1-For-1 image-to-video.

Sub-packages:
- ``magic141.engine``: models, pipeline, media writing, CLI commands (imports torch).
- ``magic141.plugin``: timeline and host integration, engine client (never imports torch).
- ``magic141.ui``: PySide6 widgets (never imports torch).
"""

__version__ = "0.2.0"  # the one version: pyproject.toml reads it; CHANGELOG.md says what changed
