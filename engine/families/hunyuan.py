"""HunyuanVideo-I2V-33ch, the architecture Magic 1-For-1 distils: run by ``pipeline.Magic141Pipeline``."""

from __future__ import annotations

from fractions import Fraction

from .base import Family, Geometry, Sampling, on_meta


def _build_tiny() -> dict:
    from ..tiny import build_tiny_components

    return build_tiny_components()


def geometry(parts: dict) -> Geometry:
    config, vae = parts["transformer"].config, parts["vae"]
    return Geometry(hidden=config.num_attention_heads * config.attention_head_dim,
                    heads=config.num_attention_heads, layers=config.num_layers + config.num_single_layers,
                    patch=(config.patch_size_t, config.patch_size, config.patch_size),
                    vae_spatial=vae.spatial_compression_ratio, vae_temporal=vae.temporal_compression_ratio,
                    latent_channels=(config.in_channels - 1) // 2)


def real_components() -> dict:
    """HunyuanVideo-I2V-33ch: the 13B DiT (33 inputs), its VAE, LLaVA-Llama-3-8B and CLIP-L (published
    configs)."""
    import transformers
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

    with on_meta():
        llava = transformers.LlavaConfig(
            vision_config=transformers.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096,
                                                        num_hidden_layers=24, num_attention_heads=16,
                                                        image_size=336, patch_size=14),
            text_config=transformers.LlamaConfig(vocab_size=128320, hidden_size=4096, intermediate_size=14336,
                                                 num_hidden_layers=32, num_attention_heads=32,
                                                 num_key_value_heads=8))
        return {
            "transformer": HunyuanVideoTransformer3DModel(in_channels=33,
                                                          image_condition_type="latent_concat"),
            "vae": AutoencoderKLHunyuanVideo(),
            "text_encoder": transformers.LlavaForConditionalGeneration(llava),
            "text_encoder_2": transformers.CLIPTextModel(transformers.CLIPTextConfig()),
        }


HUNYUAN = Family(
    name="hunyuan",
    label="HunyuanVideo-I2V-33ch (Magic 1-For-1)",
    pipeline="HunyuanVideoImageToVideoPipeline",
    native_fps=Fraction(24),
    window_frames=129,
    default_size=(544, 960),
    base=Sampling(steps=50, guidance=6.0),
    distilled=Sampling(steps=4, guidance=1.0),  # Magic 1-For-1: 4-step DMD2, CFG-free
    audio=False,
    dits=("transformer",),
    text_encoders=("text_encoder", "text_encoder_2"),
    window_class=lambda: None,  # our own pipeline, not a diffusers subclass
    geometry=geometry,
    build_tiny=_build_tiny,
    build_real=real_components,
    tiny_name="tiny",
    folder="a diffusers folder of hunyuanvideo-community/HunyuanVideo-I2V-33ch (model_index.json, "
           "transformer/, vae/, text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/, "
           "image_processor/, scheduler/), or a single-file DiT checkpoint with --components",
    tiny_size=(64, 96),
    tiny_window_frames=33,
    conditionings=("magic141", "diffusers", "world"),
)
