"""The ``world`` model's architecture: the classes of HunyuanVideo-I2V-33ch and FLUX, at toy size.

Sizes are chosen for a CPU budget of minutes, not for quality at large: frames are 32x48 (3:2) at
24 fps, the causal VAE compresses 4x in time and 8x in space like the real one (a 25-frame second
becomes 7 latent frames of 4x6), and the DiT patchifies 1x1x1 instead of 1x2x2, so each latent
frame is 24 tokens (at 4x6 a 2x2 patch would leave 6).

The text encoders (a LLaVA-Llama and CLIP text model) and their tokenizers are the ``tiny`` model's,
frozen at their seeded random weights: the DiT learns to read their features. The world's grammar
is small, and a random network's features of distinct captions are distinct, so nothing there
needs training; the card says so.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from diffusers import AutoencoderKL, AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

HEIGHT = 32
WIDTH = 48
FPS = Fraction(24)
WINDOW_FRAMES = 25  # one second at 24 fps, 4k+1 for the causal VAE: 7 latent frames
LATENT_CHANNELS = 16
VAE_SPATIAL = 8
VAE_TEMPORAL = 4

VAE_CONFIG = dict(
    latent_channels=LATENT_CHANNELS,
    block_out_channels=(8, 16, 32, 32),
    layers_per_block=1,
    norm_num_groups=4,
    spatial_compression_ratio=VAE_SPATIAL,
    temporal_compression_ratio=VAE_TEMPORAL,
)

DIT_CONFIG = dict(
    in_channels=2 * LATENT_CHANNELS + 1,  # noisy latents + condition latents + mask: 33 like the real one
    out_channels=LATENT_CHANNELS,
    num_attention_heads=3,
    attention_head_dim=32,
    num_layers=2,
    num_single_layers=2,
    num_refiner_layers=1,
    mlp_ratio=4.0,
    patch_size=1,
    patch_size_t=1,
    guidance_embeds=False,
    text_embed_dim=32,  # the tiny LLaVA's hidden size
    pooled_projection_dim=16,  # the tiny CLIP's
    rope_axes_dim=(8, 12, 12),
    image_condition_type="latent_concat",
)

T2I_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=HEIGHT,
    use_quant_conv=False,
    use_post_quant_conv=False,
)


def build_vae(seed: int = 0) -> AutoencoderKLHunyuanVideo:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKLHunyuanVideo(**VAE_CONFIG)


def build_dit(seed: int = 0, **overrides) -> HunyuanVideoTransformer3DModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HunyuanVideoTransformer3DModel(**{**DIT_CONFIG, **overrides})


def build_t2i_vae(seed: int = 0) -> AutoencoderKL:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**T2I_VAE_CONFIG)


def frozen_text_components() -> dict:
    """The tiny model's text encoders, tokenizers and image processor (seed 0), frozen."""
    from ..tiny import build_tiny_components

    parts = build_tiny_components(seed=0)
    keep = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "image_processor", "scheduler")
    parts = {name: parts[name] for name in keep}
    for name in ("text_encoder", "text_encoder_2"):
        parts[name].requires_grad_(False).eval()
    return parts
