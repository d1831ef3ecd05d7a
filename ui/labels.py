"""What the panel calls each job-spec field: the words an error's ``field`` is phrased with.

``Magic141Error.phrase(PANEL_LABELS)`` reads "Seconds: must be positive" where the command line
reads "--seconds: must be positive"; the settings form takes its row labels from here, so an
error always names the control the editor can see.
"""

from __future__ import annotations

PANEL_LABELS = {
    "prompt": "Prompt",
    "seconds": "Seconds",
    "seed": "Seed",
    "steps": "Steps",
    "model": "Model",
    "codec": "Quality",
    "quant": "Memory",
    "mode": "Place",
    "color_match": "Colour match",
    "ambience": "Sound",
    "fps": "Timeline rate",
    "source": "Clip",
    "source.path": "Clip media",
    "source.time": "Frame",
    "output_dir": "Media folder",
    "output_name": "Media file name",
    "timeline": "Timeline",
    "out": "Timeline",  # where the timeline is saved (the command line's --out)
    "clip": "Clip",
}

QUANT_WORDS = {  # the DiT weights' quantisation (a job spec's ``quant``), as the footer says it
    "none": "full precision",
    "int8": "int8 weights",
    "fp8": "fp8 weights",
}
