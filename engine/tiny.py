"""The ``tiny`` model: the real HunyuanVideo-I2V-33ch architecture in miniature.

Every component is the same class the 13B model uses (diffusers' ``HunyuanVideoTransformer3DModel``
with latent concat and 33 input channels, ``AutoencoderKLHunyuanVideo`` with 16 latent channels and
4x/8x compression, a LLaVA-Llama text encoder that sees the image, CLIP for the pooled vector), so
every engine code path runs on it. Weights are random from a fixed seed and tokenizers are built in
code: nothing is downloaded, and the same seed gives bitwise-identical weights.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

try:  # transformers 5: the PIL backend, which needs no torchvision
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # transformers 4
    from transformers import CLIPImageProcessor

from .tiny_tokenizer import tiny_clip_tokenizer, tiny_llama_tokenizer

LATENT_CHANNELS = 16  # as the real VAE: the DiT takes 16 noisy + 16 image + 1 mask = 33 channels
TEXT_DIM = 32
POOLED_DIM = 16
IMAGE_SIZE = 32  # the tiny LLaVA vision tower sees 32x32 pixels in 8x8 patches: 16 image tokens
PATCH = 8


def build_tiny_components(seed: int = 0) -> dict:
    """The components of a tiny HunyuanVideo-I2V pipeline, keyed as diffusers names them."""
    tokenizer = tiny_llama_tokenizer()
    tokenizer_2 = tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = HunyuanVideoTransformer3DModel(
            in_channels=2 * LATENT_CHANNELS + 1,
            out_channels=LATENT_CHANNELS,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=1,
            num_single_layers=2,
            num_refiner_layers=1,
            patch_size=2,
            patch_size_t=1,
            guidance_embeds=False,
            text_embed_dim=TEXT_DIM,
            pooled_projection_dim=POOLED_DIM,
            rope_axes_dim=(4, 6, 6),
            image_condition_type="latent_concat",
        )
        vae = AutoencoderKLHunyuanVideo(
            latent_channels=LATENT_CHANNELS,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            norm_num_groups=4,
            spatial_compression_ratio=8,
            temporal_compression_ratio=4,
        )
        text_config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_DIM,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        vision_config = CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=PATCH,
            projection_dim=16,
        )
        llava_config = LlavaConfig(
            vision_config=vision_config,
            text_config=text_config,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        )
        llava_config.pad_token_id = tokenizer.pad_token_id
        text_encoder = LlavaForConditionalGeneration(llava_config).eval()
        text_encoder_2 = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer_2),
                hidden_size=POOLED_DIM,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=77,
                bos_token_id=tokenizer_2.bos_token_id,
                eos_token_id=tokenizer_2.eos_token_id,
                pad_token_id=tokenizer_2.pad_token_id,
                projection_dim=POOLED_DIM,
            )
        ).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
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
