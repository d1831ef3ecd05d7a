"""The image-to-video model families the engine runs, by name; see ``base.Family``.

``hunyuan`` is HunyuanVideo-I2V-33ch, the architecture of Magic 1-For-1, run by our own
``Magic141Pipeline`` (both conditionings); the others run through their diffusers pipelines.
"""

from __future__ import annotations

from .base import Family, FamilyPipeline, Geometry, Sampling
from .hunyuan import HUNYUAN
from .hv15 import HV15
from .ltx2 import LTX2
from .wan import WAN

FAMILIES: dict[str, Family] = {family.name: family for family in (HUNYUAN, WAN, HV15, LTX2)}
TINY_FAMILIES: dict[str, Family] = {family.tiny_name: family for family in FAMILIES.values()}


def family_of_pipeline(class_name: str | None) -> Family | None:
    """The family whose diffusers pipeline a folder's model_index.json names."""
    return next((family for family in FAMILIES.values() if family.pipeline == class_name), None)


__all__ = ["FAMILIES", "TINY_FAMILIES", "Family", "FamilyPipeline", "Geometry", "Sampling",
           "family_of_pipeline"]
