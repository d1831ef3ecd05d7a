"""Prompt conditioning: the text stream the DiT attends to, with the image's tokens in it.

Three ways, chosen by ``conditioning``:

``diffusers`` (HunyuanVideo-I2V's own): one LLaVA pass over a template that holds the image,
keeping every 2nd image token; done by diffusers' ``HunyuanVideoImageToVideoPipeline.encode_prompt``
so it stays bit-for-bit what those weights were trained with.

``magic141`` (Magic 1-For-1's release, ``TextEncoderVLM.encode`` and the I2V ``predict_step``): the
text through the LLM alone (HunyuanVideo's video template, the hidden states two layers before the
last, the template cropped away); the image through the VLM alone on its own system template (the
last hidden layer), keeping what follows the user header: its non-image tokens and every 4th image
token, in place; the image part goes before the text. Half the image tokens of the diffusers way,
and the text embedding no longer depends on the image, so it can be cached.

``world`` (what the built-in world model was trained with, before the release was followed): the
same split, but the image part is the 4th image tokens alone, from two layers before the last.

All three take CLIP's pooled vector of the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import PIL.Image
import torch

from magic141.protocol import CONDITIONINGS as CONDITIONINGS  # the pipeline checks against it

HIDDEN_LAYERS_TO_SKIP = 2
CLIP_MAX_LENGTH = 77
LLAMA3_VOCAB = 128_000

_VIDEO_SYSTEM = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
)
USER_HEADER = "<|start_header_id|>user<|end_header_id|>"
# Magic 1-For-1's (its constants.PROMPT_TEMPLATE_ENCODE_VIDEO, and text_encoder_vlm's
# LLAVA_LLAMA_3_8B_HUMAN_IMAGE_PROMPT: the LI-DiT video system prompt with the image as the user's turn).
MAGIC141_TEXT_TEMPLATE = _VIDEO_SYSTEM + USER_HEADER + "\n\n{}<|eot_id|>"
MAGIC141_IMAGE_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The central subject and overarching message or purpose of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial arrangement of objects within the "
    "scene."
    "3. Actions, events, behaviors, temporal sequences, and physical movements or transformations of "
    "objects."
    "4. Behavior, facial expressions, emotions, speaking style, eye gaze, head orientation, "
    "body orientation, "
    "gestures (hand and body), and changes in these elements for the main character."
    "5. The background setting, lighting, artistic style, and overall mood or tone of the scene."
    "6. Camera angles, movements, transitions, and other filming techniques employed in the video:<|eot_id|>"
    + USER_HEADER + "\n\n<image><|eot_id|>"
)
# The world model's.
WORLD_TEXT_TEMPLATE = _VIDEO_SYSTEM + "\n\n" + USER_HEADER + "\n\n{}<|eot_id|>"
WORLD_IMAGE_TEMPLATE = USER_HEADER + "\n\n<image>\nDescribe this image.<|eot_id|>"
MAGIC141_IMAGE_TOKEN_STRIDE = 4


@dataclass
class PromptEmbeds:
    """What the DiT is conditioned on besides the latents."""

    embeds: torch.Tensor  # [batch, tokens, text_dim]
    mask: torch.Tensor  # [batch, tokens]
    pooled: torch.Tensor  # [batch, pooled_dim]

    def to(self, device: torch.device, dtype: torch.dtype) -> PromptEmbeds:
        return PromptEmbeds(self.embeds.to(device, dtype), self.mask.to(device, dtype),
                            self.pooled.to(device, dtype))


def clip_pooled(text_encoder_2, tokenizer_2, prompt: str, device: torch.device) -> torch.Tensor:
    ids = tokenizer_2(
        [prompt], padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder_2(ids.to(device), output_hidden_states=False).pooler_output


def _template_prefix_length(tokenizer, template: str) -> int:
    """Tokens before the user's text (the part cropped away after encoding)."""
    return len(tokenizer(template.split("{}")[0]).input_ids)


def image_ids(tokenizer, text_encoder, template: str, device: torch.device) -> tuple[torch.Tensor, int]:
    """``template``'s ids with its <image> placeholder expanded to one token per vision patch (as the
    LLaVA processor does), and where the image tokens start."""
    image_token = text_encoder.config.image_token_index
    ids = tokenizer(template, return_tensors="pt").input_ids[0]
    at = int((ids == image_token).nonzero()[0, 0])
    patches = ids.new_full((text_encoder.config.image_seq_length,), image_token)
    return torch.cat([ids[:at], patches, ids[at + 1 :]])[None].to(device), at


def _kept_image_part(ids: torch.Tensor, at: int, patches: int, after: int) -> torch.Tensor:
    """Positions Magic 1-For-1 keeps of its image pass: from ``after`` (the end of the user header) on,
    every non-image position and every 4th image position."""
    keep = torch.zeros(ids.shape[1], dtype=torch.bool)
    keep[after:] = True
    keep[at : at + patches] = False
    keep[at : at + patches : MAGIC141_IMAGE_TOKEN_STRIDE] = True
    return keep.nonzero()[:, 0]


def encode_magic141(
    text_encoder,
    tokenizer,
    text_encoder_2,
    tokenizer_2,
    image_processor,
    image: PIL.Image.Image,
    prompt: str,
    device: torch.device,
    max_sequence_length: int = 256,
    variant: str = "magic141",
) -> PromptEmbeds:
    """Magic 1-For-1 conditioning: LLM(text) and VLM(image), the image part first (``variant``
    "magic141": the release's; "world": the built-in world model's; see the module's docstring)."""
    world = variant == "world"
    # Text: the language model alone, no image in the template.
    template = WORLD_TEXT_TEMPLATE if world else MAGIC141_TEXT_TEMPLATE
    crop = _template_prefix_length(tokenizer, template)
    text = tokenizer(
        [template.format(prompt)],
        max_length=crop + max_sequence_length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    )
    text_mask = text.attention_mask.to(device)
    hidden = text_encoder.get_decoder()(
        input_ids=text.input_ids.to(device), attention_mask=text_mask, output_hidden_states=True
    ).hidden_states[-(HIDDEN_LAYERS_TO_SKIP + 1)]
    text_embeds, text_mask = hidden[:, crop:], text_mask[:, crop:]

    # Image: the VLM on a template holding only the image; the hidden states at the image's
    # positions are its tokens.
    image_template = WORLD_IMAGE_TEMPLATE if world else MAGIC141_IMAGE_TEMPLATE
    ids, at = image_ids(tokenizer, text_encoder, image_template, device)
    pixels = image_processor(image, return_tensors="pt").pixel_values.to(device, text_encoder.dtype)
    states = text_encoder(
        input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids), output_hidden_states=True
    ).hidden_states
    patches = text_encoder.config.image_seq_length
    if world:
        image_embeds = states[-(HIDDEN_LAYERS_TO_SKIP + 1)][:, at : at + patches]
        image_embeds = image_embeds[:, ::MAGIC141_IMAGE_TOKEN_STRIDE]
    else:
        header_end = MAGIC141_IMAGE_TEMPLATE.index(USER_HEADER) + len(USER_HEADER)
        after = len(tokenizer(MAGIC141_IMAGE_TEMPLATE[:header_end]).input_ids)
        image_embeds = states[-1][:, _kept_image_part(ids, at, patches, after).to(device)]

    return PromptEmbeds(
        embeds=torch.cat([image_embeds, text_embeds], dim=1),
        mask=torch.cat([text_mask.new_ones(image_embeds.shape[:2]), text_mask], dim=1),
        pooled=clip_pooled(text_encoder_2, tokenizer_2, prompt, device),
    )


def diffusers_prompt_template(tokenizer, text_encoder) -> dict:
    """diffusers' I2V template with its token offsets computed for this tokenizer and vision tower.

    diffusers hard-codes the offsets of the real Llama-3 tokenizer (crop_start 103, image tokens at
    5..581), and those stay in use for it; for any other tokenizer (the tiny one) they are computed.
    """
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE

    template = DEFAULT_PROMPT_TEMPLATE["template"]
    n_patches = text_encoder.config.image_seq_length
    if len(tokenizer) >= LLAMA3_VOCAB and n_patches == DEFAULT_PROMPT_TEMPLATE["image_emb_len"]:
        return dict(DEFAULT_PROMPT_TEMPLATE)
    ids = tokenizer(template.split("{}")[0]).input_ids
    start = ids.index(text_encoder.config.image_token_index)
    return {
        "template": template,
        "crop_start": len(ids),
        "image_emb_start": start,
        "image_emb_end": start + n_patches,
        "image_emb_len": n_patches,
    }


def encode_diffusers(
    pipe, image: PIL.Image.Image, prompt: str, device: torch.device, max_sequence_length: int = 256
) -> PromptEmbeds:
    """HunyuanVideo-I2V conditioning through diffusers' own ``encode_prompt``."""
    embeds, pooled, mask = pipe.encode_prompt(
        image=image,
        prompt=prompt,
        prompt_template=diffusers_prompt_template(pipe.tokenizer, pipe.text_encoder),
        device=device,
        max_sequence_length=max_sequence_length,
        image_embed_interleave=2,
    )
    return PromptEmbeds(embeds, mask, pooled)
