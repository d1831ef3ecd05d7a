"""Training data from the procedural world: clips rendered on demand, and cached latents.

Clips are drawn from ``(seed, step, rank)`` alone (see ``common.step_rng``), so no dataset is stored
and a resumed run sees the same clips. The DiT stages train on a fixed pool of clips encoded once by
the trained VAE (``LatentPool``): encoding every step would cost more than the DiT's own step.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from magic141 import atomic

from .. import world
from .components import FPS, HEIGHT, WIDTH

OBJECT_WEIGHT = 16.0  # extra loss weight on the object's pixels: a few percent of the frame (4 learnt them
# several times slower: 14 dB against 20 dB after 420 single-frame steps)


@dataclass
class Clips:
    video: torch.Tensor  # [B, 3, F, H, W] in [-1, 1]
    weight: torch.Tensor  # [B, 1, F, H, W]: 1 on the background, 1 + OBJECT_WEIGHT on the object
    states: list[world.WorldState]
    captions: list[str]


def render_clips(
    rng: np.random.Generator,
    batch: int,
    frames: int,
    height: int = HEIGHT,
    width: int = WIDTH,
    physics: str = "basic",
) -> Clips:
    """``batch`` random world clips of ``frames`` frames (``physics``: see ``world.sample_state``)."""
    aspect = Fraction(width, height)
    states = [world.sample_state(rng, aspect=aspect, physics=physics) for _ in range(batch)]
    seconds = float(Fraction(frames - 1) / FPS)
    videos, weights = [], []
    for state in states:
        pixels = world.render(state, frames, height, width)
        videos.append(torch.from_numpy(pixels))
        bg: np.ndarray = world.backgrounds(state, world.frame_times(frames), height, width) * 255
        on_object = np.abs(pixels.astype(np.float64) - bg).max(-1) > 8
        weights.append(torch.from_numpy(1 + OBJECT_WEIGHT * on_object.astype(np.float32)))
    video = torch.stack(videos).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    weight = torch.stack(weights)[:, None]
    return Clips(video, weight, states, [world.caption(s, seconds) for s in states])


def to_pil(frame: np.ndarray) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.ascontiguousarray(frame))


# Text and image tokens -------------------------------------------------------------------------

TEXT_TOKENS = {"basic": 64, "full": 96, "multimodal": 112}  # per world: its longest caption is 52 bytes
# (basic), 86 (full) or 94 (multimodal); the key mask makes padding inert


class TextFeatures:
    """The frozen encoders' features, computed exactly as ``conditioning.encode_magic141`` does for the
    world model (its ``variant="world"``).

    The text part depends on the caption alone and is cached per caption; the image tokens are
    computed in batches. ``embeds()`` joins them (image tokens first) as the pipeline does, which a
    test checks against ``encode_magic141`` itself.
    """

    def __init__(self, parts: dict, device: torch.device | str = "cpu", physics: str = "basic") -> None:
        self.parts = parts
        self.device = torch.device(device)
        self.tokens = TEXT_TOKENS[physics]
        self._text: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def text(self, caption: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens [L, D], mask [L], pooled [P]) of one caption."""
        if caption not in self._text:
            from ..conditioning import encode_magic141

            blank = PIL.Image.new("RGB", (WIDTH, HEIGHT))
            p = self.parts
            full = encode_magic141(
                p["text_encoder"],
                p["tokenizer"],
                p["text_encoder_2"],
                p["tokenizer_2"],
                p["image_processor"],
                blank,
                caption,
                self.device,
                self.tokens,
                variant="world",
            )
            n_image = self.image_token_count
            self._text[caption] = (full.embeds[0, n_image:], full.mask[0, n_image:], full.pooled[0])
        return self._text[caption]

    @property
    def image_token_count(self) -> int:
        from ..conditioning import MAGIC141_IMAGE_TOKEN_STRIDE

        n = self.parts["text_encoder"].config.image_seq_length
        return len(range(0, n, MAGIC141_IMAGE_TOKEN_STRIDE))

    @torch.no_grad()
    def images(self, frames: np.ndarray, batch: int = 256) -> torch.Tensor:
        """Image tokens [N, n, D] of uint8 frames [N, H, W, 3] (the VLM's hidden states, every 4th)."""
        from ..conditioning import (
            HIDDEN_LAYERS_TO_SKIP,
            MAGIC141_IMAGE_TOKEN_STRIDE,
            WORLD_IMAGE_TEMPLATE,
            image_ids,
        )

        encoder = self.parts["text_encoder"]
        n_patches = encoder.config.image_seq_length
        ids, at = image_ids(self.parts["tokenizer"], encoder, WORLD_IMAGE_TEMPLATE, self.device)
        out = []
        for start in range(0, len(frames), batch):
            chunk = [to_pil(f) for f in frames[start : start + batch]]
            pixels = self.parts["image_processor"](chunk, return_tensors="pt").pixel_values.to(self.device)
            many = ids.expand(len(chunk), -1)
            hidden = encoder(
                input_ids=many,
                pixel_values=pixels,
                attention_mask=torch.ones_like(many),
                output_hidden_states=True,
            ).hidden_states[-(HIDDEN_LAYERS_TO_SKIP + 1)]
            out.append(hidden[:, at : at + n_patches][:, ::MAGIC141_IMAGE_TOKEN_STRIDE].float().cpu())
        return torch.cat(out)


class CaptionPooler(torch.nn.Module):
    """CLIP's pooled vector of every caption in a table, as ``conditioning.clip_pooled`` computes it.

    The teacher trains this CLIP text model together with the DiT (the LLaVA stays frozen): the
    pooled vector modulates every DiT block, and a trained one carries the prompt's direction and
    colour in a form the DiT reads at once. A frozen random CLIP's pooled vectors are distinct per
    caption but unstructured; a model trained that way had not learned colour after 2000 steps.
    """

    def __init__(self, clip, tokenizer, captions: list[str]) -> None:
        from ..conditioning import CLIP_MAX_LENGTH

        super().__init__()
        self.clip = clip
        ids = tokenizer(
            captions, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids
        self.register_buffer("ids", ids, persistent=False)

    def forward(self) -> torch.Tensor:
        return self.clip(self.ids, output_hidden_states=False).pooler_output.float()


def join_tokens(image_tokens: torch.Tensor | None, text: torch.Tensor, mask: torch.Tensor):
    """[image tokens, text tokens] and their mask, batched ([B, n, D], [B, L, D], [B, L]).

    ``image_tokens=None`` (text-to-video) gives the text alone.
    """
    if image_tokens is None:
        return text, mask
    ones = mask.new_ones(image_tokens.shape[:2])
    return torch.cat([image_tokens, text], dim=1), torch.cat([ones, mask], dim=1)


# The latent pool -------------------------------------------------------------------------------

STALE_SECONDS = (-8.0, 0.0)  # continuation windows see the prompt and image of up to 8 s earlier


@dataclass
class LatentPool:
    """World clips encoded once for the DiT stages: targets, conditions and conditioning tokens.

    ``cond1`` is the VAE's encoding of the first frame alone and ``cond2`` of the first five frames
    alone, as the pipeline encodes an image or a previous window's tail: the causal VAE's group
    norms see every frame given, so these differ from the first latent frames of ``latents``.
    ``stale_*`` hold the caption and image tokens of the same object some seconds earlier: later
    sliding windows are prompted with the first window's prompt and image, and must follow the
    motion their condition frames show.
    """

    latents: torch.Tensor  # [N, C, T, h, w], scaled
    cond1: torch.Tensor  # [N, C, 1, h, w]
    cond2: torch.Tensor  # [N, C, 2, h, w]
    image_tokens: torch.Tensor  # [N, n, D]
    stale_image_tokens: torch.Tensor
    caption_index: torch.Tensor  # [N] into captions
    stale_caption_index: torch.Tensor
    text: torch.Tensor  # [K, L, D] per caption
    text_mask: torch.Tensor  # [K, L]
    pooled: torch.Tensor  # [K, P]
    first_frames: torch.Tensor  # [N, H, W, 3] uint8
    captions: list[str]
    states: list[dict]
    scaling_factor: float
    physics: str = "basic"  # the world's physics the clips were drawn with (``world.sample_state``)

    def __len__(self) -> int:
        return self.latents.shape[0]

    _TENSORS = (
        "latents",
        "cond1",
        "cond2",
        "image_tokens",
        "stale_image_tokens",
        "caption_index",
        "stale_caption_index",
        "text",
        "text_mask",
        "pooled",
        "first_frames",
    )

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        with atomic.replacing(folder / "pool.safetensors") as temp:
            save_file({k: getattr(self, k).contiguous() for k in self._TENSORS}, temp)
        meta = {"captions": self.captions, "states": self.states, "scaling_factor": self.scaling_factor,
                "physics": self.physics}
        atomic.write_json(folder / "pool.json", meta, indent=1)  # written last: the pool is complete

    @classmethod
    def load(cls, folder: Path) -> LatentPool:
        import json

        from safetensors.torch import load_file

        tensors = load_file(folder / "pool.safetensors")
        meta = json.loads((folder / "pool.json").read_text())
        return cls(**tensors, **meta)


def state_to_json(state: world.WorldState) -> dict:
    data = dict(state.__dict__)
    data["background"] = list(state.background)
    data["aspect"] = str(state.aspect)
    return data


def state_from_json(data: dict) -> world.WorldState:
    return world.WorldState(
        **{**data, "background": tuple(data["background"]), "aspect": Fraction(data["aspect"])}
    )


def build_pool(
    vae,
    text: dict,
    count: int,
    seed: int,
    frames: int = 25,
    batch: int = 32,
    *,
    scaling: float | None = None,
    clear: float = 0.0,
    physics: str = "basic",
) -> LatentPool:
    """Render ``count`` clips from ``seed`` and encode them (``encode_states``).

    ``clear``: seconds before the first bounce. ``physics``: see ``world.sample_state``.
    """
    rng = np.random.default_rng([seed, 7])
    aspect = Fraction(WIDTH, HEIGHT)
    states = [world.sample_state(rng, aspect=aspect, clear=clear, physics=physics) for _ in range(count)]
    stale = [s.advance(float(rng.uniform(*STALE_SECONDS))) for s in states]
    return encode_states(vae, text, states, stale, frames, batch, scaling=scaling, physics=physics)


@torch.no_grad()
def encode_states(
    vae,
    text: dict,
    states: list[world.WorldState],
    stale: list[world.WorldState] | None = None,
    frames: int = 25,
    batch: int = 32,
    *,
    scaling: float | None = None,
    physics: str = "basic",
) -> LatentPool:
    """Render each state's clip and encode it, its first frame and first five frames, as the pipeline
    encodes an image and a window's tail; ``stale`` are the states continuations are prompted from
    (default: the states themselves).

    ``scaling`` multiplies the VAE's latents; by default it is 1/std of this pool's latents (the
    training pool sets it; evaluation pools and fine-tuning reuse it). ``text``: the text components
    (frozen, or the trained model's).
    """
    device = next(vae.parameters()).device
    features = TextFeatures(text, device, physics)
    stale = states if stale is None else stale
    seconds = float(Fraction(frames - 1) / FPS)
    raw, raw1, raw2, firsts = [], [], [], []
    for start in range(0, len(states), batch):
        videos = np.stack([world.render(s, frames, HEIGHT, WIDTH) for s in states[start : start + batch]])
        firsts.append(torch.from_numpy(videos[:, 0]))
        pixels = torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1).to(device)
        raw.append(vae.encode(pixels).latent_dist.mode().float().cpu())
        raw1.append(vae.encode(pixels[:, :, :1]).latent_dist.mode().float().cpu())
        raw2.append(vae.encode(pixels[:, :, :5]).latent_dist.mode().float().cpu())
    latents = torch.cat(raw)
    scaling = float(1.0 / latents.std()) if scaling is None else scaling
    first_frames = torch.cat(firsts)
    stale_frames = np.stack([world.render(s, 1, HEIGHT, WIDTH)[0] for s in stale])
    captions_of = [world.caption(s, seconds) for s in states]
    stale_captions = [world.caption(s, seconds) for s in stale]
    table = sorted(set(captions_of) | set(stale_captions))
    index = {c: i for i, c in enumerate(table)}
    encoded = [features.text(c) for c in table]
    return LatentPool(
        latents=latents * scaling,
        cond1=torch.cat(raw1) * scaling,
        cond2=torch.cat(raw2) * scaling,
        image_tokens=features.images(first_frames.numpy()),
        stale_image_tokens=features.images(stale_frames),
        caption_index=torch.tensor([index[c] for c in captions_of]),
        stale_caption_index=torch.tensor([index[c] for c in stale_captions]),
        text=torch.stack([t[0] for t in encoded]).float().cpu(),
        text_mask=torch.stack([t[1] for t in encoded]).float().cpu(),
        pooled=torch.stack([t[2] for t in encoded]).float().cpu(),
        first_frames=first_frames,
        captions=table,
        states=[state_to_json(s) for s in states],
        scaling_factor=scaling,
        physics=physics,
    )
