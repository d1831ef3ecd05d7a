"""Weight quantisation of the DiT and the text encoders: ``none``, ``int8`` or ``fp8``.

Both quantised modes are *weight-only*: the weights are stored in one byte per value with one
scale per output channel (a row of the ``[out, in]`` weight), and every matmul still runs in
``compute_dtype`` (bf16 by default). That halves the weight memory of a bf16 model and runs on
any device, the CPU included.

- ``int8``: torchao ``Int8WeightOnlyConfig`` (per-row symmetric int8, ``Int8Tensor``).
- ``fp8``: torchao ``Float8WeightOnlyConfig`` (per-row ``float8_e4m3fn``, ``Float8Tensor``); its
  forward dequantises the weight to the compute dtype and runs an ordinary matmul. Checked with
  torch 2.13 (CPU) + torchao 0.18: it works on the CPU, so no in-house ``Float8Linear`` is needed.
  fp8 *compute* (fp8 x fp8 matmuls on Hopper, torchao's dynamic float8) is a separate, later GPU
  matter: see ``_fp8_weight_config``, the one place it would branch off.

Which layers: every ``nn.Linear`` whose ``in_features`` and ``out_features`` are both at least
``min_features`` (512 by default). At real size that is all the attention, MLP and modulation
projections of HunyuanVideo (3072 wide and up; 99.96 % of the DiT's parameters) and of the text
encoders. It keeps in full precision the narrow input/output layers that fp8 deployments of
HunyuanVideo/Flux-style DiTs also keep in bf16: the final ``proj_out`` (3072 -> 64, whose rounding
error lands directly on the predicted velocity) and the timestep embedder's ``linear_1``
(256 -> 3072, fed by sinusoids). Some fp8 checkpoints keep the text-input refiner in bf16 too; it
is 3072 wide and is quantised here (it runs on ~800 tokens, so it costs little either way).
Embedding tables, norms and the patch-embedding Conv3d are not ``nn.Linear`` and stay as they
are; they are a fraction of a percent of the DiT.

torchao is imported only when a quantised mode is asked for, and then with its import-time log
noise ("Failed to load ... .so" on CPU builds, pytree notices) turned down. Note that importing
any diffusers model class imports torchao too (diffusers' torchao quantiser), so a CLI that wants
a quiet start calls ``import_torchao_quietly()`` before it imports diffusers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections.abc import Iterator
from types import ModuleType

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from magic141.errors import InvalidInput

QUANT_MODES = ("none", "int8", "fp8")

# Layers narrower than this on either side stay in full precision (see the module docstring).
DEFAULT_MIN_FEATURES = 512

# Bytes per output row held besides the 1-byte weights: torchao keeps one fp32 scale per row, and
# Int8Tensor an int8 zero point as well.
_SCALE_BYTES_PER_ROW = 5

_COMPUTE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# Loggers that print at import time of torchao: its own .so loading, and torch's pytree notices
# about the enums torchao registers.
_NOISY_IMPORT_LOGGERS = ("torchao", "torch.utils._pytree")


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is one of ``QUANT_MODES``; otherwise raise InvalidInput naming them."""
    if not isinstance(mode, str) or mode not in QUANT_MODES:
        raise InvalidInput(f"quantization mode must be one of {', '.join(QUANT_MODES)}, got {mode!r}")
    return mode


@contextlib.contextmanager
def _quiet_loggers(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def import_torchao_quietly() -> ModuleType | None:
    """Import torchao with its import-time warnings silenced; None if it is not installed.

    Safe to call any number of times (later calls find it in ``sys.modules``). Call it before
    importing diffusers models to keep a CLI start free of torchao's "Failed to load" lines.
    """
    with _quiet_loggers(_NOISY_IMPORT_LOGGERS), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import torchao
            import torchao.quantization  # noqa: F401  (the part quantize() uses)
        except ImportError:
            return None
    return torchao


def _torchao_quantization(mode: str) -> ModuleType:
    if import_torchao_quietly() is None:
        raise InvalidInput(
            f"quantization mode {mode!r} needs the torchao package (pip install 'magic141[quant]'); "
            "use 'none' to run without it"
        )
    import torchao.quantization as tq

    return tq


def _make_config(cls, **kwargs):
    """Build a torchao config with only the fields this torchao version knows."""
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return cls(**{k: v for k, v in kwargs.items() if k in names})


def _int8_weight_config(tq: ModuleType):
    # set_inductor_config=False: do not change torch._inductor's global settings behind the caller.
    return _make_config(tq.Int8WeightOnlyConfig, granularity=tq.PerRow(), set_inductor_config=False)


def _fp8_weight_config(tq: ModuleType):
    """The fp8 config: weight-only storage, compute in the module's dtype, on every device.

    GPU-LATER (fp8 compute): on sm_89+/Hopper, torchao's
    ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`` would quantise the
    activations too and run the matmul in fp8 (``torch._scaled_mm``), faster than dequantising.
    That is the branch point; it is not taken because it needs a GPU to test, changes the numerics
    and the supported shapes, and must not be chosen on CPUs or older GPUs.
    """
    return _make_config(
        tq.Float8WeightOnlyConfig,
        weight_dtype=torch.float8_e4m3fn,
        granularity=tq.PerRow(),
        set_inductor_config=False,
    )


def _is_quantized_tensor(t: torch.Tensor) -> bool:
    return is_traceable_wrapper_subclass(t) or t.dtype in (torch.int8, torch.float8_e4m3fn)


def is_quantized(module: nn.Module) -> bool:
    """True if any parameter of ``module`` is already stored quantised."""
    return any(_is_quantized_tensor(p) for p in module.parameters())


def _eligible(layer: nn.Module, min_features: int) -> bool:
    return (
        isinstance(layer, nn.Linear)
        and layer.in_features >= min_features
        and layer.out_features >= min_features
        and not _is_quantized_tensor(layer.weight)
    )


def quantizable_linears(module: nn.Module, min_features: int = DEFAULT_MIN_FEATURES) -> list[str]:
    """Names of the ``nn.Linear`` layers ``quantize`` would convert (both sides >= min_features)."""
    return [name for name, layer in module.named_modules() if _eligible(layer, min_features)]


def _cast_floating(module: nn.Module, dtype: torch.dtype) -> None:
    tensors = list(module.parameters()) + list(module.buffers())
    if any(t.is_floating_point() and t.dtype != dtype for t in tensors):
        # nn.Module.to itself: diffusers' ModelMixin.to logs a warning on every dtype cast.
        nn.Module.to(module, dtype=dtype)


def quantize(
    module: nn.Module,
    mode: str,
    *,
    compute_dtype: torch.dtype = torch.bfloat16,
    min_features: int = DEFAULT_MIN_FEATURES,
) -> nn.Module:
    """Quantise ``module``'s large Linear weights in place and return the module.

    ``none`` changes nothing (not even the dtype). ``int8`` and ``fp8`` first cast the module's
    floating-point parameters and buffers to ``compute_dtype`` (a no-op for the engine, which loads
    in bf16), then store each eligible Linear weight in one byte per value with per-output-channel
    scales; forwards dequantise to ``compute_dtype``. Quantise on the CPU before moving a model to
    the GPU: quantising on the device holds the full-precision weights there first.
    """
    check_mode(mode)
    if compute_dtype not in _COMPUTE_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in _COMPUTE_DTYPES)
        raise InvalidInput(f"compute_dtype must be one of {names}, got {compute_dtype}")
    if isinstance(min_features, bool) or not isinstance(min_features, int) or min_features < 1:
        raise InvalidInput(f"min_features must be a positive integer, got {min_features!r}")
    if not isinstance(module, nn.Module):
        raise InvalidInput(f"quantize() needs a torch.nn.Module, got {type(module).__name__}")
    if mode == "none":
        return module
    if is_quantized(module):
        raise InvalidInput(
            f"the module is already quantised; load a fresh full-precision copy to quantise it as {mode!r}"
        )

    tq = _torchao_quantization(mode)
    config = _int8_weight_config(tq) if mode == "int8" else _fp8_weight_config(tq)
    _cast_floating(module, compute_dtype)

    def want(layer: nn.Module, fqn: str) -> bool:
        return _eligible(layer, min_features)

    try:
        with _quiet_loggers(("torchao",)):
            tq.quantize_(module, config, filter_fn=want)
    except (RuntimeError, NotImplementedError, AssertionError, TypeError, ValueError) as exc:
        raise InvalidInput(
            f"quantization mode {mode!r} failed on this model ({type(exc).__name__}: {exc}); "
            "try the other quantized mode or 'none'"
        ) from exc
    return module


def _tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really holds; tensor subclasses (torchao) count their inner tensors."""
    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        inner = (getattr(t, name) for name in names)
        return sum(_tensor_bytes(x) for x in inner if isinstance(x, torch.Tensor))
    return t.numel() * t.element_size()


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by ``module``'s parameters and buffers, quantised ones at their storage size.

    Shared (tied) tensors count once. Works on meta-device models too (sizes without data).
    """
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += _tensor_bytes(t)
    return total


def bytes_per_param(mode: str) -> float:
    """Average bytes per parameter of a model stored in ``mode``, for models not loaded yet.

    ``none``: 2 (bf16). ``int8``/``fp8``: 1 byte per weight plus one scale per output row of at
    least ``DEFAULT_MIN_FEATURES`` inputs (an upper bound: at HunyuanVideo's width it is
    1.0016). Parts left unquantised (embedding tables, norms) are the caller's to add.
    """
    check_mode(mode)
    if mode == "none":
        return 2.0
    return 1.0 + _SCALE_BYTES_PER_ROW / DEFAULT_MIN_FEATURES
