"""Every model family behind the one engine: jobs, the sliding window, folders, the cache and LoRAs."""

from __future__ import annotations

import json
import re
import shutil
from fractions import Fraction
from pathlib import Path

import av
import pytest
import torch

from magic141.engine import media
from magic141.engine.families import FAMILIES, TINY_FAMILIES
from magic141.engine.generate import Engine
from magic141.engine.lora import Lora
from magic141.engine.models import load_model
from magic141.engine.worker import JobRunner
from magic141.errors import CheckpointError, InvalidInput
from magic141.protocol import JobSpec, JobState, Source, model_field
from magic141.rational import frame_count

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "first_frame.png"
NEW_FAMILIES = [family.tiny_name for family in FAMILIES.values() if family.name != "hunyuan"]
FPS = Fraction(24000, 1001)


def job(out: Path, model: str, seconds: Fraction = Fraction(3, 2), **changes) -> JobSpec:
    return JobSpec(Source("image", str(SAMPLE_IMAGE)), "a ball rolls right", str(out), seconds=seconds,
                   fps=FPS, model=model, **changes)


def audio_seconds(path: Path) -> float | None:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)) / stream.rate


@pytest.mark.parametrize("model", NEW_FAMILIES)
def test_a_job_of_several_windows_on_every_family(tmp_path, model):
    family = TINY_FAMILIES[model]
    engine = Engine.load(model)
    seconds = Fraction(family.tiny_window_frames * 3, 2) / family.native_fps  # about three windows
    result = engine.generate(job(tmp_path, model, seconds), tmp_path / "clip.mp4")
    frames = frame_count(seconds, FPS)
    assert result.windows >= 2 and result.frames == frames
    assert media.probe_video(result.path).frames == frames and media.probe_video(result.path).fps == FPS
    assert result.settings["family"] == family.name and result.settings["weights"] == "distilled weights"
    sound = audio_seconds(Path(result.path))
    if family.audio:  # the model's own sound, as long as the picture
        assert sound == pytest.approx(frames / FPS, abs=0.05)
    else:
        assert sound is None


@pytest.mark.parametrize("model", NEW_FAMILIES)
def test_the_queue_runs_every_family_and_refuses_magic141_conditioning(tmp_path, model):
    runner = JobRunner("cpu", previews=False)
    done = runner.execute("a", job(tmp_path, model, Fraction(1, 2)))
    assert done.state == JobState.DONE, done.reason
    refused = runner.execute("b", job(tmp_path, model, Fraction(1, 2), conditioning="magic141"))
    assert refused.state == JobState.FAILED and refused.field == "conditioning"


def save_folder(folder: Path, name: str, **changes) -> Path:
    """The tiny model of family ``name`` saved as a diffusers folder (components replaced by ``changes``)."""
    import diffusers

    family = FAMILIES[name]
    getattr(diffusers, family.pipeline)(**family.build_tiny() | changes).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    return save_folder(tmp_path_factory.mktemp("models") / "Wan2.2-I2V-tiny", "wan")


def first_window(model: str, tmp_path: Path) -> torch.Tensor:
    engine = Engine.load(model)
    out = tmp_path / f"{Path(model).name}.mp4"
    engine.generate(job(tmp_path, model_field(model), Fraction(1, 2), height=64, width=96, steps=4,
                        guidance=1.0), out)
    return torch.from_numpy(media.read_frames(out))


@pytest.mark.parametrize("name", [name for name in FAMILIES if name != "hunyuan"])
def test_a_family_folder_loads_as_its_family_with_its_weights(tmp_path, name):
    family = FAMILIES[name]
    folder = save_folder(tmp_path / name, name)
    loaded = load_model(str(folder))
    assert loaded.info.family == name and loaded.info.native_fps == family.native_fps
    assert loaded.info.default_steps == family.base.steps  # a folder holds base weights
    saved, built = first_window(str(folder), tmp_path), first_window(family.tiny_name, tmp_path)
    # the same weights give the same window, but for a few pixels: on some CPUs (and transformers 5.25)
    # a model read back from its folder sums in another order (HV1.5: 4 % of pixels off, by at most 14
    # levels; other weights would change them all)
    off = (saved.int() - built.int()).abs()
    assert saved.shape == built.shape and off.float().mean() < 0.5 and (off > 0).float().mean() < 0.1


def test_a_config_value_of_the_pipeline_is_kept(wan_folder):
    assert load_model(str(wan_folder)).components["boundary_ratio"] == 0.875  # Wan 2.2's two experts


def test_a_missing_or_wrong_file_is_named(tmp_path, wan_folder):
    broken = tmp_path / "wan"
    shutil.copytree(wan_folder, broken)
    (broken / "transformer_2" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="transformer_2/diffusion_pytorch_model.safetensors is missing"):
        load_model(str(broken))
    shutil.rmtree(broken)
    shutil.copytree(wan_folder, broken)
    (broken / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(CheckpointError, match="scheduler/scheduler_config.json is missing"):
        load_model(str(broken))


@pytest.mark.parametrize("name,component,change,message", [
    ("wan", "vae", {"z_dim": 8}, "vae/config.json: z_dim is 8, the other components need 16"),
    ("hv15", "vae", {"latent_channels": 16},
     "vae/config.json: latent_channels is 16, the other components need 32"),
    ("ltx2", "vae", {"latent_channels": 64},
     "vae/config.json: latent_channels is 64, the other components need 128"),
])
def test_a_component_of_another_model_is_named(tmp_path, name, component, change, message):
    module = FAMILIES[name].build_tiny()[component]
    config = {k: v for k, v in module.config.items() if not k.startswith("_")}
    folder = save_folder(tmp_path / name, name, **{component: type(module)(**config | change)})
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_model(str(folder))


def test_a_folder_of_another_pipeline_lists_what_runs(tmp_path, wan_folder):
    other = tmp_path / "flux"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(InvalidInput, match="holds a FluxPipeline; Magic141 runs .*WanImageToVideoPipeline"):
        load_model(str(other))


def test_a_repository_in_the_hugging_face_cache_is_found_offline(tmp_path, wan_folder, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # HF_HUB_CACHE, as read on import
    repo = tmp_path / "hub" / "models--Wan-AI--Wan2.2-I2V-A14B-Diffusers"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    shutil.copytree(wan_folder, repo / "snapshots" / "0123abcd")
    assert model_field("Wan-AI/Wan2.2-I2V-A14B-Diffusers") == "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
    loaded = load_model("Wan-AI/Wan2.2-I2V-A14B-Diffusers")
    assert loaded.info.family == "wan" and loaded.info.name == "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
    with pytest.raises(InvalidInput, match="nor a repository in the Hugging Face cache"):
        load_model("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers")


# LoRAs --------------------------------------------------------------------------------------------


def make_lora(folder: Path, components: dict, pipeline: str) -> Path:
    """A LoRA on the attention of ``components``' transformer, with random (non-zero) weights."""
    import diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = components["transformer"]
    torch.manual_seed(0)
    transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"],
                                       init_lora_weights=False))
    getattr(diffusers, pipeline).save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(
        transformer))
    return folder / "pytorch_lora_weights.safetensors"


def test_a_lora_is_fused_at_its_scale(tmp_path):
    lora = make_lora(tmp_path, FAMILIES["wan"].build_tiny(), "WanImageToVideoPipeline")
    plain = Engine.load("tiny-wan").model.components["transformer"].blocks[0].attn1.to_q.weight
    deltas = [Engine.load("tiny-wan", loras=[Lora.parse(f"{lora}:{scale}")]).model.components["transformer"]
              .blocks[0].attn1.to_q.weight - plain for scale in (0.5, 1)]
    assert deltas[1].abs().max() > 1e-3
    assert torch.allclose(deltas[0] * 2, deltas[1], atol=1e-6)
    assert Lora.parse(str(lora)).scale == 1.0


def test_wan_2_2_takes_a_lora_for_each_expert(tmp_path, capsys):
    """Wan 2.2 A14B's 4-step LoRAs come in two files: the high-noise one for ``transformer``, the
    low-noise one for ``transformer_2``."""
    from magic141.cli import main

    lora = make_lora(tmp_path, FAMILIES["wan"].build_tiny(), "WanImageToVideoPipeline")
    plain = Engine.load("tiny-wan").model.components
    fused = Engine.load("tiny-wan", loras=[Lora.parse(f"{lora}:1@transformer_2")]).model.components

    def weight(parts, name):
        return parts[name].blocks[0].attn1.to_q.weight

    assert torch.equal(weight(fused, "transformer"), weight(plain, "transformer"))
    assert not torch.equal(weight(fused, "transformer_2"), weight(plain, "transformer_2"))
    status = main(["info", "--model", "tiny", "--lora", f"{lora}@transformer_2"])
    assert status != 0
    assert "goes into transformer_2, which this HunyuanVideo-I2V-33ch" in capsys.readouterr().err
    status = main(["info", "--model", "tiny-hv15", "--lora", str(lora)])  # diffusers has no loader for it
    assert status != 0
    assert "loads no LoRAs into a HunyuanVideo15ImageToVideoPipeline" in capsys.readouterr().err


def test_a_lora_for_another_model_fails_in_one_line(tmp_path, capsys):
    from magic141.cli import main

    lora = make_lora(tmp_path, FAMILIES["wan"].build_tiny(), "WanImageToVideoPipeline")
    status = main(["info", "--model", "tiny", "--lora", str(lora)])
    err = capsys.readouterr().err.strip()
    assert status != 0 and len(err.splitlines()) == 1, err
    assert f"{lora} is not for this HunyuanVideo-I2V-33ch (Magic 1-For-1): 8 of its 8 layers" in err
    with pytest.raises(SystemExit):
        main(["info", "--model", "tiny", "--lora", str(tmp_path / "missing.safetensors")])
    assert "missing.safetensors does not exist" in capsys.readouterr().err


def test_a_spec_carries_its_loras(tmp_path):
    spec = job(tmp_path, "tiny-wan", loras=(("/loras/high_noise.safetensors", 1.0, "transformer"),
                                            ("/loras/low_noise.safetensors", 1.0, "transformer_2")))
    assert JobSpec.from_json(spec.to_json()).loras == spec.loras
    with pytest.raises(InvalidInput, match="loras.path"):
        JobSpec.from_json({**spec.to_json(), "loras": [{"path": "/x/lora.ckpt", "scale": 1}]})
    with pytest.raises(InvalidInput, match="loras.into"):
        JobSpec.from_json({**spec.to_json(), "loras": [{"path": "/x/l.safetensors", "into": "vae"}]})
    assert JobSpec.from_json({**spec.to_json(), "loras": [{"path": "/x/l.safetensors"}]}).loras == (
        ("/x/l.safetensors", 1.0, "transformer"),)
    old = {k: v for k, v in spec.to_json().items() if k != "loras"} | {"version": 3}
    assert JobSpec.from_json(old).loras == ()


@pytest.mark.parametrize("name,billions,vae", [
    ("hunyuan", 13, (8, 4, 16)),  # HunyuanVideo: "13B"; its causal VAE 8x / 4x, 16 channels
    ("wan", 14, (8, 4, 16)),  # Wan 2.2 A14B: two experts of 14B
    ("hv15", 8.3, (16, 4, 32)),  # HunyuanVideo 1.5: 8.3B, a 16x / 4x VAE of 32 channels
    ("ltx2", 19, (32, 8, 128)),  # LTX-2: 19B (video and audio streams), 32x / 8x, 128 channels
])
def test_the_real_models_sizes_behind_the_memory_figures(name, billions, vae):
    from magic141.engine.families.catalog import real_size

    real = real_size(name)
    experts = [real.counts[dit] for dit in FAMILIES[name].dits]
    assert all(abs(n / 1e9 - billions) / billions < 0.05 for n in experts), experts
    geometry = real.geometry
    assert (geometry.vae_spatial, geometry.vae_temporal, geometry.latent_channels) == vae


def test_a_queued_job_runs_with_its_lora_and_says_so(tmp_path):
    from magic141.cli import build_parser
    from magic141.plugin.queue_cli import spec_from_args

    lora = make_lora(tmp_path, FAMILIES["wan"].build_tiny(), "WanImageToVideoPipeline")
    args = build_parser().parse_args([
        "queue", "add", "--model", "tiny-wan", "--lora", f"{lora}:0.5", "--prompt", "a ball",
        "--image", str(SAMPLE_IMAGE), "--seconds", "1/2", "--out", str(tmp_path / "q.mp4")])
    spec = spec_from_args(args)
    assert spec.loras == ((str(lora), 0.5, "transformer"),)
    done = JobRunner("cpu", previews=False).execute("q", JobSpec.from_json(spec.to_json()))
    assert done.state == JobState.DONE, done.reason
    assert done.result.settings["loras"] == [{"path": str(lora), "scale": 0.5, "into": "transformer"}]


def test_extend_runs_with_a_lora_and_the_clip_remembers_it(tmp_path, capsys):
    """``magic141 extend --model tiny-wan --lora ...`` on the world sample: the placed clip's record says
    the family and the LoRA, so it can be redone."""
    import opentimelineio as otio

    from magic141.cli import main
    from magic141.engine.train import sample

    lora = make_lora(tmp_path, FAMILIES["wan"].build_tiny(), "WanImageToVideoPipeline")
    timeline = sample.write_sample(tmp_path / "sample")
    out = tmp_path / "out" / "extended.otio"
    status = main(["extend", str(timeline), "--clip", "Ball", "--prompt", "the ball rolls on",
                   "--seconds", "1/2", "--model", "tiny-wan", "--lora", f"{lora}:0.5", "--out", str(out)])
    assert status == 0, capsys.readouterr().err[-2000:]
    placed = [c for c in otio.adapters.read_from_file(str(out)).find_clips() if "magic141" in c.metadata]
    record = placed[0].metadata["magic141"]
    assert record["family"] == "wan" and record["model"] == "tiny-wan"
    assert [dict(item) for item in record["loras"]] == [{"path": str(lora), "scale": 0.5,
                                                          "into": "transformer"}]


@pytest.mark.parametrize("model", NEW_FAMILIES)
def test_every_family_runs_with_int8_weights_in_each_of_its_dits(tmp_path, model):
    from magic141.engine.quant import is_quantized

    engine = Engine.load(model, quant="int8")
    parts = engine.model.components
    dits = [parts[name] for name in engine.family.dits if parts.get(name) is not None]
    assert dits and all(is_quantized(dit) for dit in dits)
    result = engine.generate(job(tmp_path, model, Fraction(1, 2)), tmp_path / "int8.mp4")
    assert result.settings["quant"] == "int8" and media.probe_video(result.path).frames == 12
