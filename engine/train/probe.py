"""The world probe: a small video network that reads the world's state back from a clip.

    python -m magic141.engine.train.probe --run-dir runs/probe --steps 1500 [--physics full] [--threads 2]

It regresses, from a clip of uint8 frames, the state the world rendered it from (``targets``): where
the object is at five instants, its colour and shape, the background's colours, the camera's pan,
the square's spin and the object's net velocity. Every clip is fresh (drawn from ``(seed, step,
rank)`` like the other stages' clips), so the probe never sees a clip twice and nothing is stored.

Why: a Fréchet video distance needs a feature extractor, and an I3D trained on Kinetics knows
nothing about 32x48 clips of one coloured shape. This probe's penultimate layer (``Probe.features``,
64 numbers per clip) has been trained to carry exactly what the world is made of, so the Fréchet
distance between the features of generated clips and of true clips (the world-FVD) grows when
generated clips get the object's colour, shape, position or motion, or the background, wrong. The
probe is trained by our scripts alone, on the world's own ground truth, and never on generated
clips, so a model cannot be tuned against it by accident. ``held_out_errors`` measures what it
reads (centre error in pixels, colour and background accuracy) for the model card; ``save_probe``
writes the folder that evaluation loads with ``load_probe``.

Architecture: the frames (normalised to [-1, 1]) and two coordinate channels (x and y across the
frame: a convolution alone barely knows where it is) go through four Conv3d blocks (GroupNorm,
SiLU). The first two read each frame alone (1x3x3 kernels, full resolution, then halved): with 3x3x3
kernels (or a halving) from the first layer, trial runs never told a circle from a square (a moving
object's corners blur over three frames). The last two are 3x3x3, halving time and space, and see the
motion. The object covers a few percent of the frame, so what it is shows in local responses that a
mean would dilute: the last three maps are max-pooled over the whole clip, and the last one is also
averaged over time on a 2x3 grid of the frame (where the object is, and the background). A linear
layer and SiLU make the 64 features of these, and a linear head the targets. Any clip of 9 frames
or more fits; the probe is trained on ``frames``.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from magic141 import atomic
from magic141.errors import CheckpointError, InvalidInput

from .. import world
from . import common
from .components import FPS, HEIGHT, WIDTH
from .vae import lr_at

FEATURES = 64
VERSION = 1
MIN_FRAMES = 9
CENTRE_FRAMES = 5  # the object's centre is regressed at this many evenly spaced frames

# The target vector (``targets``), entry by entry.
CENTRES = slice(0, 2 * CENTRE_FRAMES)  # x0, y0, x1, y1, ... in frame heights
COLOUR = slice(10, 14)  # one-hot, in world.COLOURS' order
SHAPE = slice(14, 16)  # one-hot, in world.SHAPES' order
BACKGROUND_LEFT = slice(16, 20)  # one-hot, in world.BACKGROUNDS' order
BACKGROUND_RIGHT = slice(20, 24)
PAN = 24  # frame heights per second, positive to the right
SPIN = 25  # turns per second, positive clockwise
VELOCITY = slice(26, 28)  # dx, dy per second from the first frame to the last, in frame heights
TARGETS = 28
CATEGORIES = (COLOUR, SHAPE, BACKGROUND_LEFT, BACKGROUND_RIGHT)
CONTINUOUS = [*range(CENTRES.start, CENTRES.stop), PAN, SPIN, *range(VELOCITY.start, VELOCITY.stop)]
# The loss: MSE on the continuous targets, weighted up (in frame heights one pixel is 1/32), plus the
# cross-entropy of each category. A circle and a square of about the same area differ in a few corner
# pixels: weighted like the rest, the shape stayed at chance in trial runs (800 steps) while everything
# else was learnt; weighted up, it is learnt (all held-out shapes right after 1500 steps).
CONTINUOUS_WEIGHT = 10.0
# Pan and spin are two of the 16 continuous targets and the slowest to learn: at equal weights, 1500
# steps left their held-out errors at 0.105 frame heights per second and 0.129 turns per second, for pans
# of 0.15-0.35 and spins of 0.25-0.6 (in 40 % and 25 % of clips). Each counts this many times in the MSE.
MOTION_WEIGHT = 8.0
_MSE_WEIGHTS = torch.tensor([MOTION_WEIGHT if i in (PAN, SPIN) else 1.0 for i in CONTINUOUS])
CATEGORY_WEIGHTS = (1.0, 4.0, 1.0, 1.0)  # colour, shape, background left, background right


def _one_hot(names, name: str) -> np.ndarray:
    out = np.zeros(len(names))
    out[list(names).index(name)] = 1.0
    return out


def centre_frames(frames: int) -> np.ndarray:
    """The frames (indices) whose object centres are targets: five, evenly spaced, first and last included."""
    return np.round(np.linspace(0, frames - 1, CENTRE_FRAMES)).astype(int)


def targets(state: world.WorldState, frames: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """What the probe regresses from the clip ``world.render(state, frames, height, width)``: [TARGETS].

    * ``CENTRES`` (0-9): the object's centre x, y at the five ``centre_frames``, in frame heights
      (``world.centres_px / height``; the frame is ``width / height`` wide and 1 high);
    * ``COLOUR`` (10-13): the object's colour, one-hot in ``world.COLOURS``' order;
    * ``SHAPE`` (14-15): circle or square, one-hot;
    * ``BACKGROUND_LEFT``, ``BACKGROUND_RIGHT`` (16-19, 20-23): the gradient's two colours, one-hot in
      ``world.BACKGROUNDS``' order. Where the camera is still at 0 (the basic world) they are the
      state's left and right colours, which the frame shows left to right. Otherwise they are the
      two colours in palette order: beyond the frame the gradient repeats mirrored, so a moved
      camera may show it right to left, and which colour the state calls left cannot be seen;
    * ``PAN`` (24): the camera's pan, frame heights per second (positive: to the right);
    * ``SPIN`` (25): the square's spin, turns per second (positive: clockwise; 0 for no spin);
    * ``VELOCITY`` (26-27): the object's net velocity from the first frame to the last (dx, dy in
      frame heights per second; a bounce in between shortens it).

    Geometry is in frame heights, so ``width`` changes nothing but the frame's extent; it is taken
    so that a call names the clip's size in full.
    """
    if frames < 2:
        raise InvalidInput(f"a clip needs at least 2 frames for its targets, got {frames}")
    centres = world.centres_px(state, frames, height) / height  # [frames, 2]
    left, right = state.background
    if state.camera or state.pan:
        left, right = sorted((left, right), key=list(world.BACKGROUNDS).index)
    seconds = float(Fraction(frames - 1) / FPS)
    return np.concatenate(
        [
            centres[centre_frames(frames)].reshape(-1),
            _one_hot(world.COLOURS, state.colour),
            _one_hot(world.SHAPES, state.shape),
            _one_hot(world.BACKGROUNDS, left),
            _one_hot(world.BACKGROUNDS, right),
            [state.pan, state.spin],
            (centres[-1] - centres[0]) / seconds,
        ]
    )


# The network -----------------------------------------------------------------------------------


class Block(torch.nn.Module):
    """Conv3d (strided; a 1x3x3 kernel reads each frame alone), GroupNorm, SiLU."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int, int], time: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(cin, cout, (time, 3, 3), stride=stride, padding=(time // 2, 1, 1))
        self.norm = torch.nn.GroupNorm(8, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.norm(self.conv(x)))


class Probe(torch.nn.Module):
    """uint8 frames [B, F, 32, 48, 3] (F >= 9) -> (features [B, 64], prediction [B, TARGETS]).

    The prediction's categorical slices (``CATEGORIES``) are logits; the rest are the continuous
    targets themselves. ``frames`` is the clip length it was trained on (recorded in its config).
    """

    GRID = (2, 3)  # the last map is pooled to this grid of the frame

    def __init__(self, frames: int = 25, channels: tuple[int, int, int, int] = (16, 32, 64, 64)) -> None:
        super().__init__()
        self.frames = frames
        self.physics: str | None = None  # the world it was trained on (``load_probe`` sets it)
        c1, c2, c3, c4 = channels
        self.blocks = torch.nn.ModuleList(
            [
                Block(3 + 2, c1, (1, 1, 1), time=1),  # [F, 32, 48]
                Block(c1, c2, (1, 2, 2), time=1),  # [F, 16, 24]
                Block(c2, c3, (2, 2, 2)),  # [F/2, 8, 12]
                Block(c3, c4, (2, 2, 2)),  # [F/4, 4, 6]
            ]
        )
        self.project = torch.nn.Linear(c2 + c3 + c4 + c4 * self.GRID[0] * self.GRID[1], FEATURES)
        self.head = torch.nn.Linear(FEATURES, TARGETS)
        ys = torch.linspace(-1, 1, HEIGHT)[:, None].expand(HEIGHT, WIDTH)
        xs = torch.linspace(-1, 1, WIDTH)[None, :].expand(HEIGHT, WIDTH)
        self.register_buffer("coords", torch.stack([xs, ys]), persistent=False)  # [2, H, W]

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, f, h, w, c = frames.shape
        if f < MIN_FRAMES or (h, w, c) != (HEIGHT, WIDTH, 3):
            raise InvalidInput(
                f"the probe reads clips [B, F>={MIN_FRAMES}, {HEIGHT}, {WIDTH}, 3], got {tuple(frames.shape)}"
            )
        x = frames.to(self.coords.dtype).permute(0, 4, 1, 2, 3) / 127.5 - 1  # [B, 3, F, H, W]
        coords = self.coords[None, :, None].expand(b, 2, f, h, w)
        maps = []
        x = torch.cat([x, coords], dim=1)
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        # The object covers a few percent of the frame: what it is (shape, spin) shows in local
        # responses that a mean over the frame dilutes to nothing, so the middle maps are max-pooled
        # over the clip; where it is and how the background looks comes from the last map's grid.
        grid = F.adaptive_avg_pool2d(x.mean(dim=2), self.GRID).flatten(1)
        pooled = torch.cat([*(m.amax(dim=(2, 3, 4)) for m in maps[1:]), grid], dim=1)
        features = F.silu(self.project(pooled))
        return features, self.head(features)

    @torch.no_grad()
    def features(self, frames: np.ndarray, batch: int = 64) -> np.ndarray:
        """Features [B, 64] (float64) of uint8 clips [B, F, H, W, 3]: what the world-FVD compares.

        Computed in eval mode on the module's device, ``batch`` clips at a time; the module's mode
        is restored afterwards.
        """
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 5:
            raise InvalidInput(
                f"features need uint8 clips [B, F, H, W, 3], got {frames.dtype} {frames.shape}"
            )
        device = self.coords.device
        was_training = self.training
        self.eval()
        try:
            out = [
                self(torch.from_numpy(np.ascontiguousarray(frames[i : i + batch])).to(device))[0]
                for i in range(0, len(frames), batch)
            ]
        finally:
            self.train(was_training)
        if not out:
            return np.zeros((0, FEATURES))
        return torch.cat(out).double().cpu().numpy()


def build_probe(seed: int, frames: int = 25) -> Probe:
    """A freshly initialised probe, the same for the same seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Probe(frames)


def loss_of(
    prediction: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mse, cross-entropy): MSE on the continuous targets (pan and spin weighted up by
    ``MOTION_WEIGHT``), cross-entropy on each category (the log's ``mse`` and ``ce`` are plain means)."""
    errors = (prediction[:, CONTINUOUS] - target[:, CONTINUOUS]).pow(2).mean(0)
    weights = _MSE_WEIGHTS.to(errors)
    ce = torch.stack([F.cross_entropy(prediction[:, s], target[:, s].argmax(1)) for s in CATEGORIES])
    weighted = (ce * ce.new_tensor(CATEGORY_WEIGHTS)).sum()
    loss = CONTINUOUS_WEIGHT * (errors * weights).sum() / weights.sum() + weighted
    return loss, errors.detach().mean(), ce.detach().mean()


class ProbeLoss(torch.nn.Module):
    """The probe and its loss as one module, so DistributedDataParallel sees a single ``forward``."""

    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self.probe = probe

    def forward(self, frames: torch.Tensor, target: torch.Tensor):
        return loss_of(self.probe(frames)[1], target)


def render_batch(
    rng: np.random.Generator, batch: int, frames: int, physics: str
) -> tuple[np.ndarray, np.ndarray, list[world.WorldState]]:
    """``batch`` random world clips: uint8 [B, F, H, W, 3], their targets [B, TARGETS], their states.

    ``world.sample_state`` draws the position, the phase of a fall, the square's angle and the
    camera uniformly, so each clip starts at a random moment of its world's motion.
    """
    aspect = Fraction(WIDTH, HEIGHT)
    states = [world.sample_state(rng, aspect=aspect, physics=physics) for _ in range(batch)]
    clips = np.stack([world.render(s, frames, HEIGHT, WIDTH) for s in states])
    return clips, np.stack([targets(s, frames, HEIGHT, WIDTH) for s in states]), states


# Training --------------------------------------------------------------------------------------


def train(
    run_dir: Path,
    *,
    steps: int,
    batch: int = 16,
    frames: int = 25,
    lr: float = 1e-3,
    physics: str = "full",
    checkpoint_every: int = 200,
    **options: Any,
) -> dict:
    """Train (or resume) to ``steps``; returns the last logged values and the wall time spent.
    ``options``: those of ``common.Run`` (seed, device, threads, stop_at, quiet)."""
    if frames < MIN_FRAMES:
        raise InvalidInput(f"the probe trains on clips of at least {MIN_FRAMES} frames, got {frames}")
    if physics not in world.PHYSICS:
        raise InvalidInput(f"physics must be one of {', '.join(world.PHYSICS)}, got {physics!r}")
    run = common.Run(run_dir, "probe", steps=steps, checkpoint_every=checkpoint_every, **options)
    dist, seed = run.dist, run.seed
    probe = build_probe(seed, frames).to(dist.device).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.01)
    if run.latest is not None:
        run.resume({"probe": probe}, {"probe": optimizer})
    model = common.wrap(ProbeLoss(probe), dist)
    per_rank = max(1, batch // dist.world)
    settings = dict(
        batch=batch, frames=frames, lr=lr, steps=steps, physics=physics, features=FEATURES, targets=TARGETS
    )
    values: dict = {}
    for step in run.steps():
        clips, target, _ = render_batch(common.step_rng(seed, step, dist.rank), per_rank, frames, physics)
        common.set_lr(lr_at(step, steps, lr), optimizer)
        frames_t = torch.from_numpy(clips).to(dist.device)
        loss, mse, ce = model(frames_t, torch.from_numpy(target).float().to(dist.device))
        common.optimize(loss, [optimizer], probe.parameters())
        values = run.averaged(mse=mse, ce=ce)
        run.log(step + 1, loss=float(loss.detach()), **values)
        if step + 1 == steps and dist.main:  # the last checkpoint records what it reads of held-out clips
            settings["held_out"] = held_out_errors(probe, physics=physics)
        run.checkpoint(step + 1, {"probe": probe}, {"probe": optimizer}, **settings)
    return run.finish(values)


@torch.no_grad()
def held_out_errors(
    probe: Probe, count: int = 64, seed: int = 1234, physics: str = "full", frames: int | None = None
) -> dict:
    """What the probe reads from ``count`` held-out clips (``frames`` long, by default its own length).

    The states come from ``np.random.default_rng([seed, 7919])``, a stream no training step draws
    from. Returns the mean centre error in pixels (over the five centre frames), the colour, shape
    and background accuracy (background: both colours right), and the mean absolute error of the
    pan, the spin and the velocity (frame heights or turns per second).
    """
    frames = frames or probe.frames
    clips, target, _ = render_batch(np.random.default_rng([seed, 7919]), count, frames, physics)
    was_training = probe.training
    probe.eval()
    device = probe.coords.device
    try:
        chunks = [torch.from_numpy(clips[i : i + 64]).to(device) for i in range(0, count, 64)]
        pred = torch.cat([probe(chunk)[1] for chunk in chunks])
    finally:
        probe.train(was_training)
    p = pred.double().cpu().numpy()

    def right(s: slice) -> np.ndarray:
        return p[:, s].argmax(1) == target[:, s].argmax(1)

    offsets = (p[:, CENTRES] - target[:, CENTRES]).reshape(count, CENTRE_FRAMES, 2) * HEIGHT
    return {
        "clips": count,
        "frames": frames,
        "physics": physics,
        "centre_error_px": float(np.linalg.norm(offsets, axis=-1).mean()),
        "colour_accuracy": float(right(COLOUR).mean()),
        "shape_accuracy": float(right(SHAPE).mean()),
        "background_accuracy": float((right(BACKGROUND_LEFT) & right(BACKGROUND_RIGHT)).mean()),
        "pan_error": float(np.abs(p[:, PAN] - target[:, PAN]).mean()),
        "spin_error": float(np.abs(p[:, SPIN] - target[:, SPIN]).mean()),
        "velocity_error": float(np.abs(p[:, VELOCITY] - target[:, VELOCITY]).mean()),
    }


# The probe's folder ----------------------------------------------------------------------------

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def save_probe(run_dir: Path, folder: Path) -> Path:
    """Write the run's latest probe as ``folder/config.json`` and ``folder/model.safetensors`` (float32)."""
    summary = common.run_summary(Path(run_dir))
    weights = {k: v.float().contiguous() for k, v in common.load_weights(Path(run_dir), "probe").items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(folder / WEIGHTS) as temp:
        save_file(weights, temp)
    config = {
        "_class_name": "Probe",
        "features": FEATURES,
        "frames": summary["frames"],
        "height": HEIGHT,
        "width": WIDTH,
        "physics": summary["physics"],
        "version": VERSION,
    }
    atomic.write_json(folder / CONFIG, config, indent=1)
    return folder


def load_probe(folder: Path, device: str | torch.device = "cpu") -> Probe:
    """The probe saved in ``folder`` (``save_probe``), in eval mode and frozen.

    Refuses, with a ``CheckpointError`` naming the file, a folder without its config or weights, a
    config of another class, size or version, and weights that do not fit the probe.
    """
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG, folder / WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: not a probe folder (see save_probe)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_path} cannot be read: {exc}") from exc
    expected = {
        "_class_name": "Probe",
        "features": FEATURES,
        "height": HEIGHT,
        "width": WIDTH,
        "version": VERSION,
    }
    wrong = {k: config.get(k) for k, v in expected.items() if config.get(k) != v}
    if wrong or not isinstance(config.get("frames"), int):
        wrong = wrong or {"frames": config.get("frames")}
        raise CheckpointError(f"{config_path} does not describe this probe: {wrong}")
    probe = Probe(config["frames"])
    try:
        weights = load_file(weights_path)
        missing, unexpected = probe.load_state_dict(weights, strict=False)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{weights_path} does not fit the probe: {exc}") from exc
    if missing or unexpected:
        found = f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        raise CheckpointError(f"{weights_path} does not fit the probe: {found}")
    probe.physics = config.get("physics")
    probe.requires_grad_(False)
    return probe.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    parser = common.stage_parser("probe", __doc__, checkpoint_every=200, renders=True)
    parser.set_defaults(physics="full")
    for action in parser._actions:
        if action.dest == "physics":
            action.help = "the world's physics (default: full)"
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16, help="global batch (split across ranks)")
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--lr", type=float, default=1e-3)
    return common.run_cli(parser, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
