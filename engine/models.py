"""Where weights come from, chosen by a job's ``model``.

1. ``tiny``: the real architecture in miniature, random from a fixed seed (see ``tiny.py``);
   ``tiny-wan``, ``tiny-hv15``, ``tiny-ltx2`` the same for the other families (``families/``).
   ``world``: the same classes at toy size, trained on the procedural world (``world.py``) by
   ``engine/train``; a diffusers directory shipped in ``resources/world``, with its card.
2. A local diffusers-format directory of any family (e.g. a copy of
   ``hunyuanvideo-community/HunyuanVideo-I2V-33ch`` or ``Wan-AI/Wan2.2-I2V-A14B-Diffusers``), or such
   a repository id found in the Hugging Face cache (never downloaded), loaded with
   ``local_files_only``; its ``model_index.json`` names the pipeline, hence the family. An optional
   ``magic141.json`` beside it says how the weights were trained (``{"distilled": true}``).
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
    family: str = "hunyuan"  # a key of families.FAMILIES

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
        return self._sampling.steps

    @property
    def default_guidance(self) -> float:
        return self._sampling.guidance

    @property
    def _sampling(self):
        from .families import FAMILIES

        family = FAMILIES[self.family]
        return family.distilled if self.distilled else family.base

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
            "family": self.family,
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


def _tiny(name: str) -> LoadedModel:
    from .families import TINY_FAMILIES

    family = TINY_FAMILIES[name]
    info = ModelInfo(name=name, kind="tiny", distilled=True, conditioning=family.conditionings[0],
                     native_fps=family.native_fps, window_frames=family.tiny_window_frames,
                     default_size=family.tiny_size, family=family.name)
    return LoadedModel(info, family.build_tiny())


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


def _read_index(directory: Path) -> dict:
    index = directory / "model_index.json"
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{index} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{index} is not a diffusers model index (a JSON object)")
    return data


def _component_files(kind: str) -> tuple[str, ...]:
    """The files a saved component of this class must have (weights are checked separately)."""
    if kind.endswith("Scheduler") or kind.startswith("FlowMatch"):
        return ("scheduler_config.json",)
    if "Tokenizer" in kind:
        return ("tokenizer_config.json",)
    if kind.endswith(("ImageProcessor", "ImageProcessorPil", "FeatureExtractor", "Processor")):
        return ("preprocessor_config.json",)
    if kind.endswith("Guidance"):
        return ()
    return ("config.json",)


def _missing_weights(folder: Path, library: str) -> Path | None:
    """The first missing weight file of a model component (None: all there)."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        try:
            shards = set(json.loads(indexes[0].read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{indexes[0]} cannot be read: {exc}") from exc
        return next((folder / shard for shard in sorted(shards) if not (folder / shard).is_file()), None)
    if any(folder.glob("*.safetensors")):
        return None
    return folder / ("diffusion_pytorch_model.safetensors" if library == "diffusers" else "model.safetensors")


def check_folder(directory: Path, index: dict) -> None:
    """Every component model_index.json lists is there with its files; else the first missing file."""
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or entry[0] is None:
            continue
        folder, kind = directory / name, str(entry[1])
        needed = _component_files(kind)
        missing = next((folder / f for f in needed if not (folder / f).is_file()), None)
        if missing is None and needed == ("config.json",):
            missing = _missing_weights(folder, str(entry[0]))
        if missing is not None:
            raise CheckpointError(f"{missing} is missing: model_index.json lists {name} ({kind})")


def init_kwargs(pipe) -> dict:
    """What the pipeline's class takes in ``__init__``, from a loaded pipeline: its components and
    config values such as Wan's ``boundary_ratio`` (``pipe.components`` leaves those out)."""
    import inspect

    names = [n for n in inspect.signature(type(pipe).__init__).parameters if n != "self"]
    components = pipe.components
    return {n: components[n] if n in components else pipe.config.get(n) for n in names}


def _load_diffusers_dir(directory: Path, dtype: torch.dtype) -> tuple[str, dict]:
    """(family name, components) of a diffusers folder of any family."""
    import diffusers

    from .families import FAMILIES, family_of_pipeline

    index = _read_index(directory)
    class_name = index.get("_class_name")
    family = family_of_pipeline(class_name)
    if family is None:
        known = ", ".join(f"{f.pipeline} ({f.label})" for f in FAMILIES.values())
        raise InvalidInput(f"{directory} holds a {class_name}; Magic141 runs {known}")
    check_folder(directory, index)
    try:
        pipe = getattr(diffusers, class_name).from_pretrained(directory, local_files_only=True, dtype=dtype,
                                                               use_safetensors=True)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load the {family.label} model in {directory}: {detail}") from exc
    components = init_kwargs(pipe)
    problem = family.mismatch(components)
    if problem is not None:
        raise CheckpointError(f"{directory}/{problem}")
    if family.name == "hunyuan" and components["transformer"].config.image_condition_type != "latent_concat":
        raise CheckpointError(
            f"{directory}: the transformer's image_condition_type is "
            f"{components['transformer'].config.image_condition_type!r}; Magic141 needs 'latent_concat' "
            "(33 channels)"
        )
    return family.name, components


def hub_snapshot(source: str) -> Path | None:
    """The Hugging Face cache's copy of repository ``source`` ("org/name"), found offline; else None."""
    parts = source.split("/")
    if len(parts) != 2 or not all(parts) or source.startswith((".", "~")):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        return None


def model_path(source: str) -> Path:
    """Where ``model`` points: the built-in world model's folder, or the path given."""
    return WORLD_DIR if source == WORLD else Path(source).expanduser()


def default_t2i(model: str) -> str | None:
    """The text-to-image model that goes with ``model`` for text-to-video: ``tiny``'s own, or the
    ``t2i/`` folder shipped inside a model folder (as ``world`` has); None when there is none."""
    from .families import TINY_FAMILIES

    if model in TINY_FAMILIES:  # every tiny family: the tiny text-to-image model
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
    from .families import TINY_FAMILIES

    if source in TINY_FAMILIES:
        return _tiny(source)
    path = model_path(source)
    cached = None if path.exists() else hub_snapshot(source)
    path = cached or path
    if source == WORLD and not (path / "model_index.json").is_file():
        raise InvalidInput(f"the built-in world model is missing from {path}", field="model")
    if not path.exists():
        raise InvalidInput(
            f"{source!r} is neither a built-in model ({', '.join([WORLD, *TINY_FAMILIES])}) nor an "
            "existing directory or checkpoint file, nor a repository in the Hugging Face cache", field="model"
        )
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise InvalidInput(f"{path} is a directory without model_index.json (not a diffusers model)",
                               field="model")
        family, parts = _load_diffusers_dir(path, dtype)
        info = ModelInfo(name=source if cached else path.name, kind="diffusers", distilled=False,
                         conditioning="diffusers", family=family, **_family_defaults(family))
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


def _family_defaults(name: str) -> dict:
    from .families import FAMILIES

    family = FAMILIES[name]
    return dict(native_fps=family.native_fps, window_frames=family.window_frames,
                default_size=family.default_size)


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
