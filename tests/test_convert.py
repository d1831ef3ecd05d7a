"""Single-file checkpoint conversion: original HunyuanVideo naming <-> diffusers naming.

Everything runs on a tiny random transformer (hidden 16, head 8) on the CPU, plus a meta-device
copy of the real 13B I2V-33ch architecture, which costs no memory.
"""

from __future__ import annotations

import re

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import HunyuanVideoTransformer3DModel
from safetensors.torch import save_file

from magic141.engine.convert import (
    diffusers_to_original,
    infer_config,
    is_original_naming,
    load_transformer_from_single_file,
    original_to_diffusers,
    read_state_dict,
    save_original_checkpoint,
)
from magic141.engine.tiny import dit_config, seeded
from magic141.errors import CheckpointError, InvalidInput

TINY_CONFIG = dit_config(  # hidden 16, head 8
    in_channels=9, out_channels=4, attention_head_dim=8, num_layers=2, text_embed_dim=16,
    pooled_projection_dim=8, rope_axes_dim=(2, 2, 4),
)
ROPE = {"rope_axes_dim": (2, 2, 4)}  # head size 8 is not the released 128, so rope must be given
H, D, MLP = 16, 8, 64  # hidden size, head size, mlp width of the tiny model

# diffusers' scripts/convert_hunyuan_video_to_diffusers.py, TRANSFORMER_CONFIGS["HYVideo-T/2-I2V-33ch"]
I2V_33CH_CONFIG = dict(
    in_channels=33, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
    num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
    guidance_embeds=False, text_embed_dim=4096, pooled_projection_dim=768, rope_axes_dim=(16, 56, 56),
    image_condition_type="latent_concat",
)

ORIGINAL_ROOTS = {
    "img_in", "txt_in", "time_in", "guidance_in", "vector_in", "double_blocks", "single_blocks", "final_layer"
}

# The tensors a HunyuanVideo checkpoint holds outside the repeated blocks and in block 0 of each
# block type, written from the original model's module tree (hyvideo/modules/models.py), NOT from
# the conversion tables: [img_in | txt_in | time_in | vector_in | double | single | final_layer].
EXPECTED_ORIGINAL_SHAPES = {
    "img_in.proj.weight": [H, 9, 1, 2, 2],
    "img_in.proj.bias": [H],
    "txt_in.input_embedder.weight": [H, 16],
    "txt_in.input_embedder.bias": [H],
    "txt_in.t_embedder.mlp.0.weight": [H, 256],
    "txt_in.t_embedder.mlp.0.bias": [H],
    "txt_in.t_embedder.mlp.2.weight": [H, H],
    "txt_in.t_embedder.mlp.2.bias": [H],
    "txt_in.c_embedder.linear_1.weight": [H, 16],
    "txt_in.c_embedder.linear_1.bias": [H],
    "txt_in.c_embedder.linear_2.weight": [H, H],
    "txt_in.c_embedder.linear_2.bias": [H],
    "txt_in.individual_token_refiner.blocks.0.norm1.weight": [H],
    "txt_in.individual_token_refiner.blocks.0.norm1.bias": [H],
    "txt_in.individual_token_refiner.blocks.0.self_attn_qkv.weight": [3 * H, H],
    "txt_in.individual_token_refiner.blocks.0.self_attn_qkv.bias": [3 * H],
    "txt_in.individual_token_refiner.blocks.0.self_attn_proj.weight": [H, H],
    "txt_in.individual_token_refiner.blocks.0.self_attn_proj.bias": [H],
    "txt_in.individual_token_refiner.blocks.0.norm2.weight": [H],
    "txt_in.individual_token_refiner.blocks.0.norm2.bias": [H],
    "txt_in.individual_token_refiner.blocks.0.mlp.fc1.weight": [4 * H, H],
    "txt_in.individual_token_refiner.blocks.0.mlp.fc1.bias": [4 * H],
    "txt_in.individual_token_refiner.blocks.0.mlp.fc2.weight": [H, 4 * H],
    "txt_in.individual_token_refiner.blocks.0.mlp.fc2.bias": [H],
    "txt_in.individual_token_refiner.blocks.0.adaLN_modulation.1.weight": [2 * H, H],
    "txt_in.individual_token_refiner.blocks.0.adaLN_modulation.1.bias": [2 * H],
    "time_in.mlp.0.weight": [H, 256],
    "time_in.mlp.0.bias": [H],
    "time_in.mlp.2.weight": [H, H],
    "time_in.mlp.2.bias": [H],
    "vector_in.in_layer.weight": [H, 8],
    "vector_in.in_layer.bias": [H],
    "vector_in.out_layer.weight": [H, H],
    "vector_in.out_layer.bias": [H],
    "double_blocks.0.img_mod.linear.weight": [6 * H, H],
    "double_blocks.0.img_mod.linear.bias": [6 * H],
    "double_blocks.0.img_attn_qkv.weight": [3 * H, H],
    "double_blocks.0.img_attn_qkv.bias": [3 * H],
    "double_blocks.0.img_attn_q_norm.weight": [D],
    "double_blocks.0.img_attn_k_norm.weight": [D],
    "double_blocks.0.img_attn_proj.weight": [H, H],
    "double_blocks.0.img_attn_proj.bias": [H],
    "double_blocks.0.img_mlp.fc1.weight": [MLP, H],
    "double_blocks.0.img_mlp.fc1.bias": [MLP],
    "double_blocks.0.img_mlp.fc2.weight": [H, MLP],
    "double_blocks.0.img_mlp.fc2.bias": [H],
    "double_blocks.0.txt_mod.linear.weight": [6 * H, H],
    "double_blocks.0.txt_mod.linear.bias": [6 * H],
    "double_blocks.0.txt_attn_qkv.weight": [3 * H, H],
    "double_blocks.0.txt_attn_qkv.bias": [3 * H],
    "double_blocks.0.txt_attn_q_norm.weight": [D],
    "double_blocks.0.txt_attn_k_norm.weight": [D],
    "double_blocks.0.txt_attn_proj.weight": [H, H],
    "double_blocks.0.txt_attn_proj.bias": [H],
    "double_blocks.0.txt_mlp.fc1.weight": [MLP, H],
    "double_blocks.0.txt_mlp.fc1.bias": [MLP],
    "double_blocks.0.txt_mlp.fc2.weight": [H, MLP],
    "double_blocks.0.txt_mlp.fc2.bias": [H],
    "single_blocks.0.linear1.weight": [3 * H + MLP, H],
    "single_blocks.0.linear1.bias": [3 * H + MLP],
    "single_blocks.0.linear2.weight": [H, H + MLP],
    "single_blocks.0.linear2.bias": [H],
    "single_blocks.0.q_norm.weight": [D],
    "single_blocks.0.k_norm.weight": [D],
    "single_blocks.0.modulation.linear.weight": [3 * H, H],
    "single_blocks.0.modulation.linear.bias": [3 * H],
    "final_layer.linear.weight": [1 * 2 * 2 * 4, H],
    "final_layer.linear.bias": [1 * 2 * 2 * 4],
    "final_layer.adaLN_modulation.1.weight": [2 * H, H],
    "final_layer.adaLN_modulation.1.bias": [2 * H],
}


def _build_tiny(seed: int = 0) -> HunyuanVideoTransformer3DModel:
    with seeded(seed):
        model = HunyuanVideoTransformer3DModel(**TINY_CONFIG)
        # The output projections start at zero in some layers; random values make the forward
        # comparison sensitive to every tensor, including the final layer's modulation order.
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(torch.randn_like(param) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> HunyuanVideoTransformer3DModel:
    return _build_tiny()


@pytest.fixture(scope="module")
def original_sd(tiny) -> dict[str, torch.Tensor]:
    return diffusers_to_original(tiny.state_dict())


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(1, 9, 3, 8, 8, generator=gen),
        "timestep": torch.tensor([700], dtype=torch.long),
        "encoder_hidden_states": torch.randn(1, 7, 16, generator=gen),
        "encoder_attention_mask": torch.ones(1, 7, dtype=torch.long),
        "pooled_projections": torch.randn(1, 8, generator=gen),
    }


def _forward(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def _save(sd: dict[str, torch.Tensor], path) -> None:
    save_file({k: v.clone().contiguous() for k, v in sd.items()}, str(path))


# --- mapping ------------------------------------------------------------------------------------


def test_round_trips_are_exact(tiny, original_sd):
    sd = tiny.state_dict()
    back = original_to_diffusers(original_sd)
    assert set(back) == set(sd)
    for key, value in sd.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key

    again = diffusers_to_original(back)
    assert set(again) == set(original_sd)
    assert all(torch.equal(again[k], original_sd[k]) for k in original_sd)


def test_original_file_has_the_real_hunyuan_names_and_fused_shapes(original_sd):
    assert is_original_naming(original_sd)
    assert not is_original_naming({"transformer_blocks.0.attn.to_q.weight": torch.zeros(1)})
    later_blocks = re.compile(r"(double|single)_blocks\.[1-9]")
    block0_and_top = {k: list(v.shape) for k, v in original_sd.items() if not later_blocks.match(k)}
    assert block0_and_top == EXPECTED_ORIGINAL_SHAPES
    per_double = sum(k.startswith("double_blocks.0.") for k in EXPECTED_ORIGINAL_SHAPES)
    per_single = sum(k.startswith("single_blocks.0.") for k in EXPECTED_ORIGINAL_SHAPES)
    assert len(original_sd) == len(EXPECTED_ORIGINAL_SHAPES) + per_double + per_single  # 2 blocks each


def test_fused_tensors_are_stacked_in_q_k_v_mlp_order(tiny, original_sd):
    sd = tiny.state_dict()
    qkv = original_sd["double_blocks.1.img_attn_qkv.weight"]
    assert torch.equal(qkv[:H], sd["transformer_blocks.1.attn.to_q.weight"])
    assert torch.equal(qkv[H : 2 * H], sd["transformer_blocks.1.attn.to_k.weight"])
    assert torch.equal(qkv[2 * H :], sd["transformer_blocks.1.attn.to_v.weight"])
    txt = original_sd["double_blocks.0.txt_attn_qkv.bias"]
    assert torch.equal(txt[:H], sd["transformer_blocks.0.attn.add_q_proj.bias"])
    assert torch.equal(txt[2 * H :], sd["transformer_blocks.0.attn.add_v_proj.bias"])
    linear1 = original_sd["single_blocks.1.linear1.weight"]
    assert torch.equal(linear1[:H], sd["single_transformer_blocks.1.attn.to_q.weight"])
    assert torch.equal(linear1[2 * H : 3 * H], sd["single_transformer_blocks.1.attn.to_v.weight"])
    assert torch.equal(linear1[3 * H :], sd["single_transformer_blocks.1.proj_mlp.weight"])
    refiner = original_sd["txt_in.individual_token_refiner.blocks.0.self_attn_qkv.weight"]
    refiner_k = sd["context_embedder.token_refiner.refiner_blocks.0.attn.to_k.weight"]
    assert torch.equal(refiner[H : 2 * H], refiner_k)


def test_final_layer_modulation_swaps_shift_and_scale(tiny, original_sd):
    sd = tiny.state_dict()
    for param in ("weight", "bias"):
        original = original_sd[f"final_layer.adaLN_modulation.1.{param}"]  # [shift; scale]
        diffusers = sd[f"norm_out.linear.{param}"]  # [scale; shift]
        assert torch.equal(original[:H], diffusers[H:])
        assert torch.equal(original[H:], diffusers[:H])
    # the refiner's modulation ([gate_msa; gate_mlp] in both) is not swapped
    assert torch.equal(
        original_sd["txt_in.individual_token_refiner.blocks.0.adaLN_modulation.1.weight"],
        sd["context_embedder.token_refiner.refiner_blocks.0.norm_out.linear.weight"],
    )


# --- config inference ------------------------------------------------------------------------------


def test_inferred_config_matches_the_source_model(tiny, original_sd):
    config = infer_config(original_sd, ROPE)
    assert config == {key: tiny.config[key] for key in TINY_CONFIG}
    assert infer_config(original_sd, {**ROPE, "num_layers": 5})["num_layers"] == 5  # overrides win


def test_rope_axes_must_be_given_for_a_non_standard_head_size(original_sd):
    with pytest.raises(CheckpointError, match="rope_axes_dim"):
        infer_config(original_sd)
    with pytest.raises(InvalidInput, match="rope_axes_dim"):
        infer_config(original_sd, {"rope_axes_dim": (2, 2, 2)})
    with pytest.raises(InvalidInput, match="rope_axes_dim"):
        infer_config(original_sd, {"rope_axes_dim": (2, 3, 3)})  # each axis must be even
    with pytest.raises(InvalidInput, match="not_a_setting"):
        infer_config(original_sd, {**ROPE, "not_a_setting": 1})


# The other released transformers, same script: text-to-video (guidance-distilled) and the 16-channel
# token-replace I2V model, whose image_condition_type no weight reveals.
T2V_CONFIG = {**I2V_33CH_CONFIG, "in_channels": 16, "guidance_embeds": True, "image_condition_type": None}
I2V_16CH_CONFIG = {**T2V_CONFIG, "image_condition_type": "token_replace"}


@pytest.mark.parametrize(
    ("config", "overrides"),
    [
        (I2V_33CH_CONFIG, None),
        (T2V_CONFIG, None),
        (I2V_16CH_CONFIG, {"image_condition_type": "token_replace"}),
    ],
    ids=["i2v-33ch", "t2v", "i2v-16ch"],
)
def test_real_architectures_on_meta(config, overrides):
    with init_empty_weights():
        real = HunyuanVideoTransformer3DModel(**config)
    sd = real.state_dict()
    original = diffusers_to_original(sd)
    assert infer_config(original, overrides) == config  # rope (16, 56, 56) assumed for head size 128
    shapes = {k: list(v.shape) for k, v in original.items()}
    assert shapes["img_in.proj.weight"] == [3072, config["in_channels"], 1, 2, 2]
    assert shapes["double_blocks.19.img_attn_qkv.weight"] == [9216, 3072]
    assert shapes["single_blocks.39.linear1.weight"] == [3 * 3072 + 4 * 3072, 3072]
    assert shapes["single_blocks.39.linear2.weight"] == [3072, 3072 + 4 * 3072]
    assert shapes["final_layer.linear.weight"] == [64, 3072]
    assert shapes["txt_in.input_embedder.weight"] == [3072, 4096]
    assert shapes["vector_in.in_layer.weight"] == [3072, 768]
    assert ("guidance_in.mlp.0.weight" in shapes) == config["guidance_embeds"]
    assert all(k.split(".")[0] in ORIGINAL_ROOTS for k in original)
    back = original_to_diffusers(original)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in sd.items()}


# --- loading ------------------------------------------------------------------------------------


def test_loaded_original_file_reproduces_the_source_output(tiny, inputs, tmp_path):
    path = save_original_checkpoint(tiny, tmp_path / "export" / "model.safetensors")
    assert is_original_naming(read_state_dict(path))
    loaded = load_transformer_from_single_file(path, overrides=ROPE)
    assert not loaded.training
    assert all(not p.is_meta and p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.equal(_forward(loaded, inputs), _forward(tiny, inputs))

    half = load_transformer_from_single_file(path, overrides=ROPE, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_diffusers_named_single_file_loads_too(tiny, inputs, tmp_path):
    path = tmp_path / "diffusers.safetensors"
    _save(tiny.state_dict(), path)
    loaded = load_transformer_from_single_file(path, overrides=ROPE)
    assert torch.equal(_forward(loaded, inputs), _forward(tiny, inputs))


def test_pickle_files_need_opt_in_and_are_unwrapped(original_sd, tmp_path):
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {f"module.{k}": v for k, v in original_sd.items()}, "iteration": 3}, path)
    for refused in (read_state_dict, lambda p: load_transformer_from_single_file(p, overrides=ROPE)):
        with pytest.raises(CheckpointError, match="can run code when loaded") as info:
            refused(path)
        assert info.value.field == "allow_pickle" and "--" not in info.value.message  # front ends name it
    sd = read_state_dict(path, allow_pickle=True)
    assert set(sd) == set(original_sd)
    assert all(torch.equal(sd[k], original_sd[k]) for k in sd)
    assert load_transformer_from_single_file(path, allow_pickle=True, overrides=ROPE) is not None


_UNPICKLED: list[str] = []


def _record_unpickling(tag: str) -> str:
    _UNPICKLED.append(tag)
    return tag


class _Payload:
    """Unpickling this calls a function: exactly what weights_only must refuse to do."""

    def __reduce__(self):
        return (_record_unpickling, ("code ran",))


def test_pickle_with_python_objects_is_refused_without_running_them(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"img_in.proj.weight": torch.zeros(2), "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        read_state_dict(path, allow_pickle=True)
    assert _UNPICKLED == []


# --- errors -------------------------------------------------------------------------------------


def test_missing_tensor_is_named_with_its_expected_shape(original_sd, tmp_path):
    sd = dict(original_sd)
    del sd["double_blocks.1.img_attn_qkv.weight"]
    path = tmp_path / "model.safetensors"
    _save(sd, path)
    with pytest.raises(CheckpointError) as info:
        load_transformer_from_single_file(path, overrides=ROPE)
    assert str(info.value) == (
        "checkpoint model.safetensors is missing tensor 'double_blocks.1.img_attn_qkv.weight' "
        "(expected shape [48, 16])."
    )


def test_missing_tensor_needed_for_inference_is_named(original_sd, tmp_path):
    sd = {k: v for k, v in original_sd.items() if k != "img_in.proj.weight"}
    path = tmp_path / "model.safetensors"
    _save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing tensor 'img_in\.proj\.weight'"):
        load_transformer_from_single_file(path, overrides=ROPE)


def test_wrong_shape_is_named_with_both_shapes(original_sd, tmp_path):
    sd = dict(original_sd)
    sd["double_blocks.0.img_attn_proj.weight"] = torch.zeros(16, 15)
    path = tmp_path / "model.safetensors"
    _save(sd, path)
    with pytest.raises(CheckpointError) as info:
        load_transformer_from_single_file(path, overrides=ROPE)
    assert "'double_blocks.0.img_attn_proj.weight' has shape [16, 15], expected [16, 16]" in str(info.value)

    with pytest.raises(CheckpointError) as info:  # the engine insists on the 33-channel I2V layout
        load_transformer_from_single_file(path, overrides={**ROPE, "in_channels": 33})
    assert "'img_in.proj.weight' has shape [16, 9, 1, 2, 2], expected [16, 33, 1, 2, 2]" in str(info.value)


def test_unexpected_tensor_is_named(original_sd, tmp_path):
    sd = {**original_sd, "double_blocks.0.lora_A.weight": torch.zeros(4, 16)}
    path = tmp_path / "model.safetensors"
    _save(sd, path)
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'double_blocks\.0\.lora_A\.weight'"):
        load_transformer_from_single_file(path, overrides=ROPE)


def test_missing_diffusers_part_is_named_in_diffusers_naming(tiny, tmp_path):
    sd = {k: v for k, v in tiny.state_dict().items() if k != "transformer_blocks.0.attn.to_k.weight"}
    path = tmp_path / "model.safetensors"
    _save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing tensor 'transformer_blocks\.0\.attn\.to_k\.weight'"):
        load_transformer_from_single_file(path, overrides=ROPE)


def test_fp8_weights_are_refused(original_sd, tmp_path):
    sd = dict(original_sd)
    key = "double_blocks.0.img_attn_qkv.weight"
    sd[key] = sd[key].to(torch.float8_e4m3fn)
    path = tmp_path / "model.safetensors"
    _save(sd, path)
    with pytest.raises(CheckpointError, match="float8"):
        load_transformer_from_single_file(path, overrides=ROPE)


def test_unreadable_and_foreign_files_are_named(tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(CheckpointError, match=re.escape(str(missing))):
        load_transformer_from_single_file(missing)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match=re.escape(str(garbage))):
        read_state_dict(garbage)

    text = tmp_path / "model.txt"
    text.write_text("weights")
    with pytest.raises(CheckpointError, match="unsupported extension"):
        read_state_dict(text)

    foreign = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="does not look like a HunyuanVideo transformer"):
        load_transformer_from_single_file(foreign)


def test_bad_arguments_are_invalid_input(tiny, original_sd, tmp_path):
    path = tmp_path / "model.safetensors"
    _save(original_sd, path)
    with pytest.raises(InvalidInput, match="dtype"):
        load_transformer_from_single_file(path, overrides=ROPE, dtype=torch.int8)
    with pytest.raises(InvalidInput, match=r"\.safetensors"):
        save_original_checkpoint(tiny, tmp_path / "model.pt")


@pytest.mark.slow
def test_a_real_width_export_agrees_with_diffusers_own_conversion_both_ways():
    """diffusers converts original HunyuanVideo checkpoints with its own mapping (its conversion script's,
    the one ``from_single_file`` uses; it fixes the width at the real model's 3072). A 3072-wide model
    exported to the original naming by us comes back tensor-identical through diffusers' conversion
    and through ours."""
    from diffusers.loaders.single_file_utils import convert_hunyuan_video_transformer_to_diffusers

    config = dit_config(num_attention_heads=24, attention_head_dim=128, rope_axes_dim=(16, 56, 56),
                        mlp_ratio=0.25, text_embed_dim=64, pooled_projection_dim=32, num_single_layers=1)
    with seeded(0):
        source = HunyuanVideoTransformer3DModel(**config).to(torch.bfloat16).state_dict()
    original = diffusers_to_original(source)
    for name, back in (("diffusers", convert_hunyuan_video_transformer_to_diffusers(dict(original))),
                       ("magic141", original_to_diffusers(original))):
        assert set(back) == set(source), name
        different = [key for key in source if not torch.equal(back[key], source[key])]
        assert not different, (name, different[:3])
