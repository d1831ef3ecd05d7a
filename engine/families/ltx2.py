"""LTX-2 image-to-video with sound (``LTX2ImageToVideoPipeline``), and its miniature ``tiny-ltx2``.

One DiT (``transformer``) denoises a video stream and an audio stream together, the two joined by
cross-attention. Text goes through Gemma 3 (every hidden layer, stacked) and ``connectors``, which
give each stream its own text tokens. The video VAE compresses 8x in time and 32x in space into 128
channels; the audio VAE turns 16 kHz mel spectrograms (hop 160, 64 bins) into 8-channel latents 4x
shorter, and the vocoder makes 24 kHz stereo from the mel spectrogram.

The image enters as the clean first latent frame: its tokens get timestep 0 (a per-token
conditioning mask) and the loop never steps that frame. A window's condition is the previous
frames instead: their K latent frames are clean and masked, and held clean after every step (the
diffusers loop only holds the first frame itself).
"""

from __future__ import annotations

from fractions import Fraction

import torch
from diffusers import (
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    FlowMatchEulerDiscreteScheduler,
    LTX2ImageToVideoPipeline,
    LTX2VideoTransformer3DModel,
)
from diffusers.pipelines.ltx2 import LTX2TextConnectors
from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
from diffusers.utils.torch_utils import randn_tensor
from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

from ..tiny import seeded
from ..tiny_tokenizer import byte_tokenizer
from .base import Family, Geometry, Sampling, WindowMixin, misfit, on_meta

MAX_SEQUENCE_LENGTH = 1024  # LTX2ImageToVideoPipeline.__call__'s default: every prompt is padded to it
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_image>", "<end_of_image>",
                  "<image_soft_token>"]
TINY_TEXT_DIM = 32  # Gemma 3 12B's hidden size is 3840: the DiT's and the connectors' caption_channels
TINY_TEXT_LAYERS = 2  # 48 in Gemma 3 12B; the connectors read all hidden states (layers + embeddings)
LATENT_CHANNELS = 128  # the real video VAE's
AUDIO_LATENT_CHANNELS = 2  # the real audio VAE has 8; 2 x 16 latent mel bins keep the tiny decoder narrow
MEL_BINS = 64


def gemma_tokenizer():
    """Stands in for the Gemma 3 tokenizer: its special tokens, <bos> first, byte-level vocabulary."""
    return byte_tokenizer(GEMMA_SPECIALS, bos="<bos>", eos="<eos>", pad="<pad>",
                          model_max_length=MAX_SEQUENCE_LENGTH)


def tiny_ltx2_components(seed: int = 0) -> dict:
    """An LTX-2 (19B) I2V pipeline's components at toy size, the same classes and compression ratios.

    Real configs (Lightricks/LTX-2 and its diffusers conversions): video VAE 128 latent channels,
    patch 4 then spatial, temporal and two spatio-temporal downsamples (32x space, 8x time); audio
    VAE 16 kHz, mel hop 160, 64 mel bins, 8 latent channels, 4x in time; vocoder 128 inputs (2 x 64
    mel bins), upsampling 6*5*2*2*2 = 240 to 24 kHz stereo; DiT 48 layers, 32 x 128 video and
    32 x 64 audio heads, split RoPE, patch 1; connectors with 128 learnable registers; scheduler
    with dynamic (token-count) shifting, base 0.95, max 2.05, terminal 0.1.
    """
    tokenizer = gemma_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text_config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=TINY_TEXT_DIM, intermediate_size=64,
        num_hidden_layers=TINY_TEXT_LAYERS, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        max_position_embeddings=MAX_SEQUENCE_LENGTH, sliding_window=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision_config = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14)
    gemma_config = Gemma3Config(
        text_config=text_config, vision_config=vision_config, mm_tokens_per_image=4,
        boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )
    with seeded(seed):
        text_encoder = Gemma3ForConditionalGeneration(gemma_config)
        connectors = LTX2TextConnectors(
            caption_channels=TINY_TEXT_DIM, text_proj_in_factor=TINY_TEXT_LAYERS + 1,
            video_connector_num_attention_heads=2, video_connector_attention_head_dim=16,
            video_connector_num_layers=1, video_connector_num_learnable_registers=128,
            audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=16,
            audio_connector_num_layers=1, audio_connector_num_learnable_registers=128,
            rope_type="split",
        )
        transformer = LTX2VideoTransformer3DModel(
            in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, patch_size=1, patch_size_t=1,
            num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
            audio_in_channels=AUDIO_LATENT_CHANNELS * MEL_BINS // 4,
            audio_out_channels=AUDIO_LATENT_CHANNELS * MEL_BINS // 4,
            audio_num_attention_heads=2, audio_attention_head_dim=8, audio_cross_attention_dim=16,
            num_layers=2, caption_channels=TINY_TEXT_DIM, rope_type="split",
        )
        vae = AutoencoderKLLTX2Video(
            latent_channels=LATENT_CHANNELS, block_out_channels=(8, 16, 16, 32),
            decoder_block_out_channels=(8, 16, 32),
            layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
            decoder_causal=False, timestep_conditioning=False,
            spatial_compression_ratio=32, temporal_compression_ratio=8,  # as the real config states them
        )
        audio_vae = AutoencoderKLLTX2Audio(
            # base_channels must be latent channels x latent mel bins (8 x 16): the pipeline normalises the
            # packed [B, L, 128] audio latents with the VAE's per-"channel" statistics of that size.
            base_channels=AUDIO_LATENT_CHANNELS * MEL_BINS // 4, ch_mult=(1, 1, 1), num_res_blocks=1,
            latent_channels=AUDIO_LATENT_CHANNELS, mel_bins=MEL_BINS, sample_rate=16000, mel_hop_length=160,
        )
        vocoder = LTX2Vocoder(
            in_channels=2 * MEL_BINS, hidden_channels=64, out_channels=2,
            upsample_kernel_sizes=[16, 15, 8, 4, 4], upsample_factors=[6, 5, 2, 2, 2],
            resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], output_sampling_rate=24000,
        )
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
        max_image_seq_len=4096, shift_terminal=0.1,
    )
    return {
        "scheduler": scheduler,
        "vae": vae.eval(),
        "audio_vae": audio_vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "connectors": connectors.eval(),
        "transformer": transformer.eval(),
        "vocoder": vocoder.eval(),
        "processor": None,
        "prompt_enhancer": None,
        "duration_head": None,
    }


class LTX2WindowPipeline(WindowMixin, LTX2ImageToVideoPipeline):
    _held: tuple[torch.Tensor, torch.Tensor] | None = None  # (packed mask, packed clean latents) of a window

    @property
    def audio_rate(self) -> int:
        return int(self.vocoder.config.output_sampling_rate)

    def encode_prompts(self, prompt: str, device: torch.device) -> dict[str, torch.Tensor]:
        embeds, mask, _, _ = self.encode_prompt(prompt=prompt, do_classifier_free_guidance=False,
                                                device=device, max_sequence_length=MAX_SEQUENCE_LENGTH)
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}

    def window_kwargs(self, *, height, width, num_frames, steps, shift, guidance, fps: Fraction) -> dict:
        """One guidance knob: CFG on both streams at ``guidance``, nothing else.

        ``shift`` is unused: LTX-2's scheduler shifts dynamically from the video token count (``mu``).
        diffusers' defaults add STG and modality-isolation guidance (LTX-2.3's recommendations, two
        more DiT passes a step) and a separate audio CFG of 7, which would also keep CFG on with
        ``guidance`` 1 (the distilled weights'); here they are off and audio follows the video.
        """
        return dict(height=height, width=width, num_frames=num_frames, frame_rate=float(fps),
                    num_inference_steps=steps, guidance_scale=guidance, audio_guidance_scale=guidance,
                    stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0)

    def audio_of(self, output) -> tuple[torch.Tensor, int]:
        """The vocoder's waveform as it is: ``round(seconds * 25)`` audio latents, each 4 mel frames of
        10 ms, less 3 mel frames the causal audio decoder drops, so 10 to 50 ms short of the window;
        the next window's cross-fade (``window.WindowAudio``) covers that."""
        return output.audio[0].float().clamp(-1, 1).cpu(), self.audio_rate

    # The sliding window ----------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        """diffusers' call; with a condition video, each step ends by restoring its clean latents."""
        self._held = None
        if self.condition_video is not None:
            if kwargs.get("callback_on_step_end") is not None:
                raise ValueError("a window with a condition video uses callback_on_step_end itself")
            kwargs |= dict(callback_on_step_end=self._hold_condition,
                           callback_on_step_end_tensor_inputs=["latents"])
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self._held = None

    def _hold_condition(self, pipe, step: int, timestep, tensors: dict) -> dict:
        mask, clean = self._held
        return {"latents": torch.where(mask.unsqueeze(-1), clean, tensors["latents"])}

    def prepare_latents(self, image=None, batch_size=1, num_channels_latents=128, height=512, width=704,
                        num_frames=161, noise_scale=0.0, dtype=None, device=None, generator=None,
                        latents=None):
        """Noise with the condition's clean latent frames first, and the mask of their tokens.

        Without a condition video (or with given latents) this is diffusers' own: the image's one
        latent frame. With one, its K = (frames - 1) / 8 + 1 latent frames are encoded (VAE mode,
        normalised as the image's are), put in place of the first K noise frames and masked.
        """
        if self.condition_video is None or latents is not None:
            return super().prepare_latents(image, batch_size, num_channels_latents, height, width, num_frames,
                                           noise_scale, dtype, device, generator, latents)
        lat_t = (num_frames - 1) // self.vae_temporal_compression_ratio + 1
        spatial = self.vae_spatial_compression_ratio
        lat_h, lat_w = height // spatial, width // spatial
        given = self.condition_video.to(self.vae.device, self.vae.dtype)
        encoded = self.vae.encode(given).latent_dist.mode().to(device=device, dtype=dtype)
        condition = self._normalize_latents(encoded, self.vae.latents_mean, self.vae.latents_std)
        kept = condition.shape[2]
        if kept > lat_t:
            raise ValueError(f"a condition of {kept} latent frames does not fit a window of {lat_t}")
        latents = randn_tensor((batch_size, num_channels_latents, lat_t, lat_h, lat_w), generator=generator,
                               device=device, dtype=dtype)
        latents[:, :, :kept] = condition.expand(batch_size, -1, -1, -1, -1)
        mask = torch.zeros(batch_size, 1, lat_t, lat_h, lat_w, device=device, dtype=dtype)
        mask[:, :, :kept] = 1.0
        patch, patch_t = self.transformer_spatial_patch_size, self.transformer_temporal_patch_size
        latents = self._pack_latents(latents, patch, patch_t)
        mask = self._pack_latents(mask, patch, patch_t).squeeze(-1)
        self._held = (mask.bool(), latents.clone())
        return latents, mask


def _window_class() -> type:
    return LTX2WindowPipeline


def mismatch(parts: dict) -> str | None:
    """Components of different models: the VAE's channels and the text width the DiT was made for."""
    transformer = parts["transformer"].config
    text = parts["text_encoder"].config
    return misfit([
        ("vae/config.json", "latent_channels", parts["vae"].config.latent_channels, transformer.in_channels),
        ("text_encoder/config.json", "hidden_size", getattr(text, "text_config", text).hidden_size,
         transformer.caption_channels),
        ("connectors/config.json", "caption_channels", parts["connectors"].config.caption_channels,
         transformer.caption_channels),
    ])


def geometry(parts: dict) -> Geometry:
    config, vae = parts["transformer"].config, parts["vae"]
    return Geometry(hidden=config.num_attention_heads * config.attention_head_dim,
                    heads=config.num_attention_heads, layers=config.num_layers,
                    patch=(config.patch_size_t, config.patch_size, config.patch_size),
                    vae_spatial=vae.spatial_compression_ratio, vae_temporal=vae.temporal_compression_ratio,
                    latent_channels=vae.config.latent_channels)


def real_components() -> dict:
    """LTX-2 19B: the DiT, VAEs, vocoder and connectors (diffusers' defaults are the real ones) and
    Gemma 3 12B's language model (its published config)."""
    from transformers import Gemma3TextModel

    with on_meta():
        return {
            "transformer": LTX2VideoTransformer3DModel(),
            "vae": AutoencoderKLLTX2Video(spatial_compression_ratio=32, temporal_compression_ratio=8),
            "audio_vae": AutoencoderKLLTX2Audio(),
            "vocoder": LTX2Vocoder(),
            "connectors": LTX2TextConnectors(),
            "text_encoder": Gemma3TextModel(Gemma3TextConfig(
                vocab_size=262208, hidden_size=3840, intermediate_size=15360, num_hidden_layers=48,
                num_attention_heads=16, num_key_value_heads=8, head_dim=256)),
        }


LTX2 = Family(
    name="ltx2",
    label="LTX-2 image-to-video with sound",
    pipeline="LTX2ImageToVideoPipeline",
    native_fps=Fraction(24),  # __call__'s frame_rate default, and the model card's examples
    window_frames=121,  # 5 s at 24 fps: __call__'s default num_frames and the docs' examples
    default_size=(512, 768),  # __call__'s height and width defaults
    # diffusers docs (api/pipelines/ltx2.md), "Two-stages Generation", stage 1: 40 steps, guidance 4.
    base=Sampling(steps=40, guidance=4.0),
    # same page, "Distilled checkpoint generation": 8 steps, guidance 1 (with sigmas=DISTILLED_SIGMA_VALUES,
    # which window_kwargs does not pass: the scheduler's own schedule is used).
    distilled=Sampling(steps=8, guidance=1.0),
    audio=True,
    dits=("transformer",),
    text_encoders=("text_encoder",),  # the connectors run inside every call: they stay put
    window_class=_window_class,
    geometry=geometry,
    build_tiny=tiny_ltx2_components,
    build_real=real_components,
    tiny_name="tiny-ltx2",
    mismatch=mismatch,
    folder="a diffusers folder of Lightricks/LTX-2 (model_index.json, transformer/, vae/, audio_vae/, "
           "vocoder/, connectors/, text_encoder/ (Gemma 3 12B), tokenizer/, scheduler/); LTX-2.3 folders "
           "are the same with a bandwidth-extending vocoder at 48 kHz",
    tiny_size=(64, 96),
    tiny_window_frames=17,
)
