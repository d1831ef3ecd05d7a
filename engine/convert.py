"""Single-file HunyuanVideo transformer checkpoints: read, rename, infer the config, load, export.

Users bring transformer weights in two namings:

* the ORIGINAL HunyuanVideo / Magic 1-For-1 naming (``img_in.proj.weight``,
  ``double_blocks.0.img_attn_qkv.weight``, ``single_blocks.0.linear1.weight``, ...), with fused
  q/k/v projections and the final layer's modulation stored as ``[shift, scale]``;
* diffusers' naming, the state dict of ``HunyuanVideoTransformer3DModel`` (``x_embedder.proj.weight``,
  ``transformer_blocks.0.attn.to_q.weight``, ...), with separate q/k/v and ``[scale, shift]``.

The tables below follow diffusers' ``scripts/convert_hunyuan_video_to_diffusers.py`` (the same
mapping is ``convert_hunyuan_video_transformer_to_diffusers`` in ``diffusers.loaders.single_file_utils``),
written as explicit module-to-module rules so that the reverse direction is exact as well:
``diffusers_to_original(original_to_diffusers(sd)) == sd`` bit for bit, and the other way round.

Public API::

    read_state_dict(path, *, allow_pickle=False) -> dict[str, Tensor]
    is_original_naming(sd) -> bool
    original_to_diffusers(sd) -> dict[str, Tensor]
    diffusers_to_original(sd) -> dict[str, Tensor]
    infer_config(original_sd, overrides=None) -> dict
    load_transformer_from_single_file(path, *, allow_pickle=False, overrides=None, dtype=torch.float32)
    save_original_checkpoint(model, path) -> Path

Pickle-based files (``.pt``, ``.pth``, ``.ckpt``, ``.bin``) are refused unless the caller opts in
(the CLI's ``--allow-pickle``), and even then they are only ever read with
``torch.load(..., weights_only=True)``, which refuses to build arbitrary Python objects.
"""

from __future__ import annotations

import inspect
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from magic141 import atomic
from magic141.errors import CheckpointError, InvalidInput

if TYPE_CHECKING:
    from diffusers import HunyuanVideoTransformer3DModel

__all__ = [
    "read_state_dict",
    "is_original_naming",
    "original_to_diffusers",
    "diffusers_to_original",
    "infer_config",
    "load_transformer_from_single_file",
    "save_original_checkpoint",
]

SAFETENSORS_SUFFIXES = frozenset({".safetensors"})
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".bin"})

# Containers that training frameworks wrap a state dict in (DeepSpeed saves {"module": sd}).
_CONTAINER_KEYS = ("state_dict", "module", "model")
# Prefixes that wrappers (DataParallel, DeepSpeed, ComfyUI) put before every key.
_STRIPPED_PREFIXES = ("module.", "model.", "diffusion_model.")

# The first dotted component of every key, per naming.
_ORIGINAL_ROOTS = frozenset(
    {
        "img_in",
        "time_in",
        "guidance_in",
        "vector_in",
        "txt_in",
        "double_blocks",
        "single_blocks",
        "final_layer",
    }
)
_DIFFUSERS_ROOTS = frozenset(
    {
        "x_embedder",
        "context_embedder",
        "time_text_embed",
        "transformer_blocks",
        "single_transformer_blocks",
        "norm_out",
        "proj_out",
    }
)

# rope_axes_dim of every released HunyuanVideo transformer (head dim 128); not visible in weights.
DEFAULT_ROPE_AXES_DIM = (16, 56, 56)


# --------------------------------------------------------------------------------------------
# The mapping, module by module. A key is "<module>.<param>"; rules map modules, params carry over.
# --------------------------------------------------------------------------------------------

_RENAME = "rename"  # one tensor to one tensor
_QKV = "qkv"  # fused [q; k; v] rows <-> three tensors
_QKV_MLP = "qkv_mlp"  # fused [q; k; v; mlp] rows (single blocks' linear1) <-> four tensors
_SWAP = "swap_halves"  # [shift; scale] <-> [scale; shift] (final layer modulation)


@dataclass(frozen=True)
class _Rule:
    original: str  # module path in the original naming; "{i}" stands for a block index
    diffusers: tuple[str, ...]  # module path(s) in diffusers' naming, in fused-row order
    kind: str = _RENAME


def _block_rules(original_prefix: str, diffusers_prefix: str, pairs) -> list[_Rule]:
    rules = []
    for original, diffusers, *kind in pairs:
        targets = (diffusers,) if isinstance(diffusers, str) else tuple(diffusers)
        rules.append(
            _Rule(
                f"{original_prefix}.{original}",
                tuple(f"{diffusers_prefix}.{t}" for t in targets),
                kind[0] if kind else _RENAME,
            )
        )
    return rules


_RULES: tuple[_Rule, ...] = (
    # Embedders.
    _Rule("img_in.proj", ("x_embedder.proj",)),
    _Rule("time_in.mlp.0", ("time_text_embed.timestep_embedder.linear_1",)),
    _Rule("time_in.mlp.2", ("time_text_embed.timestep_embedder.linear_2",)),
    _Rule("guidance_in.mlp.0", ("time_text_embed.guidance_embedder.linear_1",)),
    _Rule("guidance_in.mlp.2", ("time_text_embed.guidance_embedder.linear_2",)),
    _Rule("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",)),
    _Rule("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",)),
    # Text token refiner.
    _Rule("txt_in.input_embedder", ("context_embedder.proj_in",)),
    _Rule("txt_in.t_embedder.mlp.0", ("context_embedder.time_text_embed.timestep_embedder.linear_1",)),
    _Rule("txt_in.t_embedder.mlp.2", ("context_embedder.time_text_embed.timestep_embedder.linear_2",)),
    _Rule("txt_in.c_embedder.linear_1", ("context_embedder.time_text_embed.text_embedder.linear_1",)),
    _Rule("txt_in.c_embedder.linear_2", ("context_embedder.time_text_embed.text_embedder.linear_2",)),
    *_block_rules(
        "txt_in.individual_token_refiner.blocks.{i}",
        "context_embedder.token_refiner.refiner_blocks.{i}",
        [
            ("norm1", "norm1"),
            ("self_attn_qkv", ("attn.to_q", "attn.to_k", "attn.to_v"), _QKV),
            ("self_attn_proj", "attn.to_out.0"),
            ("norm2", "norm2"),
            ("mlp.fc1", "ff.net.0.proj"),
            ("mlp.fc2", "ff.net.2"),
            ("adaLN_modulation.1", "norm_out.linear"),  # [gate_msa; gate_mlp] in both namings
        ],
    ),
    # Double-stream blocks (img_norm1/2 and txt_norm1/2 have no parameters).
    *_block_rules(
        "double_blocks.{i}",
        "transformer_blocks.{i}",
        [
            ("img_mod.linear", "norm1.linear"),
            ("img_attn_qkv", ("attn.to_q", "attn.to_k", "attn.to_v"), _QKV),
            ("img_attn_q_norm", "attn.norm_q"),
            ("img_attn_k_norm", "attn.norm_k"),
            ("img_attn_proj", "attn.to_out.0"),
            ("img_mlp.fc1", "ff.net.0.proj"),
            ("img_mlp.fc2", "ff.net.2"),
            ("txt_mod.linear", "norm1_context.linear"),
            ("txt_attn_qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), _QKV),
            ("txt_attn_q_norm", "attn.norm_added_q"),
            ("txt_attn_k_norm", "attn.norm_added_k"),
            ("txt_attn_proj", "attn.to_add_out"),
            ("txt_mlp.fc1", "ff_context.net.0.proj"),
            ("txt_mlp.fc2", "ff_context.net.2"),
        ],
    ),
    # Single-stream blocks (pre_norm has no parameters).
    *_block_rules(
        "single_blocks.{i}",
        "single_transformer_blocks.{i}",
        [
            ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), _QKV_MLP),
            ("linear2", "proj_out"),
            ("q_norm", "attn.norm_q"),
            ("k_norm", "attn.norm_k"),
            ("modulation.linear", "norm.linear"),
        ],
    ),
    # Output layer (norm_final has no parameters).
    _Rule("final_layer.linear", ("proj_out",)),
    _Rule("final_layer.adaLN_modulation.1", ("norm_out.linear",), _SWAP),
)


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)"))


_ORIGINAL_INDEX = [(_template_regex(rule.original), rule) for rule in _RULES]
_DIFFUSERS_INDEX = [
    (_template_regex(target), rule, part) for rule in _RULES for part, target in enumerate(rule.diffusers)
]


def _split_key(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


def _match(index, module: str):
    for entry in index:
        found = entry[0].fullmatch(module)
        if found is not None:
            return found, entry[1:]
    return None, None


def _fill(template: str, found: re.Match[str]) -> str:
    return template.replace("{i}", found.group("i")) if "{i}" in template else template


def _shape(tensor: torch.Tensor) -> list[int]:
    return list(tensor.shape)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside ``obj``: unwraps ``{"module"|"state_dict"|"model": sd}`` containers."""
    for _ in range(4):
        if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dictionary of tensors.")
    if not obj:
        raise CheckpointError(f"checkpoint {path} contains no tensors.")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"checkpoint {path} has a non-string key {key!r} among its tensor names.")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {path} entry '{key}' is a {type(value).__name__}, not a tensor."
            )
    return dict(obj)


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in _STRIPPED_PREFIXES:
            if all(key.startswith(prefix) for key in sd):
                sd = {key[len(prefix) :]: value for key, value in sd.items()}
                changed = True
    return sd


def read_state_dict(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a single-file checkpoint into ``{name: tensor}`` on the CPU.

    ``.safetensors`` files are read with safetensors. Pickle-based files (``.pt``, ``.pth``,
    ``.ckpt``, ``.bin``) are refused unless ``allow_pickle`` is true, and are then read only with
    ``torch.load(path, map_location="cpu", weights_only=True)``. Common containers
    (``{"module": sd}``, ``{"state_dict": sd}``, ``{"model": sd}``) are unwrapped and a
    ``module.`` / ``model.`` prefix shared by every key is stripped.

    Raises:
        CheckpointError: the file is missing, unreadable, in a refused format, or holds
            something other than named tensors.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES:
        raise CheckpointError(
            f"checkpoint {path} has an unsupported extension {suffix or '(none)'!r}; expected .safetensors "
            f"(or {', '.join(sorted(PICKLE_SUFFIXES))} where pickle files are allowed).", field="model"
        )
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} does not exist.", field="model")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file.", field="model")

    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {path} could not be read as safetensors ({_first_line(exc)})."
            ) from exc
    else:
        if not allow_pickle:
            raise CheckpointError(
                f"checkpoint {path} is a pickle-based {suffix} file, which can run code when loaded; "
                "convert it to .safetensors, or allow pickle files to read it with "
                "torch.load(weights_only=True).", field="allow_pickle"
            )
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"checkpoint {path} contains Python objects other than tensors, which the safe loader "
                f"(torch.load weights_only=True) refuses ({_first_line(exc)})."
            ) from exc
        except Exception as exc:  # torch raises many types for truncated or foreign files
            reason = f"{type(exc).__name__}: {_first_line(exc)}"
            raise CheckpointError(f"checkpoint {path} could not be read with torch.load ({reason}).") from exc

    return _strip_prefixes(_unwrap(raw, path))


# --------------------------------------------------------------------------------------------
# Renaming
# --------------------------------------------------------------------------------------------


def is_original_naming(sd: Mapping[str, Any]) -> bool:
    """True when ``sd`` uses the original HunyuanVideo naming (any key under ``img_in``,
    ``txt_in``, ``double_blocks``, ``single_blocks``, ``final_layer``, ...)."""
    return any(key.split(".", 1)[0] in _ORIGINAL_ROOTS for key in sd)


def _is_diffusers_naming(sd: Mapping[str, Any]) -> bool:
    return any(key.split(".", 1)[0] in _DIFFUSERS_ROOTS for key in sd)


def _linear1_hidden(sd: Mapping[str, torch.Tensor], module: str, key: str, tensor: torch.Tensor) -> int:
    """Hidden size of a single block's fused ``linear1``: its weight is [3*hidden + mlp, hidden]."""
    weight = tensor if tensor.ndim == 2 else sd.get(f"{module}.weight")
    if weight is None:
        weight = sd.get(f"{module.rsplit('.', 1)[0]}.linear2.weight")
        if weight is not None:
            return int(weight.shape[0])
        raise CheckpointError(
            f"cannot split tensor '{key}' into q/k/v/mlp without '{module}.weight' to give the hidden size."
        )
    return int(weight.shape[1])


def original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original-naming state dict to diffusers' ``HunyuanVideoTransformer3DModel`` naming.

    Fused q/k/v (and single blocks' q/k/v/mlp) rows are split into views, the final layer's
    ``[shift; scale]`` modulation becomes ``[scale; shift]``. Keys that no rule knows are kept
    unchanged, so a later strict load reports them. The input is not modified.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor, module, param, found, (rule,) in _known(sd, _ORIGINAL_INDEX, out):
        targets = [f"{_fill(t, found)}.{param}" for t in rule.diffusers]
        if rule.kind in (_RENAME, _SWAP):
            out[targets[0]] = _one_to_one(rule, key, tensor)
            continue
        if rule.kind == _QKV:
            if tensor.ndim == 0 or tensor.shape[0] % 3:
                raise CheckpointError(
                    f"tensor '{key}' has shape {_shape(tensor)}; its first dimension should be 3 x the "
                    "hidden size (fused q, k, v)."
                )
            sizes = [tensor.shape[0] // 3] * 3
        else:
            hidden = _linear1_hidden(sd, module, key, tensor)
            if tensor.ndim == 0 or tensor.shape[0] <= 3 * hidden:
                raise CheckpointError(
                    f"tensor '{key}' has shape {_shape(tensor)}; its first dimension should exceed "
                    f"3 x the hidden size {hidden} (fused q, k, v, mlp)."
                )
            sizes = [hidden, hidden, hidden, tensor.shape[0] - 3 * hidden]
        for target, piece in zip(targets, torch.split(tensor, sizes, dim=0), strict=True):
            out[target] = piece
    return out


def _known(sd: Mapping[str, torch.Tensor], index, out: dict[str, torch.Tensor]) -> Iterator[tuple]:
    """``(key, tensor, module, param, match, rule entry)`` for each key of ``sd`` that a rule of
    ``index`` knows; a key no rule knows goes into ``out`` unchanged (a later strict load reports it)."""
    for key, tensor in sd.items():
        module, param = _split_key(key)
        found, hit = _match(index, module)
        if found is None:
            out[key] = tensor
        else:
            yield key, tensor, module, param, found, hit


def _one_to_one(rule: _Rule, key: str, tensor: torch.Tensor) -> torch.Tensor:
    """A renamed tensor: as it is, or with the final layer's modulation halves swapped."""
    return _swap_halves(key, tensor) if rule.kind == _SWAP else tensor


def _swap_halves(key: str, tensor: torch.Tensor) -> torch.Tensor:
    if tensor.ndim == 0 or tensor.shape[0] % 2:
        raise CheckpointError(
            f"tensor '{key}' has shape {_shape(tensor)}; its first dimension should be 2 x the hidden size "
            "(shift and scale)."
        )
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _diffusers_to_original(
    sd: Mapping[str, torch.Tensor], *, strict: bool = True, source: str = "the state dict"
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, tensor, _module, param, found, (rule, _part) in _known(sd, _DIFFUSERS_INDEX, out):
        original_key = f"{_fill(rule.original, found)}.{param}"
        if original_key in out:
            continue  # a fused tensor already assembled from an earlier part
        if rule.kind in (_RENAME, _SWAP):
            out[original_key] = _one_to_one(rule, key, tensor)
            continue
        part_keys = [f"{_fill(t, found)}.{param}" for t in rule.diffusers]
        missing = next((k for k in part_keys if k not in sd), None)
        if missing is not None:
            if not strict:
                continue
            raise CheckpointError(
                f"{source} is missing tensor '{missing}', needed to build '{original_key}'."
            )
        parts = [sd[k] for k in part_keys]
        try:
            out[original_key] = torch.cat(parts, dim=0)
        except RuntimeError as exc:
            if not strict:
                continue
            shapes = ", ".join(f"'{k}' {_shape(p)}" for k, p in zip(part_keys, parts, strict=True))
            message = f"{source} has tensors that cannot be fused into '{original_key}': {shapes}."
            raise CheckpointError(message) from exc
    return out


def diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers ``HunyuanVideoTransformer3DModel`` state dict to the original naming.

    The exact inverse of :func:`original_to_diffusers`: q/k/v (and q/k/v/mlp) are concatenated
    back into fused rows and the final modulation is swapped back to ``[shift; scale]``. Keys
    that no rule knows are kept unchanged.

    Raises:
        CheckpointError: one part of a fused tensor is missing or the parts' shapes disagree.
    """
    return _diffusers_to_original(sd)


# --------------------------------------------------------------------------------------------
# Config inference
# --------------------------------------------------------------------------------------------


def _model_class():
    from diffusers import HunyuanVideoTransformer3DModel

    return HunyuanVideoTransformer3DModel


def _config_parameters() -> list[str]:
    signature = inspect.signature(_model_class().__init__)
    return [name for name in signature.parameters if name != "self"]


def _count_blocks(sd: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = [int(found.group(1)) for key in sd if (found := pattern.match(key))]
    return max(indices) + 1 if indices else 0


def _infer_config(
    sd: Mapping[str, torch.Tensor], overrides: Mapping[str, Any] | None, *, source: str
) -> dict[str, Any]:
    overrides = dict(overrides or {})
    valid = _config_parameters()
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise InvalidInput(
            f"unknown transformer config override(s) {', '.join(unknown)}; "
            f"valid names are {', '.join(valid)}."
        )

    def need(key: str, purpose: str, *alternatives: str) -> torch.Tensor:
        for name in (key, *alternatives):
            if name in sd:
                return sd[name]
        raise CheckpointError(f"{source} is missing tensor '{key}', which is needed to infer {purpose}.")

    img_in = need("img_in.proj.weight", "in_channels and the patch size")
    if img_in.ndim != 5:
        raise CheckpointError(
            f"{source}: tensor 'img_in.proj.weight' has shape {_shape(img_in)}, expected a 5-D Conv3d weight."
        )
    hidden, in_channels, patch_size_t, patch_size, patch_size_w = (int(s) for s in img_in.shape)
    if patch_size != patch_size_w:
        raise CheckpointError(
            f"{source}: tensor 'img_in.proj.weight' has a non-square patch {patch_size}x{patch_size_w}."
        )
    cfg: dict[str, Any] = {"in_channels": in_channels, "patch_size": patch_size, "patch_size_t": patch_size_t}

    final = need("final_layer.linear.weight", "out_channels")
    per_token = patch_size_t * patch_size * patch_size
    if final.shape[0] % per_token:
        raise CheckpointError(
            f"{source}: tensor 'final_layer.linear.weight' has shape {_shape(final)}, whose first dimension "
            f"is not a multiple of the patch volume {per_token}."
        )
    cfg["out_channels"] = int(final.shape[0]) // per_token

    head_dim = int(
        need(
            "double_blocks.0.img_attn_q_norm.weight",
            "the attention head size",
            "single_blocks.0.q_norm.weight",
        ).shape[0]
    )
    if head_dim <= 0 or hidden % head_dim:
        raise CheckpointError(
            f"{source}: the attention head size {head_dim} does not divide the hidden size {hidden}."
        )
    cfg["num_attention_heads"] = hidden // head_dim
    cfg["attention_head_dim"] = head_dim

    cfg["num_layers"] = _count_blocks(sd, "double_blocks.")
    cfg["num_single_layers"] = _count_blocks(sd, "single_blocks.")
    cfg["num_refiner_layers"] = _count_blocks(sd, "txt_in.individual_token_refiner.blocks.")

    mlp = need("double_blocks.0.img_mlp.fc1.weight", "mlp_ratio", "single_blocks.0.linear2.weight")
    if "double_blocks.0.img_mlp.fc1.weight" in sd:
        mlp_hidden = int(mlp.shape[0])  # fc1: [mlp, hidden]
    else:
        mlp_hidden = int(mlp.shape[1]) - hidden  # linear2: [hidden, hidden + mlp]
    cfg["mlp_ratio"] = mlp_hidden / hidden

    cfg["guidance_embeds"] = any(key.startswith("guidance_in.") for key in sd)
    cfg["text_embed_dim"] = int(need("txt_in.input_embedder.weight", "text_embed_dim").shape[1])
    cfg["pooled_projection_dim"] = int(need("vector_in.in_layer.weight", "pooled_projection_dim").shape[1])
    cfg["image_condition_type"] = "latent_concat" if in_channels == 2 * cfg["out_channels"] + 1 else None

    cfg.update(overrides)
    cfg["attention_head_dim"] = int(cfg["attention_head_dim"])
    if "rope_axes_dim" not in cfg:
        if cfg["attention_head_dim"] != 128:
            raise CheckpointError(
                f"{source} has attention head size {cfg['attention_head_dim']}, so rope_axes_dim cannot be "
                "assumed; pass it as an override, e.g. overrides={'rope_axes_dim': (t, h, w)} summing to "
                f"{cfg['attention_head_dim']}."
            )
        cfg["rope_axes_dim"] = DEFAULT_ROPE_AXES_DIM
    rope = tuple(int(d) for d in cfg["rope_axes_dim"])
    if len(rope) != 3 or sum(rope) != cfg["attention_head_dim"] or any(d <= 0 or d % 2 for d in rope):
        raise InvalidInput(
            f"rope_axes_dim {rope} must be three positive even sizes summing to the attention head size "
            f"{cfg['attention_head_dim']}."
        )
    cfg["rope_axes_dim"] = rope
    return cfg


def infer_config(
    original_sd: Mapping[str, torch.Tensor], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``HunyuanVideoTransformer3DModel`` keyword arguments inferred from an original-naming state dict.

    Only shapes and key names are read, so meta tensors work. Inferred: in/out channels,
    num_attention_heads, attention_head_dim (the q-norm size), num_layers, num_single_layers,
    num_refiner_layers, text_embed_dim, pooled_projection_dim, patch_size, patch_size_t,
    mlp_ratio, guidance_embeds, image_condition_type (``"latent_concat"`` when
    in_channels == 2 * out_channels + 1, else None) and rope_axes_dim, which weights do not
    show: (16, 56, 56) for head size 128, otherwise it must come from ``overrides``.
    ``overrides`` (any constructor argument) win over inferred values.

    Raises:
        CheckpointError: a tensor needed for inference is missing or malformed, or
            rope_axes_dim cannot be assumed.
        InvalidInput: an override name is unknown or rope_axes_dim does not fit the head size.
    """
    return _infer_config(original_sd, overrides, source="checkpoint")


# --------------------------------------------------------------------------------------------
# Loading and saving
# --------------------------------------------------------------------------------------------


def _meta_copy(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: torch.empty(tensor.shape, dtype=tensor.dtype, device="meta") for key, tensor in sd.items()}


def _validate(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise for the first missing / mis-shaped tensor (model order), then the first unexpected one."""
    for key, want in expected.items():
        have = sd.get(key)
        if have is None:
            raise CheckpointError(f"{source} is missing tensor '{key}' (expected shape {_shape(want)}).")
        if have.shape != want.shape:
            raise CheckpointError(
                f"{source}: tensor '{key}' has shape {_shape(have)}, expected {_shape(want)}."
            )
        if not have.is_floating_point():
            raise CheckpointError(
                f"{source}: tensor '{key}' has dtype {have.dtype}, expected a floating-point type."
            )
        if have.dtype in _FLOAT8_DTYPES:
            raise CheckpointError(
                f"{source}: tensor '{key}' is stored as {have.dtype}; scaled fp8 checkpoints are not "
                "supported, use the bf16 or fp32 release."
            )
    for key, have in sd.items():
        if key not in expected:
            raise CheckpointError(
                f"{source} has unexpected tensor '{key}' (shape {_shape(have)}), which this HunyuanVideo "
                "transformer does not have."
            )


_FLOAT8_DTYPES = frozenset(
    getattr(torch, name)
    for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu")
    if hasattr(torch, name)
)


def _needs_own_copy(tensor: torch.Tensor) -> bool:
    """True for a slice of a fused tensor, or a tensor safetensors placed at an unaligned address.

    Sharing storage breaks later safetensors saves; unaligned data makes CPU kernels take other
    code paths (results differ in the last bits from a normally allocated model).
    """
    owns = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return not owns or tensor.data_ptr() % _ALIGNMENT != 0


_ALIGNMENT = 64  # bytes, as torch's CPU allocator aligns


def load_transformer_from_single_file(
    path: str | os.PathLike,
    *,
    allow_pickle: bool = False,
    overrides: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> HunyuanVideoTransformer3DModel:
    """Load a single-file HunyuanVideo transformer checkpoint (original or diffusers naming).

    Reads the file (see :func:`read_state_dict`), converts original naming to diffusers',
    infers the config (see :func:`infer_config`; ``overrides`` win), builds the model with empty
    (meta) parameters, checks every tensor's name and shape against it and assigns the
    checkpoint's tensors, cast to ``dtype``, without materialising the weights twice. The model
    is returned in eval mode on the CPU.

    Raises:
        CheckpointError: unreadable or refused file, or a missing, unexpected or mis-shaped
            tensor (named in the file's own naming, with both shapes).
        InvalidInput: ``dtype`` is not a floating-point dtype or an override is invalid.
    """
    from accelerate import init_empty_weights

    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype in _FLOAT8_DTYPES:
        raise InvalidInput(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, not {dtype!r}.")
    source = f"checkpoint {Path(path).name}"
    sd = read_state_dict(path, allow_pickle=allow_pickle)

    original = is_original_naming(sd)
    if not original and not _is_diffusers_naming(sd):
        first = ", ".join(f"'{k}'" for k in list(sd)[:3])
        raise CheckpointError(
            f"{source} does not look like a HunyuanVideo transformer (its first tensors are {first})."
        )
    original_shapes = _meta_copy(sd) if original else _diffusers_to_original(_meta_copy(sd), strict=False)
    config = _infer_config(original_shapes, overrides, source=source)

    try:
        with init_empty_weights():  # parameters on meta; buffers (none today) built for real
            model = _model_class()(**config)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"the transformer config {config} is invalid ({_first_line(exc)}).") from exc

    expected = model.state_dict()
    if original:
        expected = _diffusers_to_original(expected, source=source)
    _validate(sd, expected, source)

    converted = original_to_diffusers(sd) if original else sd
    del sd
    state: dict[str, torch.Tensor] = {}
    for key in list(converted):
        tensor = converted.pop(key)
        if tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        elif _needs_own_copy(tensor):
            tensor = tensor.clone()  # the source is freed as we go: peak memory is the file + one tensor
        state[key] = tensor
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # validated above, so this is a conversion bug
        raise CheckpointError(f"{source} could not be loaded ({_first_line(exc)}).") from exc
    leftover = next((n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta), None)
    if leftover is not None:
        raise CheckpointError(f"{source} left tensor '{leftover}' of the model unset.")
    for module in model.modules():  # buffers (none today) follow dtype, as from_pretrained does
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_floating_point():
                module._buffers[name] = buffer.to(dtype)
    model.eval()
    return model


def save_original_checkpoint(model: HunyuanVideoTransformer3DModel, path: str | os.PathLike) -> Path:
    """Write a diffusers ``HunyuanVideoTransformer3DModel`` as one safetensors file in the original naming.

    The file is written to a temporary name beside ``path`` and renamed into place, so an
    interrupted export never leaves a truncated checkpoint. Returns the path written.

    Raises:
        InvalidInput: ``model`` is not a loaded HunyuanVideo transformer or ``path`` does not end
            in ``.safetensors``.
    """
    from safetensors.torch import save_file

    if not isinstance(model, _model_class()):
        raise InvalidInput(f"model must be a HunyuanVideoTransformer3DModel, not {type(model).__name__}.")
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise InvalidInput(f"the export path {path} must end in .safetensors.")
    state = model.state_dict()
    unset = next((key for key, tensor in state.items() if tensor.is_meta), None)
    if unset is not None:
        raise InvalidInput(
            f"model tensor '{unset}' has no data (meta device); load weights before exporting."
        )
    original = {k: t.detach().cpu().contiguous() for k, t in diffusers_to_original(state).items()}

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as temp:
        save_file(original, temp, metadata={"format": "pt"})
    return path
