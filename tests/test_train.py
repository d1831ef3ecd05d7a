"""The training scripts run end to end on a tiny budget: losses fall, runs resume exactly, torchrun works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from magic141.engine import eval_cli, world
from magic141.engine.models import load_model
from magic141.engine.pipeline import Magic141Pipeline
from magic141.engine.train import common, dmd2, export, probe, report, t2i, teacher, vae
from magic141.engine.train.components import build_dit, build_vae
from magic141.engine.train.data import state_from_json
from magic141.errors import CheckpointError

pytestmark = pytest.mark.slow


def losses(run: Path, key: str) -> list[float]:
    return [r[key] for r in common.read_log(run) if key in r]


def falls(values: list[float], n: int = 5) -> bool:
    return float(np.mean(values[-n:])) < 0.8 * float(np.mean(values[:n]))


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("vae")
    vae.train(run, steps=30, batch=2, frames=5, threads=1, checkpoint_every=15, quiet=True, held_out_clips=2)
    return run


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("probe")
    probe.train(run, steps=2, batch=2, frames=9, threads=1, quiet=True, physics="full")
    return run


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, vae_run) -> Path:
    run = tmp_path_factory.mktemp("teacher")
    teacher.train(
        run, vae_run, steps=30, batch=4, lr=1e-3, warmup=5, pool_size=12, frames=9, threads=1,
        checkpoint_every=15, quiet=True,
    )
    return run


def test_the_vae_learns_and_checkpoints_atomically(vae_run):
    assert falls(losses(vae_run, "rec"))
    latest = json.loads((vae_run / "latest.json").read_text())
    assert latest == {"step": 30, "folder": "step-0000030"}
    state = json.loads((vae_run / "step-0000030" / "state.json").read_text())
    assert state["meta"]["device"] == "cpu" and state["meta"]["wall_seconds"] > 0
    assert not list(vae_run.glob(".partial-*"))
    held = {h["physics"]: h for h in state["meta"]["held_out"]}  # how well it keeps the picture, recorded
    assert set(held) == set(world.PHYSICS)
    assert all(0 < h["background_db"] < 60 and 0 < h["object_db"] < 60 and h["clips"] == 2
               for h in held.values())


def test_a_vae_started_frame_by_frame_encodes_each_latent_frame_from_its_own_frames():
    """From the default init every latent frame is mostly the clip's first frame (the causal padding's
    copies of it), and training on moving clips settled on a still picture; see vae.start_frame_by_frame."""

    def dependence(model) -> tuple[float, float]:  # last latent frame: on the first frame, on its own four
        video = torch.rand(1, 3, 9, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
        video.requires_grad_(True)
        latent = model.encode(video).latent_dist.mode()
        (grad,) = torch.autograd.grad(latent[:, :, -1].abs().sum(), video)
        per_frame = grad.abs().mean((0, 1, 3, 4))
        return float(per_frame[0]), float(per_frame[5:].mean())

    first, own = dependence(build_vae(0))
    assert first > 20 * own  # what went wrong (about 40 times)
    vae.start_frame_by_frame(started := build_vae(0))
    first, own = dependence(started)
    assert first < 2 * own  # its own frames count about as much as the first (the downsamplers still mix)


def test_a_frozen_stage_is_weights_only_and_the_recipe_continues_after_it(tmp_path, vae_run, teacher_run):
    frozen = tmp_path / "vae"
    shutil.copytree(vae_run, frozen)
    kept = common.freeze(frozen)
    assert sorted(p.name for p in kept.iterdir()) == ["model-vae.safetensors", "state.json"]
    assert [p.name for p in frozen.glob("step-*")] == [kept.name]
    weights = load_file(kept / "model-vae.safetensors")
    trained = load_file(common.latest_checkpoint(vae_run) / "model-vae.safetensors")
    assert all(weights[k].dtype == torch.float16 and torch.allclose(weights[k].float(), trained[k], atol=1e-2)
               for k in trained)
    # the same stage again is done already; a longer schedule is refused, not silently restarted
    again = vae.train(frozen, steps=30, batch=2, frames=5, threads=1, quiet=True, held_out_clips=2)
    assert "rec" not in again  # no step ran
    assert common.read_log(frozen) == common.read_log(vae_run)
    with pytest.raises(CheckpointError, match="was frozen at step 30"):
        vae.train(frozen, steps=40, batch=2, frames=5, threads=1, quiet=True)
    # a later stage reads it (a fresh clone has no pools: the teacher builds its own)
    tuned = tmp_path / "teacher"
    teacher.train(tuned, frozen, steps=1, batch=2, pool_size=4, frames=5, threads=1, quiet=True,
                  init_run=_frozen_copy(teacher_run, tmp_path / "frozen-teacher"))
    assert json.loads((tuned / "latest.json").read_text())["step"] == 1


def _frozen_copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("pool"))
    common.freeze(to)
    return to


def test_the_teacher_learns_flow_matching_on_encoded_world_clips(teacher_run):
    assert falls(losses(teacher_run, "loss"))
    pool = json.loads((teacher_run / "pool" / "pool.json").read_text())
    assert len(pool["states"]) == 12 and pool["scaling_factor"] > 0
    states = [state_from_json(s) for s in pool["states"]]
    assert {world.caption(s, 8 / 24) for s in states} <= set(pool["captions"])  # each clip's own caption


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, vae_run):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    kwargs = dict(batch=2, pool_size=6, frames=5, threads=1, checkpoint_every=3, quiet=True)
    teacher.train(straight, vae_run, steps=6, **kwargs)
    teacher.train(resumed, vae_run, steps=6, stop_at=3, **kwargs)  # "interrupted" after step 3
    assert json.loads((resumed / "latest.json").read_text())["step"] == 3
    teacher.train(resumed, vae_run, steps=6, **kwargs)
    a = load_file(straight / "step-0000006" / "model-dit.safetensors")
    b = load_file(resumed / "step-0000006" / "model-dit.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def full_teacher_run(tmp_path_factory, teacher_run, vae_run) -> Path:
    run = tmp_path_factory.mktemp("teacher-full")
    teacher.train(
        run, vae_run, steps=2, batch=2, pool_size=8, frames=5, threads=1, quiet=True,
        physics="full", init_run=teacher_run,
    )
    return run


def test_a_teacher_fine_tunes_onto_the_full_world_from_a_basic_one(
    tmp_path, full_teacher_run, teacher_run, vae_run
):
    pool = json.loads((full_teacher_run / "pool" / "pool.json").read_text())
    basic = json.loads((teacher_run / "pool" / "pool.json").read_text())
    assert pool["physics"] == "full" and pool["scaling_factor"] == basic["scaling_factor"]
    assert any(s["motion"] == "falls" or s["spin"] or s["pan"] for s in pool["states"])
    meta = json.loads((full_teacher_run / "step-0000002" / "state.json").read_text())["meta"]
    assert meta["physics"] == "full" and meta["init_run"] == teacher_run.name
    # it started from the basic teacher's average, not from the seed
    start = load_file(common.latest_checkpoint(teacher_run) / "model-ema.safetensors")
    tuned = load_file(full_teacher_run / "step-0000002" / "model-ema.safetensors")
    seeded = build_dit().state_dict()

    def distance(a, b):
        return sum(float((a[k] - b[k]).abs().sum()) for k in start)

    assert distance(tuned, start) < distance(tuned, seeded)
    with pytest.raises(CheckpointError, match="is not a teacher run"):
        teacher.train(tmp_path / "wrong", vae_run, steps=1, init_run=vae_run)


def test_the_export_of_a_full_world_recipe_loads_runs_and_scores_on_its_world(
    tmp_path, full_teacher_run, teacher_run, vae_run, probe_run
):
    student = tmp_path / "dmd2"
    dmd2.train(
        student, full_teacher_run, vae_run, iterations=1, student_steps=2, batch=2, eval_every=1,
        eval_clips=2, threads=1, quiet=True,
    )
    # distillation draws its held-out conditions from the teacher's world
    assert json.loads((student / "eval-pool" / "pool.json").read_text())["physics"] == "full"
    images = tmp_path / "t2i"
    t2i.train(images, steps=3, vae_steps=2, batch=2, threads=1, quiet=True, physics="full")
    out = export.export(
        tmp_path / "model", vae_run=vae_run, teacher_run=full_teacher_run, student_run=student,
        student8_run=None, t2i_run=images, default="teacher", probe_run=probe_run,
    )
    assert (out / "probe" / "config.json").is_file()
    training = json.loads((out / "training.json").read_text())
    assert [training[k]["physics"] for k in ("vae", "teacher_init", "teacher", "dmd2_4step", "t2i")] == [
        "basic", "basic", "full", "full", "full"
    ]
    assert "fine-tuned on the full world" in report.compute_table(training)
    vae_rows = report.vae_table(training["vae"]).splitlines()[2:]  # the VAE's held-out PSNR, carried over
    assert [row.split(" | ")[0] for row in vae_rows] == [f"| {p}" for p in world.PHYSICS]
    loaded = load_model(str(out), device="cpu")
    frames = Magic141Pipeline(**loaded.components)(
        PIL.Image.new("RGB", (48, 32), (40, 40, 44)), "a red circle falls", height=32, width=48,
        num_frames=5, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
    ).frames
    assert frames.shape == (5, 32, 48, 3) and torch.isfinite(frames).all()
    result = eval_cli.evaluate(str(out), clips=2, long_runs=0, draws=20)
    assert (result["physics"], result["trained_on"]) == ("full", "full")
    assert [r["variant"] for r in result["steps"]] == [
        "VAE reconstruction of the truth", *["teacher, Euler"] * 5, "DMD2 student"]
    assert all(r["ci"]["fvd"]["mean"] >= 0 for r in result["steps"])  # the exported probe's world-FVD


def test_the_text_to_image_model_learns_its_vae_then_its_transformer(tmp_path):
    run = tmp_path / "t2i"
    t2i.train(run, steps=36, vae_steps=24, batch=4, threads=1, checkpoint_every=12, quiet=True)
    assert falls(losses(run, "vae_loss"))
    assert len(losses(run, "loss")) == 12
    meta = json.loads((run / "step-0000036" / "state.json").read_text())["meta"]
    assert meta["vae_factors"]["scaling_factor"] > 0


def test_dmd2_distils_the_teacher_into_a_few_step_student(tmp_path, teacher_run, vae_run, probe_run):
    run = tmp_path / "dmd2"
    dmd2.train(
        run, teacher_run, vae_run, iterations=4, student_steps=2, batch=2, eval_every=2, eval_clips=2,
        threads=1, checkpoint_every=2, quiet=True, probe_run=probe_run,
    )
    log = common.read_log(run)
    assert [r["step"] for r in log if "eval_valid" in r] == [0, 2, 4]
    assert all(r["eval_fvd"] >= 0 for r in log if "eval_valid" in r)  # the curves' continuous score
    assert "eval_teacher50_fvd" in log[0]  # the level the gap to close is measured against
    assert json.loads((run / "step-0000004" / "state.json").read_text())["meta"]["fake_updates"] == 5
    curves = report.seeds_table({"i2v": [run, run], "t2v": [run]})
    assert [line.split(" |")[0] for line in curves.splitlines()[2:]] == ["| 0", "| 2", "| 4"]
    assert "| 4 | " in report.ablation_table({"default": run})
    assert all(np.isfinite(r["dm"]) and np.isfinite(r["fake_fm"]) for r in log if "dm" in r)
    student = load_file(run / "step-0000004" / "model-student.safetensors")
    start = load_file(common.latest_checkpoint(teacher_run) / "model-ema.safetensors")
    assert any(not torch.equal(student[k], start[k]) for k in start)  # the student moved off the teacher
    fake = load_file(run / "step-0000004" / "model-fake.safetensors")
    assert any(k.startswith("head.") for k in fake)  # the GAN head lives on the fake-score network


def test_dmd2_refuses_an_unknown_task(tmp_path, teacher_run, vae_run):
    with pytest.raises(ValueError, match="task must be one of i2v, t2v"):
        dmd2.train(tmp_path, teacher_run, vae_run, iterations=1, task="v2v")


def test_training_runs_under_torchrun_with_two_processes(tmp_path, vae_run):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "magic141.engine.train.teacher", "--run-dir", str(run), "--vae-run", str(vae_run),
            "--steps", "4", "--batch", "4", "--pool-size", "6", "--frames", "5", "--threads", "1",
            "--checkpoint-every", "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((run / "step-0000004" / "state.json").read_text())
    assert state["meta"]["world_size"] == 2
    assert len(losses(run, "loss")) == 4  # rank 0 logs once per step
