"""One generation job, end to end: a warm ``Engine`` turns a ``JobSpec`` into a video file.

first frame (the image, a frame of the source media, or text-to-image) -> windows of native 24 fps
frames (the pipeline, chained by the sliding window) -> conformed to the spec's rational rate ->
written atomically. Frames stream to the writer as windows finish, so a minute of video never sits
in memory at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from magic141.errors import InvalidInput
from magic141.protocol import CONDITIONINGS, JobResult, JobSpec, loras_json
from magic141.rational import frame_count, rational_text

from . import ambience, media, seam
from .families import FAMILIES, Family, FamilyPipeline
from .families.base import check_conditioning
from .families.catalog import estimate
from .lora import Lora, apply_loras
from .memory import MemoryEstimate, check_fits
from .models import TINY, LoadedModel, default_t2i, load_model, parameter_counts
from .pipeline import Magic141Pipeline
from .pipeline_output import CancelToken, StepProgress
from .quant import weight_bytes
from .window import WindowAudio, WindowPlan, chain_windows, plan_windows


def bucket_size(aspect: float, area: int, multiple: int) -> tuple[int, int]:
    """(height, width), multiples of ``multiple``, of about ``area`` pixels and the given aspect (w/h)."""
    height = max(multiple, round((area / aspect) ** 0.5 / multiple) * multiple)
    width = max(multiple, round((area * aspect) ** 0.5 / multiple) * multiple)
    return height, width


def fit_image(image: PIL.Image.Image, height: int, width: int) -> PIL.Image.Image:
    """Centre-crop to the target aspect, then resize: never stretch the editor's frame."""
    scale = max(width / image.width, height / image.height)
    crop_w, crop_h = round(width / scale), round(height / scale)
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    cropped = image.crop((left, top, left + crop_w, top + crop_h))
    return cropped.resize((width, height), PIL.Image.Resampling.LANCZOS)


def _model_width(module) -> int:
    config = module.config
    config = getattr(config, "text_config", config)  # LLaVA, Gemma 3: the language model's
    for key in ("hidden_size", "d_model"):  # transformers' names (Llama, Qwen; T5)
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return config.num_attention_heads * config.attention_head_dim  # a diffusers DiT


def conform(native_chunks, indices: list[int]):
    """Pick output frames (native index per output frame, non-decreasing) from streamed native
    chunks, as uint8 RGB arrays ready for the writer."""
    seen, next_out = 0, 0
    for frames in native_chunks:
        stop = seen + frames.shape[0]
        picks = []
        while next_out < len(indices) and indices[next_out] < stop:
            picks.append(indices[next_out] - seen)
            next_out += 1
        if picks:
            yield np.ascontiguousarray(frames[picks].mul(255).round().clamp(0, 255).to(torch.uint8).numpy())
        seen = stop


@dataclass(eq=False)
class Engine:
    """A loaded model and its pipeline, kept warm between jobs."""

    model: LoadedModel
    pipe: Magic141Pipeline | FamilyPipeline
    _: KW_ONLY
    t2i: str | None  # the text-to-image model that makes first frames for text-to-video (None: none)
    quant: str = "none"
    text_quant: str = "none"
    vae_tiling: bool = False
    loras: tuple[Lora, ...] = ()
    _t2i_pipe: object = field(default=None, init=False, repr=False)  # loaded on first use

    @classmethod
    def load(
        cls,
        model: str = TINY,
        *,
        device: str | None = None,
        quant: str = "none",
        text_quant: str = "none",
        offload: bool = False,
        group_offload: bool = False,
        vae_tiling: bool = False,
        release_text_encoders: bool = True,
        components: str | None = None,
        allow_pickle: bool = False,
        t2i: str | None = None,
        loras: tuple[Lora, ...] | list[Lora] = (),
    ) -> Engine:
        from .quant import DEFAULT_MIN_FEATURES, quantize

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        loaded = load_model(model, device=device, components=components, allow_pickle=allow_pickle)
        family = FAMILIES[loaded.info.family]
        parts = loaded.components
        # LoRAs are checked and fused, and weights quantised, on the CPU before the pipeline moves them
        # to the device (no bf16 copy there first, and no GPU work for a LoRA that does not fit).
        apply_loras(list(loras), family.pipeline, parts, family.label)
        modes = {name: quant for name in family.dits} | {"text_encoder": text_quant}
        for name, mode in modes.items():
            module = parts.get(name)
            if module is None:
                continue
            # Layers narrower than the model's width stay full precision (512 at real size; the tiny
            # model's width is smaller, so that its layers are quantised too and the path is tested).
            min_features = min(DEFAULT_MIN_FEATURES, _model_width(module))
            quantize(module, mode, compute_dtype=module.dtype, min_features=min_features)
        if vae_tiling:
            parts["vae"].enable_tiling()
        placement = dict(device=device, offload=offload, release_text_encoders=release_text_encoders,
                         group_offload=group_offload)
        pipe = (Magic141Pipeline(**parts, **placement) if family.name == "hunyuan"
                else FamilyPipeline.build(family, parts, **placement))
        return cls(
            loaded,
            pipe,
            t2i=t2i if t2i is not None else default_t2i(model),
            quant=quant,
            text_quant=text_quant,
            vae_tiling=vae_tiling,
            loras=tuple(loras),
        )

    @property
    def family(self) -> Family:
        return FAMILIES[self.model.info.family]

    # Memory --------------------------------------------------------------------------------

    def estimate_memory(self, height: int, width: int, frames: int, guidance: float) -> MemoryEstimate:
        """Peak memory of one window of this job with this engine's placement and quantisation."""
        parts = self.model.components
        return estimate(self.family, parameter_counts(parts), self.pipe.geometry, height=height, width=width,
                        frames=min(frames, self.model.info.window_frames), guidance=guidance,
                        dtype_bytes=parts["transformer"].dtype.itemsize, quant=self.quant,
                        text_quant=self.text_quant, offload=self.pipe.offload, vae_tiling=self.vae_tiling,
                        release_text_encoders=self.pipe.release_text_encoders,
                        group_offload=self.pipe.group_offload)

    def resident_bytes(self) -> int:
        """Weights already on the device (they count as available to the job that uses them)."""
        if self.pipe.offload or self.pipe.device.type == "cpu":
            return 0
        parts = self.model.components
        resident = ("vae",) if self.pipe.group_offload else (*self.family.dits, "vae")
        return sum(weight_bytes(parts[name]) for name in resident if parts.get(name) is not None)

    def describe(self) -> str:
        """What ``magic141 info`` prints."""
        info, parts, family = self.model.info, self.model.components, self.family
        geometry = self.pipe.geometry
        transformer = parts["transformer"]
        config = transformer.config
        counts = parameter_counts(parts)
        height, width = info.default_size
        estimate = self.estimate_memory(height, width, info.window_frames, info.default_guidance)
        dits = [name for name in family.dits if parts.get(name) is not None]
        experts = f" x {len(dits)} experts" if len(dits) > 1 else ""
        text = " + ".join(type(parts[name]).__name__ for name in family.text_encoders
                          if parts.get(name) is not None)
        loras = ", ".join(f"{Path(lora.path).name} x{lora.scale:g}" for lora in self.loras) or "none"
        lines = [
            f"model        {info.name} ({family.label}; {info.kind}; {info.weights})",
            f"transformer  {type(transformer).__name__}{experts}: {geometry.layers} blocks, {geometry.heads} "
            f"heads x {geometry.hidden // geometry.heads}, in {config.in_channels} / out "
            f"{config.out_channels} "
            f"channels, patch {'x'.join(map(str, geometry.patch))}",
            f"vae          {type(parts['vae']).__name__}: {geometry.latent_channels} latent channels, "
            f"{geometry.vae_temporal}x temporal / {geometry.vae_spatial}x spatial",
            f"text         {text}",
            f"sound        {'made with the picture (' + type(parts['audio_vae']).__name__ + ')'}"
            if family.audio else "sound        none (a continued clip carries its source's ambience on)",
            "parameters   " + ", ".join(f"{name} {n:,}" for name, n in counts.items())
            + f" (total {sum(counts.values()):,})",
            f"dtype        {transformer.dtype}".replace("torch.", "") + f" on {self.pipe.device}, "
            f"DiT quantization {self.quant}, LoRAs {loras}",
            f"defaults     {info.default_steps} steps, CFG {info.default_guidance:g}, conditioning "
            f"{info.conditioning}, {height}x{width}, windows of {info.window_frames} frames at "
            f"{info.native_fps} fps",
            f"memory       {estimate.describe()} for one {height}x{width}x{info.window_frames} window",
        ]
        return "\n".join(lines)

    # Settings ------------------------------------------------------------------------------

    def resolve(self, spec: JobSpec, image: PIL.Image.Image | None) -> JobSpec:
        """The spec with this model's defaults filled in, checked before any heavy work."""
        info = self.model.info
        if not spec.prompt.strip():
            raise InvalidInput("is empty; describe what should happen in the clip", field="prompt")
        conditioning = spec.conditioning or info.conditioning
        if conditioning not in CONDITIONINGS:
            raise InvalidInput(f"must be one of {', '.join(CONDITIONINGS)}, got {conditioning!r}",
                               field="conditioning")
        check_conditioning(self.family, conditioning)
        height, width = spec.height, spec.width
        multiple = self.pipe.size_multiple
        if height is None or width is None:
            default_h, default_w = info.default_size
            aspect = image.width / image.height if image is not None else default_w / default_h
            bucket_h, bucket_w = bucket_size(aspect, default_h * default_w, multiple)
            height, width = height or bucket_h, width or bucket_w
        for name, value in (("height", height), ("width", width)):
            if value % multiple:
                raise InvalidInput(f"must be a multiple of {multiple} for this model, got {value}",
                                   field=name)
        return spec.replace(
            conditioning=conditioning,
            steps=spec.steps or info.default_steps,
            guidance=spec.guidance if spec.guidance is not None else info.default_guidance,
            height=height,
            width=width,
        )

    def first_frame(self, spec: JobSpec) -> PIL.Image.Image:
        source = spec.source
        if source.path is not None:  # a still, or a frame ``time`` seconds into a video
            return media.load_image(source.path) if source.time is None else media.grab_frame(source.path,
                                                                                               source.time)
        if self.t2i is None:
            raise InvalidInput(f"is needed: {self.model.info.name} has no text-to-image model to make a "
                               "first frame from the prompt; give an image, or a text-to-image model (t2i)",
                               field="source")
        from .t2i import generate_first_frame, load_t2i

        if self._t2i_pipe is None:
            self._t2i_pipe = load_t2i(self.t2i, device=self.pipe.device)
        default_h, default_w = self.model.info.default_size
        height = spec.height or default_h
        width = spec.width or default_w
        return generate_first_frame(self._t2i_pipe, spec.prompt, height=height, width=width, seed=spec.seed)

    # The job -------------------------------------------------------------------------------

    def generate(
        self,
        spec: JobSpec,
        out: str | Path,
        *,
        preview: bool = False,
        progress: Callable[[StepProgress], None] | None = None,
        cancel: CancelToken | None = None,
        colour_anchor: float = 1.0,
    ) -> JobResult:
        """Make ``spec``'s clip at ``out`` (its folder must exist; the suffix must fit ``spec.codec``).

        ``colour_anchor``: how strongly each later window's colour is matched to the first's (0: not).
        """
        started = time.perf_counter()
        timings: dict[str, float] = {}
        n_out = frame_count(spec.seconds, spec.fps)
        out = media.check_output_path(out, spec.codec)
        if spec.source.path is not None and out.resolve() == Path(spec.source.path).resolve():
            raise InvalidInput(f"{out} is the source itself; source media is never written", field="out")
        clock = time.perf_counter()
        image = self.first_frame(spec)
        timings["first_frame"] = time.perf_counter() - clock
        continued = spec.source.kind == "media"  # a clip continued from its video: match the cut
        reference = np.asarray(image)  # the source frame as stored
        pixel_aspect = media.picture_format(spec.source.path).sample_aspect if continued else None
        if pixel_aspect is not None:  # the model sees square pixels; the output is stored as the source
            shown = (round(image.width * pixel_aspect), image.height)
            image = image.resize(shown, PIL.Image.Resampling.LANCZOS)
        spec = self.resolve(spec, image)
        assert spec.height and spec.width and spec.guidance and spec.conditioning  # resolved, for mypy
        if continued and spec.match_source:
            # Stretched, not cropped: the generated frames are scaled back to exactly the source's frame,
            # so the picture keeps its geometry (a bucket's aspect differs from it by a rounding).
            image = image.resize((spec.width, spec.height), PIL.Image.Resampling.LANCZOS)
        else:
            image = fit_image(image, spec.height, spec.width)
            reference = np.asarray(image)
        out_height, out_width = reference.shape[:2]
        if media.ENCODERS[spec.codec][1].startswith("yuv420"):  # 4:2:0 needs even sizes: an odd source
            out_height, out_width = out_height - out_height % 2, out_width - out_width % 2  # loses a line

        info, pipe = self.model.info, self.pipe
        # A continued clip starts one timeline frame after the source frame: the model's first frame
        # shows the source frame's own instant again (it only fits the colour match), so placing it
        # would hold that instant for a frame at the cut (bench/seam_frame.py measures the choice).
        skip = 1 if continued else 0
        native = media.native_frames_needed(n_out + skip, spec.fps, info.native_fps)
        plans = plan_windows(
            native,
            window_frames=info.window_frames,
            overlap_latents=spec.window_overlap,
            dropped=pipe.frames_dropped(spec.conditioning),
            multiple=pipe.frame_multiple,
        )
        indices = media.conform_indices(n_out + skip, spec.fps, info.native_fps)
        estimate = self.estimate_memory(spec.height, spec.width, plans[0].frames, spec.guidance)
        check_fits(estimate, pipe.device, resident_bytes=self.resident_bytes())

        clock = time.perf_counter()
        embeds = pipe.encode_prompt(image, spec.prompt, spec.conditioning)
        negative = None
        if spec.guidance > 1.0:
            black = PIL.Image.new("RGB", (spec.width, spec.height), 0)
            negative = pipe.encode_prompt(black, spec.negative_prompt, spec.conditioning)
        pipe.release_text()
        timings["encode"] = time.perf_counter() - clock
        # What every window shares; each adds its own length, condition and progress.
        common = dict(
            height=spec.height,
            width=spec.width,
            num_inference_steps=spec.steps,
            shift=spec.shift,
            guidance_scale=spec.guidance,
            conditioning=spec.conditioning,
            generator=torch.Generator("cpu").manual_seed(spec.seed),
            cancel=cancel,
            preview=preview,
            prompt_embeds=embeds,
            negative_prompt_embeds=negative,
        )
        stage_totals = {"condition": 0.0, "denoise": 0.0, "decode": 0.0, "write": 0.0}
        made_sound = None  # the model's own sound (LTX-2), placed window by window
        if self.family.audio:
            made_sound = WindowAudio(pipe.audio_rate, info.native_fps, start=float(skip / spec.fps),
                                     length=round(n_out * pipe.audio_rate / spec.fps))

        def run_window(plan: WindowPlan, condition: torch.Tensor | None) -> torch.Tensor:
            def report(step: StepProgress) -> None:
                if progress is not None:
                    progress(replace(step, window=plan.index, windows=len(plans)))

            made = pipe(image, spec.prompt, num_frames=plan.frames, condition_video=condition,
                        progress=report, **common)
            for stage, key in (("condition", "encode"), ("denoise", "denoise"), ("decode", "decode")):
                stage_totals[stage] += made.timings[key]
            if made_sound is not None and made.audio is not None:
                made_sound.add(plan, made.audio[0])
            return made.frames

        metadata = {"comment": f"magic141 prompt={spec.prompt!r} seed={spec.seed} model={info.name}"}
        clock = time.perf_counter()
        if made_sound is not None:
            sound, sound_note = made_sound, f"made with the picture by {self.family.label}"
        else:
            sound, sound_note = ambience.for_extension(spec, n_out) if continued else (None, "video only")
        timings["ambience"] = time.perf_counter() - clock
        native_chunks = chain_windows(plans, run_window, colour_anchor)
        colour: seam.ColourMatch | None = None
        with media.VideoWriter(out, fps=spec.fps, codec=spec.codec, width=out_width, height=out_height,
                               metadata=metadata, audio=sound,
                               sample_aspect=pixel_aspect if spec.match_source else None) as writer:
            written = 0
            for chunk in conform(native_chunks, indices):
                clock = time.perf_counter()
                chunk = seam.resize(chunk, out_width, out_height)
                if continued and spec.color_match > 0:
                    if colour is None:  # fitted once, on the frame that reproduces the source's
                        colour = seam.ColourMatch.fit(chunk[0], reference, spec.color_match)
                    chunk = colour.apply(chunk)
                if skip:
                    chunk, skip = chunk[skip:], 0
                writer.write(chunk)
                stage_totals["write"] += time.perf_counter() - clock
                written += chunk.shape[0]
            if made_sound is not None:
                made_sound.finish()
            if written != n_out:
                raise RuntimeError(f"internal error: made {written} of {n_out} frames")
        timings.update(stage_totals)
        timings["total"] = time.perf_counter() - started
        settings = {
            "model": info.name,
            "quant": self.quant,
            "prompt": spec.prompt,
            "seed": spec.seed,
            "steps": spec.steps,
            "shift": spec.shift,
            "guidance": spec.guidance,
            "conditioning": spec.conditioning,
            "height": spec.height,  # the model's (native) size; the file's is the result's
            "width": spec.width,
            "match_source": spec.match_source,
            "color_match": spec.color_match if continued else 0.0,
            "ambience": sound_note,  # what the sound is, or why there is none
            "ambience_frames": 0 if sound is None else round(sound.samples.shape[1] * spec.fps / sound.rate),
            "family": self.family.name,
            "weights": info.weights,
            "loras": loras_json(lora.spec for lora in self.loras),
            "seconds": rational_text(spec.seconds),
            "native_frames": native,
            "window_overlap": spec.window_overlap,
        }
        return JobResult(path=str(out.resolve()), frames=n_out, fps=spec.fps, width=out_width,
                         height=out_height, codec=spec.codec, windows=len(plans), settings=settings,
                         timings=timings)
