"""How much device memory a job needs, estimated from numbers alone (before any weights load).

The estimate follows what the engine runs: diffusers' HunyuanVideo DiT, its causal VAE and the
Magic141 pipeline's placement of components. All figures are bytes; ``GiB`` is 2**30.

Weights
    DiT: ``dit_params * bytes_per_param(quant)`` (``dtype_bytes`` for ``none``; 0.1 % of it -- the
    patch embedding, norms and the narrow layers ``quant`` skips -- stays at ``dtype_bytes``).
    Text encoders: the same with ``text_quant``, but 8 % stays at ``dtype_bytes`` when quantised
    (LLaVA-Llama-3-8B's 0.5 B-entry embedding table is not an ``nn.Linear``). VAE: never quantised.

DiT activations (denoise phase)
    Tokens ``N = ceil(T/pt) * ceil(h/ph) * ceil(w/pw) + TEXT_TOKENS`` with latent frames
    ``T = (frames - 1) // vae_temporal + 1``, ``h = H / vae_spatial``, ``w = W / vae_spatial``
    (544x960x81: 21 * 34 * 60 = 42 840 video tokens) and ``TEXT_TOKENS = 832`` (256 text + up to 576
    image tokens). Under ``no_grad`` each block frees its tensors before the next, so the peak is
    one block's: ``DIT_ACTIVATION_FACTOR * batch * N * hidden * dtype_bytes``. The factor 18.5 is a
    measurement, not a guess: a tensor-level trace (every storage allocated and freed) of diffusers
    0.42's model at real width, on the meta device, gives 18.1 [batch, N, hidden] tensors at the
    peak for 544x960x81, 129 and 720x1280x129 frames, batch 1 and 2, with 1+1 or 2+2 blocks (the
    depth does not matter). The peak sits in a single-stream block's rotary embedding, while the
    residual, the norm output, q/k/v, the 4x-wide MLP hidden and fp32 rotary temporaries are alive.
    Attention goes through SDPA's flash / memory-efficient kernels: no [N, N] matrix is stored,
    only the output (and a [batch, heads, N] log-sum-exp). Added: the latents and condition
    tensors of the step loop, and for int8/fp8 one dequantised weight of the largest layer
    (``6 * hidden**2``, the modulation projection) in fp32 and ``dtype_bytes``.

VAE decode
    diffusers decodes frame-wise by default: ``VAE_CHUNK_LATENT_FRAMES`` (5) latent frames = 17
    video frames per pass, so the length of the clip only adds the decoded output. The peak is in
    the last up-blocks, where 256- and 128-channel feature maps of the full frame are alive: the
    trace gives ``9.06 * frames_in_chunk`` 128-channel maps of one frame
    (``128 * H * W * dtype_bytes`` each). With ``vae_tiling`` the frame is decoded in 256x256 tiles,
    so H x W becomes the tile. The mid-block's causal attention mask is ``(5 * h * w)**2`` elements
    created in fp32 and cast to ``dtype_bytes``; it wins at 1080p (untiled) and is counted as the
    alternative peak. The decoded video (``3 * frames * H * W``) is held about 3.5 times (chunks,
    blended result, float copy). Encoding the condition frames is the same picture with
    ``max(7, 5.2 * frames_in_chunk)`` maps.

Phases and placement (as ``pipeline.Magic141Pipeline`` does it)
    Without ``offload`` every component is moved to the device when the pipeline is built, so
    while the prompt is encoded all weights are there, plus the text encoders' activations (an
    allowance of ``TEXT_ENCODE_ACTIVATIONS_PER_PARAM`` bytes per text parameter, about 1 GiB for
    LLaVA-Llama-3-8B + CLIP-L: ~1000 tokens, 33 kept hidden states, the logits).
    ``release_text_encoders`` then moves the text encoders off, so they do not add to the VAE
    encode of the condition frames, the denoise or the decode phase. With ``offload`` only the
    component in use is on the device (text encoders, VAE encode, DiT, VAE decode, in turn).
    ``group_offload`` places everything as without offload but the DiT, whose blocks stay on the
    CPU and stream to the device in turn (diffusers' group offload): ``GROUP_BLOCKS_RESIDENT`` of its
    ``num_layers_total`` blocks' share of the DiT weights are on the device at once.
    ``total_peak = max(encode, denoise, decode) + FIXED_OVERHEAD``.

    On the CPU (and Apple's unified memory) offloading and releasing move nothing out of the
    memory that counts, so ``host_peak`` is all weights plus the largest activation phase.

Margins
    The estimate is meant to err high. Weights are counted exactly; every activation figure is
    multiplied by ``ACTIVATION_MARGIN`` (1.2) for allocator fragmentation and kernel workspaces,
    and ``FIXED_OVERHEAD`` (0.5 GiB) is added for cuBLAS/cuDNN workspaces and the like: 10-20 %
    above the traced tensors on activation-heavy jobs. The estimate assumes the weights are quantised
    before they reach the device (quantising on the GPU holds the bf16 weights there first).
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from magic141.errors import InsufficientMemory, InvalidInput, Magic141Error

from .quant import bytes_per_param, check_mode

GiB = 1024**3

MEMORY_LIMIT_ENV = "MAGIC141_MEMORY_LIMIT_GB"

TEXT_TOKENS = 832
DIT_ACTIVATION_FACTOR = 18.5
TEXT_ENCODE_ACTIVATIONS_PER_PARAM = 0.125  # bytes: ~1 GiB for the 8.5 B-parameter encoders

VAE_CHUNK_LATENT_FRAMES = 5  # diffusers: tile_sample_min_num_frames (16) // 4 + 1
VAE_TILE = 256  # diffusers: tile_sample_min_height / _width, in pixels
VAE_BASE_CHANNELS = 128  # block_out_channels[0]: the full-resolution width
VAE_DECODE_MAPS_PER_FRAME = 9.1  # traced: 9.06
VAE_ENCODE_MAPS_PER_FRAME = 5.2  # traced: 5.13
VAE_ENCODE_MIN_MAPS = 7.0  # traced: 7.0 for a single frame
VAE_OUTPUT_COPIES = 3.5

GROUP_BLOCKS_RESIDENT = 2  # group offload: the block running and the one fetched next
DIT_UNQUANTIZED_FRACTION = 0.001
TEXT_UNQUANTIZED_FRACTION = 0.08

ACTIVATION_MARGIN = 1.2
FIXED_OVERHEAD = GiB // 2

# How check_fits names each remedy: by the engine setting it changes (Engine.load's names), never a
# command-line flag: the message reaches the panel too.
REMEDY_QUANT = "quant fp8"
REMEDY_TEXT_QUANT = "text_quant fp8"
REMEDY_OFFLOAD = "offload"
REMEDY_VAE_TILING = "vae_tiling"
REMEDY_SMALLER = "a smaller size or fewer frames"

# A remedy is suggested only if it lowers the figure that does not fit by at least this fraction.
_MIN_GAIN = 0.01

_HOST_DEVICE_TYPES = ("cpu", "mps")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a job is estimated to need; see the module docstring for how each part is made."""

    dit_weights: int
    text_encoder_weights: int
    vae_weights: int
    activations: int  # DiT peak activations (margin included)
    vae_decode: int  # VAE decode peak (margin included)
    total_peak: int  # on an accelerator, placement (offload/release) as given
    encode_activations: int = 0  # text encoders or VAE encode, whichever is larger (margin included)
    host_peak: int = 0  # the same job on the CPU: every weight stays in memory
    peak_phase: str = ""  # "encode", "denoise" or "decode"
    inputs: tuple[tuple[str, object], ...] = field(default=(), repr=False, compare=False)

    def describe(self) -> str:
        """One line, GiB: the peak and its parts."""
        phase = f" ({self.peak_phase})" if self.peak_phase else ""
        return (
            f"about {_gib(self.total_peak)} GiB peak{phase}: weights DiT {_gib(self.dit_weights)}"
            f" + text {_gib(self.text_encoder_weights)} + VAE {_gib(self.vae_weights)} GiB;"
            f" activations DiT {_gib(self.activations)}, VAE decode {_gib(self.vae_decode)} GiB"
        )


def _gib(n: int | float) -> str:
    return f"{n / GiB:.1f}"


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be True or False, got {value!r}")
    return value


def _stored_bytes(params: int, mode: str, dtype_bytes: int, unquantized_fraction: float) -> int:
    if mode == "none":
        return params * dtype_bytes
    kept = params * unquantized_fraction
    return math.ceil(kept * dtype_bytes + (params - kept) * bytes_per_param(mode))


def estimate_peak(
    *,
    dit_params: int,
    text_params: int,
    vae_params: int,
    height: int,
    width: int,
    frames: int,
    quant: str,
    text_quant: str = "none",
    offload: bool = False,
    vae_tiling: bool = False,
    release_text_encoders: bool = True,
    group_offload: bool = False,
    hidden: int,
    heads: int,
    num_layers_total: int,
    batch: int = 1,
    patch: tuple[int, int, int] = (1, 2, 2),
    vae_spatial: int = 8,
    vae_temporal: int = 4,
    latent_channels: int = 16,
    dtype_bytes: int = 2,
) -> MemoryEstimate:
    """Estimate the peak memory of one job (one window of ``frames`` frames at ``height`` x ``width``).

    ``batch`` is 2 with true classifier-free guidance. ``num_layers_total`` changes the peak only with
    ``group_offload`` (blocks run one after another and free their activations). Sizes that are not
    multiples of the VAE/patch factors are rounded up.
    """
    inputs = dict(locals())
    for name in ("dit_params", "text_params", "vae_params"):
        _check_int(name, inputs[name], 0)
    for name in ("height", "width", "frames", "hidden", "heads", "num_layers_total", "batch"):
        _check_int(name, inputs[name], 1)
    for name in ("vae_spatial", "vae_temporal", "latent_channels", "dtype_bytes"):
        _check_int(name, inputs[name], 1)
    for name in ("offload", "vae_tiling", "release_text_encoders", "group_offload"):
        _check_bool(name, inputs[name])
    if offload and group_offload:
        raise InvalidInput("offload and group_offload are two placements of the DiT; choose one")
    check_mode(quant)
    check_mode(text_quant)
    if hidden % heads:
        raise InvalidInput(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    try:
        pt, ph, pw = (_check_int("patch", p, 1) for p in patch)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"patch must be three positive integers (t, h, w), got {patch!r}") from exc
    inputs["patch"] = (pt, ph, pw)

    # Weights. With group offload the DiT's blocks stream in, the running one and the next.
    dit_w = _stored_bytes(dit_params, quant, dtype_bytes, DIT_UNQUANTIZED_FRACTION)
    dit_on_device = math.ceil(dit_w * min(1.0, GROUP_BLOCKS_RESIDENT / num_layers_total)) if group_offload \
        else dit_w
    text_w = _stored_bytes(text_params, text_quant, dtype_bytes, TEXT_UNQUANTIZED_FRACTION)
    vae_w = vae_params * dtype_bytes

    # Latent grid and DiT tokens.
    lat_t = math.ceil((frames - 1) / vae_temporal) + 1
    lat_h = math.ceil(height / vae_spatial)
    lat_w = math.ceil(width / vae_spatial)
    video_tokens = math.ceil(lat_t / pt) * math.ceil(lat_h / ph) * math.ceil(lat_w / pw)
    tokens = video_tokens + TEXT_TOKENS

    # DiT activations: one block's peak, the step loop's tensors, a dequantised weight.
    block = DIT_ACTIVATION_FACTOR * batch * tokens * hidden * dtype_bytes
    lse = 2 * batch * heads * tokens * 4
    loop = 8 * batch * (2 * latent_channels + 1) * lat_t * lat_h * lat_w * 4
    dequant = 6 * hidden * hidden * (4 + dtype_bytes) if quant != "none" else 0
    dit_act = math.ceil((block + lse + loop + dequant) * ACTIVATION_MARGIN)

    # VAE: one temporal chunk of 17 frames (5 latent) at a time, the whole frame or one tile.
    chunk_frames = min(frames, (VAE_CHUNK_LATENT_FRAMES - 1) * vae_temporal + 1)
    chunk_lat = min(lat_t, VAE_CHUNK_LATENT_FRAMES)
    if vae_tiling:
        px = min(height, VAE_TILE) * min(width, VAE_TILE)
        lat_px = min(lat_h, VAE_TILE // vae_spatial) * min(lat_w, VAE_TILE // vae_spatial)
    else:
        px = height * width
        lat_px = lat_h * lat_w
    frame_map = VAE_BASE_CHANNELS * px * dtype_bytes
    mask = (chunk_lat * lat_px) ** 2 * (4 + dtype_bytes)
    output = VAE_OUTPUT_COPIES * 3 * frames * height * width * dtype_bytes
    decode_maps = VAE_DECODE_MAPS_PER_FRAME * chunk_frames * frame_map
    decode = math.ceil((max(decode_maps, mask) + output) * ACTIVATION_MARGIN)
    encode_maps = max(VAE_ENCODE_MIN_MAPS, VAE_ENCODE_MAPS_PER_FRAME * chunk_frames)
    vae_encode = math.ceil(max(encode_maps * frame_map, mask) * ACTIVATION_MARGIN)
    text_act = math.ceil(text_params * TEXT_ENCODE_ACTIVATIONS_PER_PARAM * ACTIVATION_MARGIN)

    # Phases.
    if offload:
        phases = {
            "encode": max(text_w + text_act, vae_w + vae_encode),
            "denoise": dit_w + dit_act,
            "decode": vae_w + decode,
        }
    else:
        after_encode = dit_on_device + vae_w + (0 if release_text_encoders else text_w)
        phases = {
            "encode": max(dit_on_device + text_w + vae_w + text_act, after_encode + vae_encode),
            "denoise": after_encode + dit_act,
            "decode": after_encode + decode,
        }
    peak_phase = max(phases, key=phases.__getitem__)
    host_peak = dit_w + text_w + vae_w + max(text_act, vae_encode, dit_act, decode) + FIXED_OVERHEAD

    return MemoryEstimate(
        dit_weights=dit_w,
        text_encoder_weights=text_w,
        vae_weights=vae_w,
        activations=dit_act,
        vae_decode=decode,
        total_peak=phases[peak_phase] + FIXED_OVERHEAD,
        encode_activations=max(text_act, vae_encode),
        host_peak=host_peak,
        peak_phase=peak_phase,
        inputs=tuple(sorted(inputs.items())),
    )


# Available memory ---------------------------------------------------------------------------


def _as_device(device: torch.device | str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InvalidInput(f"device must be like 'cpu', 'cuda' or 'cuda:0', got {device!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInput(f"device {str(dev)!r} was asked for but CUDA is not available here; use 'cpu'")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise InvalidInput(f"device {str(dev)!r} does not exist: {count} CUDA device(s) here")
    return dev


def _memory_limit_bytes() -> int | None:
    raw = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{MEMORY_LIMIT_ENV} must be a positive number of GiB, got {raw!r}")
    return int(value * GiB)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _read_stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_available_bytes() -> int | None:
    """A container's memory limit minus its working set (cgroup v2, then v1); None if unlimited."""
    v2_max = _read_int(_CGROUP_ROOT / "memory.max")
    if v2_max is not None:
        used = _read_int(_CGROUP_ROOT / "memory.current") or 0
        used -= _read_stat(_CGROUP_ROOT / "memory.stat", "inactive_file")
        return max(v2_max - used, 0)
    v1 = _CGROUP_ROOT / "memory"
    v1_max = _read_int(v1 / "memory.limit_in_bytes")
    if v1_max is not None and v1_max < 2**60:
        used = _read_int(v1 / "memory.usage_in_bytes") or 0
        used -= _read_stat(v1 / "memory.stat", "total_inactive_file")
        return max(v1_max - used, 0)
    return None


def _meminfo_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _windows_available_bytes() -> int | None:
    class MemoryStatusEx(ctypes.Structure):
        _fields_ = [
            ("dwLength", ctypes.c_ulong),
            ("dwMemoryLoad", ctypes.c_ulong),
            ("ullTotalPhys", ctypes.c_ulonglong),
            ("ullAvailPhys", ctypes.c_ulonglong),
            ("ullTotalPageFile", ctypes.c_ulonglong),
            ("ullAvailPageFile", ctypes.c_ulonglong),
            ("ullTotalVirtual", ctypes.c_ulonglong),
            ("ullAvailVirtual", ctypes.c_ulonglong),
            ("ullAvailExtendedVirtual", ctypes.c_ulonglong),
        ]

    status = MemoryStatusEx()
    status.dwLength = ctypes.sizeof(MemoryStatusEx)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
        return None
    return int(status.ullAvailPhys)


def _sysconf_available_bytes() -> int | None:
    """Free pages; where the platform lacks them (macOS), all physical pages (optimistic)."""
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            return os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            continue
    return None


def _system_available_bytes() -> int | None:
    if sys.platform.startswith("linux"):
        found = _meminfo_available_bytes() or _sysconf_available_bytes()
        container = _cgroup_available_bytes()
        if found is not None and container is not None:
            return min(found, container)
        return found if found is not None else container
    if sys.platform == "win32":
        return _windows_available_bytes()
    return _sysconf_available_bytes()


def _device_free_bytes(dev: torch.device) -> int:
    if dev.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(dev)
            # Memory PyTorch has cached but not handed out is free for this job too.
            cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        except (RuntimeError, AssertionError) as exc:
            raise InvalidInput(f"cannot read the free memory of {dev}: {exc}") from exc
        return int(free + max(cached, 0))
    if dev.type in _HOST_DEVICE_TYPES:
        found = _system_available_bytes()
        if found is None:
            if _memory_limit_bytes() is not None:
                return sys.maxsize
            raise Magic141Error(
                f"cannot read the available system memory on this platform; set {MEMORY_LIMIT_ENV} "
                "to the GiB a job may use"
            )
        return int(found)
    raise InvalidInput(f"device must be 'cpu', 'mps' or a CUDA device, got {str(dev)!r}")


def available_bytes(device: torch.device | str) -> int:
    """Free memory of ``device`` in bytes, capped by ``MAGIC141_MEMORY_LIMIT_GB`` (in GiB) if set.

    CUDA: ``torch.cuda.mem_get_info``'s free memory plus what PyTorch has cached unused. CPU (and
    MPS, which shares it): the system's available memory (``MemAvailable``, within a container's
    cgroup limit), else ``os.sysconf``; Windows via ``GlobalMemoryStatusEx``.
    """
    dev = _as_device(device)
    free = _device_free_bytes(dev)
    limit = _memory_limit_bytes()
    return free if limit is None else min(free, limit)


# The check ----------------------------------------------------------------------------------


def _needed(estimate: MemoryEstimate, dev: torch.device) -> int:
    if dev.type in _HOST_DEVICE_TYPES:
        return estimate.host_peak or estimate.total_peak
    return estimate.total_peak


def _smaller_job(inputs: dict) -> dict:
    multiple = inputs["vae_spatial"] * max(inputs["patch"][1:])
    half = lambda n: max(multiple, (n // 2) // multiple * multiple)  # noqa: E731
    return {"height": half(inputs["height"]), "width": half(inputs["width"]), "frames": 1}


def _remedies(estimate: MemoryEstimate, dev: torch.device) -> tuple[list[str], int | None]:
    """The remedies that lower what this job needs here, and the need with all setting remedies."""
    if not estimate.inputs:
        return [REMEDY_SMALLER], None
    inputs: dict[str, Any] = dict(estimate.inputs)
    need = _needed(estimate, dev)
    candidates: list[tuple[str, dict[str, Any]]] = []
    if inputs["quant"] == "none":
        candidates.append((REMEDY_QUANT, {"quant": "fp8"}))
    if inputs["text_quant"] == "none" and inputs["text_params"]:
        candidates.append((REMEDY_TEXT_QUANT, {"text_quant": "fp8"}))
    if not inputs["offload"]:
        candidates.append((REMEDY_OFFLOAD, {"offload": True}))
    if not inputs["vae_tiling"]:
        candidates.append((REMEDY_VAE_TILING, {"vae_tiling": True}))
    chosen: list[str] = []
    combined: dict[str, Any] = {}
    for label, change in candidates:
        if _needed(estimate_peak(**{**inputs, **change}), dev) < need * (1 - _MIN_GAIN):
            chosen.append(label)
            combined.update(change)
    if _needed(estimate_peak(**{**inputs, **_smaller_job(inputs)}), dev) < need * (1 - _MIN_GAIN):
        chosen.append(REMEDY_SMALLER)
    best = _needed(estimate_peak(**{**inputs, **combined}), dev) if combined else None
    return chosen, best


def check_fits(estimate: MemoryEstimate, device: torch.device | str, *, resident_bytes: int = 0) -> None:
    """Raise InsufficientMemory if ``estimate`` does not fit the free memory of ``device``.

    ``resident_bytes``: weights of this job already on the device (models kept loaded between
    jobs), counted as available since the estimate includes them. On the CPU the ``host_peak``
    is checked (offloading there frees nothing). The message names the needed and free GiB and
    only the remedies that lower this estimate.
    """
    if not isinstance(estimate, MemoryEstimate):
        raise InvalidInput(f"check_fits() needs a MemoryEstimate, got {type(estimate).__name__}")
    _check_int("resident_bytes", resident_bytes, 0)
    dev = _as_device(device)
    # Resident weights are this job's own; the limit caps the job's whole footprint.
    free = _device_free_bytes(dev) + resident_bytes
    limit = _memory_limit_bytes()
    available = free if limit is None else min(free, limit)
    capped = available < free
    need = _needed(estimate, dev)
    if need <= available:
        return
    where = f"only {_gib(available)} GiB is free"
    if capped:
        setting = os.environ[MEMORY_LIMIT_ENV].strip()
        where = f"only {_gib(available)} GiB is allowed ({MEMORY_LIMIT_ENV}={setting})"
    message = f"this job needs about {_gib(need)} GiB on {dev} but {where}"
    remedies, best = _remedies(estimate, dev)
    if remedies:
        message += "; try " + ", ".join(remedies)
        if best is not None and best > available and len(remedies) > 1:
            message += f" (even with all of those options it needs about {_gib(best)} GiB)"
    else:
        message += "; use a device with more free memory"
    raise InsufficientMemory(message)
