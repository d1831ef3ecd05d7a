"""The Wan family: our window pipeline is diffusers' Wan I2V pipeline until a window adds a condition."""

import pytest
import torch
from diffusers import WanImageToVideoPipeline

from magic141.engine.families.base import FamilyPipeline
from magic141.engine.families.wan import WAN, tiny_wan_components, with_shift
from magic141.engine.pipeline_output import CancelToken
from magic141.errors import JobCancelled

SIZE = dict(height=64, width=96, num_frames=17)


@pytest.fixture(scope="module")
def image(noise_image):
    return noise_image


@pytest.fixture(scope="module")
def family_pipe():
    return FamilyPipeline.build(WAN, tiny_wan_components())


def run(pipe, image, **kwargs):
    return pipe(image, "a red ball rolls right", num_inference_steps=4, shift=3.0, guidance_scale=1.0,
                generator=torch.Generator().manual_seed(7), **SIZE, **kwargs)


def test_one_window_is_diffusers_wan_exactly(family_pipe, image):
    ours = run(family_pipe, image).frames
    components = tiny_wan_components()
    components["scheduler"] = with_shift(components["scheduler"], 3.0)
    reference = WanImageToVideoPipeline(**components)
    reference.set_progress_bar_config(disable=True)
    theirs = reference(image=image, prompt="a red ball rolls right", num_inference_steps=4,
                       guidance_scale=1.0, generator=torch.Generator().manual_seed(7), output_type="pt",
                       **SIZE).frames
    assert ours.shape == (17, 64, 96, 3)
    assert (ours - theirs[0].permute(0, 2, 3, 1)).abs().max() <= 1e-5


def test_two_experts_both_run(family_pipe, image):
    """A14B: the high-noise expert takes the first steps, the low-noise one the rest."""
    calls = {"transformer": 0, "transformer_2": 0}
    hooks = [getattr(family_pipe.pipe, name).register_forward_pre_hook(
        lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)) for name in calls]
    try:
        run(family_pipe, image)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls["transformer"] >= 1 and calls["transformer_2"] >= 1
    assert sum(calls.values()) == 4


def test_a_window_is_conditioned_on_its_k_latent_frames(family_pipe, image):
    seen = []
    hook = family_pipe.pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"]), with_kwargs=True)
    first = run(family_pipe, image).frames
    condition = first[-5:].permute(3, 0, 1, 2)[None] * 2 - 1  # K = 2 latent frames
    try:
        continued = run(family_pipe, image, condition_video=condition).frames
    finally:
        hook.remove()
    mask = seen[-1][:, 16:20]  # noise (16 channels), mask (4), condition latents (16)
    assert mask.shape[2] == 5  # 17 frames: 5 latent frames
    assert torch.all(mask[:, :, :2] == 1) and torch.all(mask[:, :, 2:] == 0)
    assert not torch.allclose(continued, first)


def test_group_offload_gives_the_same_frames(family_pipe, image):
    grouped = FamilyPipeline.build(WAN, tiny_wan_components(), group_offload=True)
    assert torch.equal(run(grouped, image).frames, run(family_pipe, image).frames)


def test_progress_every_step_and_cancel(family_pipe, image):
    steps = []
    run(family_pipe, image, progress=lambda p: steps.append((p.step, p.total)))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    token = CancelToken()
    with pytest.raises(JobCancelled):
        run(family_pipe, image, progress=lambda p: token.cancel(), cancel=token)
