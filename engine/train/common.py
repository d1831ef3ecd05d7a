"""What every training script shares: devices and torch.distributed, seeds, checkpoints, logs.

* ``setup()`` reads the environment ``torchrun`` sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) and
  initialises ``torch.distributed`` (NCCL on CUDA, gloo on the CPU); without it, one process runs.
  There is no home-made launcher: ``torchrun --nproc_per_node=N -m magic141.engine.train.teacher``.
* Randomness is a pure function of ``(seed, step, rank)`` (``step_rng``, ``step_generator``), so a
  run resumed from a checkpoint draws exactly what the uninterrupted run would have drawn, and
  ranks never draw the same samples (the DistributedSampler idea, without a sampler's state).
* Checkpoints are safetensors (weights and optimiser moments) plus a JSON file for step numbers and
  settings: no pickle. Each is written into its own folder and published by atomically replacing
  ``latest.json``, so an interrupted save never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from magic141.errors import CheckpointError, InvalidInput

LATEST = "latest.json"


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None, threads: int | None = None) -> Dist:
    """Device and process group from torchrun's environment (one process when it is absent)."""
    if threads:
        torch.set_num_threads(threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, dev)


def teardown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap(module: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    """DistributedDataParallel across ranks; the module itself for one process."""
    if dist.world == 1:
        return module
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


def mean_across(value: float, dist: Dist) -> float:
    """A scalar averaged over ranks (for logs)."""
    if dist.world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=dist.device)
    torch.distributed.all_reduce(tensor)
    return float(tensor) / dist.world


def step_rng(seed: int, step: int, rank: int = 0, stream: int = 0) -> np.random.Generator:
    """numpy randomness of one step on one rank: independent of everything that came before."""
    return np.random.default_rng([seed, step, rank, stream])


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0, device="cpu") -> torch.Generator:
    """torch randomness of one step on one rank (noise, timesteps)."""
    value = int(step_rng(seed, step, rank, 1000 + stream).integers(2**62))
    return torch.Generator(device).manual_seed(value)


def shard(indices: np.ndarray, dist: Dist) -> np.ndarray:
    """This rank's share of a global batch (every rank draws the same global batch, then slices it)."""
    return indices[dist.rank :: dist.world]


# Checkpoints -----------------------------------------------------------------------------------


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, float] = {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def save_checkpoint(
    run_dir: Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    meta: dict,
    keep: int = 2,
) -> Path:
    """Write ``run_dir/step-NNNNNN/`` and point ``latest.json`` at it (atomically); keep the last ``keep``."""
    run_dir = Path(run_dir)
    folder = run_dir / f"step-{step:07d}"
    partial = run_dir / f".partial-{step:07d}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    optim_meta = {}
    for name, module in modules.items():
        weights = {k: v.detach().cpu().contiguous() for k, v in unwrap(module).state_dict().items()}
        save_file(weights, partial / f"model-{name}.safetensors")
    for name, optimizer in optimizers.items():
        tensors, extra = _optimizer_tensors(optimizer)
        save_file(tensors, partial / f"optim-{name}.safetensors")
        optim_meta[name] = extra
    (partial / "state.json").write_text(
        json.dumps({"step": step, "meta": meta, "optim": optim_meta}, indent=1)
    )
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    write_json_atomic(run_dir / LATEST, {"step": step, "folder": folder.name})
    steps = sorted(p for p in run_dir.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / LATEST
    if not pointer.is_file():
        return None
    folder = Path(run_dir) / json.loads(pointer.read_text())["folder"]
    if not folder.is_dir():
        raise CheckpointError(f"{pointer} points at {folder}, which does not exist")
    return folder


def load_checkpoint(
    folder: Path,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> dict:
    """Restore modules (and optimisers) from a checkpoint folder; returns its ``state.json``."""
    folder = Path(folder)
    state = json.loads((folder / "state.json").read_text())
    for name, module in modules.items():
        path = folder / f"model-{name}.safetensors"
        if not path.is_file():
            raise CheckpointError(f"{folder} has no weights for {name!r}")
        missing, unexpected = unwrap(module).load_state_dict(load_file(path), strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{path} does not fit {name}: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
    for name, optimizer in (optimizers or {}).items():
        _load_optimizer(optimizer, load_file(folder / f"optim-{name}.safetensors"), state["optim"][name])
    return state


def load_weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    """The weights of ``name`` in a run's latest checkpoint (for the next stage of training)."""
    folder = latest_checkpoint(run_dir)
    if folder is None:
        raise CheckpointError(f"{run_dir} has no checkpoint (no {LATEST}); train that stage first")
    return load_file(folder / f"model-{name}.safetensors")


def run_summary(run: Path) -> dict:
    """A run's latest step and the settings it recorded (stage, wall time, device, ...)."""
    folder = latest_checkpoint(run)
    if folder is None:
        raise CheckpointError(f"{run} has no checkpoint (no {LATEST}); train that stage first")
    state = json.loads((folder / "state.json").read_text())
    return {"step": state["step"], **state["meta"]}


def write_json_atomic(path: Path, data) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# Logs ------------------------------------------------------------------------------------------


class RunLog:
    """JSON lines in ``run_dir/log.jsonl`` (rank 0), and a short line on stderr every ``every`` steps."""

    def __init__(self, run_dir: Path, dist: Dist, every: int = 10, quiet: bool = False) -> None:
        self.path = Path(run_dir) / "log.jsonl"
        self.dist = dist
        self.every = every
        self.quiet = quiet
        self.started = time.perf_counter()

    def __call__(self, step: int, **values: float) -> None:
        if not self.dist.main:
            return
        record = {"step": step, "time": round(time.perf_counter() - self.started, 2), **values}
        with open(self.path, "a") as log:
            log.write(json.dumps(record) + "\n")
        if not self.quiet and (step % self.every == 0):
            shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
            print(f"step {step} {shown} ({record['time']:.0f} s)", file=sys.stderr, flush=True)


def read_log(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_positive(name: str, value: int) -> int:
    if value < 1:
        raise InvalidInput(f"{name} must be at least 1, got {value}")
    return value


def stage_parser(
    module: str, doc: str, *, checkpoint_every: int, renders: bool = False
) -> argparse.ArgumentParser:
    """A training stage's command line, with the options every stage shares (``stage_options``).

    ``renders``: the stage draws its own world clips, so it takes ``--physics``.
    """
    parser = argparse.ArgumentParser(prog=f"python -m magic141.engine.train.{module}", description=doc.split("\n")[0])
    parser.add_argument(
        "--run-dir", type=Path, required=True, help="run folder: checkpoints, log.jsonl (resumed if present)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--checkpoint-every", type=int, default=checkpoint_every)
    parser.add_argument(
        "--stop-at", type=int, help="stop (resumably) after this step; --steps still sets the schedule"
    )
    if renders:
        from .. import world

        parser.add_argument(
            "--physics", choices=world.PHYSICS, default="basic", help="the world's physics (default: basic)"
        )
    return parser


def stage_options(args: argparse.Namespace) -> dict:
    """The shared options of ``stage_parser`` as keyword arguments of a stage's ``train``."""
    keys = ("seed", "device", "threads", "checkpoint_every", "stop_at", "physics")
    return {key: getattr(args, key) for key in keys if hasattr(args, key)}
