"""HunyuanVideo 1.5 image-to-video (``HunyuanVideo15ImageToVideoPipeline``), and its miniature ``tiny-hv15``.

HunyuanVideo 1.5 is one 8.3B dual-stream DiT (54 blocks, 16 heads of 128) over the latents of a
causal VAE with 32 channels, 16x in space and 4x in time. The prompt is read by two encoders:
Qwen2.5-VL-7B's language model (a chat template, its third-from-last hidden states) and a glyph
ByT5 (Glyph-SDXL-v2) for the quoted text the video should write; the image is read twice: by
SigLIP (so400m, 729 tokens of 1152) as extra context tokens, and by the VAE as a latent frame
concatenated to the noise with a 1-channel mask of the given frames (32 + 32 + 1 = 65 inputs).
A window's condition is the previous window's last frames instead of the image: their K latent
frames in the condition channels, and the mask marking all K.

Classifier-free guidance is the ``guider`` component (diffusers' ``ClassifierFreeGuidance``), not a
``guidance_scale`` argument, and the pipeline takes no height or width: it picks the size from the
image's aspect ratio among buckets of the transformer's ``target_size`` (640 for the 480p models).
"""

from __future__ import annotations

from fractions import Fraction

import torch
from diffusers import (
    AutoencoderKLHunyuanVideo15,
    ClassifierFreeGuidance,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideo15ImageToVideoPipeline,
    HunyuanVideo15Transformer3DModel,
)
from transformers import (
    ByT5Tokenizer,
    Qwen2_5_VLTextConfig,
    Qwen2_5_VLTextModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    T5Config,
    T5EncoderModel,
)

try:  # transformers 5: the PIL backend, which needs no torchvision
    from transformers import SiglipImageProcessorPil as SiglipImageProcessor
except ImportError:  # transformers 4
    from transformers import SiglipImageProcessor

from magic141.errors import InvalidInput

from ..tiny import seeded
from ..tiny_tokenizer import byte_tokenizer
from .base import Family, Geometry, Sampling, WindowMixin, misfit, on_meta
from .wan import with_shift

# The real 480p I2V model (diffusers' scripts/convert_hunyuan_video1_5_to_diffusers.py, "480p_i2v"):
# in_channels 65 = 32 noise + 32 image latents + 1 mask, out_channels 32, text_embed_dim 3584
# (Qwen2.5-VL-7B), text_embed_2_dim 1472 (ByT5-small), image_embed_dim 1152 (SigLIP so400m),
# target_size 640, scheduler shift 5.0, guider guidance_scale 6.0; the VAE is
# AutoencoderKLHunyuanVideo15's defaults: 32 latent channels, 16x spatial, 4x temporal.
LATENT_CHANNELS = 32  # kept: the channel layout 32 + 32 + 1 is the real one
TINY_TEXT_DIM = 32  # the Qwen hidden size -> text_embed_dim
TINY_BYT5_DIM = 16  # the T5 d_model -> text_embed_2_dim
TINY_IMAGE_DIM = 16  # the SigLIP hidden size -> image_embed_dim
TINY_IMAGE_SIZE, TINY_PATCH = 32, 8  # SigLIP sees 32x32 pixels: 16 tokens (the real one 384/14: 729)
# Buckets of 80 (25 patches of 16) hold 64x96 exactly, so the plain pipeline picks 64x96 for a 3:2 image.
TINY_TARGET_SIZE = 80
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2's chat template (system, user, then the assistant's turn opened), written for the byte tokenizer.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen_tokenizer():
    """Stands in for Qwen2.5-VL's tokenizer: its special tokens, chat template and right padding."""
    tokenizer = byte_tokenizer(QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                               model_max_length=32768)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def tiny_hv15_components(seed: int = 0) -> dict:
    """A HunyuanVideo 1.5 480p I2V pipeline's components at toy size: the real classes and ratios."""
    tokenizer = tiny_qwen_tokenizer()
    tokenizer_2 = ByT5Tokenizer()  # bytes + 3 specials + 125 extra ids: no vocabulary file
    with seeded(seed):
        transformer = HunyuanVideo15Transformer3DModel(
            in_channels=2 * LATENT_CHANNELS + 1, out_channels=LATENT_CHANNELS, num_attention_heads=2,
            attention_head_dim=16, num_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1,
            text_embed_dim=TINY_TEXT_DIM, text_embed_2_dim=TINY_BYT5_DIM, image_embed_dim=TINY_IMAGE_DIM,
            rope_axes_dim=(4, 6, 6), target_size=TINY_TARGET_SIZE, task_type="i2v",
        )
        # Five levels as the real (128, 256, 512, 1024, 1024): four 2x spatial steps, two 2x temporal ones;
        # the last width a multiple of 2 * 32 latent channels, as the encoder's shortcut needs.
        vae = AutoencoderKLHunyuanVideo15(
            latent_channels=LATENT_CHANNELS, block_out_channels=(4, 8, 16, 32, 64), layers_per_block=1,
            spatial_compression_ratio=16, temporal_compression_ratio=4,
        )
        text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
            vocab_size=len(tokenizer), hidden_size=TINY_TEXT_DIM, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]},
            bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ))
        text_encoder_2 = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer_2), d_model=TINY_BYT5_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer_2.pad_token_id, eos_token_id=tokenizer_2.eos_token_id,
            decoder_start_token_id=tokenizer_2.pad_token_id,
        ))
        image_encoder = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=TINY_IMAGE_DIM, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH,
        ))
    return {
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "transformer": transformer.eval(),
        "vae": vae.eval(),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0),
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer_2": tokenizer_2,
        "guider": ClassifierFreeGuidance(guidance_scale=6.0),
        "image_encoder": image_encoder.eval(),
        "feature_extractor": SiglipImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}),
    }


class _FixedSize:
    """The pipeline's video processor, except that the bucket it picks is the window's size.

    Everything else (the crop-resize of the image, preprocessing, postprocessing) is the wrapped
    diffusers processor's.
    """

    def __init__(self, processor, height: int, width: int) -> None:
        self._processor, self._size = processor, (height, width)

    def calculate_default_height_width(self, height: int, width: int, target_size: int) -> tuple[int, int]:
        return self._size

    def __getattr__(self, name: str):  # only names not set in __init__ reach here
        if name == "_processor":
            raise AttributeError(name)
        return getattr(self._processor, name)


class HV15WindowPipeline(WindowMixin, HunyuanVideo15ImageToVideoPipeline):
    """diffusers' HunyuanVideo 1.5 I2V pipeline, with the window's size and its condition frames."""

    def encode_prompts(self, prompt: str, device: torch.device) -> dict[str, torch.Tensor]:
        """Both streams of one prompt (Qwen's and the glyph ByT5's), each with its mask."""
        embeds, mask, embeds_2, mask_2 = self.encode_prompt(prompt=prompt, device=device,
                                                            dtype=self.transformer.dtype)
        return {"prompt_embeds": embeds, "prompt_embeds_mask": mask, "prompt_embeds_2": embeds_2,
                "prompt_embeds_mask_2": mask_2}

    def window_kwargs(self, *, height, width, num_frames, steps, shift, guidance, fps: Fraction) -> dict:
        """Shift and guidance are set on fresh copies of the scheduler and guider (the pipeline reads
        them from there); the model takes no frame rate."""
        self.scheduler = with_shift(self.scheduler, shift)
        self.guider = self.guider.new(guidance_scale=guidance)  # 1.0: the guider runs one, conditional, pass
        return dict(height=height, width=width, num_frames=num_frames, num_inference_steps=steps)

    def __call__(self, image, *args, height: int | None = None, width: int | None = None, **kwargs):
        """diffusers' ``__call__``, plus ``height`` and ``width``: the window's size.

        diffusers picks the size itself, the bucket of ``target_size`` nearest the image's aspect
        ratio, and crop-resizes the image to it. The engine decides a window's size (a sliding
        window's condition frames must match it), so for the call only the bucket choice is
        replaced by the size asked; the image is crop-resized to it as diffusers does. Without
        them the call is diffusers' exactly.
        """
        if height is None and width is None:
            return super().__call__(image, *args, **kwargs)
        if height is None or width is None:
            raise InvalidInput("give both height and width, or neither", field="height" if height is None
                               else "width")
        processor = self.video_processor
        self.video_processor = _FixedSize(processor, height, width)
        try:
            return super().__call__(image, *args, **kwargs)
        finally:
            self.video_processor = processor

    def prepare_cond_latents_and_mask(self, latents, image, batch_size, height, width, dtype, device):
        """With ``condition_video`` set, its K latent frames (encoded by the VAE as diffusers encodes the
        image: the distribution's mode, times ``scaling_factor``) fill the condition channels' first K
        frames and the mask marks those K; otherwise diffusers' image condition (one frame)."""
        if self.condition_video is None:
            return super().prepare_cond_latents_and_mask(latents, image, batch_size, height, width, dtype,
                                                         device)
        frames = latents.shape[2]
        given = self.condition_video
        if tuple(given.shape[-2:]) != (height, width):
            raise InvalidInput(f"must be {height}x{width}, got {given.shape[-2]}x{given.shape[-1]}",
                               field="condition_video")
        encoded = self.vae.encode(given.to(device=device, dtype=self.vae.dtype)).latent_dist.mode()
        encoded = (encoded * self.vae.config.scaling_factor).to(dtype)
        k = encoded.shape[2]
        if k > frames:
            raise InvalidInput(f"has {k} latent frames, more than the window's {frames}",
                               field="condition_video")
        condition = latents.new_zeros(batch_size, encoded.shape[1], frames, *latents.shape[3:], dtype=dtype)
        condition[:, :, :k] = encoded
        mask = latents.new_zeros(batch_size, 1, frames, *latents.shape[3:], dtype=dtype)
        mask[:, :, :k] = 1
        return condition, mask


def _window_class() -> type:
    return HV15WindowPipeline


def mismatch(parts: dict) -> str | None:
    """Components of different models: the VAE's channels and the encoders' widths the DiT was made for."""
    transformer = parts["transformer"].config
    return misfit([
        ("vae/config.json", "latent_channels", parts["vae"].config.latent_channels,
         (transformer.in_channels - 1) // 2),
        ("text_encoder/config.json", "hidden_size", parts["text_encoder"].config.hidden_size,
         transformer.text_embed_dim),
        ("text_encoder_2/config.json", "d_model", parts["text_encoder_2"].config.d_model,
         transformer.text_embed_2_dim),
        ("image_encoder/config.json", "hidden_size", parts["image_encoder"].config.hidden_size,
         transformer.image_embed_dim),
    ])


def geometry(parts: dict) -> Geometry:
    config, vae = parts["transformer"].config, parts["vae"].config
    return Geometry(hidden=config.num_attention_heads * config.attention_head_dim,
                    heads=config.num_attention_heads, layers=config.num_layers,
                    patch=(config.patch_size_t, config.patch_size, config.patch_size),
                    vae_spatial=vae.spatial_compression_ratio, vae_temporal=vae.temporal_compression_ratio,
                    latent_channels=vae.latent_channels)


def real_components() -> dict:
    """The 480p I2V model: the 8.3B DiT and VAE (diffusers' defaults are the real ones), Qwen2.5-VL-7B's
    language model, the glyph ByT5-small encoder and SigLIP so400m (their published configs)."""
    with on_meta():
        return {
            "transformer": HunyuanVideo15Transformer3DModel(),
            "vae": AutoencoderKLHunyuanVideo15(),
            "text_encoder": Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
                vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4)),
            "text_encoder_2": T5EncoderModel(T5Config(
                vocab_size=384, d_model=1472, d_kv=64, d_ff=3584, num_layers=12, num_heads=6,
                feed_forward_proj="gated-gelu")),
            "image_encoder": SiglipVisionModel(SiglipVisionConfig(
                hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                image_size=384, patch_size=14)),
        }


HV15 = Family(
    name="hv15",
    label="HunyuanVideo 1.5 image-to-video",
    pipeline="HunyuanVideo15ImageToVideoPipeline",
    native_fps=Fraction(24),  # diffusers' example exports at fps=24
    window_frames=121,  # the pipeline's default num_frames (5 s at 24 fps)
    default_size=(480, 848),  # the 640 bucket (480p) for 16:9, as the pipeline picks it
    # 480p I2V: diffusers' pipeline default of 50 steps; guidance 6.0 (and shift 5.0) from the
    # conversion script's GUIDANCE_CONFIGS / SCHEDULER_CONFIGS["480p_i2v"].
    base=Sampling(steps=50, guidance=6.0),
    # The 480p I2V step-distilled checkpoint (transformer/480p_i2v_step_distilled): "8 or 12 steps
    # (recommended)", 4 for speed (tencent/HunyuanVideo-1.5 README, Dec 05 2025 release note);
    # guidance 1.0 (CFG-free) and shift 7.0 from diffusers PR #12802 ("support step-distilled").
    distilled=Sampling(steps=8, guidance=1.0),
    audio=False,
    dits=("transformer",),
    # Not the image encoder: SigLIP reads the image inside every call (``encode_image``), so it must stay
    # on the device when the text encoders are released after the prompts are encoded.
    text_encoders=("text_encoder", "text_encoder_2"),
    window_class=_window_class,
    geometry=geometry,
    build_tiny=tiny_hv15_components,
    build_real=real_components,
    tiny_name="tiny-hv15",
    mismatch=mismatch,
    folder="a diffusers folder of hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_i2v "
           "(model_index.json, transformer/, vae/, text_encoder/ (Qwen2.5-VL-7B), tokenizer/, "
           "text_encoder_2/ (glyph ByT5), tokenizer_2/, image_encoder/ (SigLIP), feature_extractor/, "
           "scheduler/, guider/)",
    tiny_size=(64, 96),  # multiples of 16 (the VAE's 16x, patch 1)
    tiny_window_frames=17,  # 4k+1: 5 latent frames
)
