"""What every model family shares: its facts (``Family``), and the engine's view of its pipeline.

A family is one diffusers image-to-video pipeline class and the weights made for it. Its window
pipeline is a subclass of that diffusers class (``WindowMixin`` first) that adds two things the
engine needs and diffusers does not have: a condition of several frames for the sliding window
(``condition_video``), and progress and cancelling on every step, taken from the pipeline's own
``progress_bar`` so it works for pipelines without ``callback_on_step_end``. With no condition
video a window pipeline is the diffusers pipeline: each family's parity test holds it to that.

``FamilyPipeline`` wraps a window pipeline in the interface ``generate.Engine`` drives
(``Magic141Pipeline``'s): encode the prompts once, then one call per window returning ``I2VOutput``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import PIL.Image
import torch

from magic141.errors import InvalidInput, JobCancelled

from ..pipeline_output import CancelToken, I2VOutput, StepProgress


@dataclass(frozen=True)
class Sampling:
    """How a family's weights sample by default."""

    steps: int
    guidance: float  # 1: no classifier-free guidance


@dataclass(frozen=True)
class Family:
    name: str  # the registry key, and the ``family`` a job's settings record
    label: str  # in words, for ``magic141 info`` and the panel
    pipeline: str  # the diffusers class a folder's model_index.json names
    native_fps: Fraction
    window_frames: int  # longest native window (frame_multiple * k + 1) before the sliding window
    default_size: tuple[int, int]  # height, width
    base: Sampling
    distilled: Sampling  # with the family's few-step weights or distillation LoRA
    audio: bool  # makes a sound track with the picture
    dits: tuple[str, ...]  # the denoiser components: quantised, and counted as the DiT
    text_encoders: tuple[str, ...]
    window_class: Callable[[], type]  # the window pipeline (imported on first use)
    geometry: Callable[[dict], Geometry]  # of components (the DiT and the VAE are read)
    build_tiny: Callable[[], dict]  # a random-init miniature of the real classes
    # The real model's DiT(s), VAE and encoders on the meta device (no weights, no memory): their
    # parameter counts and geometry give what a real folder needs before one is downloaded.
    build_real: Callable[[], dict]
    tiny_name: str  # its ``--model`` name
    folder: str  # what a model folder holds, in words (the README's table)
    tiny_size: tuple[int, int] = (64, 96)
    tiny_window_frames: int = 17
    conditionings: tuple[str, ...] = ("diffusers",)  # the diffusers pipeline's own way only
    # The first pair of components that do not fit each other, as "file: why" (None: they fit).
    mismatch: Callable[[dict], str | None] = lambda components: None


@dataclass(frozen=True)
class Geometry:
    """The numbers ``memory.estimate_peak`` needs besides parameter counts."""

    hidden: int
    heads: int
    layers: int
    patch: tuple[int, int, int]
    vae_spatial: int
    vae_temporal: int
    latent_channels: int


@contextmanager
def on_meta() -> Iterator[None]:
    """Modules built inside (on this thread) are on the meta device: shapes and counts, no memory.
    torch's device context is per thread, unlike accelerate's ``init_empty_weights``, which patches
    ``nn.Module`` for every thread: the service builds these while its worker loads a real model."""
    with torch.device("meta"):
        yield


class _Steps:
    """Stands in for diffusers' tqdm bar inside a window: each ``update`` is one finished step."""

    def __init__(self, on_step: Callable[[int], None]) -> None:
        self.on_step, self.done = on_step, 0

    def __enter__(self) -> _Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.done += n
        self.on_step(self.done)


class WindowMixin:
    """Mixed (first) into a diffusers image-to-video pipeline class; see the module's docstring.

    A family's subclass uses ``condition_video`` where its diffusers class builds the image
    condition (``prepare_latents`` or the like), and implements ``encode_prompts`` and
    ``window_kwargs`` (and ``frames_of``, ``audio_of``, ``audio_rate`` where the defaults do not fit).
    """

    condition_video: torch.Tensor | None = None  # pixels [1, 3, m*(K-1)+1, H, W] in [-1, 1]
    on_step: Callable[[int], None] | None = None

    def progress_bar(self, iterable=None, total=None):  # diffusers' hook, called once per loop
        if self.on_step is None:
            return super().progress_bar(iterable=iterable, total=total)  # type: ignore[misc]
        return _Steps(self.on_step)

    # What each family says -------------------------------------------------------------------

    def encode_prompts(self, prompt: str, device: torch.device) -> dict[str, torch.Tensor]:
        """``prompt_*`` keyword arguments of the diffusers ``__call__`` for one prompt."""
        raise NotImplementedError

    def window_kwargs(self, *, height: int, width: int, num_frames: int, steps: int, shift: float,
                      guidance: float, fps: Fraction) -> dict[str, Any]:
        """The rest of the diffusers ``__call__``'s arguments for one window."""
        raise NotImplementedError

    def frames_of(self, output) -> torch.Tensor:
        """The diffusers output's video as [frames, H, W, 3] float32 in [0, 1] on the CPU."""
        video = output.frames  # output_type "pt": [batch, frames, 3, H, W] in [0, 1]
        return video[0].float().permute(0, 2, 3, 1).clamp(0, 1).cpu()

    def audio_of(self, output) -> tuple[torch.Tensor, int] | None:
        """The window's sound, [channels, samples] float32 in [-1, 1], and its rate; None: silent."""
        return None

    @property
    def audio_rate(self) -> int:
        """Samples per second of ``audio_of`` (families with sound)."""
        raise NotImplementedError



def misfit(checks: list[tuple[str, str, int, int]]) -> str | None:
    """The first of ``(file, what, value, expected)`` whose value is not as expected, in words."""
    return next((f"{file}: {what} is {value}, the other components need {expected}"
                 for file, what, value, expected in checks if value != expected), None)


def check_placement(offload: bool, group_offload: bool) -> None:
    if offload and group_offload:
        raise InvalidInput("offload and group offload are two placements of the DiT; choose one",
                           field="offload")


def stream_blocks(module: torch.nn.Module, device: torch.device) -> None:
    """diffusers' group offload: ``module`` stays on the CPU, and each of its blocks moves to ``device``
    to run (the next one fetched meanwhile on a CUDA stream). Slower than keeping it there, but the
    device holds two blocks, not the whole DiT."""
    module.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                offload_type="block_level", num_blocks_per_group=1,
                                use_stream=device.type == "cuda")


def check_conditioning(family: Family, conditioning: str) -> None:
    if conditioning not in family.conditionings:
        raise InvalidInput(f"must be one of {', '.join(family.conditionings)} for {family.label}, got "
                           f"{conditioning!r}", field="conditioning")


def negative_names(embeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``prompt_embeds`` -> ``negative_prompt_embeds``, as every diffusers pipeline names them."""
    return {f"negative_{name}": value for name, value in embeds.items()}


@dataclass(eq=False)
class FamilyPipeline:
    """A family's window pipeline in the interface ``Engine`` drives."""

    family: Family
    pipe: Any  # the window pipeline (a diffusers pipeline)
    device: torch.device
    offload: bool = False
    release_text_encoders: bool = True
    group_offload: bool = False
    _text_on_device: bool = field(default=True, init=False)

    @classmethod
    def build(cls, family: Family, components: dict, *, device: str | torch.device = "cpu",
              offload: bool = False, release_text_encoders: bool = True,
              group_offload: bool = False) -> FamilyPipeline:
        device = torch.device(device)
        check_placement(offload, group_offload)
        pipe = family.window_class()(**components)
        pipe.set_progress_bar_config(disable=True)
        if offload:  # diffusers' model offload: each component on the device only while it runs
            pipe.enable_model_cpu_offload(device=device)
        else:
            for name, module in pipe.components.items():
                if isinstance(module, torch.nn.Module):
                    if group_offload and name in family.dits:
                        stream_blocks(module, device)
                    else:
                        module.to(device)
        return cls(family, pipe, device, offload, release_text_encoders, group_offload)

    @property
    def frame_multiple(self) -> int:
        """Native frame counts are ``frame_multiple * k + 1`` (the causal VAE's)."""
        return self.geometry.vae_temporal

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (VAE x DiT patch)."""
        return self.geometry.vae_spatial * self.geometry.patch[1]

    @property
    def geometry(self) -> Geometry:
        return self.family.geometry(self.pipe.components)

    def frames_dropped(self, conditioning: str) -> int:
        return 0

    @property
    def audio_rate(self) -> int | None:
        return self.pipe.audio_rate if self.family.audio else None

    def _text_modules(self) -> list[torch.nn.Module]:
        return [getattr(self.pipe, name) for name in self.family.text_encoders
                if getattr(self.pipe, name, None) is not None]

    @torch.no_grad()
    def encode_prompt(self, image: PIL.Image.Image, prompt: str, conditioning: str) -> dict:
        """The prompt's embeddings (the image does not enter these families' text streams)."""
        check_conditioning(self.family, conditioning)
        if not self.offload and not self._text_on_device:
            for module in self._text_modules():
                module.to(self.device)
            self._text_on_device = True
        device = self.device if not self.offload else self.pipe._execution_device
        return self.pipe.encode_prompts(prompt, device)

    def release_text(self) -> None:
        if self.release_text_encoders and not self.offload and self.device.type != "cpu":
            for module in self._text_modules():
                module.to("cpu")
            self._text_on_device = False
            torch.cuda.empty_cache()

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image,
        prompt: str,
        *,
        height: int,
        width: int,
        num_frames: int,
        num_inference_steps: int,
        shift: float,
        guidance_scale: float,
        conditioning: str = "diffusers",
        generator: torch.Generator | None = None,
        condition_video: torch.Tensor | None = None,
        prompt_embeds: dict | None = None,
        negative_prompt_embeds: dict | None = None,
        negative_prompt: str = "",
        fps: Fraction | None = None,
        progress: Callable[[StepProgress], None] | None = None,
        cancel: CancelToken | None = None,
        preview: bool = False,  # no previews for these families yet: every step reports without one
    ) -> I2VOutput:
        multiple = self.frame_multiple
        if num_frames < 1 or (num_frames - 1) % multiple:
            raise InvalidInput(f"must be {multiple}k+1, got {num_frames}", field="num_frames")
        for name, side in (("height", height), ("width", width)):
            if side <= 0 or side % self.size_multiple:
                raise InvalidInput(f"must be a positive multiple of {self.size_multiple}, got {side}",
                                   field=name)
        if condition_video is not None and (condition_video.shape[2] - 1) % multiple:
            raise InvalidInput(f"must have {multiple}k+1 frames, got {condition_video.shape[2]}",
                               field="condition_video")
        started = time.perf_counter()
        if prompt_embeds is None:
            prompt_embeds = self.encode_prompt(image, prompt, conditioning)
        kwargs = dict(prompt_embeds)
        if guidance_scale > 1.0:
            negative = negative_prompt_embeds or self.encode_prompt(image, negative_prompt, conditioning)
            kwargs |= negative_names(negative)
        clock: dict[str, float] = {}

        def on_step(done: int) -> None:
            now = clock["last"] = time.perf_counter()
            if progress is not None:
                progress(StepProgress(done, num_inference_steps, now - started))
            if cancel is not None and cancel.cancelled:
                raise JobCancelled("cancelled during denoising; nothing was written")

        self.pipe.condition_video, self.pipe.on_step = condition_video, on_step
        try:
            output = self.pipe(
                image=image,
                generator=generator,
                output_type="pt",
                **self.pipe.window_kwargs(height=height, width=width, num_frames=num_frames,
                                          steps=num_inference_steps, shift=shift, guidance=guidance_scale,
                                          fps=fps or self.family.native_fps),
                **kwargs,
            )
        finally:
            self.pipe.condition_video, self.pipe.on_step = None, None
        ended = time.perf_counter()
        denoised = clock.get("last", ended)
        frames = self.pipe.frames_of(output)
        # The condition's encode runs inside the diffusers call, before its first step: it is counted
        # in "denoise" here (the step loop's end is known, its start is not).
        return I2VOutput(frames=frames, latents=torch.empty(0), audio=self.pipe.audio_of(output),
                         timings={"encode": 0.0, "denoise": denoised - started, "decode": ended - denoised})
