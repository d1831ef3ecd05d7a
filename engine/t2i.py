"""The text-to-image stage: makes the first frame when the user gives no input image.

Magic 1-For-1 splits text-to-video into text-to-image (the first frame) and image-to-video.
This module loads the text-to-image half and runs it once:

* ``load_t2i("tiny")`` builds a miniature FLUX pipeline in code (the same classes as
  FLUX.1-schnell: ``FluxTransformer2DModel``, ``AutoencoderKL``, CLIP-L and T5 text encoders,
  flow-matching Euler scheduler), random-initialised from a fixed seed, with tokenizers built
  offline. It exists for tests and as the offline default.
* ``load_t2i(directory)`` loads any diffusers text-to-image pipeline saved on disk (for example a
  local copy of FLUX.1-schnell) with ``local_files_only=True``: nothing is ever downloaded.
* ``generate_first_frame(pipe, prompt, ...)`` returns one RGB ``PIL.Image`` of exactly the
  requested size, deterministic for a seed.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import CLIPTextModel, T5Config, T5EncoderModel

from magic141.errors import CheckpointError, InsufficientMemory, InvalidInput

from . import tiny
from .tiny_tokenizer import tiny_clip_tokenizer, tiny_t5_tokenizer

TINY = "tiny"

# diffusers renamed from_pretrained's ``torch_dtype`` to ``dtype`` (the old name now warns).
try:
    from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (present since the rename)

    _DTYPE_KWARG = "dtype"
except ImportError:  # older diffusers
    _DTYPE_KWARG = "torch_dtype"

DISTILLED_STEPS = 4
SCHNELL_MAX_SEQUENCE_LENGTH = 256
_DISTILLED_NAME_MARKS = ("schnell", "turbo", "lightning", "lcm", "hyper")

# The arguments a text-to-image pipeline's __call__ must accept.
_REQUIRED_CALL_ARGS = ("prompt", "height", "width", "num_inference_steps", "generator")
# Arguments whose presence *without a default* means the pipeline needs an input image or video.
_IMAGE_INPUT_ARGS = ("image", "images", "init_image", "control_image", "mask_image", "video", "image_embeds")
# Class-name fragments (lower case) of pipelines that transform an image rather than make one from text.
_NEEDS_IMAGE_NAME_MARKS = (
    "img2img",
    "image2image",
    "inpaint",
    "imagetovideo",
    "image2video",
    "i2v",
    "imagevariation",
    "upscale",
    "superresolution",
    "depth2img",
    "pix2pix",
    "control",
    "adapter",
    "fill",
    "redux",
    "refiner",
)
# ... and of pipelines that make video (or embeddings) instead of an image.
_NOT_IMAGE_NAME_MARKS = ("video", "prior")


def build_tiny_t2i(seed: int = 0) -> FluxPipeline:
    """A miniature FLUX.1-schnell-shaped ``FluxPipeline`` with random weights from ``seed``.

    The same seed gives bitwise-identical weights; the global torch RNG state is left untouched.
    Like schnell, the transformer has no guidance embedding, so ``generate_first_frame`` treats it
    as a distilled pipeline (4 steps, ``guidance_scale=0``). Images must be multiples of 16 pixels.
    """
    tokenizer = tiny_clip_tokenizer()
    tokenizer_2 = tiny_t5_tokenizer()
    t5_config = T5Config(vocab_size=len(tokenizer_2), d_model=tiny.T5_DIM, d_kv=8, d_ff=64, num_layers=1,
                         num_heads=4, relative_attention_num_buckets=8, eos_token_id=tokenizer_2.eos_token_id,
                         pad_token_id=tokenizer_2.pad_token_id,
                         decoder_start_token_id=tokenizer_2.pad_token_id)
    clip_config = tiny.clip_text_config(tokenizer, hidden_size=tiny.CLIP_DIM, intermediate_size=64,
                                        num_hidden_layers=1, projection_dim=tiny.CLIP_DIM)
    with tiny.seeded(seed):
        transformer = FluxTransformer2DModel(**tiny.flux_config())
        vae = AutoencoderKL(**tiny.image_vae_config(scaling_factor=0.3611, shift_factor=0.1159))  # FLUX.1's
        text_encoder = CLIPTextModel(clip_config)
        text_encoder_2 = T5EncoderModel(t5_config)
    scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.1-schnell's scheduler config
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=tokenizer_2,
        transformer=transformer.eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_t2i(
    source: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> DiffusionPipeline:
    """Load the text-to-image pipeline named by ``source``, offline, on ``device`` in ``dtype``.

    ``source`` is ``"tiny"`` (the in-code miniature FLUX pipeline, seed 0) or a diffusers pipeline
    directory holding ``model_index.json``. Directories are loaded with ``local_files_only=True``:
    the network is never used. Raises ``InvalidInput`` for a missing path, a file, a directory
    without ``model_index.json``, or a pipeline that is not text-to-image (one that needs an input
    image, or makes video); ``CheckpointError`` if the directory's weights cannot be loaded.
    """
    if not isinstance(source, (str, Path)) or not str(source):
        raise InvalidInput(
            f"The text-to-image source must be {TINY!r} or a pipeline directory, not {source!r}."
        )
    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInput(f"The device {device!r} is not a valid torch device.") from exc
    if not isinstance(dtype, torch.dtype):
        raise InvalidInput(f"The dtype {dtype!r} is not a torch dtype.")

    if str(source) == TINY:
        pipe: DiffusionPipeline = build_tiny_t2i()
        if dtype != torch.float32:
            # Plain nn.Module casting: the tiny models keep nothing in float32, and diffusers'
            # ModelMixin.to() would log a warning about exactly that on every cast.
            for component in pipe.components.values():
                if isinstance(component, torch.nn.Module):
                    torch.nn.Module.to(component, dtype=dtype)
    else:
        path = Path(source).expanduser()
        index = _check_pipeline_dir(path)
        _refuse_by_class_name(path, index.get("_class_name"))
        try:
            with _quiet_progress_bars():
                pipe = DiffusionPipeline.from_pretrained(
                    str(path), local_files_only=True, **{_DTYPE_KWARG: dtype}
                )
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, ImportError) as exc:
            raise CheckpointError(
                f"The text-to-image pipeline in {str(path)!r} could not be loaded offline: {exc}"
            ) from exc
        _check_call_signature(pipe, str(path))

    try:
        pipe = pipe.to(torch_device)  # the dtype is already set; casting again would only log warnings
    except (RuntimeError, AssertionError, TypeError) as exc:
        raise InvalidInput(
            f"The text-to-image pipeline cannot be moved to device {str(torch_device)!r}: {exc}"
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def size_multiple(pipe: DiffusionPipeline) -> int:
    """The number that the image height and width must be multiples of for ``pipe`` (16 for FLUX)."""
    candidates = []
    processor = getattr(pipe, "image_processor", None)
    processor_factor = getattr(getattr(processor, "config", None), "vae_scale_factor", None)
    if isinstance(processor_factor, int) and processor_factor > 0:
        candidates.append(processor_factor)  # FLUX sets this to vae_scale_factor * 2 for its packing
    vae_factor = getattr(pipe, "vae_scale_factor", None)
    if isinstance(vae_factor, int) and vae_factor > 0:
        candidates.append(vae_factor)
        patch = getattr(getattr(getattr(pipe, "transformer", None), "config", None), "patch_size", None)
        if isinstance(patch, int) and patch > 0:
            candidates.append(vae_factor * patch)  # e.g. SD3 patchifies latents by 2
    return math.lcm(*candidates) if candidates else 8


def generate_first_frame(
    pipe: DiffusionPipeline,
    prompt: str,
    *,
    height: int,
    width: int,
    seed: int,
    steps: int | None = None,
    generator_device: str | torch.device = "cpu",
) -> PIL.Image.Image:
    """Generate one RGB image of exactly ``width`` x ``height`` pixels from ``prompt``.

    The same pipeline, prompt, size, seed and steps give the same image. ``steps`` defaults to 4
    for distilled pipelines (the tiny pipeline, FLUX.1-schnell-like ones whose transformer has no
    guidance embedding, and pipelines whose name says schnell/turbo/lightning/LCM/hyper), which
    also run with ``guidance_scale=0`` (and ``max_sequence_length=256`` for schnell-like FLUX);
    otherwise the pipeline's own default steps and guidance are used. Only keyword arguments the
    pipeline's ``__call__`` accepts are passed.

    If ``height`` or ``width`` is not a multiple of what the pipeline can produce (see
    ``size_multiple``; 16 for FLUX), the image is generated at the nearest valid size above, then
    resized with PIL's LANCZOS filter to cover the requested size and centre-cropped to it.
    """
    if not isinstance(prompt, str):
        raise InvalidInput(f"The prompt must be a string, not {type(prompt).__name__}.")
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidInput(f"The image {name} must be a positive integer, not {value!r}.")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0):
        raise InvalidInput(f"The number of text-to-image steps must be a positive integer, not {steps!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInput(f"The seed must be an integer, not {seed!r}.")
    try:
        generator = torch.Generator(device=generator_device).manual_seed(seed)
    except (RuntimeError, ValueError, OverflowError) as exc:
        raise InvalidInput(
            f"The seed {seed} or generator device {str(generator_device)!r} is not usable: {exc}"
        ) from exc

    multiple = size_multiple(pipe)
    gen_height = -(-height // multiple) * multiple
    gen_width = -(-width // multiple) * multiple

    params = _call_parameters(pipe)
    kwargs: dict[str, Any] = {
        "prompt": prompt,
        "height": gen_height,
        "width": gen_width,
        "generator": generator,
    }
    distilled = _is_distilled(pipe)
    if steps is None and distilled:
        steps = DISTILLED_STEPS
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    if distilled and "guidance_scale" in params:
        kwargs["guidance_scale"] = 0.0
    if _is_schnell_like(pipe) and "max_sequence_length" in params:
        kwargs["max_sequence_length"] = SCHNELL_MAX_SEQUENCE_LENGTH
    if "num_images_per_prompt" in params:
        kwargs["num_images_per_prompt"] = 1
    if "output_type" in params:
        kwargs["output_type"] = "pil"
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {key: value for key, value in kwargs.items() if takes_any or key in params}

    pipe.set_progress_bar_config(disable=True)
    try:
        with torch.inference_mode():
            output = pipe(**kwargs)
    except torch.cuda.OutOfMemoryError as exc:  # torch.OutOfMemoryError on torch >= 2.5
        raise InsufficientMemory(
            f"The text-to-image pipeline ran out of memory generating a {gen_width}x{gen_height} image: {exc}"
        ) from exc

    image = _first_image(output)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (width, height):
        image = PIL.ImageOps.fit(
            image, (width, height), method=PIL.Image.Resampling.LANCZOS, centering=(0.5, 0.5)
        )
    return image


# --- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hide diffusers' and transformers' loading progress bars for the block, then restore them."""
    loggers = (diffusers.utils.logging, transformers.utils.logging)
    was_enabled = [log.is_progress_bar_enabled() for log in loggers]
    for log in loggers:
        log.disable_progress_bar()
    try:
        yield
    finally:
        for log, enabled in zip(loggers, was_enabled, strict=True):
            if enabled:
                log.enable_progress_bar()


def _check_pipeline_dir(path: Path) -> dict:
    """Check that ``path`` is a diffusers pipeline directory and return its parsed model_index.json."""
    if not path.exists():
        raise InvalidInput(f"The text-to-image model directory {str(path)!r} does not exist.")
    if not path.is_dir():
        raise InvalidInput(f"The text-to-image model path {str(path)!r} is not a directory.")
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise InvalidInput(
            f"The text-to-image model directory {str(path)!r} has no model_index.json, "
            "so it is not a diffusers pipeline."
        )
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"The model_index.json in {str(path)!r} cannot be read as JSON: {exc}") from exc
    if not isinstance(index, dict):
        raise InvalidInput(f"The model_index.json in {str(path)!r} is not a JSON object.")
    return index


def _refuse_by_class_name(path: Path, class_name: object) -> None:
    """Refuse, before loading any weights, a pipeline class that is known not to be text-to-image."""
    if not isinstance(class_name, str) or not class_name:
        raise InvalidInput(f"The model_index.json in {str(path)!r} names no pipeline class (_class_name).")
    lowered = class_name.lower()
    edits = "edit" in lowered and "editing" not in lowered  # QwenImageEdit yes, ModelEditing no
    if edits or any(mark in lowered for mark in _NEEDS_IMAGE_NAME_MARKS):
        raise InvalidInput(
            f"The pipeline in {str(path)!r} is a {class_name}, which needs an input image; "
            "a text-to-image pipeline is required."
        )
    if any(mark in lowered for mark in _NOT_IMAGE_NAME_MARKS):
        raise InvalidInput(
            f"The pipeline in {str(path)!r} is a {class_name}, which does not make a single image; "
            "a text-to-image pipeline is required."
        )
    try:
        cls = getattr(diffusers, class_name, None)
    except (ImportError, RuntimeError):  # an optional backend is missing: decide after loading
        cls = None
    if inspect.isclass(cls) and inspect.isfunction(inspect.getattr_static(cls, "__call__", None)):
        _check_call_parameters(_parameters_of(cls.__call__), class_name, str(path))


def _check_call_signature(pipe: DiffusionPipeline, where: str) -> None:
    _check_call_parameters(_call_parameters(pipe), type(pipe).__name__, where)


def _check_call_parameters(params: dict[str, inspect.Parameter], class_name: str, where: str) -> None:
    needs_input = [
        name
        for name in _IMAGE_INPUT_ARGS
        if name in params and params[name].default is inspect.Parameter.empty
    ]
    if needs_input:
        raise InvalidInput(
            f"The pipeline in {where!r} is a {class_name}, which needs an input {needs_input[0]}; "
            "a text-to-image pipeline is required."
        )
    if "num_frames" in params:
        raise InvalidInput(
            f"The pipeline in {where!r} is a {class_name}, which makes video; "
            "a text-to-image pipeline is required."
        )
    missing = [name for name in _REQUIRED_CALL_ARGS if name not in params]
    if missing:
        raise InvalidInput(
            f"The pipeline in {where!r} is a {class_name}, whose call does not accept {', '.join(missing)}; "
            "a text-to-image pipeline is required."
        )


def _parameters_of(function: Any) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return {}


def _call_parameters(pipe: DiffusionPipeline) -> dict[str, inspect.Parameter]:
    return _parameters_of(pipe.__call__)


def _transformer_config(pipe: DiffusionPipeline) -> Any:
    return getattr(getattr(pipe, "transformer", None), "config", None)


def _is_schnell_like(pipe: DiffusionPipeline) -> bool:
    """A FLUX pipeline whose transformer has no guidance embedding (FLUX.1-schnell, the tiny one)."""
    config = _transformer_config(pipe)
    if type(pipe).__name__.startswith("Flux") and config is not None:
        if getattr(config, "guidance_embeds", None) is False:
            return True
    return "schnell" in _pipeline_name(pipe)


def _is_distilled(pipe: DiffusionPipeline) -> bool:
    """A few-step distilled pipeline: schnell-like FLUX, or a name that says turbo/lightning/LCM/hyper."""
    if _is_schnell_like(pipe):
        return True
    name = _pipeline_name(pipe)
    return any(mark in name for mark in _DISTILLED_NAME_MARKS)


def _pipeline_name(pipe: DiffusionPipeline) -> str:
    config = getattr(pipe, "config", None)
    name = getattr(pipe, "name_or_path", None) or getattr(config, "_name_or_path", None)
    # The last few path parts: "FLUX.1-schnell", or "models--...--FLUX.1-schnell/snapshots/<hash>".
    return "/".join(Path(str(name)).parts[-3:]).lower() if name else ""


def _first_image(output: Any) -> PIL.Image.Image:
    images = getattr(output, "images", None)
    if images is None and isinstance(output, (tuple, list)) and output:
        images = output[0]
    if isinstance(images, PIL.Image.Image):
        return images
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], PIL.Image.Image):
        return images[0]
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    if isinstance(images, np.ndarray) and images.ndim == 4:
        array = np.clip(np.rint(images[0].astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        if array.shape[-1] == 1:
            array = array[..., 0]
        return PIL.Image.fromarray(array)
    raise InvalidInput(
        f"The text-to-image pipeline's output ({type(output).__name__}) holds no image; "
        "a text-to-image pipeline is required."
    )
