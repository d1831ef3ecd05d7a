"""The prompt box (with history) and the generation settings; emits what the editor asked for.

Settings map onto job-spec fields one to one: seconds (exact: 1.5 -> 3/2), seed (locked, or a
new random one for each job, shown after use), steps (0 = the model's default), model (``tiny``
or a local model folder), quality (the delivery codec: H.264 preview, ProRes 422 HQ master, or as
the source: ProRes for more than 8 bits), memory (the DiT weights' quantisation), colour match
(0-100 %), sound (seconds of the source's ambience carried on, 0 = off) and where the new clip goes
(insert, overwrite, new track).

Traps avoided:
- Seconds come from a spin box as a float; they become a ``Fraction`` of the two decimals shown,
  never of the float (``Fraction(0.1)`` is not 1/10).
- The history never repeats an entry and keeps the newest first; it is saved atomically.
- A double-click on Extend is two clicks: a request with the very same controls inside the
  double-click interval of the one before is the same request, and is dropped (with an unlocked
  seed the second click would otherwise even draw a new seed and pass for another job).
- Docked, the panel may be short and narrow: the prompt and settings scroll (the buttons stay
  in view), and the form is never made narrower than its labels and fields need, so no text
  is cut.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

from PySide6.QtCore import QElapsedTimer, Qt, Signal
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from magic141 import atomic
from magic141.plugin.edits import MODES
from magic141.protocol import BUILTIN_MODELS, DEFAULT_AMBIENCE_SECONDS, DEFAULT_MODEL, MAX_AMBIENCE_SECONDS

from .labels import PANEL_LABELS
from .scroll import VerticalScrollArea

QUALITY_PRESETS = {"Preview (H.264)": "h264", "Master (ProRes 422 HQ)": "prores",
                   "As the source (ProRes if 10-bit)": None}
MEMORY_PRESETS = {"Full precision": "none", "Balanced (int8 weights)": "int8",
                  "Low memory (fp8 weights)": "fp8"}
MODE_LABELS = {"insert": "Insert after the clip", "overwrite": "Overwrite what follows",
               "newtrack": "New track above"}
HISTORY_SIZE = 50
HISTORY_VERSION = 1  # of prompt_history.json: {"version": HISTORY_VERSION, "prompts": [newest first]}
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class GenerationSettings:
    prompt: str
    seconds: Fraction
    seed: int
    steps: int | None  # None: the model's default
    model: str
    quant: str
    codec: str | None  # None: as the source (ProRes 422 HQ for more than 8 bits, H.264 otherwise)
    mode: str
    color_match: float = 1.0  # 0-1
    ambience: float = DEFAULT_AMBIENCE_SECONDS  # seconds of the source's sound carried on (0: video only)


class PromptHistory:
    """Prompts used before, newest first, optionally kept in a JSON file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.items: list[str] = []
        if path is not None:
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                self.items = [p for p in loaded.get("prompts", []) if isinstance(p, str)][:HISTORY_SIZE]
            except (OSError, ValueError, AttributeError):
                self.items = []  # no history yet, or an unreadable one: start afresh

    def add(self, prompt: str) -> None:
        self.items = [prompt] + [p for p in self.items if p != prompt][: HISTORY_SIZE - 1]
        if self.path is not None:
            try:
                atomic.write_json(self.path, {"version": HISTORY_VERSION, "prompts": self.items})
            except OSError:
                pass  # history is a convenience: never fail a job for it


class PromptPanel(QWidget):
    extend_requested = Signal(object)  # GenerationSettings
    generate_requested = Signal(object)  # GenerationSettings (text to video)

    def __init__(self, parent: QWidget | None = None, history: PromptHistory | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("promptPanel")
        self.history = history if history is not None else PromptHistory()
        self._random = random.Random()
        self._last_request: tuple[str, GenerationSettings] | None = None  # (kind, controls)
        self._since_request = QElapsedTimer()

        inner = QWidget()
        inner.setObjectName("settingsInner")

        self.prompt = QPlainTextEdit(inner)
        self.prompt.setObjectName("prompt")
        self.prompt.setPlaceholderText("Describe what happens next…  (Ctrl+Enter: Extend)")
        self.prompt.setTabChangesFocus(True)
        self.prompt.setMaximumHeight(90)
        self.recent = QComboBox(self)
        self.recent.setObjectName("promptHistory")
        self.recent.setToolTip("Prompts used before")
        self.recent.activated.connect(self._recall)
        self._fill_history()

        self.seconds = QDoubleSpinBox(self)
        self.seconds.setRange(0.25, 120.0)
        self.seconds.setDecimals(2)
        self.seconds.setSingleStep(0.5)
        self.seconds.setValue(2.0)
        self.seconds.setSuffix(" s")
        self.seed = QSpinBox(self)
        self.seed.setRange(0, MAX_SEED)
        self.seed_lock = QCheckBox("lock", self)
        self.seed_lock.setChecked(True)
        self.seed_lock.setToolTip("Locked: every job uses this seed. Unlocked: a new random seed per job "
                                  "(Ctrl+L)")
        self.reseed = QToolButton(self)
        self.reseed.setText("⟳")
        self.reseed.setToolTip("New random seed (Ctrl+R)")
        self.reseed.clicked.connect(self.new_seed)
        self.steps = QSpinBox(self)
        self.steps.setRange(0, 200)
        self.steps.setSpecialValueText("model default")
        self.model = QComboBox(self)
        self.model.setEditable(True)
        self.model.addItems(list(BUILTIN_MODELS))
        self.model.setToolTip("a built-in model (world: trained on the procedural world; tiny, tiny-wan, "
                              "tiny-hv15, tiny-ltx2: random), a model folder or file, or a repository id "
                              "in the Hugging Face cache")
        self.quality = QComboBox(self)
        self.quality.addItems(list(QUALITY_PRESETS))
        self.memory = QComboBox(self)
        self.memory.addItems(list(MEMORY_PRESETS))
        self.color_match = QSpinBox(self)
        self.color_match.setRange(0, 100)
        self.color_match.setSuffix(" %")
        self.color_match.setSpecialValueText("off")
        self.color_match.setValue(100)
        self.color_match.setToolTip("How far the extension's colour is matched to the source frame")
        self.ambience = QSpinBox(self)
        self.ambience.setRange(0, MAX_AMBIENCE_SECONDS)
        self.ambience.setSuffix(" s")
        self.ambience.setSpecialValueText("off (video only)")
        self.ambience.setValue(MAX_AMBIENCE_SECONDS)
        self.ambience.setToolTip("The source's ambience carried on under the extension, for up to this "
                                 "long; silent or speech-like sound is left out, with a note")
        self.mode = QComboBox(self)
        for mode in MODES:
            self.mode.addItem(MODE_LABELS.get(mode, mode), mode)

        self.extend_button = QPushButton("Extend", self)
        self.extend_button.setObjectName("extendButton")
        self.extend_button.setToolTip("Continue the selected clip from the viewer's frame (Ctrl+Enter)")
        self.extend_button.clicked.connect(self.trigger_extend)
        self.generate_button = QPushButton("Generate from text", self)
        self.generate_button.setObjectName("generateButton")
        self.generate_button.setToolTip("A new clip from the prompt alone, placed after the selected clip "
                                        "(Ctrl+Shift+Enter)")
        self.generate_button.clicked.connect(self.trigger_generate)
        self.problem = QLabel("", self)
        self.problem.setObjectName("promptProblem")
        self.problem.setWordWrap(True)

        for combo in (self.model, self.quality, self.memory, self.mode):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)  # never cut an item
            combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        # The model's names include repository ids and typed paths: the field is as wide as the longest
        # built-in name (a longer one scrolls in it, and its list and tooltip show it whole).
        self.model.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model.setMinimumContentsLength(max(map(len, BUILTIN_MODELS)))
        seed_row = QHBoxLayout()
        seed_row.setContentsMargins(0, 0, 0, 0)
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.seed_lock)
        seed_row.addWidget(self.reseed)
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.DontWrapRows)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow(PANEL_LABELS["seconds"], self.seconds)
        form.addRow(PANEL_LABELS["seed"], seed_row)
        form.addRow(PANEL_LABELS["steps"], self.steps)
        form.addRow(PANEL_LABELS["model"], self.model)
        form.addRow(PANEL_LABELS["codec"], self.quality)
        form.addRow(PANEL_LABELS["quant"], self.memory)
        form.addRow(PANEL_LABELS["color_match"], self.color_match)
        form.addRow(PANEL_LABELS["ambience"], self.ambience)
        form.addRow(PANEL_LABELS["mode"], self.mode)
        buttons = QHBoxLayout()
        buttons.addWidget(self.extend_button, 1)
        buttons.addWidget(self.generate_button, 1)
        fields = QVBoxLayout(inner)
        fields.setContentsMargins(0, 0, 4, 0)  # room beside the scroll bar
        fields.addWidget(QLabel(PANEL_LABELS["prompt"], inner))
        fields.addWidget(self.prompt)
        fields.addWidget(self.recent)
        fields.addLayout(form)
        self.settings_area = VerticalScrollArea(inner, self)
        self.settings_area.setObjectName("settingsArea")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.settings_area)  # as tall as its fields when there is room, else it scrolls
        layout.addWidget(self.problem)
        layout.addLayout(buttons)
        layout.addStretch(1)

    # The Model menu --------------------------------------------------------------------------------

    def show_models(self, catalog: dict) -> None:
        """The Model menu from the engine's catalog (``protocol.MODELS_VERSION``): the built-in models,
        then each family's copies installed in the Hugging Face cache; each item's tooltip says what it
        is and, for real weights, the device memory it needs per memory mode. What was typed stays."""
        current = self.model.currentText()
        families = {family["name"]: family for family in catalog.get("families", [])}
        tiny = {family["tiny"]: family for family in families.values()}
        self.model.clear()
        for name in BUILTIN_MODELS:
            family = tiny.get(name, families.get("hunyuan"))
            what = "trained on the procedural world" if name == "world" else "random weights at toy size"
            self.model.addItem(name)
            if family is not None:
                self._tip(self.model.count() - 1, f"{family['label']}: {what}")
        for family in families.values():
            for copy in family.get("installed", []):
                self.model.addItem(copy["model"])
                needs = ", ".join(f"{mode} {n / 2**30:.0f} GiB" for mode, n in family["needs_bytes"].items())
                self._tip(self.model.count() - 1, f"{family['label']} ({copy['path']}); needs {needs}")
        self.model.setCurrentText(current)
        view = self.model.view()  # the list is as wide as its longest name
        view.setTextElideMode(Qt.TextElideMode.ElideNone)
        view.setMinimumWidth(view.sizeHintForColumn(0) + view.verticalScrollBar().sizeHint().width())

    def _tip(self, index: int, text: str) -> None:
        self.model.setItemData(index, text, Qt.ItemDataRole.ToolTipRole)

    # Reading the settings --------------------------------------------------------------------------

    def settings(self) -> GenerationSettings:
        """What the controls say now; an unlocked seed is re-drawn first (and shown)."""
        if not self.seed_lock.isChecked():
            self.new_seed()
        return self._controls()

    def _controls(self) -> GenerationSettings:
        return GenerationSettings(
            prompt=self.prompt.toPlainText().strip(),
            seconds=Fraction(round(self.seconds.value() * 100), 100),
            seed=self.seed.value(),
            steps=self.steps.value() or None,
            model=self.model.currentText().strip() or DEFAULT_MODEL,
            quant=MEMORY_PRESETS[self.memory.currentText()],
            codec=QUALITY_PRESETS[self.quality.currentText()],
            mode=self.mode.currentData(),
            color_match=self.color_match.value() / 100,
            ambience=float(self.ambience.value()),
        )

    def new_seed(self) -> None:
        self.seed.setValue(self._random.randint(0, MAX_SEED))

    def toggle_seed_lock(self) -> None:
        self.seed_lock.setChecked(not self.seed_lock.isChecked())

    def remember(self, prompt: str) -> None:
        """Add a prompt that was sent to the history."""
        self.history.add(prompt)
        self._fill_history()

    # Inside --------------------------------------------------------------------------------------

    def _request(self, kind: str) -> None:
        signal = self.extend_requested if kind == "extend" else self.generate_requested
        if self._repeated(kind):
            return  # the second click of a double-click: one request per click
        settings = self.settings()
        if not settings.prompt:
            self.problem.setText("Type a prompt first: it says what should happen next.")
            self.prompt.setFocus()
            return
        self.problem.setText("")
        signal.emit(settings)

    def _repeated(self, kind: str) -> bool:
        """Whether this request repeats the last one, controls unchanged, within a double-click."""
        controls = self._controls()
        if not self.seed_lock.isChecked():
            controls = replace(controls, seed=-1)  # drawn afresh per request: not part of "the same"
        last, self._last_request = self._last_request, (kind, controls)
        quick = self._since_request.isValid() and \
            self._since_request.elapsed() < QApplication.doubleClickInterval()
        self._since_request.start()
        return quick and last == (kind, controls)

    def _fill_history(self) -> None:
        self.recent.blockSignals(True)
        self.recent.clear()
        self.recent.addItem("Recent prompts…" if self.history.items else "No recent prompts")
        for text in self.history.items:
            self.recent.addItem(text if len(text) <= 80 else text[:77] + "…", text)
        self.recent.setCurrentIndex(0)
        self.recent.blockSignals(False)

    def _recall(self, index: int) -> None:
        text = self.recent.itemData(index)
        if text:
            self.prompt.setPlainText(text)
        self.recent.setCurrentIndex(0)

    def trigger_extend(self) -> None:
        self._request("extend")

    def trigger_generate(self) -> None:
        self._request("generate")
