"""Where weights come from, chosen by a job's ``model``.

1. ``tiny``: the real architecture in miniature, random from a fixed seed (see ``tiny.py``).
   ``world``: the same classes at toy size, trained on the procedural world (``world.py``) by
   ``engine/train``; a diffusers directory shipped in ``resources/world``, with its card.
2. A local diffusers-format directory (e.g. a copy of ``hunyuanvideo-community/HunyuanVideo-I2V-33ch``),
   loaded with ``local_files_only``. An optional ``magic141.json`` beside ``model_index.json`` says
   how the weights were trained (``{"distilled": true, "conditioning": "magic141"}``).
3. A single-file DiT checkpoint in the original HunyuanVideo / Magic 1-For-1 naming, converted on
   load; the VAE and text encoders come from ``components`` (a diffusers directory, or ``tiny``).

The defaults follow the weights: base HunyuanVideo-I2V weights sample with many steps and true CFG
and diffusers' conditioning; Magic 1-For-1 (distilled) checkpoints with 4 steps, no CFG, magic141.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction
from importlib.resources import files
from pathlib import Path

import torch

from magic141.errors import CheckpointError, InvalidInput

TINY = "tiny"
WORLD = "world"
# Package data (magic141.resources), so a wheel install finds it as an editable one does.
WORLD_DIR = Path(str(files("magic141.resources") / "world"))
SIDECAR = "magic141.json"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")


@dataclass(frozen=True)
class ModelInfo:
    """What the engine needs to know about a set of weights besides the weights."""

    name: str
    kind: str  # "tiny" | "diffusers" | "single-file"
    distilled: bool
    conditioning: str  # default conditioning for these weights
    native_fps: Fraction = Fraction(24)
    window_frames: int = 129  # longest native window (4k+1) before the sliding window takes over
    default_size: tuple[int, int] = (544, 960)  # height, width
    # Which trained DiT the folder's transformer/ holds, when its sidecar says ("teacher", "dmd2"):
    # ``distilled`` sets how it samples (4 steps, no CFG), not what was trained.
    transformer: str | None = None

    @property
    def weights(self) -> str:
        """What actually runs, in words, for ``magic141 info``."""
        if self.transformer == "teacher":
            return "teacher weights, not distilled"
        if self.transformer == "dmd2":
            return "DMD2-distilled weights"
        if self.transformer is not None:
            return f"{self.transformer} weights"
        return "distilled weights" if self.distilled else "base weights"

    @property
    def default_steps(self) -> int:
        return 4 if self.distilled else 50

    @property
    def default_guidance(self) -> float:
        return 1.0 if self.distilled else 6.0

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "distilled": self.distilled,
            "conditioning": self.conditioning,
            "native_fps": str(self.native_fps),
            "window_frames": self.window_frames,
            "default_size": list(self.default_size),
            "transformer": self.transformer,
        }


@dataclass
class LoadedModel:
    info: ModelInfo
    components: dict = field(repr=False)


def _compute_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _quiet_loading() -> None:
    """Loading bars per weight shard are noise next to the job's own progress."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _tiny_info() -> ModelInfo:
    return ModelInfo(
        name=TINY, kind=TINY, distilled=True, conditioning="magic141", window_frames=33, default_size=(64, 96)
    )


def _read_sidecar(directory: Path) -> dict:
    path = directory / SIDECAR
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc}") from exc
    unknown = set(data) - {"distilled", "conditioning", "native_fps", "window_frames", "default_size", "name",
                           "default_transformer"}
    if unknown:
        raise InvalidInput(f"{path} has unknown keys {sorted(unknown)}")
    if "default_transformer" in data:  # which trained DiT transformer/ holds (also read by `magic141 eval`)
        data["transformer"] = data.pop("default_transformer")
    if "native_fps" in data:
        data["native_fps"] = Fraction(data["native_fps"])
    if "default_size" in data:
        data["default_size"] = tuple(data["default_size"])
    return data


def _load_diffusers_dir(directory: Path, dtype: torch.dtype) -> dict:
    from diffusers import HunyuanVideoImageToVideoPipeline

    index = directory / "model_index.json"
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{index} cannot be read: {exc}") from exc
    if class_name != "HunyuanVideoImageToVideoPipeline":
        raise InvalidInput(
            f"{directory} holds a {class_name}, not a HunyuanVideoImageToVideoPipeline "
            "(HunyuanVideo-I2V-33ch)"
        )
    try:
        pipe = HunyuanVideoImageToVideoPipeline.from_pretrained(
            directory, local_files_only=True, dtype=dtype
        )
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot load the diffusers model in {directory}: {exc}") from exc
    components = dict(pipe.components)
    if components["transformer"].config.image_condition_type != "latent_concat":
        raise CheckpointError(
            f"{directory}: the transformer's image_condition_type is "
            f"{components['transformer'].config.image_condition_type!r}; Magic141 needs 'latent_concat' "
            "(33 channels)"
        )
    return components


def model_path(source: str) -> Path:
    """Where ``model`` points: the built-in world model's folder, or the path given."""
    return WORLD_DIR if source == WORLD else Path(source).expanduser()


def default_t2i(model: str) -> str | None:
    """The text-to-image model that goes with ``model`` for text-to-video: ``tiny``'s own, or the
    ``t2i/`` folder shipped inside a model folder (as ``world`` has); None when there is none."""
    if model == TINY:
        return TINY
    folder = model_path(model) / "t2i"
    return str(folder) if (folder / "model_index.json").is_file() else None


def load_model(
    source: str,
    *,
    device: str | torch.device = "cpu",
    components: str | None = None,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load weights from ``tiny``, a diffusers directory, or a single-file DiT checkpoint."""
    device = torch.device(device)
    dtype = _compute_dtype(device)
    _quiet_loading()
    if source == TINY:
        from .tiny import build_tiny_components

        return LoadedModel(_tiny_info(), build_tiny_components())
    path = model_path(source)
    if source == WORLD and not (path / "model_index.json").is_file():
        raise InvalidInput(f"the built-in world model is missing from {path}", field="model")
    if not path.exists():
        raise InvalidInput(
            f"{source!r} is neither 'tiny' nor an existing directory or checkpoint file "
            f"(built-in models: {TINY}, {WORLD})", field="model"
        )
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise InvalidInput(f"{path} is a directory without model_index.json (not a diffusers model)",
                               field="model")
        parts = _load_diffusers_dir(path, dtype)
        info = ModelInfo(name=path.name, kind="diffusers", distilled=False, conditioning="diffusers")
        return LoadedModel(_with_sidecar(info, path), parts)
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise InvalidInput(f"{path} is not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})", field="model")
    if components is None:
        raise InvalidInput(
            f"are needed: {path} is a single DiT checkpoint; give a diffusers HunyuanVideo-I2V directory "
            "that provides the VAE and text encoders", field="components"
        )
    from .convert import load_transformer_from_single_file

    base = load_model(components, device="cpu")
    parts = dict(base.components)
    reference = base.components["transformer"]
    parts["transformer"] = load_transformer_from_single_file(
        path,
        allow_pickle=allow_pickle,
        dtype=reference.dtype,
        # RoPE's split of the head dimension is not stored in the weights; take the components'.
        overrides={"rope_axes_dim": tuple(reference.config.rope_axes_dim)},
    ).eval()
    _check_compatible(parts["transformer"], base.components["transformer"], path, components)
    info = ModelInfo(
        name=path.stem,
        kind="single-file",
        distilled=True,
        conditioning="magic141",
        window_frames=base.info.window_frames,
        default_size=base.info.default_size,
    )
    return LoadedModel(_with_sidecar(info, path.parent), parts)


def _with_sidecar(info: ModelInfo, directory: Path) -> ModelInfo:
    overrides = _read_sidecar(directory)
    return ModelInfo(**{**info.__dict__, **overrides}) if overrides else info


def _check_compatible(transformer, reference, path: Path, components: str) -> None:
    for key in ("in_channels", "out_channels", "text_embed_dim", "pooled_projection_dim", "patch_size"):
        got, want = transformer.config[key], reference.config[key]
        if got != want:
            raise CheckpointError(
                f"{path} has {key}={got} but the components from {components} expect {want}"
            )


def parameter_counts(components: dict) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in components.items()
        if isinstance(module, torch.nn.Module)
    }
