"""The LTX-2 family: diffusers' LTX-2 I2V pipeline (picture and sound) until a window adds a condition."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from diffusers import LTX2ImageToVideoPipeline

from magic141.engine.families.base import FamilyPipeline
from magic141.engine.families.ltx2 import LTX2, tiny_ltx2_components
from magic141.engine.pipeline_output import CancelToken
from magic141.errors import JobCancelled

PROMPT = "a red ball rolls right and bounces"
SIZE = dict(height=64, width=96, num_frames=17)
LATENT = (3, 2, 3)  # 17 frames, 64 x 96: (17 - 1) / 8 + 1 latent frames of 2 x 3 tokens


@pytest.fixture(scope="module")
def image(noise_image):
    return noise_image


@pytest.fixture(scope="module")
def family_pipe():
    return FamilyPipeline.build(LTX2, tiny_ltx2_components())


def run(pipe, image, guidance=1.0, **kwargs):
    return pipe(image, PROMPT, num_inference_steps=4, shift=3.0, guidance_scale=guidance,
                generator=torch.Generator().manual_seed(7), **SIZE, **kwargs)


def condition_of(frames: torch.Tensor, latent_frames: int) -> torch.Tensor:
    """The last 8(K-1)+1 frames of a window's [F, H, W, 3] output as pixels [1, 3, F', H, W] in [-1, 1]."""
    return frames[-(8 * (latent_frames - 1) + 1):].permute(3, 0, 1, 2)[None] * 2 - 1


def test_family_facts(family_pipe):
    pipe = family_pipe.pipe
    assert (family_pipe.frame_multiple, family_pipe.size_multiple, family_pipe.audio_rate) == (8, 32, 24000)
    assert (LTX2.window_frames - 1) % 8 == 0 and (LTX2.tiny_window_frames - 1) % 8 == 0
    assert all(side % 32 == 0 for side in (*LTX2.default_size, *LTX2.tiny_size))
    geometry = family_pipe.geometry
    assert (geometry.vae_spatial, geometry.vae_temporal, geometry.latent_channels) == (32, 8, 128)
    kwargs = pipe.window_kwargs(height=64, width=96, num_frames=17, steps=4, shift=3.0, guidance=1.0,
                                fps=Fraction(30000, 1001))
    assert kwargs["frame_rate"] == pytest.approx(29.97002997) and isinstance(kwargs["frame_rate"], float)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_one_window_is_diffusers_ltx2_exactly(family_pipe, image, guidance):
    ours = run(family_pipe, image, guidance)
    reference = LTX2ImageToVideoPipeline(**tiny_ltx2_components())
    reference.set_progress_bar_config(disable=True)
    theirs = reference(image=image, prompt=PROMPT, negative_prompt="", num_inference_steps=4,
                       guidance_scale=guidance, audio_guidance_scale=guidance, stg_scale=0.0,
                       audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0, frame_rate=24.0,
                       generator=torch.Generator().manual_seed(7), output_type="pt", **SIZE)
    assert ours.frames.shape == (17, 64, 96, 3)
    assert (ours.frames - theirs.frames[0].permute(0, 2, 3, 1)).abs().max() <= 1e-5
    sound, rate = ours.audio
    assert sound.shape == theirs.audio[0].shape and rate == reference.vocoder.config.output_sampling_rate
    assert (sound - theirs.audio[0].float()).abs().max() <= 1e-5


@pytest.mark.parametrize("fps", [Fraction(24), Fraction(25)])
def test_the_sound_covers_the_window(family_pipe, image, fps):
    """The pipeline makes whole audio latents (4 mel hops of 10 ms each), so a window's sound is its
    frames' duration to within one latent; the vocoder's rate is the sound's."""
    sound, rate = run(family_pipe, image, fps=fps).audio
    vocoder = family_pipe.pipe.vocoder.config
    assert rate == vocoder.output_sampling_rate == 24000
    assert sound.dtype == torch.float32 and sound.shape[0] == vocoder.out_channels == 2
    assert sound.abs().max() <= 1.0
    mel_hop = np.prod(vocoder.upsample_factors)  # output samples per mel frame: 24000 / (16000 / 160)
    latent_hop = 4 * mel_hop
    seconds = SIZE["num_frames"] / fps
    latents = round(seconds * 16000 / 160 / 4)  # audio latents per second: 16 kHz / hop 160 / 4
    assert sound.shape[1] == (4 * latents - 3) * mel_hop  # the causal audio decoder drops 3 mel frames
    assert abs(sound.shape[1] - float(seconds) * rate) <= latent_hop


def test_a_window_is_conditioned_on_its_k_latent_frames(family_pipe, image):
    pipe = family_pipe.pipe
    first = run(family_pipe, image).frames
    condition = condition_of(first, 2)
    assert condition.shape[2] == 9

    # What the override returns: the first K = 2 latent frames' tokens masked and clean.
    clean = pipe.vae.encode(condition).latent_dist.mode()
    pixels = pipe.video_processor.preprocess(image, height=64, width=96)
    pipe.condition_video = condition
    try:
        latents, mask = pipe.prepare_latents(pixels, 1, 128, 64, 96, 17, 0.0, torch.float32,
                                             torch.device("cpu"), torch.Generator().manual_seed(7))
    finally:
        pipe.condition_video = None
    given = 2 * LATENT[1] * LATENT[2]
    assert mask.shape == (1, np.prod(LATENT))
    assert torch.all(mask[:, :given] == 1) and torch.all(mask[:, given:] == 0)
    assert torch.allclose(latents[0, :given], clean[0].flatten(1).T, atol=1e-6)

    # In the loop: those tokens get timestep 0 at every step, the rest are denoised.
    timesteps = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: timesteps.append(kwargs["timestep"]), with_kwargs=True)
    try:
        continued = run(family_pipe, image, condition_video=condition).frames
    finally:
        hook.remove()
    assert len(timesteps) == 4
    for timestep in timesteps:
        assert torch.all(timestep[:, :given] == 0) and torch.all(timestep[:, given:] > 0)
    assert not torch.allclose(continued, first)


def test_the_condition_stays_clean_to_the_end(family_pipe, image):
    """diffusers' loop steps every latent frame but the first; the window holds all K clean."""
    pipe = family_pipe.pipe
    condition = condition_of(run(family_pipe, image).frames, 2)
    embeds = pipe.encode_prompts(PROMPT, torch.device("cpu"))
    pipe.condition_video = condition
    try:
        out = pipe(image=image, generator=torch.Generator().manual_seed(7), output_type="latent",
                   **pipe.window_kwargs(**SIZE, steps=4, shift=3.0, guidance=1.0, fps=Fraction(24)), **embeds)
    finally:
        pipe.condition_video = None
    clean = pipe.vae.encode(condition).latent_dist.mode()
    assert out.frames.shape == (1, 128, *LATENT)
    assert torch.allclose(out.frames[:, :, :2], clean, atol=1e-5)
    assert not torch.allclose(out.frames[:, :, 2], clean[:, :, 1], atol=1e-2)


def test_progress_every_step_and_cancel(family_pipe, image):
    steps = []
    run(family_pipe, image, progress=lambda p: steps.append((p.step, p.total)))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    token = CancelToken()
    with pytest.raises(JobCancelled):
        run(family_pipe, image, progress=lambda p: token.cancel(), cancel=token)
