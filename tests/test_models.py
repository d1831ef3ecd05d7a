"""Model sources: tiny, a diffusers directory, a single-file checkpoint in original naming."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import HunyuanVideoImageToVideoPipeline

from magic141.engine.models import load_model
from magic141.engine.pipeline import Magic141Pipeline
from magic141.errors import CheckpointError, InvalidInput

SETTINGS = dict(height=32, width=48, num_frames=9, num_inference_steps=2)


def _frames(components, image, conditioning="magic141"):
    pipe = Magic141Pipeline(**components)
    return pipe(
        image, "a red ball", conditioning=conditioning, generator=torch.Generator().manual_seed(5), **SETTINGS
    ).frames


def test_tiny_is_reproducible_from_its_seed():
    a, b = load_model("tiny").components, load_model("tiny").components
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_diffusers_directory_loads_offline_and_gives_the_same_frames(tmp_path, tiny_components, sample_image):
    HunyuanVideoImageToVideoPipeline(**tiny_components).save_pretrained(tmp_path / "i2v")
    loaded = load_model(str(tmp_path / "i2v"))
    assert loaded.info.kind == "diffusers" and loaded.info.conditioning == "diffusers"
    assert not loaded.info.distilled and loaded.info.default_steps == 50
    for conditioning in ("diffusers", "magic141"):
        assert torch.equal(_frames(loaded.components, sample_image, conditioning),
                           _frames(tiny_components, sample_image, conditioning))


def test_sidecar_marks_distilled_weights(tmp_path, tiny_components):
    HunyuanVideoImageToVideoPipeline(**tiny_components).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "magic141.json").write_text(json.dumps({"distilled": True, "conditioning": "magic141"}))
    info = load_model(str(tmp_path / "m")).info
    assert info.distilled and info.conditioning == "magic141" and info.default_steps == 4
    assert info.weights == "distilled weights"


@pytest.mark.parametrize("transformer,words", [("teacher", "teacher weights, not distilled"),
                                               ("dmd2", "DMD2-distilled weights")])
def test_sidecar_says_which_dit_runs(tmp_path, tiny_components, transformer, words):
    """A folder may sample like distilled weights (4 steps, no CFG) with its teacher in transformer/."""
    HunyuanVideoImageToVideoPipeline(**tiny_components).save_pretrained(tmp_path / "m")
    sidecar = {"distilled": True, "conditioning": "magic141", "default_transformer": transformer}
    (tmp_path / "m" / "magic141.json").write_text(json.dumps(sidecar))
    info = load_model(str(tmp_path / "m")).info
    assert info.transformer == transformer and info.weights == words and info.default_steps == 4


def test_original_naming_checkpoint_gives_the_same_frames(tmp_path, tiny_components, sample_image):
    from safetensors.torch import load_file

    from magic141.engine.convert import save_original_checkpoint

    path = tmp_path / "magic141_dit.safetensors"
    save_original_checkpoint(tiny_components["transformer"], path)
    assert "double_blocks.0.img_attn_qkv.weight" in load_file(path)  # really the original naming
    loaded = load_model(str(path), components="tiny")
    info = loaded.info
    assert info.kind == "single-file" and info.conditioning == "magic141" and info.distilled
    # Same weights, same frames; only float summation order may differ (split qkv views vs. fresh tensors).
    torch.testing.assert_close(_frames(loaded.components, sample_image),
                               _frames(tiny_components, sample_image), atol=1e-5, rtol=0)


def test_incomplete_checkpoint_names_the_first_missing_tensor(tmp_path, tiny_components):
    from safetensors.torch import load_file, save_file

    from magic141.engine.convert import save_original_checkpoint

    path = tmp_path / "dit.safetensors"
    save_original_checkpoint(tiny_components["transformer"], path)
    tensors = load_file(path)
    del tensors["single_blocks.1.linear2.weight"]
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match=r"single_blocks\.1\.linear2\.weight"):
        load_model(str(path), components="tiny")


@pytest.mark.parametrize(
    "make,word",
    [
        (lambda d: d / "nothing-here", "neither a built-in model .* nor an existing"),
        (lambda d: d, "without model_index.json"),
        (lambda d: (d / "weights.txt").write_text("x") and d / "weights.txt", "not a checkpoint"),
    ],
)
def test_bad_model_sources_are_named(tmp_path, make, word):
    with pytest.raises(InvalidInput, match=word) as refused:
        load_model(str(make(tmp_path)))
    assert refused.value.field == "model" and "--" not in refused.value.message


def test_single_file_needs_components(tmp_path, tiny_components):
    from magic141.engine.convert import save_original_checkpoint

    path = tmp_path / "dit.safetensors"
    save_original_checkpoint(tiny_components["transformer"], path)
    with pytest.raises(InvalidInput, match="VAE and text encoders") as refused:
        load_model(str(path))
    assert refused.value.field == "components"
