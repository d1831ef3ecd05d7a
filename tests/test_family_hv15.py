"""The HunyuanVideo 1.5 family: our window pipeline is diffusers' HV 1.5 I2V pipeline until a window adds a
condition (or asks for a size the pipeline would not pick)."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import HunyuanVideo15ImageToVideoPipeline

from magic141.engine.families.base import FamilyPipeline
from magic141.engine.families.hv15 import HV15, LATENT_CHANNELS, tiny_hv15_components
from magic141.engine.families.wan import with_shift
from magic141.engine.pipeline_output import CancelToken
from magic141.errors import JobCancelled

SIZE = dict(height=64, width=96, num_frames=17)
PROMPT = 'a red ball rolls past a sign reading "OPEN"'  # the quotes feed the glyph ByT5 stream too


def picture(height: int, width: int, seed: int = 0) -> PIL.Image.Image:
    return PIL.Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def image():
    return picture(64, 96)


@pytest.fixture(scope="module")
def family_pipe():
    return FamilyPipeline.build(HV15, tiny_hv15_components())


def run(pipe, image, guidance=1.0, **kwargs):
    return pipe(image, PROMPT, num_inference_steps=4, shift=3.0, guidance_scale=guidance,
                generator=torch.Generator().manual_seed(7), **SIZE, **kwargs)


def transformer_inputs(family_pipe):
    """Collects every ``hidden_states`` the transformer is given, until the returned hook is removed."""
    seen = []
    hook = family_pipe.pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"]), with_kwargs=True)
    return seen, hook


@pytest.mark.parametrize("guidance", [1.0, 6.0])
def test_one_window_is_diffusers_hv15_exactly(family_pipe, image, guidance):
    ours = run(family_pipe, image, guidance).frames
    components = tiny_hv15_components()
    components["scheduler"] = with_shift(components["scheduler"], 3.0)
    components["guider"] = components["guider"].new(guidance_scale=guidance)
    reference = HunyuanVideo15ImageToVideoPipeline(**components)
    reference.set_progress_bar_config(disable=True)
    theirs = reference(image=image, prompt=PROMPT, num_inference_steps=4, num_frames=SIZE["num_frames"],
                       generator=torch.Generator().manual_seed(7), output_type="pt").frames
    assert ours.shape == (17, 64, 96, 3)
    assert (ours - theirs[0].permute(0, 2, 3, 1)).abs().max() <= 1e-5


def test_prompt_embeddings_are_both_streams(family_pipe):
    embeds = family_pipe.encode_prompt(None, PROMPT, "diffusers")
    assert set(embeds) == {"prompt_embeds", "prompt_embeds_mask", "prompt_embeds_2", "prompt_embeds_mask_2"}
    assert embeds["prompt_embeds_mask"].sum() > 0 and embeds["prompt_embeds_mask_2"].sum() > 0


def test_the_window_size_is_the_one_asked(family_pipe):
    """A 4:3 image: diffusers would pick the 64x80 bucket; the window is 64x96, and the pipeline's own
    processor is back afterwards."""
    processor = family_pipe.pipe.video_processor
    assert processor.calculate_default_height_width(96, 128, family_pipe.pipe.target_size) != (64, 96)
    frames = run(family_pipe, picture(96, 128)).frames
    assert frames.shape == (17, 64, 96, 3)
    assert family_pipe.pipe.video_processor is processor


def test_a_window_is_conditioned_on_its_k_latent_frames(family_pipe, image):
    seen, hook = transformer_inputs(family_pipe)
    try:
        first = run(family_pipe, image).frames
        plain = seen[-1]
        condition = first[-5:].permute(3, 0, 1, 2)[None] * 2 - 1  # 4(K-1)+1 frames, K = 2 latent frames
        continued = run(family_pipe, image, condition_video=condition).frames
    finally:
        hook.remove()
    given = seen[-1]  # noise (32 channels), condition latents (32), mask (1)
    latents, mask = given[:, LATENT_CHANNELS:2 * LATENT_CHANNELS], given[:, 2 * LATENT_CHANNELS:]
    assert given.shape[1] == 2 * LATENT_CHANNELS + 1 and mask.shape[2] == 5  # 17 frames: 5 latent frames
    assert torch.all(mask[:, :, :2] == 1) and torch.all(mask[:, :, 2:] == 0)
    vae = family_pipe.pipe.vae
    expected = vae.encode(condition).latent_dist.mode() * vae.config.scaling_factor
    assert torch.allclose(latents[:, :, :2], expected, atol=1e-5)
    assert torch.all(latents[:, :, 2:] == 0)
    # Without a condition video the image alone: one latent frame.
    plain_mask = plain[:, 2 * LATENT_CHANNELS:]
    assert torch.all(plain_mask[:, :, :1] == 1) and torch.all(plain_mask[:, :, 1:] == 0)
    assert not torch.allclose(continued, first)


def test_progress_every_step_and_cancel(family_pipe, image):
    steps = []
    run(family_pipe, image, progress=lambda p: steps.append((p.step, p.total)))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    token = CancelToken()
    calls = []

    def cancel_at_first(progress):
        calls.append(progress.step)
        token.cancel()

    with pytest.raises(JobCancelled):
        run(family_pipe, image, progress=cancel_at_first, cancel=token)
    assert calls == [1]


def test_family_facts_fit_the_tiny_model(family_pipe):
    pipe = family_pipe
    assert (pipe.frame_multiple, pipe.size_multiple) == (4, 16)
    assert (HV15.window_frames - 1) % 4 == 0 and (HV15.tiny_window_frames - 1) % pipe.frame_multiple == 0
    assert all(side % pipe.size_multiple == 0 for side in HV15.tiny_size + HV15.default_size)
    assert family_pipe.geometry.latent_channels == LATENT_CHANNELS and family_pipe.geometry.vae_spatial == 16
    assert HV15.window_class() is type(pipe.pipe)


def test_the_image_encoder_runs_in_every_window(family_pipe, image):
    """SigLIP reads the image inside the call, after the prompts are encoded: so it is not among the text
    encoders that ``release_text`` moves off the device."""
    embeds = family_pipe.encode_prompt(image, PROMPT, "diffusers")
    calls = []
    hook = family_pipe.pipe.image_encoder.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        run(family_pipe, image, prompt_embeds=embeds)
    finally:
        hook.remove()
    assert calls == [1]
    assert "image_encoder" not in HV15.text_encoders
