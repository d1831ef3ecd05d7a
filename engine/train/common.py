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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from magic141 import atomic
from magic141.errors import CheckpointError

LATEST = "latest.json"
Batchable = TypeVar("Batchable", np.ndarray, list)
Modules = dict[str, torch.nn.Module]
Optimizers = dict[str, torch.optim.Optimizer]


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
    """Leave the process group together: every rank waits for the others (rank 0 may still be writing
    the last checkpoint) before it is destroyed. A rank destroying a gloo group while another still
    used it hung the two-process CI test at exit under load (its training had finished)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
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


def shard(items: Batchable, dist: Dist) -> Batchable:
    """This rank's share of a global batch (every rank draws the same global batch, then slices it)."""
    return items[dist.rank :: dist.world]


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
    modules: Modules,
    optimizers: Optimizers,
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
    state = {"step": step, "meta": meta, "optim": optim_meta}
    (partial / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    atomic.write_json(run_dir / LATEST, {"step": step, "folder": folder.name}, indent=1)
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
    modules: Modules,
    optimizers: Optimizers | None = None,
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


def freeze(run_dir: Path) -> Path:
    """Keep only what later stages read of a finished run: its latest weights, as float16 (what the
    export ships), and its log; the optimiser moments and older checkpoints go. A frozen run is small
    enough to commit, so a fresh clone resumes the recipe after it (``__main__.py``); it can no
    longer train further."""
    folder = finished_checkpoint(run_dir)
    state = json.loads((folder / "state.json").read_text())
    for path in folder.glob("model-*.safetensors"):
        weights = load_file(path)
        save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, path)
    for path in folder.glob("optim-*.safetensors"):
        path.unlink()
    state.update(frozen=True, optim={})
    atomic.write_json(folder / "state.json", state, indent=1)
    for old in Path(run_dir).glob("step-*"):
        if old != folder:
            shutil.rmtree(old)
    return folder


def finished_checkpoint(run_dir: Path) -> Path:
    """The latest checkpoint of a stage that a later stage (or the export) reads: it must have one."""
    folder = latest_checkpoint(run_dir)
    if folder is None:
        raise CheckpointError(f"{run_dir} has no checkpoint (no {LATEST}); train that stage first")
    return folder


def load_weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    """The weights of ``name`` in a run's latest checkpoint (for the next stage of training)."""
    return load_file(finished_checkpoint(run_dir) / f"model-{name}.safetensors")


def run_summary(run: Path) -> dict:
    """A run's latest step and the settings it recorded (stage, wall time, device, ...)."""
    state = json.loads((finished_checkpoint(run) / "state.json").read_text())
    return {"step": state["step"], **state["meta"]}


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


class Run:
    """One stage's run: its folder, where it resumes, its log, its checkpoints and what it returns.

    ``steps`` is the schedule's length; the run stops (resumably) after ``stop_at`` if given. A
    checkpoint is saved every ``checkpoint_every`` steps, at the end, at ``stop_at`` and after each
    of ``milestones``. ``seed``, ``device``, ``threads``, ``quiet``, ``stop_at`` and
    ``checkpoint_every`` are what every stage's ``train`` takes as ``**options`` (``stage_parser``
    reads them from a command line).
    """

    def __init__(
        self, run_dir: Path, stage: str, *, steps: int, checkpoint_every: int,
        milestones: tuple[int, ...] = (), seed: int = 0, device: str | None = None,
        threads: int | None = None, stop_at: int | None = None, quiet: bool = False,
    ) -> None:
        self.dist = setup(device, threads)
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stage, self.total, self.stop_at, self.seed = stage, steps, stop_at, seed
        self.due = {steps, *milestones} | ({stop_at} if stop_at else set())
        self.every = checkpoint_every
        self.latest = latest_checkpoint(self.dir)  # None: a fresh run
        self.start, self.wall = 0, 0.0
        self.log = RunLog(self.dir, self.dist, quiet=quiet)
        self.clock = time.perf_counter()

    def resume(self, modules: Modules, optimizers: Optimizers) -> dict:
        """Restore ``latest`` (there must be one) and continue after its step; returns its ``state.json``."""
        assert self.latest is not None
        state = json.loads((self.latest / "state.json").read_text())
        if state.get("frozen"):
            if state["step"] < self.total:
                raise CheckpointError(
                    f"{self.dir} was frozen at step {state['step']} (weights only) and cannot train on to "
                    f"{self.total}: move it away to train this stage again"
                )
            optimizers = {}
        state = load_checkpoint(self.latest, modules, optimizers)
        self.start, self.wall = state["step"], state["meta"]["wall_seconds"]
        return state

    def steps(self) -> range:
        """The steps left to run; the wall clock (and the log's) starts now."""
        self.clock = self.log.started = time.perf_counter()
        return range(self.start, min(self.total, self.stop_at or self.total))

    def wall_seconds(self) -> float:
        """Training time over every session of this run (resumes included)."""
        return self.wall + time.perf_counter() - self.clock

    def averaged(self, **values: float | torch.Tensor) -> dict[str, float]:
        """Scalars averaged over ranks, for the log."""
        scalars = {key: float(torch.as_tensor(value).detach()) for key, value in values.items()}
        return {key: mean_across(value, self.dist) for key, value in scalars.items()}

    def checkpoint(self, done: int, modules: Modules, optimizers: Optimizers, **settings: Any) -> None:
        """After step ``done``, save a checkpoint if one is due (rank 0), with the settings every stage
        records (stage, wall time, device, world size, threads, seed) and the stage's ``settings``."""
        if not self.dist.main or (done % self.every and done not in self.due):
            return
        meta = {"stage": self.stage, "wall_seconds": self.wall_seconds(), "device": str(self.dist.device),
                "world_size": self.dist.world, "threads": torch.get_num_threads(), "seed": self.seed}
        save_checkpoint(self.dir, done, modules, optimizers, {**meta, **settings})

    def finish(self, values: dict) -> dict:
        """Leave the process group; the last logged values and the wall time, as ``train`` returns them."""
        teardown()
        return {**values, "wall_seconds": self.wall_seconds()}


def optimize(loss: torch.Tensor, optimizers: list[torch.optim.Optimizer], parameters, max_norm=1.0) -> None:
    """One update: gradients of ``loss``, clipped to ``max_norm`` over ``parameters``, applied."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    for optimizer in optimizers:
        optimizer.step()


def set_lr(lr: float, *optimizers: torch.optim.Optimizer) -> None:
    """The learning rate of every parameter group of ``optimizers`` (a schedule's value for this step)."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr


def stage_parser(
    module: str, doc: str, *, checkpoint_every: int, renders: bool = False
) -> argparse.ArgumentParser:
    """A training stage's command line, with the options every stage shares (``Run``'s).

    ``renders``: the stage draws its own world clips, so it takes ``--physics``.
    """
    prog = f"python -m magic141.engine.train.{module}"
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
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


def run_cli(parser: argparse.ArgumentParser, function: Callable[..., object], argv: list[str] | None) -> int:
    """Parse a stage's command line and print what ``function`` returns (options named as its arguments)."""
    print(function(**vars(parser.parse_args(argv))))
    return 0
