"""The text-to-image stage: the tiny FLUX pipeline, offline directory loading, sizes, refusals."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from magic141.engine.t2i import TINY, build_tiny_t2i, generate_first_frame, load_t2i, size_multiple
from magic141.errors import CheckpointError, InvalidInput

PROMPT = "a red fox running through snow"


@pytest.fixture(scope="module")
def tiny():
    return load_t2i(TINY)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny):
    directory = tmp_path_factory.mktemp("models") / "t2i"
    tiny.save_pretrained(directory)
    return directory


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def test_tiny_generates_rgb_image_of_requested_size(tiny):
    image = generate_first_frame(tiny, PROMPT, height=64, width=96, seed=1)
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    assert image.size == (96, 64)
    assert pixels(image).std() > 0


def test_same_seed_same_image_other_seed_other_image(tiny):
    first = generate_first_frame(tiny, PROMPT, height=32, width=48, seed=7)
    again = generate_first_frame(tiny, PROMPT, height=32, width=48, seed=7)
    other = generate_first_frame(tiny, PROMPT, height=32, width=48, seed=8)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def test_tiny_weights_are_bitwise_identical_for_a_build_seed_and_leave_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = build_tiny_t2i(0), build_tiny_t2i(0), build_tiny_t2i(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        sa, sb, sc = (getattr(p, name).state_dict() for p in (a, b, c))
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[key], sb[key]) for key in sa), name
        assert any(not torch.equal(sa[key], sc[key]) for key in sa), name


def test_tokenizers_cover_the_text_encoder_vocabularies(tiny):
    assert tiny.text_encoder.config.vocab_size >= len(tiny.tokenizer)
    assert tiny.text_encoder_2.config.vocab_size >= len(tiny.tokenizer_2)


def test_saved_directory_loads_offline_and_gives_the_same_image(tiny, tiny_dir, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("text-to-image loading tried to open a network connection")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    loaded = load_t2i(str(tiny_dir))
    assert type(loaded).__name__ == "FluxPipeline"
    expected = generate_first_frame(tiny, PROMPT, height=32, width=32, seed=3)
    got = generate_first_frame(loaded, PROMPT, height=32, width=32, seed=3)
    assert np.array_equal(pixels(expected), pixels(got))


def test_size_not_divisible_by_the_multiple_is_returned_exactly(tiny):
    assert size_multiple(tiny) == 16
    image = generate_first_frame(tiny, PROMPT, height=24, width=40, seed=0)
    assert image.size == (40, 24)
    assert image.mode == "RGB"
    assert pixels(image).std() > 0


def test_explicit_steps_change_the_image(tiny):
    four = generate_first_frame(tiny, PROMPT, height=32, width=32, seed=0)
    default = generate_first_frame(tiny, PROMPT, height=32, width=32, seed=0, steps=4)
    two = generate_first_frame(tiny, PROMPT, height=32, width=32, seed=0, steps=2)
    assert np.array_equal(pixels(four), pixels(default))
    assert not np.array_equal(pixels(four), pixels(two))


@pytest.mark.parametrize(
    "kwargs",
    [{"height": 0}, {"width": -16}, {"height": 32.0}, {"steps": 0}, {"seed": "1"}],
)
def test_bad_generation_arguments_are_invalid_input(tiny, kwargs):
    args = {"height": 32, "width": 32, "seed": 0, **kwargs}
    with pytest.raises(InvalidInput):
        generate_first_frame(tiny, PROMPT, **args)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        pytest.param(lambda path: None, "does not exist", id="missing"),
        pytest.param(lambda path: path.write_bytes(b"not a pipeline"), "not a directory", id="file"),
    ],
)
def test_a_path_that_is_not_a_folder_is_refused(tmp_path, make, match):
    path = tmp_path / "model.safetensors"
    make(path)
    with pytest.raises(InvalidInput, match=match) as info:
        load_t2i(str(path))
    assert str(path) in str(info.value)


I2V_INDEX = {  # only the index: loading any component would fail with a different error
    "_class_name": "HunyuanVideoImageToVideoPipeline",
    "_diffusers_version": "0.33.0",
    "transformer": ["diffusers", "HunyuanVideoTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
}


@pytest.mark.parametrize(
    ("index", "error", "match"),
    [
        pytest.param(None, InvalidInput, "model_index.json", id="no-index"),
        pytest.param("{not json", InvalidInput, "cannot be read as JSON", id="unreadable-index"),
        pytest.param(I2V_INDEX, InvalidInput, "HunyuanVideoImageToVideoPipeline", id="image-to-video"),
        # a class whose name gives nothing away but whose call needs an input image
        pytest.param({"_class_name": "PaintByExamplePipeline"}, InvalidInput,
                     "PaintByExamplePipeline.*needs an input image", id="needs-an-image"),
        pytest.param({"_class_name": "HunyuanVideoPipeline"}, InvalidInput, "HunyuanVideoPipeline",
                     id="video"),
        pytest.param({"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]},
                     CheckpointError, None, id="missing-weights"),
    ],
)
def test_a_folder_that_is_not_a_text_to_image_pipeline_is_refused_by_path(tmp_path, index, error, match):
    directory = tmp_path / "model"
    directory.mkdir()
    if index is not None:
        (directory / "model_index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    with pytest.raises(error, match=match) as info:
        load_t2i(str(directory))
    assert str(directory) in str(info.value)


def test_bad_device_is_invalid_input():
    with pytest.raises(InvalidInput, match="device"):
        load_t2i(TINY, device="not-a-device")


def test_tiny_in_bfloat16(tiny_dir):
    for source in (TINY, str(tiny_dir)):
        pipe = load_t2i(source, dtype=torch.bfloat16)
        assert pipe.transformer.dtype == torch.bfloat16
        assert pipe.text_encoder_2.dtype == torch.bfloat16
        image = generate_first_frame(pipe, PROMPT, height=16, width=16, seed=0)
        assert image.size == (16, 16)
