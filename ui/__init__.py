"""PySide6 widgets. Never imports torch."""
