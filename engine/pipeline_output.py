"""Typed results and progress reports of the pipeline (never positional tuples)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class StepProgress:
    """Reported after every denoising step."""

    step: int  # 1-based
    total: int
    elapsed: float  # seconds since the loop started
    preview: np.ndarray | None = None  # small uint8 RGB frame, only when previews were asked for
    window: int = 1  # 1-based window of a sliding-window run
    windows: int = 1

    @property
    def eta(self) -> float:
        return self.elapsed / self.step * (self.total - self.step)


@dataclass
class I2VOutput:
    """One generated window."""

    frames: torch.Tensor  # [frames, height, width, 3] float32 in [0, 1], on the CPU
    latents: torch.Tensor  # final clean latents [1, 16, latent_frames, h, w]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    audio: tuple[torch.Tensor, int] | None = None  # [channels, samples] in [-1, 1] and its rate (LTX-2)


class CancelToken:
    """Set from any thread; the step loop checks it after every step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@contextmanager
def cancelled_by(signum: int, token: CancelToken):
    """While inside, signal ``signum`` cancels ``token``: the job stops after its current step and
    writes nothing. A second one goes to the handler that was there before, if it is a function (for
    Ctrl-C, Python's default: ``KeyboardInterrupt`` at once); otherwise it only cancels again.

    Setting a flag does not depend on the exception surviving: a plain ``KeyboardInterrupt`` was once
    lost in CI (the run went on to its last window and exited 0), presumably raised inside a library
    call that swallowed it. Main thread only.
    """
    previous = signal.getsignal(signum)

    def handle(number, frame):
        if token.cancelled and callable(previous):
            previous(number, frame)
        token.cancel()

    signal.signal(signum, handle)
    try:
        yield token
    finally:
        signal.signal(signum, previous)
