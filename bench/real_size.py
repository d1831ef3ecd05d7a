"""Real-size speed and memory of the Magic141 pipeline on one GPU (random weights: values do not change cost).

    python bench/real_size.py                    # on the GPU machine: real sizes, all variants
    python bench/real_size.py --tiny             # CPU, tiny sizes, same code path (runs in CI)
    python bench/real_size.py --variants bf16,fp8 --settings 544x960x81 --repeats 3

The models are the real classes at real size (13B HunyuanVideo-I2V-33ch DiT, its VAE, LLaVA-Llama-3-8B
and CLIP-L), built on the meta device and materialised directly on the target device with random
weights; nothing is downloaded. Each stage runs through the product's own pipeline
(``Magic141Pipeline``): text+image encode, every denoising step (timed per step with device
synchronisation), VAE decode, video encode (PyAV), end to end; peak device memory per run. Each
figure is the median of ``--repeats`` runs after one warm-up run.

FLOPs per denoising step are counted by ``torch.utils.flop_counter.FlopCounterMode`` running the DiT
once on the meta device (every matmul of the linear layers plus attention's two matmuls through
SDPA); achieved TFLOP/s = that count / the median step time. Results go to ``--out`` as JSON and a
markdown table, with the device name, driver and torch version.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from magic141.engine import media
from magic141.engine.generate import Engine
from magic141.engine.models import LoadedModel, ModelInfo
from magic141.engine.pipeline import Magic141Pipeline
from magic141.engine.quant import quantize
from magic141.protocol import JobSpec, Source

REAL_SETTINGS = ("544x960x81", "544x960x129", "480x832x81")
TINY_SETTINGS = ("64x96x17", "64x96x33")
ALL_VARIANTS = ("bf16", "compile", "fp8", "int8", "vae-tiled", "offload")
TINY_VARIANTS = ("bf16", "fp8", "int8", "vae-tiled", "offload")  # compile on CPU takes minutes: GPU only


def real_components() -> dict:
    """The real architectures on the meta device (no memory yet)."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from magic141.engine.tiny import CLIPImageProcessor
    from magic141.engine.tiny_tokenizer import tiny_clip_tokenizer, tiny_llama_tokenizer

    tokenizer, tokenizer_2 = tiny_llama_tokenizer(), tiny_clip_tokenizer()  # sequence lengths set the cost
    with torch.device("meta"):
        transformer = HunyuanVideoTransformer3DModel(
            in_channels=33, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
            num_single_layers=40, num_refiner_layers=2, guidance_embeds=False,
            image_condition_type="latent_concat")
        vae = AutoencoderKLHunyuanVideo()
        llava = LlavaConfig(
            vision_config=CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                           num_attention_heads=16, image_size=336, patch_size=14),
            text_config=LlamaConfig(vocab_size=128_320, hidden_size=4096, intermediate_size=14336,
                                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                    pad_token_id=tokenizer.pad_token_id),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=576)
        text_encoder = LlavaForConditionalGeneration(llava)
        clip = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, max_position_embeddings=77,
                              eos_token_id=tokenizer_2.eos_token_id)
        text_encoder_2 = CLIPTextModel(clip)
    processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    return {"transformer": transformer, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "text_encoder_2": text_encoder_2, "tokenizer_2": tokenizer_2, "image_processor": processor,
            "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0)}


def materialise(components: dict, device: str, dtype: torch.dtype) -> dict:
    """Meta modules -> random weights on ``device`` (std 0.02), without a CPU copy first."""
    generator = torch.Generator(device).manual_seed(0)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        module = torch.nn.Module.to(components[name].to_empty(device=device), dtype).eval()
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                if tensor.is_floating_point():
                    tensor.normal_(0, 0.02, generator=generator)
        components[name] = module
    return components


def step_flops(transformer, height: int, width: int, frames: int, text_tokens: int) -> int:
    """FLOPs of one DiT forward, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    config = transformer.config
    with torch.device("meta"):
        meta = type(transformer)(**{k: v for k, v in config.items() if not k.startswith("_")})
        torch.nn.Module.to(meta, torch.bfloat16)  # nn.Module's own .to: diffusers' logs a warning per call
        latents = torch.empty(1, config.in_channels, (frames - 1) // 4 + 1, height // 8, width // 8,
                              dtype=torch.bfloat16)
        text = torch.empty(1, text_tokens, config.text_embed_dim, dtype=torch.bfloat16)
        pooled = torch.empty(1, config.pooled_projection_dim, dtype=torch.bfloat16)
        with FlopCounterMode(display=False) as counter:
            meta(hidden_states=latents, timestep=torch.empty(1), encoder_hidden_states=text,
                 encoder_attention_mask=torch.ones(1, text_tokens), pooled_projections=pooled)
    return counter.get_total_flops()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_once(pipe: Magic141Pipeline, image, height, width, frames, device) -> dict:
    """One job through the pipeline's stages, timed; returns seconds per stage and per step."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, steps = {}, []
    clock = time.perf_counter()
    embeds = pipe.encode_prompt(image, "a red ball rolls to the right", "magic141")
    pipe.release_text()
    cond = pipe.encode_video(pipe.preprocess_image(image, height, width))
    _sync(device)
    times["encode"] = time.perf_counter() - clock
    latents, cond_block, mask = pipe.prepare_latents(cond, frames, height, width,
                                                     torch.Generator().manual_seed(0), "magic141")
    last = [time.perf_counter()]

    def on_step(_step) -> None:
        _sync(device)
        now = time.perf_counter()
        steps.append(now - last[0])
        last[0] = now

    clock = time.perf_counter()
    latents = pipe.denoise(latents, cond_block, mask, embeds, None, num_inference_steps=4, shift=5.0,
                           guidance_scale=1.0, progress=on_step)
    times["denoise"] = time.perf_counter() - clock
    clock = time.perf_counter()
    video = pipe.decode(latents, "magic141")
    _sync(device)
    times["decode"] = time.perf_counter() - clock
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        with media.VideoWriter(Path(tmp) / "bench.mp4", fps=Fraction(24), codec="h264", width=width,
                               height=height) as writer:
            writer.write(np.ascontiguousarray(video.mul(255).round().clamp(0, 255).to(torch.uint8).numpy()))
    times["video_encode"] = time.perf_counter() - clock
    times["end_to_end"] = sum(times.values())
    times["step"] = statistics.median(steps)
    cuda = device.startswith("cuda")
    times["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return times


def build_pipe(tiny: bool, variant: str, device: str) -> Magic141Pipeline:
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if tiny:
        from magic141.engine.tiny import build_tiny_components

        parts = build_tiny_components()
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
            parts[name] = torch.nn.Module.to(parts[name], dtype)
    else:
        parts = materialise(real_components(), "cpu" if variant == "offload" else device, dtype)
    if variant in ("fp8", "int8"):
        quantize(parts["transformer"], variant, compute_dtype=dtype, min_features=32 if tiny else 512)
    if variant == "vae-tiled":
        parts["vae"].enable_tiling()
    pipe = Magic141Pipeline(**parts, device=device, offload=variant == "offload", release_text_encoders=True)
    if variant == "compile":
        pipe.transformer = torch.compile(pipe.transformer)
    return pipe


def sliding_window(pipe: Magic141Pipeline, tiny: bool, seconds: int) -> float:
    """Seconds of compute per second of video for a long 480p (tiny: 64x96) sliding-window run."""
    height, width = (64, 96) if tiny else (480, 832)
    info = ModelInfo(name="bench", kind="tiny" if tiny else "single-file", distilled=True,
                     conditioning="magic141", window_frames=33 if tiny else 129, default_size=(height, width))
    parts = {"transformer": pipe.transformer, "vae": pipe.vae, "text_encoder": pipe.text_encoder,
             "text_encoder_2": pipe.text_encoder_2}
    engine = Engine(LoadedModel(info, parts), pipe, t2i=None)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "first.png"
        PIL.Image.new("RGB", (width, height), (90, 120, 200)).save(image)
        spec = JobSpec(Source("image", str(image)), "a slow pan", tmp, seconds=Fraction(seconds),
                       height=height, width=width)
        result = engine.generate(spec, Path(tmp) / "long.mp4")
    return result.timings["total"] / seconds


def main() -> None:
    from magic141.cli import _quiet_third_party

    _quiet_third_party()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (the CI smoke run)")
    parser.add_argument("--variants", help=f"comma list of {', '.join(ALL_VARIANTS)}")
    parser.add_argument("--settings", help="comma list of HxWxFRAMES")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window-seconds", type=int, help="length of the sliding-window run (0 skips it)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    if not args.tiny and device == "cpu":
        parser.error("no CUDA device: real sizes need the GPU machine (use --tiny for the CPU smoke run)")
    variants = (args.variants.split(",") if args.variants else TINY_VARIANTS if args.tiny else ALL_VARIANTS)
    settings = args.settings.split(",") if args.settings else TINY_SETTINGS if args.tiny else REAL_SETTINGS
    window_seconds = args.window_seconds if args.window_seconds is not None else (3 if args.tiny else 60)
    image = PIL.Image.new("RGB", (960, 544), (90, 120, 200))
    rows = []
    for variant in variants:
        pipe = build_pipe(args.tiny, variant, device)
        for setting in settings:
            height, width, frames = (int(v) for v in setting.split("x"))
            flops = step_flops(pipe.transformer if variant != "compile" else pipe.transformer._orig_mod,
                               height, width, frames, text_tokens=256 + 144)
            run_once(pipe, image, height, width, frames, device)  # warm-up (and compile)
            runs = [run_once(pipe, image, height, width, frames, device) for _ in range(args.repeats)]
            row = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            row.update(variant=variant, setting=setting, step_tflop=flops / 1e12,
                       tflops_per_s=flops / row["step"] / 1e12)
            rows.append(row)
            print(f"{variant:>9} {setting:>12}  step {row['step']:.3f} s  {row['tflops_per_s']:.3g} TFLOP/s  "
                  f"end-to-end {row['end_to_end']:.2f} s  peak {row['peak_gib']:.1f} GiB", flush=True)
        if variant == "bf16" and window_seconds:
            ratio = sliding_window(pipe, args.tiny, window_seconds)
            rows.append({"variant": variant, "setting": f"window {window_seconds}s",
                         "compute_per_video_s": ratio})
            print(f"{variant:>9} sliding window {window_seconds} s: {ratio:.2f} s of compute per s of video")
        del pipe
        if device == "cuda":
            torch.cuda.empty_cache()
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
              "driver": torch.version.cuda, "torch": torch.__version__, "tiny": args.tiny,
              "flop_count": "torch.utils.flop_counter.FlopCounterMode, one DiT forward on the meta device",
              "repeats": args.repeats, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "real_size_tiny" if args.tiny else "real_size"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=float))
    lines = ["| variant | setting | step s | TFLOP/step | TFLOP/s | encode s | decode s | video encode s | "
             "end-to-end s | peak GiB |", "|" + " --- |" * 10]
    for r in rows:
        if "step" in r:
            lines.append(f"| {r['variant']} | {r['setting']} | {r['step']:.3f} | {r['step_tflop']:.1f} | "
                         f"{r['tflops_per_s']:.1f} | {r['encode']:.2f} | {r['decode']:.2f} | "
                         f"{r['video_encode']:.2f} | "
                         f"{r['end_to_end']:.2f} | {r['peak_gib']:.1f} |")
        else:
            lines.append(f"| {r['variant']} | {r['setting']} | compute per second of video: "
                         f"{r['compute_per_video_s']:.2f} s |" + " |" * 7)
    header = (f"Device: {report['device']}; CUDA {report['driver']}; torch {report['torch']}; "
              f"medians of {args.repeats}.\n\n")
    (args.out / f"{stem}.md").write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')}")


if __name__ == "__main__":
    main()
