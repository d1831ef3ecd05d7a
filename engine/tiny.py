"""The ``tiny`` model, and the one place the miniature configs of the real classes are written.

``build_tiny_components`` is the real HunyuanVideo-I2V-33ch architecture in miniature. Every
component is the same class the 13B model uses (diffusers' ``HunyuanVideoTransformer3DModel`` with
latent concat and 33 input channels, ``AutoencoderKLHunyuanVideo`` with 16 latent channels and 4x/8x
compression, a LLaVA-Llama text encoder that sees the image, CLIP for the pooled vector), so every
engine code path runs on it. Weights are random from a fixed seed and tokenizers are built in code:
nothing is downloaded, and the same seed gives bitwise-identical weights.

The ``*_config`` functions give each class's arguments at the tiny models' size; every other
miniature (the ``world`` model in ``train/components.py``, the tiny text-to-image model in
``t2i.py``, the tests' models) is written as its changes to them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
import transformers
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoTransformer3DModel,
)

try:  # transformers 5: the PIL backend, which needs no torchvision
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # transformers 4
    from transformers import CLIPImageProcessor

from .tiny_tokenizer import tiny_clip_tokenizer, tiny_llama_tokenizer

LATENT_CHANNELS = 16  # as the real VAE: the DiT takes 16 noisy + 16 image + 1 mask = 33 channels
TEXT_DIM = 32  # the LLaVA's hidden size: the DiT's text_embed_dim
POOLED_DIM = 16  # the CLIP's: the DiT's pooled_projection_dim
IMAGE_SIZE = 32  # the tiny LLaVA vision tower sees 32x32 pixels in 8x8 patches: 16 image tokens
PATCH = 8
# Text-to-image (FLUX): four VAE blocks give the real 8x compression, so with FLUX's 2x2 latent
# packing image sides must be multiples of 16, exactly as for FLUX.1.
IMAGE_LATENT_CHANNELS = 4  # the FLUX transformer sees 4 * 4 = 16 channels after 2x2 packing
T5_DIM = 32  # T5 hidden states -> joint_attention_dim
CLIP_DIM = 32  # the text-to-image CLIP's pooled vector -> pooled_projection_dim

M = TypeVar("M")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Weights drawn inside the block come from ``seed``; the global torch RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build(cls: type[M], config: dict[str, Any], seed: int = 0) -> M:
    """``cls(**config)`` with weights drawn from ``seed``."""
    with seeded(seed):
        return cls(**config)


def dit_config(**changes: Any) -> dict[str, Any]:
    """``HunyuanVideoTransformer3DModel`` arguments: every one ``convert.infer_config`` reads back."""
    return dict(
        in_channels=2 * LATENT_CHANNELS + 1, out_channels=LATENT_CHANNELS,
        image_condition_type="latent_concat",
        num_attention_heads=2, attention_head_dim=16, rope_axes_dim=(4, 6, 6), mlp_ratio=4.0,
        num_layers=1, num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1,
        guidance_embeds=False, text_embed_dim=TEXT_DIM, pooled_projection_dim=POOLED_DIM,
    ) | changes


def video_vae_config(block_out_channels: tuple[int, ...] = (8, 8, 16, 16), **changes: Any) -> dict[str, Any]:
    """``AutoencoderKLHunyuanVideo`` arguments: the real 16 latent channels, 8x in space, 4x in time
    (one down and one up block per width)."""
    blocks = len(block_out_channels)
    return dict(latent_channels=LATENT_CHANNELS, block_out_channels=block_out_channels, layers_per_block=1,
                down_block_types=("HunyuanVideoDownBlock3D",) * blocks,
                up_block_types=("HunyuanVideoUpBlock3D",) * blocks,
                norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4) | changes


def flux_config(**changes: Any) -> dict[str, Any]:
    """``FluxTransformer2DModel`` arguments, FLUX.1-schnell-like (no guidance embedding)."""
    return dict(patch_size=1, in_channels=4 * IMAGE_LATENT_CHANNELS, num_layers=1, num_single_layers=1,
                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_DIM,
                pooled_projection_dim=CLIP_DIM, guidance_embeds=False, axes_dims_rope=(4, 6, 6)) | changes


def image_vae_config(block_out_channels: tuple[int, ...] = (8, 8, 8, 8), **changes: Any) -> dict[str, Any]:
    """``AutoencoderKL`` arguments of a FLUX-style image VAE (one down and one up block per width)."""
    blocks = len(block_out_channels)
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
                up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=block_out_channels,
                layers_per_block=1, latent_channels=IMAGE_LATENT_CHANNELS, norm_num_groups=4, sample_size=64,
                use_quant_conv=False, use_post_quant_conv=False) | changes


def special_ids(tokenizer: Any) -> dict[str, int]:
    """A text config's bos/eos/pad token ids, from the tokenizer it reads."""
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def clip_text_config(tokenizer: Any, **changes: Any) -> transformers.CLIPTextConfig:
    """A CLIP text model over ``tokenizer`` (its vocabulary, length and special tokens)."""
    config = dict(
        vocab_size=len(tokenizer), hidden_size=POOLED_DIM, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length, projection_dim=POOLED_DIM,
        **special_ids(tokenizer),
    )
    return transformers.CLIPTextConfig(**config | changes)


def build_tiny_components(seed: int = 0) -> dict:
    """The components of a tiny HunyuanVideo-I2V pipeline, keyed as diffusers names them."""
    tokenizer = tiny_llama_tokenizer()
    tokenizer_2 = tiny_clip_tokenizer()
    text_config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, **special_ids(tokenizer),
    )
    vision_config = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, projection_dim=16,
        image_size=IMAGE_SIZE, patch_size=PATCH,
    )
    llava_config = transformers.LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    llava_config.pad_token_id = tokenizer.pad_token_id
    with seeded(seed):
        transformer = HunyuanVideoTransformer3DModel(**dit_config())
        vae = AutoencoderKLHunyuanVideo(**video_vae_config())
        text_encoder = transformers.LlavaForConditionalGeneration(llava_config).eval()
        text_encoder_2 = transformers.CLIPTextModel(clip_text_config(tokenizer_2)).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True, do_normalize=True, do_resize=True, resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return {
        "transformer": transformer.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "image_processor": image_processor,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0),
    }
