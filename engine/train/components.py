"""The ``world`` model's architecture: the classes of HunyuanVideo-I2V-33ch and FLUX, at toy size.

Sizes are chosen for a CPU budget of minutes, not for quality at large: frames are 32x48 (3:2) at
24 fps. The causal VAE compresses 4x in time like the real one but 4x in space instead of 8x (a
25-frame second becomes 7 latent frames of 8x12): version 1's 4x6 latents kept neither the posts nor
the corners of squares, and reached 19-26 dB. It has three blocks of 16, 32 and 64 channels, each
halving space and time once, so its encoder and decoder mirror each other (with four blocks,
``AutoencoderKLHunyuanVideo`` at 4x runs two of its decoder's blocks at full resolution, and a
step took twice as long for no better picture: 400 steps on 4 frames took 148 s against 75 s). Its
GroupNorms have 4 groups (4 channels each at full resolution): with 2 channels a group normalises a
plain area to one of two signs per group, which can hold little of its colour. Version 1 mapped teal,
charcoal and plum backgrounds all to navy; the VAE's loss now has a term for the background's colour
(``vae.py``). The DiT patchifies 1x2x2 like the real one, so each latent frame is still 24 tokens.

The text encoders (a LLaVA-Llama and CLIP text model) and their tokenizers are the ``tiny`` model's,
frozen at their seeded random weights: the DiT learns to read their features. The world's grammar
is small, and a random network's features of distinct captions are distinct, so nothing there
needs training; the card says so.
"""

from __future__ import annotations

from fractions import Fraction

from diffusers import (
    AutoencoderKL,
    AutoencoderKLHunyuanVideo,
    FluxTransformer2DModel,
    HunyuanVideoTransformer3DModel,
)

from .. import tiny

HEIGHT = 32
WIDTH = 48
FPS = Fraction(24)
WINDOW_FRAMES = 25  # one second at 24 fps, 4k+1 for the causal VAE: 7 latent frames

VAE_CONFIG = tiny.video_vae_config(block_out_channels=(16, 32, 64), spatial_compression_ratio=4)
DIT_CONFIG = tiny.dit_config(
    num_attention_heads=3, attention_head_dim=32, rope_axes_dim=(8, 12, 12), num_layers=2, patch_size=2
)
T2I_VAE_CONFIG = tiny.image_vae_config(block_out_channels=(16, 32, 32, 32), sample_size=HEIGHT)
T2I_CONFIG = tiny.flux_config(num_layers=2, num_single_layers=2, num_attention_heads=4)


def build_vae(seed: int = 0) -> AutoencoderKLHunyuanVideo:
    return tiny.build(AutoencoderKLHunyuanVideo, VAE_CONFIG, seed)


def build_dit(seed: int = 0) -> HunyuanVideoTransformer3DModel:
    return tiny.build(HunyuanVideoTransformer3DModel, DIT_CONFIG, seed)


def build_t2i_vae(seed: int = 0) -> AutoencoderKL:
    return tiny.build(AutoencoderKL, T2I_VAE_CONFIG, seed)


def build_t2i_transformer(seed: int = 0) -> FluxTransformer2DModel:
    return tiny.build(FluxTransformer2DModel, T2I_CONFIG, seed)


def frozen_text_components() -> dict:
    """The tiny model's text encoders, tokenizers and image processor (seed 0), frozen."""
    parts = tiny.build_tiny_components(seed=0)
    keep = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "image_processor", "scheduler")
    parts = {name: parts[name] for name in keep}
    for name in ("text_encoder", "text_encoder_2"):
        parts[name].requires_grad_(False).eval()
    return parts
