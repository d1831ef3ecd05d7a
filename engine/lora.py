"""LoRAs (``--lora PATH[:scale]``): read and checked against the model before any GPU work, then fused.

A LoRA is read by the family's diffusers loader (which converts the published formats, e.g. the
Lightning 4-step distillation LoRAs for Wan, to diffusers names), checked layer by layer against
the transformer it is for (every layer must exist with the LoRA's input and output widths, so a
LoRA for another model fails in one line), then fused into the weights on the CPU and unloaded: the
pipeline, quantisation and memory estimate see plain weights, and sampling costs nothing extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from magic141.errors import InvalidInput
from magic141.protocol import LORA_TARGETS

if TYPE_CHECKING:
    import torch

LORA_SUFFIX = ".safetensors"
_A, _B = ".lora_A.weight", ".lora_B.weight"


@dataclass(frozen=True)
class Lora:
    path: str  # absolute
    scale: float = 1.0
    into: str = "transformer"  # one of protocol.LORA_TARGETS

    @classmethod
    def parse(cls, text: str) -> Lora:
        """``PATH[:SCALE][@transformer_2]``: the scale after the last colon when it is a number; after
        an ``@``, the expert it goes into (Wan 2.2 A14B's distillation LoRAs come as a high-noise file for
        ``transformer`` and a low-noise one for ``transformer_2``)."""
        into = "transformer"
        head, at, tail = text.rpartition("@")
        if at and head and tail in LORA_TARGETS:
            text, into = head, tail
        path, scale = text, 1.0
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                path, scale = head, float(tail)
            except ValueError:
                pass
        return cls.checked(path, scale, into)

    @classmethod
    def checked(cls, path: str, scale: float = 1.0, into: str = "transformer") -> Lora:
        """A LoRA file that exists and is safetensors (a pickle LoRA is never loaded)."""
        if not Path(path).expanduser().is_file():
            raise InvalidInput(f"{path} does not exist", field="lora")
        if not path.endswith(LORA_SUFFIX):
            raise InvalidInput(f"{path} is not a {LORA_SUFFIX} file", field="lora")
        if into not in LORA_TARGETS:
            raise InvalidInput(f"goes into one of {', '.join(LORA_TARGETS)}, not {into!r}", field="lora")
        return cls(str(Path(path).expanduser().resolve()), scale, into)

    @property
    def spec(self) -> tuple[str, float, str]:
        """As a job spec's ``loras`` holds it."""
        return self.path, self.scale, self.into


def _loader(pipeline_class_name: str, parts: dict):
    import diffusers

    pipeline_class = getattr(diffusers, pipeline_class_name)
    if not hasattr(pipeline_class, "load_lora_weights"):
        raise InvalidInput(f"diffusers {diffusers.__version__} loads no LoRAs into a {pipeline_class_name}",
                           field="lora")
    names = [name for name in pipeline_class._lora_loadable_modules if parts.get(name) is not None]
    return pipeline_class, names


def check_fits(lora: Lora, state: dict[str, torch.Tensor], modules: dict[str, torch.nn.Module],
               label: str) -> None:
    """Every LoRA layer names a linear layer of the module it goes into with the LoRA's widths (its
    keys say ``transformer.``; one for ``transformer_2`` is checked against that expert)."""
    import torch

    if lora.into not in modules:
        raise InvalidInput(f"{lora.path} goes into {lora.into}, which this {label} has not", field="lora")
    layers = sorted({key[: -len(_A)] for key in state if key.endswith(_A)})
    if not layers:
        raise InvalidInput(f"{lora.path} holds no LoRA layers (no '*{_A}' weights)", field="lora")
    misfits = []
    for layer in layers:
        component, _, name = layer.partition(".")
        target = modules.get(lora.into if component == "transformer" else component)
        module = dict(target.named_modules()).get(name) if target is not None else None
        a, b = state[layer + _A], state.get(layer + _B)
        fits = (isinstance(module, torch.nn.Linear) and b is not None and a.shape[1] == module.in_features
                and b.shape[0] == module.out_features)
        if not fits:
            misfits.append(layer)
    if misfits:
        raise InvalidInput(f"{lora.path} is not for this {label}: {len(misfits)} of its {len(layers)} layers "
                           f"do not fit it (first: {misfits[0]})", field="lora")


def apply_loras(loras: list[Lora], pipeline_class_name: str, parts: dict, label: str) -> None:
    """Check every LoRA, then fuse them all (at their scales) into ``parts``' weights, in place."""
    if not loras:
        return
    pipeline_class, names = _loader(pipeline_class_name, parts)
    modules = {name: parts[name] for name in names}
    for lora in loras:
        state = pipeline_class.lora_state_dict(lora.path, use_safetensors=True)
        check_fits(lora, state[0] if isinstance(state, tuple) else state, modules, label)
    targets = {lora.into for lora in loras}
    host = pipeline_class(**parts)
    adapters = [f"lora_{i}" for i in range(len(loras))]
    for lora, adapter in zip(loras, adapters, strict=True):
        into = {"load_into_transformer_2": True} if lora.into == "transformer_2" else {}
        host.load_lora_weights(lora.path, adapter_name=adapter, **into)
    host.set_adapters(adapters, [lora.scale for lora in loras])
    host.fuse_lora(components=sorted(targets), adapter_names=adapters)
    host.unload_lora_weights()
