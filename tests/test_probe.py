"""The world probe trains, resumes exactly, saves and loads, and its features tell clips apart."""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from magic141.engine import world
from magic141.engine.train import common, probe
from magic141.errors import CheckpointError

torch.set_num_threads(1)

TINY = dict(batch=4, frames=9, threads=1, quiet=True, checkpoint_every=1000)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("probe")
    probe.train(folder, steps=40, lr=3e-3, **TINY)
    return folder


@pytest.fixture(scope="module")
def saved(run, tmp_path_factory) -> Path:
    return probe.save_probe(run, tmp_path_factory.mktemp("saved") / "probe")


def a_state(colour: str = "red") -> world.WorldState:
    return world.WorldState("circle", colour, ("navy", "navy"), 0.6, 0.5, "right", 0.6, aspect=Fraction(3, 2))


def test_targets_name_the_state_entry_by_entry():
    state = world.WorldState(
        "square",
        "blue",
        ("plum", "teal"),
        0.5,
        0.2,
        "down",
        0.5,
        aspect=Fraction(3, 2),
        spin=0.3,
        pan=-0.2,
        camera=0.7,
        posts=True,
    )
    t = probe.targets(state, 25, 32, 48)
    assert t.shape == (probe.TARGETS,)
    centres = world.centres_px(state, 25, 32) / 32
    np.testing.assert_allclose(t[probe.CENTRES].reshape(5, 2), centres[[0, 6, 12, 18, 24]])
    assert t[probe.COLOUR].tolist() == [0, 0, 1, 0] and t[probe.SHAPE].tolist() == [0, 1]
    # a moved camera may show the gradient mirrored: the two colours in palette order
    assert t[probe.BACKGROUND_LEFT].tolist() == [0, 0, 1, 0]
    assert t[probe.BACKGROUND_RIGHT].tolist() == [0, 0, 0, 1]
    assert t[probe.PAN] == -0.2 and t[probe.SPIN] == 0.3
    np.testing.assert_allclose(t[probe.VELOCITY], [0.0, 0.5])  # one second, no bounce: the speed
    still = probe.targets(replace(state, camera=0.0, pan=0.0), 25, 32, 48)
    assert still[probe.BACKGROUND_LEFT].tolist() == [0, 0, 0, 1]  # the state's own order


def test_training_reduces_the_loss(run):
    losses = [r["loss"] for r in common.read_log(run)]
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10])
    meta = common.run_summary(run)
    assert (meta["stage"], meta["physics"], meta["frames"], meta["step"]) == ("probe", "full", 9, 40)
    # the last checkpoint records what the probe reads of held-out clips, as held_out_errors measures it
    assert meta["held_out"] == probe.held_out_errors(probe.load_probe(probe.save_probe(run, run / "saved")),
                                                     physics="full")


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    kwargs = dict(TINY, batch=2, checkpoint_every=2)
    probe.train(tmp_path / "straight", steps=5, **kwargs)
    probe.train(tmp_path / "resumed", steps=5, stop_at=3, **kwargs)
    assert common.run_summary(tmp_path / "resumed")["step"] == 3
    probe.train(tmp_path / "resumed", steps=5, **kwargs)
    a = common.load_weights(tmp_path / "straight", "probe")
    b = common.load_weights(tmp_path / "resumed", "probe")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    first = common.load_weights(tmp_path / "straight", "probe")["head.weight"]
    assert not torch.equal(first, probe.build_probe(0, 9).head.weight.detach())  # it trained at all


def test_save_and_load_give_the_same_features(run, saved):
    config = json.loads((saved / "config.json").read_text())
    assert config == {
        "_class_name": "Probe",
        "features": 64,
        "frames": 9,
        "height": 32,
        "width": 48,
        "physics": "full",
        "version": 1,
    }
    assert all(v.dtype == torch.float32 for v in load_file(saved / "model.safetensors").values())
    loaded = probe.load_probe(saved)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.physics == "full"
    trained = probe.Probe(9)
    trained.load_state_dict(common.load_weights(run, "probe"))
    clips, _, _ = probe.render_batch(np.random.default_rng(5), 3, 12, "full")
    a, b = trained.features(clips), loaded.features(clips)
    assert a.shape == (3, 64) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, probe.build_probe(1, 9).features(clips))


def test_load_probe_refuses_missing_or_mismatched_weights(saved, tmp_path):
    for missing in ("model.safetensors", "config.json"):
        folder = tmp_path / f"no-{missing}"
        folder.mkdir()
        for name in {"model.safetensors", "config.json"} - {missing}:
            (folder / name).write_bytes((saved / name).read_bytes())
        with pytest.raises(CheckpointError, match=missing):
            probe.load_probe(folder)
    weights = load_file(saved / "model.safetensors")
    bad = {
        "shape": {**weights, "head.weight": torch.zeros(3, 64)},
        "keys": {k: v for k, v in weights.items() if k != "head.bias"},
    }
    for name, tensors in bad.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_bytes((saved / "config.json").read_bytes())
        save_file(tensors, folder / "model.safetensors")
        with pytest.raises(CheckpointError, match="model.safetensors"):
            probe.load_probe(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        probe.load_probe(folder)


def test_features_are_deterministic_and_tell_a_red_object_from_a_blue_one(saved):
    loaded = probe.load_probe(saved)
    red, blue = a_state("red"), a_state("blue")
    clips = np.stack(
        [
            world.render(red, 12, 32, 48),
            world.render(red, 12, 32, 48),
            world.render(red.advance(1 / 24), 12, 32, 48),
            world.render(blue, 12, 32, 48),
        ]
    )
    f = loaded.features(clips)
    np.testing.assert_allclose(loaded.features(clips, batch=1), f, atol=1e-5)  # a clip's own, batch or not
    np.testing.assert_array_equal(f[0], f[1])  # the same clip rendered again
    np.testing.assert_array_equal(f, loaded.features(clips))
    nudged, recoloured = np.linalg.norm(f[2] - f[0]), np.linalg.norm(f[3] - f[0])
    assert recoloured > 2 * nudged > 0


def test_held_out_errors_and_the_command_line(run, saved, tmp_path):
    errors = probe.held_out_errors(probe.load_probe(saved), count=8, seed=3)
    assert (errors["clips"], errors["frames"], errors["physics"]) == (8, 9, "full")
    assert 0 < errors["centre_error_px"] < 32
    assert all(0 <= errors[k] <= 1 for k in ("colour_accuracy", "shape_accuracy", "background_accuracy"))
    assert probe.held_out_errors(probe.load_probe(saved), count=8, seed=3) == errors
    cli = tmp_path / "cli"
    argv = "--steps 2 --batch 2 --frames 9 --threads 1 --checkpoint-every 1".split()
    assert probe.main(["--run-dir", str(cli), *argv]) == 0
    meta = common.run_summary(cli)
    assert (meta["physics"], meta["steps"], meta["step"], meta["batch"]) == ("full", 2, 2, 2)
