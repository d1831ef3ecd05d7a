"""The Magic 1-For-1 image-to-video pipeline on HunyuanVideo-I2V-33ch components.

One window of video: encode (text + image) -> prepare latents -> denoise -> decode. The DiT sees
33 channels: 16 noisy latents, 16 condition latents (the image, or the last K latent frames of
the previous window), and 1 mask channel marking which latent frames are given.

``conditioning="magic141"`` (and ``"world"``) starts from pure noise and keeps every decoded frame;
``conditioning="diffusers"`` reproduces ``HunyuanVideoImageToVideoPipeline``: 0.1% of the image
latent mixed into the noise, and the first 4 decoded frames dropped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import numpy as np
import PIL.Image
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from magic141.errors import InvalidInput, JobCancelled

from .conditioning import CONDITIONINGS, PromptEmbeds, encode_diffusers, encode_magic141
from .families.base import Geometry, check_placement, stream_blocks
from .families.hunyuan import geometry as hunyuan_geometry
from .pipeline_output import CancelToken, I2VOutput, StepProgress

DIFFUSERS_NOISE_KEEP = 0.999  # diffusers keeps 99.9% noise, 0.1% image latent
DIFFUSERS_DROPPED_FRAMES = 4
PREVIEW_MAX_SIDE = 160
COMPONENTS = (  # what __init__ takes, by diffusers' names
    "transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "image_processor",
    "scheduler",
)


def flow_sigmas(steps: int) -> np.ndarray:
    """Unshifted flow-matching sigmas; the scheduler applies the shift.

    With 4 steps and shift 5 the timesteps are Magic 1-For-1's [1000, 937.5, 833.3, 625].
    """
    return np.linspace(1.0, 0.0, steps + 1)[:-1]


def make_scheduler(config, steps: int, shift: float, device) -> FlowMatchEulerDiscreteScheduler:
    """A fresh scheduler per call: schedulers carry a step index, so one shared copy is a race."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config, shift=shift)
    scheduler.set_timesteps(sigmas=flow_sigmas(steps), device=device)
    return scheduler


class Magic141Pipeline:
    """Image-to-video with latent concat, Magic 1-For-1 style.

    Components are the diffusers/transformers classes of HunyuanVideo-I2V. ``group_offload`` keeps
    the DiT on the CPU and streams its blocks to the device in turn (``families.base.stream_blocks``).
    ``offload`` keeps every
    component on the CPU and moves each to ``device`` only while it runs (lowest memory);
    ``release_text_encoders`` moves the text encoders off the device once prompts are encoded.
    """

    _callback_tensor_inputs = ("latents",)

    def __init__(
        self,
        transformer,
        vae,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        image_processor,
        scheduler,
        *,
        device: str | torch.device = "cpu",
        offload: bool = False,
        release_text_encoders: bool = False,
        group_offload: bool = False,
    ) -> None:
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.text_encoder_2 = text_encoder_2
        self.tokenizer_2 = tokenizer_2
        self.image_processor = image_processor
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.offload = offload
        self.group_offload = group_offload
        self.release_text_encoders = release_text_encoders
        self.vae_scale_spatial = vae.spatial_compression_ratio
        self.vae_scale_temporal = vae.temporal_compression_ratio
        self.latent_channels = (transformer.config.in_channels - 1) // 2
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_spatial)
        self._diffusers_view = None
        check_placement(offload, group_offload)
        if not offload:
            for module in self._modules():
                if not (group_offload and module is self.transformer):
                    module.to(self.device)
        if group_offload:
            stream_blocks(self.transformer, self.device)

    @property
    def components(self) -> dict:
        """The components by their diffusers names, as ``__init__`` takes them."""
        return {name: getattr(self, name) for name in COMPONENTS}

    def _modules(self) -> list[torch.nn.Module]:
        return [self.transformer, self.vae, self.text_encoder, self.text_encoder_2]

    @contextlib.contextmanager
    def _on_device(self, *modules: torch.nn.Module) -> Iterator[None]:
        if not self.offload:
            yield
            return
        for module in modules:
            module.to(self.device)
        try:
            yield
        finally:
            for module in modules:
                module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    @property
    def frame_multiple(self) -> int:
        """Native frame counts are ``frame_multiple * k + 1`` (the causal VAE's 4k+1)."""
        return self.vae_scale_temporal

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (VAE x DiT patch)."""
        return self.vae_scale_spatial * self.transformer.config.patch_size

    def frames_dropped(self, conditioning: str) -> int:
        return DIFFUSERS_DROPPED_FRAMES if conditioning == "diffusers" else 0

    @property
    def geometry(self) -> Geometry:
        return hunyuan_geometry(self.components)

    # 1. Check inputs ------------------------------------------------------------------------

    def check_inputs(
        self, prompt, height, width, num_frames, num_inference_steps, guidance_scale, conditioning,
        cond_frames,
    ) -> None:
        """Refuse bad inputs before any work; each error's ``field`` names the input at fault."""
        if not isinstance(prompt, str):
            raise InvalidInput(f"must be a string, got {type(prompt).__name__}", field="prompt")
        m = self.size_multiple
        for name, side in (("height", height), ("width", width)):
            if side <= 0 or side % m:
                raise InvalidInput(f"must be a positive multiple of {m}, got {height}x{width}", field=name)
        if num_frames < 1 or (num_frames - 1) % self.frame_multiple:
            raise InvalidInput(f"must be {self.frame_multiple}k+1, got {num_frames}", field="num_frames")
        if num_inference_steps < 1:
            raise InvalidInput(f"must be at least 1, got {num_inference_steps}", field="steps")
        if guidance_scale < 1.0:
            raise InvalidInput(f"must be >= 1 (1 disables CFG), got {guidance_scale}", field="guidance")
        if conditioning not in CONDITIONINGS:
            raise InvalidInput(f"must be one of {', '.join(CONDITIONINGS)}, got {conditioning!r}",
                               field="conditioning")
        latent_frames = (num_frames - 1) // self.frame_multiple + 1
        if cond_frames >= latent_frames:
            raise InvalidInput(f"the condition covers {cond_frames} latent frames but the window has only "
                               f"{latent_frames}", field="window_overlap")
        if conditioning == "diffusers" and cond_frames > 1:
            cond_pixels = (cond_frames - 1) * self.frame_multiple + 1
            if cond_pixels <= DIFFUSERS_DROPPED_FRAMES:
                raise InvalidInput("diffusers conditioning drops 4 frames: continue windows with K >= 2",
                                   field="window_overlap")

    # 2. Encode ------------------------------------------------------------------------------

    def _diffusers(self):
        """diffusers' own I2V pipeline over the same component objects (nothing is copied)."""
        if self._diffusers_view is None:
            from diffusers import HunyuanVideoImageToVideoPipeline

            self._diffusers_view = HunyuanVideoImageToVideoPipeline(**self.components)
        return self._diffusers_view

    @torch.no_grad()
    def encode_prompt(
        self, image: PIL.Image.Image, prompt: str, conditioning: str, max_sequence_length: int = 256
    ) -> PromptEmbeds:
        """Text (+ image tokens) and pooled embeddings; call ``release_text`` once all prompts are encoded."""
        if not self.offload:  # released encoders come back for the next prompt
            self.text_encoder.to(self.device)
            self.text_encoder_2.to(self.device)
        with self._on_device(self.text_encoder, self.text_encoder_2):
            if conditioning == "diffusers":
                embeds = encode_diffusers(self._diffusers(), image, prompt, self.device, max_sequence_length)
            else:
                embeds = encode_magic141(
                    self.text_encoder,
                    self.tokenizer,
                    self.text_encoder_2,
                    self.tokenizer_2,
                    self.image_processor,
                    image,
                    prompt,
                    self.device,
                    max_sequence_length,
                    variant=conditioning,
                )
        return embeds.to(self.device, self.transformer.dtype)

    def release_text(self) -> None:
        """Move the text encoders off the device (if asked to at construction) to make room for the DiT."""
        if self.release_text_encoders and not self.offload and self.device.type != "cpu":
            self.text_encoder.to("cpu")
            self.text_encoder_2.to("cpu")
            torch.cuda.empty_cache()

    def preprocess_image(self, image: PIL.Image.Image, height: int, width: int) -> torch.Tensor:
        """[1, 3, 1, H, W] in [-1, 1], resized and centre-cropped as diffusers does."""
        return self.video_processor.preprocess(image, height, width).unsqueeze(2)

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, sample: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents of pixels [1, 3, 4k+1, H, W] in [-1, 1]: the distribution's mode, or a draw
        from it with ``sample`` (as Magic 1-For-1 takes its image latent)."""
        with self._on_device(self.vae):
            dist = self.vae.encode(video.to(self.device, self.vae.dtype)).latent_dist
            latents = dist.mode() if sample is None else dist.mean + dist.std * randn_tensor(
                dist.mean.shape, generator=sample, device=dist.mean.device, dtype=dist.mean.dtype)
            return latents.float() * self.vae.config.scaling_factor

    # 3. Prepare latents ---------------------------------------------------------------------

    def prepare_latents(
        self,
        cond_latents: torch.Tensor,
        num_frames: int,
        height: int,
        width: int,
        generator: torch.Generator | None,
        conditioning: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noise, the condition channel block and the mask, all [1, C, latent_frames, h, w] float32."""
        latent_frames = (num_frames - 1) // self.frame_multiple + 1
        shape = (
            1,
            self.latent_channels,
            latent_frames,
            height // self.vae_scale_spatial,
            width // self.vae_scale_spatial,
        )
        latents = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        if conditioning == "diffusers":
            keep = torch.tensor([DIFFUSERS_NOISE_KEEP], device=self.device)
            latents = latents * keep + cond_latents[:, :, :1].repeat(1, 1, latent_frames, 1, 1) * (1 - keep)
        given = cond_latents.shape[2]
        cond = torch.zeros(shape, device=self.device, dtype=torch.float32)
        cond[:, :, :given] = cond_latents
        mask = torch.zeros((1, 1, *shape[2:]), device=self.device, dtype=torch.float32)
        mask[:, :, :given] = 1
        return latents, cond, mask

    # 4. Denoise -----------------------------------------------------------------------------

    def _velocity(self, latents, cond, mask, t, embeds: PromptEmbeds) -> torch.Tensor:
        return self.transformer(
            hidden_states=torch.cat([latents, cond, mask], dim=1).to(self.transformer.dtype),
            timestep=t.expand(latents.shape[0]).to(latents.dtype),
            encoder_hidden_states=embeds.embeds,
            encoder_attention_mask=embeds.mask,
            pooled_projections=embeds.pooled,
            return_dict=False,
        )[0]

    @torch.no_grad()
    def denoise(
        self,
        latents: torch.Tensor,
        cond: torch.Tensor,
        mask: torch.Tensor,
        embeds: PromptEmbeds,
        negative: PromptEmbeds | None,
        *,
        num_inference_steps: int,
        shift: float,
        guidance_scale: float,
        progress: Callable[[StepProgress], None] | None = None,
        cancel: CancelToken | None = None,
        preview: bool = False,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ) -> torch.Tensor:
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise InvalidInput(f"must be among {self._callback_tensor_inputs}, got {bad}",
                               field="callback_on_step_end_tensor_inputs")
        scheduler = make_scheduler(self.scheduler.config, num_inference_steps, shift, self.device)
        start = time.perf_counter()
        with self._on_device(self.transformer):
            for i, t in enumerate(scheduler.timesteps):
                velocity = self._velocity(latents, cond, mask, t, embeds)
                if negative is not None and guidance_scale > 1.0:
                    uncond = self._velocity(latents, cond, mask, t, negative)
                    velocity = uncond + guidance_scale * (velocity - uncond)
                # Flow matching: x_t = (1 - s) x0 + s noise and v = noise - x0, so x0 = x_t - s v.
                clean = latents - scheduler.sigmas[i] * velocity.float() if preview else None
                latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                    latents = out.get("latents", latents)
                if progress is not None:
                    shown = self._preview(clean) if preview else None
                    progress(StepProgress(i + 1, num_inference_steps, time.perf_counter() - start, shown))
                if cancel is not None and cancel.cancelled:
                    raise JobCancelled("cancelled during denoising; nothing was written")
        return latents

    @torch.no_grad()
    def _preview(self, clean: torch.Tensor) -> np.ndarray:
        """The clean-latent estimate's middle frame, decoded small (costs about 1/T of a decode)."""
        mid = clean[:, :, clean.shape[2] // 2 : clean.shape[2] // 2 + 1]
        with self._on_device(self.vae):
            pixels = self.vae.decode(mid.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        image = ((pixels[0, :, 0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0)
        pil = PIL.Image.fromarray(image.cpu().numpy())
        pil.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
        return np.asarray(pil)

    # 5. Decode ------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, conditioning: str) -> torch.Tensor:
        """[frames, H, W, 3] float32 in [0, 1] on the CPU."""
        with self._on_device(self.vae):
            video = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        video = video[:, :, self.frames_dropped(conditioning) :]
        return (video[0].float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0).cpu()

    # The whole window ------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image,
        prompt: str,
        *,
        height: int,
        width: int,
        num_frames: int,
        num_inference_steps: int = 4,
        shift: float = 5.0,
        guidance_scale: float = 1.0,
        negative_prompt: str = "",
        conditioning: str = "magic141",
        generator: torch.Generator | None = None,
        condition_video: torch.Tensor | None = None,
        prompt_embeds: PromptEmbeds | None = None,
        negative_prompt_embeds: PromptEmbeds | None = None,
        progress: Callable[[StepProgress], None] | None = None,
        cancel: CancelToken | None = None,
        preview: bool = False,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ) -> I2VOutput:
        """Generate ``num_frames`` native frames (4k+1) conditioned on ``image``.

        ``condition_video`` (pixels [1, 3, 4(K-1)+1, H, W] in [-1, 1]) replaces the image as the
        latent condition, for sliding-window continuation; ``prompt_embeds`` skip the encoders.
        """
        timings: dict[str, float] = {}
        cond_pixels = 1 if condition_video is None else condition_video.shape[2]
        cond_frames = (cond_pixels - 1) // self.frame_multiple + 1
        # 1. Check inputs
        self.check_inputs(
            prompt, height, width, num_frames, num_inference_steps, guidance_scale, conditioning, cond_frames
        )
        if (cond_pixels - 1) % self.frame_multiple:
            raise InvalidInput(f"must have {self.frame_multiple}k+1 frames, got {cond_pixels}",
                               field="condition_video")
        # 2. Encode
        clock = time.perf_counter()
        use_cfg = guidance_scale > 1.0
        if prompt_embeds is None:
            prompt_embeds = self.encode_prompt(image, prompt, conditioning)
        if use_cfg and negative_prompt_embeds is None:
            black = PIL.Image.new("RGB", (width, height), 0)
            negative_prompt_embeds = self.encode_prompt(black, negative_prompt, conditioning)
        self.release_text()
        if condition_video is None:
            condition_video = self.preprocess_image(image, height, width)
        cond_latents = self.encode_video(condition_video, generator if conditioning == "magic141" else None)
        timings["encode"] = time.perf_counter() - clock
        # 3. Prepare latents
        latents, cond, mask = self.prepare_latents(
            cond_latents, num_frames, height, width, generator, conditioning
        )
        # 4. Denoise
        clock = time.perf_counter()
        latents = self.denoise(
            latents, cond, mask, prompt_embeds, negative_prompt_embeds if use_cfg else None,
            num_inference_steps=num_inference_steps, shift=shift, guidance_scale=guidance_scale,
            progress=progress, cancel=cancel, preview=preview, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        timings["denoise"] = time.perf_counter() - clock
        # 5. Decode
        clock = time.perf_counter()
        frames = self.decode(latents, conditioning)
        timings["decode"] = time.perf_counter() - clock
        return I2VOutput(frames=frames, latents=latents, timings=timings)
