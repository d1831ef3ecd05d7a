"""``magic141-panel [TIMELINE]``: the panel in a window of its own.

The window only adds what a host would otherwise provide: a menu bar, a title that shows unsaved
changes, and a place to start. Everything else is the dockable ``Magic141Panel``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import QApplication, QMainWindow

from .engine_bridge import Engine
from .panel import Magic141Panel


class MainWindow(QMainWindow):
    def __init__(self, home: str | None = None, *, client: Engine | None = None) -> None:
        super().__init__()
        self.panel = Magic141Panel(self, home=home, client=client)
        self.setCentralWidget(self.panel)
        self.resize(1180, 720)
        self._menus()
        self.panel.timeline_opened.connect(lambda _doc: self._title())
        self.panel.modified_changed.connect(lambda _modified: self._title())
        self._title()

    def _menus(self) -> None:
        # The panel binds Ctrl+O/S/Z itself (so they work when it is docked in a host); menu items
        # only show those keys (text after a tab), since the same key bound twice fires neither.
        file_menu = self.menuBar().addMenu("&File")
        for text, slot in (("&Open…\tCtrl+O", self.panel.choose_timeline),
                           ("&Save\tCtrl+S", self.panel.save)):
            file_menu.addAction(text).triggered.connect(slot)
        file_menu.addSeparator()
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)
        edit_menu = self.menuBar().addMenu("&Edit")
        stack = self.panel.document.undo_stack
        undo, redo = edit_menu.addAction("&Undo\tCtrl+Z"), edit_menu.addAction("&Redo\tCtrl+Shift+Z")
        undo.triggered.connect(self.panel.undo)
        redo.triggered.connect(self.panel.redo)
        undo.setEnabled(False)
        redo.setEnabled(False)
        stack.canUndoChanged.connect(undo.setEnabled)
        stack.canRedoChanged.connect(redo.setEnabled)

    def _title(self) -> None:
        doc = self.panel.document.doc
        name = doc.path.name if doc is not None else "no timeline"
        self.setWindowTitle(f"{name}{' *' if self.panel.document.modified else ''} — Magic141")

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self.panel.confirm_unsaved(self.close):
            event.ignore()  # Cancel, or Save under way (it closes the window once saved)
            return
        self.panel.shutdown()
        super().closeEvent(event)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="magic141-panel", description="The Magic141 editor panel.")
    parser.add_argument("timeline", nargs="?", help="a timeline to open (.otio, .otioz, .otiod, ...)")
    parser.add_argument("--home", help="engine state folder (default: $MAGIC141_HOME, else the user data "
                        "folder)")
    args = parser.parse_args(argv)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Magic141")
    window = MainWindow(home=args.home)
    if args.timeline:
        window.panel.open_timeline(Path(args.timeline))
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
