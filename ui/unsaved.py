"""Save / Discard / Cancel, asked before unsaved edits would be lost (closing, opening another
timeline), as every editor asks. The one modal box of the panel: the editor's answer is needed
before anything can go on."""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox, QWidget

Answer = QMessageBox.StandardButton
SAVE, DISCARD, CANCEL = Answer.Save, Answer.Discard, Answer.Cancel


def ask_to_save(parent: QWidget | None, name: str) -> Answer:
    """What the editor wants done with the unsaved edits of timeline ``name``."""
    box = QMessageBox(QMessageBox.Icon.Warning, "Unsaved changes", f"Save the changes to {name}?",
                      SAVE | DISCARD | CANCEL, parent)
    box.setInformativeText("Clips placed, undone or redone since the last save are lost if you don't "
                           "save them.")
    box.setDefaultButton(SAVE)
    box.setEscapeButton(CANCEL)
    answer = Answer(box.exec())
    return answer if answer in (SAVE, DISCARD) else CANCEL
