"""Wan 2.1 / 2.2 image-to-video (``WanImageToVideoPipeline``), and its miniature ``tiny-wan``.

Wan 2.2 A14B runs two experts: ``transformer`` for the high-noise steps and ``transformer_2`` below
``boundary_ratio``. The image enters as a latent: a video of the image then zeros, encoded by the
Wan VAE, and a 4-channel mask of the given frames, concatenated to the noise on channels (16 + 4 +
16 = 36 inputs). A window's condition is the previous frames instead of one image, and its mask
marks all their latent frames. 4-step sampling comes from the Lightning distillation LoRAs
(``--lora``), CFG-free.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    WanImageToVideoPipeline,
    WanTransformer3DModel,
)
from diffusers.utils.torch_utils import randn_tensor
from transformers import UMT5Config, UMT5EncoderModel

from ..tiny import seeded
from ..tiny_tokenizer import byte_tokenizer
from .base import Family, Geometry, Sampling, WindowMixin, misfit, on_meta

TINY_TEXT_DIM = 32
TINY_Z_DIM = 16  # Wan 2.1/2.2 A14B's VAE: 16 latent channels, 4x in time, 8x in space
MAX_SEQUENCE_LENGTH = 512  # WanImageToVideoPipeline.__call__'s default (its encode_prompt's is 226)


def tiny_wan_components(seed: int = 0) -> dict:
    """A Wan 2.2 A14B-style I2V pipeline's components at toy size: two experts, no image encoder."""
    tokenizer = byte_tokenizer(["<pad>", "</s>"], bos=None, eos="</s>", pad="<pad>", model_max_length=512,
                               append_eos=True)
    dit = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
               in_channels=2 * TINY_Z_DIM + 4, out_channels=TINY_Z_DIM, text_dim=TINY_TEXT_DIM, freq_dim=32,
               ffn_dim=32, num_layers=2, cross_attn_norm=True, rope_max_seq_len=32)
    with seeded(seed):
        transformer = WanTransformer3DModel(**dit)
        transformer_2 = WanTransformer3DModel(**dit)
        vae = AutoencoderKLWan(base_dim=8, z_dim=TINY_Z_DIM, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=TINY_TEXT_DIM, d_kv=8, d_ff=32, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
        ))
    return {
        "transformer": transformer.eval(),
        "transformer_2": transformer_2.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0),
        "image_processor": None,
        "image_encoder": None,
        "boundary_ratio": 0.875,  # Wan 2.2 A14B I2V's: the high-noise expert above t = 875
    }


def with_shift(scheduler, shift: float):
    """A fresh copy of ``scheduler`` with its flow shift set (UniPC calls it ``flow_shift``)."""
    key = "flow_shift" if "flow_shift" in scheduler.config else "shift"
    return type(scheduler).from_config(scheduler.config, **{key: shift})


class WanWindowPipeline(WindowMixin, WanImageToVideoPipeline):
    def encode_prompts(self, prompt: str, device: torch.device) -> dict[str, torch.Tensor]:
        embeds, _ = self.encode_prompt(prompt=prompt, do_classifier_free_guidance=False, device=device,
                                       max_sequence_length=MAX_SEQUENCE_LENGTH)
        return {"prompt_embeds": embeds}

    def window_kwargs(self, *, height, width, num_frames, steps, shift, guidance, fps: Fraction) -> dict:
        self.scheduler = with_shift(self.scheduler, shift)
        return dict(height=height, width=width, num_frames=num_frames, num_inference_steps=steps,
                    guidance_scale=guidance,
                    guidance_scale_2=guidance if self.transformer_2 is not None else None)

    def prepare_latents(self, image, batch_size, num_channels_latents=16, height=480, width=832,
                        num_frames=81, dtype=None, device=None, generator=None, latents=None,
                        last_image=None):
        if self.condition_video is None:
            return super().prepare_latents(image, batch_size, num_channels_latents, height, width, num_frames,
                                           dtype, device, generator, latents, last_image)
        # The previous window's last frames, then zeros, as the video condition; its latent frames masked.
        lat_t = (num_frames - 1) // self.vae_scale_factor_temporal + 1
        lat_h, lat_w = height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial
        noise = randn_tensor((batch_size, num_channels_latents, lat_t, lat_h, lat_w), generator=generator,
                             device=device, dtype=dtype)
        given = self.condition_video.to(device=image.device, dtype=image.dtype)
        given_latents = (given.shape[2] - 1) // self.vae_scale_factor_temporal + 1
        if self.config.expand_timesteps:
            video = given
        else:
            rest = given.new_zeros(*given.shape[:2], num_frames - given.shape[2], height, width)
            video = torch.cat([given, rest], dim=2)
        encoded = self.vae.encode(video.to(self.vae.device, self.vae.dtype)).latent_dist.mode()
        mean = torch.tensor(self.vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.vae.config.latents_std).view(1, -1, 1, 1, 1)
        condition = ((encoded.to(device, dtype) - mean.to(device, dtype)) / std.to(device, dtype))
        condition = condition.repeat(batch_size, 1, 1, 1, 1)
        if self.config.expand_timesteps:  # Wan 2.2 TI2V-5B: the given latent frames replace the noise
            full = condition.new_zeros(batch_size, num_channels_latents, lat_t, lat_h, lat_w)
            full[:, :, :given_latents] = condition
            keep = torch.ones(1, 1, lat_t, lat_h, lat_w, dtype=dtype, device=device)
            keep[:, :, :given_latents] = 0
            return noise, full, keep
        mask = torch.zeros(batch_size, self.vae_scale_factor_temporal, lat_t, lat_h, lat_w, device=device,
                           dtype=condition.dtype)
        mask[:, :, :given_latents] = 1
        return noise, torch.cat([mask, condition], dim=1)


def _shape(config) -> dict:
    return {key: value for key, value in config.items() if not key.startswith("_")}


def mismatch(parts: dict) -> str | None:
    """Components of different Wan models (a 2.1 VAE beside a 2.2 TI2V transformer, say)."""
    transformer, vae = parts["transformer"].config, parts["vae"].config
    # 2.1 and 2.2 A14B: noise, a 4-channel mask and the condition latents; 2.2 TI2V-5B: the latents alone.
    z_dim = transformer.in_channels if parts.get("expand_timesteps") else (transformer.in_channels - 4) // 2
    problem = misfit([
        ("vae/config.json", "z_dim", vae.z_dim, z_dim),
        ("text_encoder/config.json", "d_model", parts["text_encoder"].config.d_model, transformer.text_dim),
    ])
    if problem is not None:
        return problem
    second = parts.get("transformer_2")
    if second is not None and _shape(second.config) != _shape(transformer):
        return "transformer_2/config.json differs from transformer/config.json (two experts of one model)"
    return None


def _window_class() -> type:
    return WanWindowPipeline


def geometry(parts: dict) -> Geometry:
    config, vae = parts["transformer"].config, parts["vae"].config
    return Geometry(hidden=config.num_attention_heads * config.attention_head_dim,
                    heads=config.num_attention_heads, layers=config.num_layers,
                    patch=tuple(config.patch_size),
                    vae_spatial=vae.scale_factor_spatial, vae_temporal=vae.scale_factor_temporal,
                    latent_channels=vae.z_dim)


def real_components() -> dict:
    """Wan 2.2 I2V A14B: two 14B experts (diffusers' defaults, 36 inputs), its VAE, umT5-XXL's encoder."""
    with on_meta():
        return {
            "transformer": WanTransformer3DModel(in_channels=36),
            "transformer_2": WanTransformer3DModel(in_channels=36),
            "vae": AutoencoderKLWan(),
            "text_encoder": UMT5EncoderModel(UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240,
                                                        num_layers=24, num_heads=64,
                                                        feed_forward_proj="gated-gelu")),
        }


WAN = Family(
    name="wan",
    label="Wan 2.2 image-to-video",
    pipeline="WanImageToVideoPipeline",
    native_fps=Fraction(16),
    window_frames=81,
    default_size=(480, 832),
    base=Sampling(steps=40, guidance=3.5),
    distilled=Sampling(steps=4, guidance=1.0),
    audio=False,
    dits=("transformer", "transformer_2"),
    text_encoders=("text_encoder",),  # the image encoder (Wan 2.1) runs in every window: never released
    window_class=_window_class,
    geometry=geometry,
    build_tiny=tiny_wan_components,
    build_real=real_components,
    tiny_name="tiny-wan",
    mismatch=mismatch,
    folder="a diffusers folder of Wan-AI/Wan2.2-I2V-A14B-Diffusers (model_index.json, transformer/, "
           "transformer_2/, vae/, text_encoder/, tokenizer/, scheduler/); Wan 2.1 I2V adds image_encoder/ "
           "and image_processor/",
)
