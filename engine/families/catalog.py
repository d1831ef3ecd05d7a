"""What each family needs and what is installed: ``magic141 info --families`` and the panel's Model menu.

Memory per mode comes from the real model's parameter counts and geometry, built on the meta
device (``Family.build_real``: nothing is downloaded or allocated), through the same
``memory.estimate_peak`` that refuses a job that would not fit. Installed copies are the
repositories in the Hugging Face cache whose ``model_index.json`` names a family's pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from magic141.protocol import MODELS_VERSION

from ..memory import MemoryEstimate, estimate_peak
from ..models import parameter_counts
from . import FAMILIES, Family, Geometry

# The placements a user chooses between, as Engine.load's options.
MODES: dict[str, dict] = {
    "bf16": {},
    "fp8": {"quant": "fp8"},
    "fp8 + offload": {"quant": "fp8", "offload": True},
    "fp8 + group offload": {"quant": "fp8", "group_offload": True},
    "fp8 + offload + VAE tiling": {"quant": "fp8", "offload": True, "vae_tiling": True},
}


def estimate(family: Family, counts: dict[str, int], geometry: Geometry, *, height: int, width: int,
             frames: int, guidance: float, dtype_bytes: int = 2, quant: str = "none",
             text_quant: str = "none", offload: bool = False, vae_tiling: bool = False,
             release_text_encoders: bool = True, group_offload: bool = False) -> MemoryEstimate:
    """Peak memory of one window of a family's model. Two experts (Wan 2.2) are both on the device,
    except with offload, which moves one at a time."""
    dits = [name for name in family.dits if name in counts]
    dit_counts = [counts[name] for name in dits]
    return estimate_peak(
        dit_params=max(dit_counts) if offload else sum(dit_counts),
        text_params=sum(counts.get(name, 0) for name in family.text_encoders),
        vae_params=sum(n for name, n in counts.items() if name not in (*dits, *family.text_encoders)),
        height=height, width=width, frames=frames, quant=quant, text_quant=text_quant, offload=offload,
        vae_tiling=vae_tiling, release_text_encoders=release_text_encoders, group_offload=group_offload,
        hidden=geometry.hidden,
        heads=geometry.heads, num_layers_total=geometry.layers, batch=2 if guidance > 1.0 else 1,
        patch=geometry.patch, vae_spatial=geometry.vae_spatial, vae_temporal=geometry.vae_temporal,
        latent_channels=geometry.latent_channels, dtype_bytes=dtype_bytes,
    )


@dataclass(frozen=True)
class RealSize:
    counts: dict[str, int]
    geometry: Geometry


@cache
def real_size(name: str) -> RealSize:
    parts = FAMILIES[name].build_real()
    for module in parts.values():  # built on the meta device, shared embeddings are not tied yet
        if hasattr(module, "tie_weights"):
            module.tie_weights()
    return RealSize(parameter_counts(parts), FAMILIES[name].geometry(parts))


def needs(family: Family) -> dict[str, int]:
    """Bytes of device memory per mode for one default window of the real distilled model (no CFG)."""
    real = real_size(family.name)
    height, width = family.default_size
    return {mode: estimate(family, real.counts, real.geometry, height=height, width=width,
                           frames=family.window_frames, guidance=family.distilled.guidance,
                           **options).total_peak
            for mode, options in MODES.items()}


def installed() -> list[tuple[str, str, Path]]:
    """(family name, repository id, folder) of each family's model in the Hugging Face cache."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    from . import family_of_pipeline

    try:
        repos = scan_cache_dir().repos
    except (CacheNotFound, OSError):
        return []
    found = []
    for repo in sorted(repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        snapshot = max(repo.revisions, key=lambda r: r.last_modified).snapshot_path
        try:
            class_name = json.loads((snapshot / "model_index.json").read_text()).get("_class_name")
        except (OSError, ValueError, AttributeError):
            continue
        family = family_of_pipeline(class_name)
        if family is not None:
            found.append((family.name, repo.repo_id, snapshot))
    return found


def catalog() -> dict:
    """Every family: its facts, what it needs per mode, and its installed copies (versioned JSON)."""
    copies = installed()
    return {"version": MODELS_VERSION, "modes": list(MODES), "families": [{
        "name": family.name,
        "label": family.label,
        "tiny": family.tiny_name,
        "pipeline": family.pipeline,
        "native_fps": str(family.native_fps),
        "window_frames": family.window_frames,
        "default_size": list(family.default_size),
        "steps": {"base": family.base.steps, "distilled": family.distilled.steps},
        "guidance": {"base": family.base.guidance, "distilled": family.distilled.guidance},
        "audio": family.audio,
        "folder": family.folder,
        "needs_bytes": needs(family),
        "installed": [{"model": repo, "path": str(path)} for name, repo, path in copies
                      if name == family.name],
    } for family in FAMILIES.values()]}


def describe(data: dict) -> str:
    """``catalog()`` as ``magic141 info --families`` prints it."""
    lines = []
    for family in data["families"]:
        height, width = family["default_size"]
        needs_text = ", ".join(f"{mode} {n / 2**30:.0f} GiB" for mode, n in family["needs_bytes"].items())
        copies = ", ".join(copy["model"] for copy in family["installed"]) or "none in the Hugging Face cache"
        lines += [
            f"{family['name']:<8} {family['label']} ({family['pipeline']})",
            f"         --model {family['tiny']} runs it offline at toy size; installed: {copies}",
            f"         {family['native_fps']} fps, windows of {family['window_frames']} frames, "
            f"{height}x{width}; "
            f"{family['steps']['distilled']} steps CFG {family['guidance']['distilled']:g} distilled, "
            f"{family['steps']['base']} steps CFG {family['guidance']['base']:g} base; "
            f"sound: {'yes' if family['audio'] else 'no'}",
            f"         needs (one window, distilled): {needs_text}",
            f"         folder: {family['folder']}",
        ]
    return "\n".join(lines)
