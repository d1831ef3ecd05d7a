"""engine.memory: the peak estimate has the right size and moves the right way; check_fits says why.

Real-size figures used below:
- DiT: 12 810 991 680 parameters, counted from diffusers' HunyuanVideoTransformer3DModel with the
  I2V config (hidden 3072, 24 heads, 20 + 40 blocks, in 33 / out 16, latent concat) on the meta
  device: 25.6 GB = 23.9 GiB in bf16, the "~26 GB" the model is known for.
- Text encoders: LLaVA-Llama-3-8B (8.36 B with its vision tower) + CLIP-L text (0.12 B), ~8.5 B.
- VAE: AutoencoderKLHunyuanVideo, 246 478 803 parameters.
"""

from __future__ import annotations

import re
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import magic141.engine.memory as memory
from magic141.engine.memory import GiB, MemoryEstimate, available_bytes, check_fits, estimate_peak
from magic141.errors import InsufficientMemory, InvalidInput

REAL = dict(dit_params=12_810_991_680, text_params=8_500_000_000, vae_params=246_478_803,
            hidden=3072, heads=24, num_layers_total=60)
JOB = dict(height=544, width=960, frames=81)
TINY = dict(
    dit_params=1_000_000, text_params=2_000_000, vae_params=500_000, hidden=32, heads=2, num_layers_total=2
)


def est(**kw) -> MemoryEstimate:
    return estimate_peak(**{**REAL, **JOB, "quant": "none", **kw})


@pytest.fixture
def no_limit(monkeypatch):
    monkeypatch.delenv(memory.MEMORY_LIMIT_ENV, raising=False)


@pytest.fixture
def gpu_23_5(monkeypatch):
    """Pretend to be a CUDA device with 23.5 GiB free (no GPU needed)."""
    monkeypatch.delenv(memory.MEMORY_LIMIT_ENV, raising=False)
    monkeypatch.setattr(memory, "_as_device", lambda device: torch.device("cuda", 0))
    monkeypatch.setattr(memory, "_device_free_bytes", lambda dev: int(23.5 * GiB))


def test_real_size_bf16_is_of_the_expected_order():
    e = est()
    # the weights are exact: 2 bytes per parameter in bf16
    assert e.dit_weights == 2 * REAL["dit_params"]
    assert 25e9 < e.dit_weights < 27e9
    assert e.text_encoder_weights == 2 * REAL["text_params"]
    assert e.vae_weights == 2 * REAL["vae_params"]
    # 43 672 tokens (21 x 34 x 60 video + 832 text): a traced forward holds 4.5 GiB of tensors at
    # its peak; with the 20 % margin 5-7 GiB
    assert 5 * GiB < e.activations < 7 * GiB
    # untiled decode: 19.4 GiB traced (one 17-frame chunk of 128/256-channel 544x960 maps)
    assert 19 * GiB < e.vae_decode < 27 * GiB
    # the peak is the decode phase: DiT + VAE weights (text encoders released) + decode
    assert e.peak_phase == "decode"
    assert e.total_peak >= e.dit_weights + e.vae_weights + e.vae_decode
    assert 45 * GiB < e.total_peak < 55 * GiB
    # and never below holding every weight at once while the prompt is encoded
    assert e.total_peak > e.dit_weights + e.text_encoder_weights + e.vae_weights


def test_fp8_roughly_halves_the_dit_weights():
    bf16, fp8, int8 = est(), est(quant="fp8"), est(quant="int8")
    assert 0.49 < fp8.dit_weights / bf16.dit_weights < 0.52
    assert int8.dit_weights == fp8.dit_weights
    assert fp8.total_peak < bf16.total_peak
    # text encoders keep their embedding table in bf16: a bit more than half
    text = est(text_quant="fp8")
    assert 0.5 < text.text_encoder_weights / bf16.text_encoder_weights < 0.6


def test_offload_lowers_the_peak():
    for tiling in (False, True):
        resident, offloaded = est(vae_tiling=tiling), est(vae_tiling=tiling, offload=True)
        assert offloaded.total_peak < resident.total_peak
    # with offload the DiT phase holds only the DiT
    e = est(offload=True, vae_tiling=True)
    assert e.peak_phase == "denoise"
    assert e.total_peak < e.dit_weights + e.activations + GiB


def test_group_offload_keeps_two_blocks_of_the_dit_on_the_device():
    resident, grouped = est(), est(group_offload=True)
    streamed = grouped.dit_weights * 2 / REAL["num_layers_total"]
    assert resident.total_peak - grouped.total_peak == pytest.approx(resident.dit_weights - streamed, abs=2)
    assert est(group_offload=True, vae_tiling=True).total_peak < est(offload=True, vae_tiling=True).total_peak
    with pytest.raises(InvalidInput, match="choose one"):
        est(offload=True, group_offload=True)


def test_vae_tiling_lowers_the_decode():
    plain, tiled = est(), est(vae_tiling=True)
    assert tiled.vae_decode < plain.vae_decode / 4
    assert tiled.total_peak < plain.total_peak
    assert tiled.activations == plain.activations


def test_more_frames_and_pixels_cost_more():
    e81, e129 = est(offload=True), est(offload=True, frames=129)
    assert e129.activations > 1.4 * e81.activations  # 33 vs 21 latent frames
    assert e129.vae_decode > e81.vae_decode  # the decoded video is longer
    assert e129.total_peak > e81.total_peak
    assert est(offload=True, height=720, width=1280).total_peak > e81.total_peak
    assert est(frames=129).total_peak >= est().total_peak


def test_true_cfg_batch_doubles_the_dit_activations():
    ratio = est(batch=2).activations / est().activations
    assert 1.9 < ratio < 2.05


def test_keeping_the_text_encoders_costs_their_weights():
    released = est(vae_tiling=True, quant="fp8")
    kept = est(vae_tiling=True, quant="fp8", release_text_encoders=False)
    assert kept.total_peak > released.total_peak
    weights = kept.dit_weights + kept.text_encoder_weights + kept.vae_weights
    assert kept.total_peak >= weights + kept.activations


def test_host_peak_holds_every_weight():
    e = est(offload=True, vae_tiling=True)
    weights = e.dit_weights + e.text_encoder_weights + e.vae_weights
    assert e.host_peak >= weights + e.activations
    assert e.host_peak > e.total_peak


def test_describe_is_one_line_of_gib():
    line = est().describe()
    assert "\n" not in line and len(line) < 200
    assert re.search(r"about \d+\.\d GiB peak \(decode\)", line)
    assert "DiT 23.9" in line


@pytest.mark.parametrize(
    "change, words",
    [
        ({"quant": "int4"}, "none, int8, fp8"),
        ({"text_quant": "nf4"}, "none, int8, fp8"),
        ({"height": 0}, "height"),
        ({"frames": 2.5}, "frames"),
        ({"dit_params": -1}, "dit_params"),
        ({"heads": 5}, "multiple of heads"),
        ({"patch": (1, 2)}, "patch"),
        ({"offload": "yes"}, "offload"),
    ],
)
def test_bad_arguments_are_named(change, words):
    with pytest.raises(InvalidInput, match=re.escape(words)):
        est(**change)


def test_check_fits_names_needed_and_free_and_remedies(monkeypatch):
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "0.5")
    e = est()
    with pytest.raises(InsufficientMemory) as info:
        check_fits(e, "cpu")
    message = str(info.value)
    found = re.search(r"needs about (\d+\.\d) GiB on cpu but only (\d+\.\d) GiB is allowed", message)
    assert found, message
    assert float(found.group(1)) == round(e.host_peak / GiB, 1)  # the CPU holds every weight
    assert found.group(2) == "0.5"
    assert "MAGIC141_MEMORY_LIMIT_GB" in message
    assert "try quant fp8" in message
    assert "offload" not in message  # offloading to the CPU frees nothing on the CPU
    assert "--" not in message  # remedies name settings, never flags: the panel shows this too


def test_check_fits_suggests_only_what_helps(gpu_23_5):
    with pytest.raises(InsufficientMemory) as info:
        check_fits(est(), "cuda:0")
    message = str(info.value)
    assert re.fullmatch(
        r"this job needs about \d+\.\d GiB on cuda:0 but only 23\.5 GiB is free; "
        r"try quant fp8, offload, vae_tiling, a smaller size or fewer frames",
        message,
    ), message

    # already fp8 and tiled: the prompt-encode phase (all weights) is the peak, so only the text
    # encoders' quantisation or offloading help; not quant, vae_tiling or a smaller job
    with pytest.raises(InsufficientMemory) as info:
        check_fits(est(quant="fp8", vae_tiling=True), "cuda:0")
    assert str(info.value).endswith("try text_quant fp8, offload")

    # nothing left but a smaller job
    big = est(quant="fp8", text_quant="fp8", vae_tiling=True, offload=True, height=720, width=1280, frames=97)
    with pytest.raises(InsufficientMemory) as info:
        check_fits(big, "cuda:0")
    assert str(info.value).endswith("try a smaller size or fewer frames")


def test_check_fits_says_when_the_flags_are_not_enough(gpu_23_5):
    with pytest.raises(InsufficientMemory, match=r"even with all of those options it needs about \d+\.\d"):
        check_fits(est(height=720, width=1280, frames=129, batch=2), "cuda:0")


def test_check_fits_passes_when_large(monkeypatch, gpu_23_5):
    check_fits(est(quant="fp8", text_quant="fp8", vae_tiling=True), "cuda:0")
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "100000")  # a cap above the free memory changes nothing
    small = estimate_peak(**TINY, height=64, width=64, frames=9, quant="none")
    assert small.host_peak < GiB
    check_fits(small, "cpu")


def test_check_fits_counts_resident_weights(gpu_23_5):
    e = est(quant="fp8", vae_tiling=True)  # ~30 GiB on a 23.5 GiB device
    with pytest.raises(InsufficientMemory):
        check_fits(e, "cuda:0")
    check_fits(e, "cuda:0", resident_bytes=e.dit_weights + e.text_encoder_weights)


def test_available_bytes_cpu(monkeypatch, no_limit):
    free = available_bytes("cpu")
    assert free > 0
    assert available_bytes(torch.device("cpu")) > 0
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "0.25")
    capped = available_bytes("cpu")
    assert 0 < capped <= GiB // 4
    assert capped == GiB // 4 or free < GiB // 4
    for bad in ("lots", "-1", "0", "nan"):
        monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, bad)
        with pytest.raises(InvalidInput, match="MAGIC141_MEMORY_LIMIT_GB"):
            available_bytes("cpu")


def test_bad_devices(no_limit):
    with pytest.raises(InvalidInput, match="device"):
        available_bytes("warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInput, match="CUDA is not available"):
            available_bytes("cuda:0")


def test_container_limit_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "_CGROUP_ROOT", tmp_path)
    assert memory._cgroup_available_bytes() is None
    (tmp_path / "memory.max").write_text("max\n")
    assert memory._cgroup_available_bytes() is None
    (tmp_path / "memory.max").write_text(f"{8 * GiB}\n")
    (tmp_path / "memory.current").write_text(f"{6 * GiB}\n")
    (tmp_path / "memory.stat").write_text(f"anon 123\ninactive_file {GiB}\nactive_file 5\n")
    # page cache that can be dropped (inactive files) does not count as used
    assert memory._cgroup_available_bytes() == 3 * GiB


# Against the real models: trace every tensor allocated and freed in a forward on the meta device ----


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages that ops create under the mode (weights and inputs excluded)."""

    def __init__(self, exclude):
        super().__init__()
        self.live: set[int] = {t.untyped_storage()._cdata for t in exclude}
        self.current = self.peak = 0

    def _free(self, key: int, size: int) -> None:
        self.live.discard(key)
        self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage._cdata not in self.live:
                    self.live.add(storage._cdata)
                    self.current += storage.nbytes()
                    weakref.finalize(storage, self._free, storage._cdata, storage.nbytes())
        self.peak = max(self.peak, self.current)
        return out


def flash_like_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    """What the GPU's flash / memory-efficient kernels allocate: the output, no [N, N] scores."""
    return torch.empty(query.shape[:-1] + value.shape[-1:], dtype=query.dtype, device=query.device)


@pytest.fixture
def meta_trace(monkeypatch):
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", flash_like_sdpa)

    def trace(model, *inputs, **kwargs):
        with torch.no_grad(), LiveBytes([*model.parameters(), *model.buffers(), *inputs]) as live:
            model(*inputs, **kwargs)
        return live.peak

    return trace


def _meta_dit(**config):
    from diffusers import HunyuanVideoTransformer3DModel

    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel(
            in_channels=33,
            out_channels=16,
            guidance_embeds=False,
            image_condition_type="latent_concat",
            **config,
        )
    return torch.nn.Module.to(model, torch.bfloat16)


def test_real_size_constants_match_diffusers():
    from diffusers import AutoencoderKLHunyuanVideo

    from magic141.engine.quant import weight_bytes

    dit = _meta_dit()
    assert sum(p.numel() for p in dit.parameters()) == REAL["dit_params"]
    assert weight_bytes(dit) == est().dit_weights
    with torch.device("meta"):
        vae = AutoencoderKLHunyuanVideo()
    assert sum(p.numel() for p in vae.parameters()) == REAL["vae_params"]


@pytest.mark.parametrize("batch", [1, 2])
def test_dit_activations_cover_a_traced_forward(meta_trace, batch):
    """One double and one single block at real width (depth does not change the peak)."""
    dit = _meta_dit(num_layers=1, num_single_layers=1, num_refiner_layers=1)
    text = memory.TEXT_TOKENS
    bf16 = dict(device="meta", dtype=torch.bfloat16)
    traced = meta_trace(
        dit,
        torch.empty(batch, 33, 21, 68, 120, **bf16),  # 544x960x81
        torch.full((batch,), 500.0, device="meta"),
        torch.empty(batch, text, 4096, **bf16),
        torch.ones(batch, text, device="meta", dtype=torch.bool),
        torch.empty(batch, 768, **bf16),
        return_dict=False,
    )
    estimate = est(batch=batch).activations
    assert traced < estimate < 1.4 * traced


class _Decode(torch.nn.Module):
    """vae.decode as a module call, so the trace sees the whole decode (tiles, blending)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        return self.vae.decode(z).sample


@pytest.mark.parametrize(
    "height, width, frames, tiling",
    [(256, 384, 17, False), (256, 384, 33, False), (256, 320, 17, True)],
)
def test_vae_decode_covers_a_traced_decode(meta_trace, height, width, frames, tiling):
    from diffusers import AutoencoderKLHunyuanVideo

    with torch.device("meta"):
        vae = torch.nn.Module.to(AutoencoderKLHunyuanVideo(), torch.bfloat16)
    vae.use_tiling = tiling
    latent_shape = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    traced = meta_trace(_Decode(vae), torch.empty(latent_shape, device="meta", dtype=torch.bfloat16))
    estimate = est(height=height, width=width, frames=frames, vae_tiling=tiling).vae_decode
    assert traced < estimate < 1.4 * traced
