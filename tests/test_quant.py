"""engine.quant: int8/fp8 weight-only quantisation stays close, shrinks, and really is 1 byte/weight.

Error bounds (relative L2 error of the output against the same model unquantised, same inputs):

- int8, per-row symmetric: the step is absmax/127, so the rounding error has an rms of
  step/sqrt(12). For Gaussian rows (absmax ~2.5 sigma over 64-256 values) that is 0.4-0.7 % of a
  row's rms, and an output error of about the same size per layer: measured 0.95 % for the MLP
  below (two layers) and 0.3 % for the tiny DiT. Bound: 2 %.
- fp8 e4m3, per-row scale: 3 mantissa bits, so each weight is rounded by up to 2**-4 = 6.25 %
  of itself (rms ~3.6 %): measured 4.1 % (MLP) and 2.3 % (tiny DiT). Bound: 8 %.

The weights are given a 10-100x spread of row magnitudes (as trained layers have), so a scale
applied to the wrong rows, a per-tensor scale or a missing scale is not hidden by uniform rows.
With them a broken quantizer is far outside the bounds: scales on the wrong rows 38-130 %, one
averaged scale ~90 %, every scale 10 % off 14-21 %, scale missing 10**4 or NaN.
``test_bounds_catch_a_broken_scale`` keeps checking that by tampering with the stored scales.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from magic141.engine.quant import (
    QUANT_MODES,
    bytes_per_param,
    is_quantized,
    quantizable_linears,
    quantize,
    weight_bytes,
)
from magic141.errors import InvalidInput

BOUNDS = {"int8": 0.02, "fp8": 0.08}
STORAGE = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


def _spread_rows(module: nn.Module, decades: float, seed: int) -> None:
    """Scale each Linear row by 10**U(-decades/2, decades/2): rows of different magnitude."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                spread = 10 ** (decades * (torch.rand(layer.out_features, 1, generator=g) - 0.5))
                layer.weight.mul_(spread)


def make_mlp() -> nn.Sequential:
    g = torch.Generator().manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
    with torch.no_grad():
        for layer in (mlp[0], mlp[2]):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * layer.in_features**-0.5)
            layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=g))
    _spread_rows(mlp, decades=2.0, seed=1)
    return mlp


MLP_INPUT = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))


def make_tiny_dit():
    from diffusers import HunyuanVideoTransformer3DModel

    from magic141.engine.tiny import dit_config

    torch.manual_seed(0)
    config = dit_config(in_channels=9, out_channels=4, num_single_layers=1)
    model = HunyuanVideoTransformer3DModel(**config).eval()
    _spread_rows(model, decades=1.0, seed=2)
    return model


def dit_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(1, 9, 3, 8, 8, generator=g).to(dtype),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, 7, 32, generator=g).to(dtype),
        encoder_attention_mask=torch.ones(1, 7, dtype=torch.bool),
        pooled_projections=torch.randn(1, 16, generator=g).to(dtype),
        return_dict=False,
    )


def run_dit(model, dtype=torch.float32) -> torch.Tensor:
    with torch.no_grad():
        return model(**dit_inputs(dtype))[0].float()


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


def inner_tensors(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    names, _ = weight.__tensor_flatten__()
    return {name: getattr(weight, name) for name in names if getattr(weight, name) is not None}


@pytest.fixture(scope="module")
def dit_reference() -> torch.Tensor:
    return run_dit(make_tiny_dit())


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_mlp_output_stays_close(mode):
    ref = make_mlp()(MLP_INPUT)
    mlp = quantize(make_mlp(), mode, compute_dtype=torch.float32, min_features=64)
    assert rel_error(mlp(MLP_INPUT), ref) < BOUNDS[mode]


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_bf16_compute(mode):
    """compute_dtype casts the module; outputs come in bf16 and stay close to the fp32 model."""
    ref = make_mlp()(MLP_INPUT)
    mlp = quantize(make_mlp(), mode, compute_dtype=torch.bfloat16, min_features=64)
    y = mlp(MLP_INPUT.bfloat16())
    assert y.dtype == torch.bfloat16
    assert mlp[0].bias.dtype == torch.bfloat16
    assert rel_error(y, ref) < BOUNDS[mode]  # bf16 itself adds ~0.4 %


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_weights_are_one_byte_with_per_row_scales(mode):
    mlp = quantize(make_mlp(), mode, compute_dtype=torch.float32, min_features=64)
    for layer in (mlp[0], mlp[2]):
        assert is_traceable_wrapper_subclass(layer.weight)
        inner = inner_tensors(layer.weight)
        assert inner["qdata"].dtype == STORAGE[mode]
        assert inner["qdata"].shape == (layer.out_features, layer.in_features)
        # one scale per output channel (row), not per tensor or per input column
        assert inner["scale"].numel() == layer.out_features
    assert is_quantized(mlp)


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_weight_bytes_shrink(mode):
    fp32 = make_mlp()
    bf16 = make_mlp().to(torch.bfloat16)
    n_weights = 64 * 256 * 2
    assert weight_bytes(fp32) == (n_weights + 256 + 64) * 4
    assert weight_bytes(bf16) == (n_weights + 256 + 64) * 2
    q32 = quantize(make_mlp(), mode, compute_dtype=torch.float32, min_features=64)
    q16 = quantize(make_mlp(), mode, compute_dtype=torch.bfloat16, min_features=64)
    # 1 byte per weight + <= 5 bytes of scale (and zero point) per row + biases
    assert 0.25 < weight_bytes(q32) / weight_bytes(fp32) < 0.30  # a quarter of fp32
    assert 0.50 < weight_bytes(q16) / weight_bytes(bf16) < 0.56  # half of bf16
    assert n_weights <= weight_bytes(q16) <= n_weights + 5 * 320 + 2 * 320


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_bounds_catch_a_broken_scale(mode):
    """Tamper with the stored scales: the error bound must flag every such quantizer."""
    ref = make_mlp()(MLP_INPUT)
    tampers = {
        "wrong rows": lambda s: s.copy_(s.roll(1, dims=0)),
        "one scale for all rows": lambda s: s.fill_(s.mean().item()),
        "10 % off": lambda s: s.mul_(1.1),
        "missing": lambda s: s.fill_(1.0),
    }
    for name, tamper in tampers.items():
        mlp = quantize(make_mlp(), mode, compute_dtype=torch.float32, min_features=64)
        with torch.no_grad():
            for layer in (mlp[0], mlp[2]):
                tamper(inner_tensors(layer.weight)["scale"])
        err = rel_error(mlp(MLP_INPUT), ref)
        assert not err < BOUNDS[mode], f"{name}: {err:.3f} is within the {mode} bound"


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_tiny_dit_stays_close(mode, dit_reference):
    model = make_tiny_dit()
    before = weight_bytes(model)
    chosen = quantizable_linears(model, min_features=32)
    quantize(model, mode, compute_dtype=torch.float32, min_features=32)
    assert rel_error(run_dit(model), dit_reference) < BOUNDS[mode]

    layers = dict(model.named_modules())
    assert len(chosen) > 30
    for name in chosen:
        assert inner_tensors(layers[name].weight)["qdata"].dtype == STORAGE[mode]
    # narrow layers stay in full precision: the final projection (32 -> 16 here) among them
    assert "proj_out" not in chosen
    assert type(model.proj_out.weight) is nn.Parameter and model.proj_out.weight.dtype == torch.float32
    # every chosen fp32 weight now takes ~1 byte instead of 4
    saved = sum(layers[n].in_features * layers[n].out_features for n in chosen) * 3
    assert before - weight_bytes(model) == pytest.approx(saved, rel=0.05)


def test_tiny_dit_bounds_catch_wrong_rows(dit_reference):
    model = quantize(make_tiny_dit(), "fp8", compute_dtype=torch.float32, min_features=32)
    with torch.no_grad():
        for p in model.parameters():
            if is_traceable_wrapper_subclass(p):
                scale = inner_tensors(p)["scale"]
                scale.copy_(scale.roll(1, dims=0))
    assert not rel_error(run_dit(model), dit_reference) < BOUNDS["fp8"]


def test_tiny_dit_bf16(dit_reference):
    model = quantize(make_tiny_dit(), "int8", compute_dtype=torch.bfloat16, min_features=32)
    assert model.dtype == torch.bfloat16
    assert rel_error(run_dit(model, torch.bfloat16), dit_reference) < BOUNDS["int8"]


def test_none_leaves_module_bitwise_unchanged():
    model = make_tiny_dit()
    params = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    assert quantize(model, "none") is model
    for name, p in model.named_parameters():
        original, copy = params[name]
        assert p is original
        assert p.dtype == copy.dtype == torch.float32
        assert torch.equal(p, copy)
    assert not is_quantized(model)


def test_default_min_features_keeps_narrow_layers():
    """At real width: everything 512+ wide on both sides; proj_out (3072 -> 64) and the
    timestep embedder's 256 -> 3072 stay in full precision."""
    with torch.device("meta"):
        model = nn.ModuleDict(
            {
                "attn": nn.Linear(3072, 3072),
                "mlp": nn.Linear(3072, 12288),
                "pooled": nn.Linear(768, 3072),
                "timestep": nn.Linear(256, 3072),
                "proj_out": nn.Linear(3072, 64),
            }
        )
    assert quantizable_linears(model) == ["attn", "mlp", "pooled"]


def test_unknown_mode_names_the_choices():
    with pytest.raises(InvalidInput, match="none, int8, fp8") as info:
        quantize(make_mlp(), "int4")
    assert "'int4'" in str(info.value)
    with pytest.raises(InvalidInput, match="none, int8, fp8"):
        bytes_per_param("nf4")


def test_bad_arguments():
    with pytest.raises(InvalidInput, match="compute_dtype"):
        quantize(make_mlp(), "int8", compute_dtype=torch.int8)
    with pytest.raises(InvalidInput, match="min_features"):
        quantize(make_mlp(), "int8", min_features=0)
    mlp = quantize(make_mlp(), "int8", compute_dtype=torch.float32, min_features=64)
    with pytest.raises(InvalidInput, match="already quantised"):
        quantize(mlp, "fp8", compute_dtype=torch.float32, min_features=64)


def test_bytes_per_param():
    assert QUANT_MODES == ("none", "int8", "fp8")
    assert bytes_per_param("none") == 2.0
    for mode in ("int8", "fp8"):
        assert 1.0 < bytes_per_param(mode) < 1.02


@pytest.mark.slow  # a fresh interpreter: torch's import alone takes seconds
def test_torchao_is_imported_lazily_and_quietly():
    code = (
        "import sys\n"
        "import magic141.engine.quant as q\n"
        "print('loaded-at-import' if 'torchao' in sys.modules else 'lazy')\n"
        "print('available' if q.import_torchao_quietly() is not None else 'missing')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["lazy", "available"]
    assert "Failed to load" not in done.stderr
    assert "register_constant" not in done.stderr
