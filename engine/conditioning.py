"""Prompt conditioning: the text stream the DiT attends to, with the image's tokens in it.

Two ways, chosen by ``conditioning``:

``diffusers`` (HunyuanVideo-I2V's own): one LLaVA pass over a template that holds the image,
keeping every 2nd image token; done by diffusers' ``HunyuanVideoImageToVideoPipeline.encode_prompt``
so it stays bit-for-bit what those weights were trained with.

``magic141`` (Magic 1-For-1's): the text through the LLM alone, the image through the VLM alone,
every 4th image token kept and placed before the text tokens. Half the image tokens of the
diffusers way, and the text embedding no longer depends on the image, so it can be cached.

Both take the hidden states two layers before the last, and CLIP's pooled vector of the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import PIL.Image
import torch

from magic141.protocol import CONDITIONINGS as CONDITIONINGS  # the pipeline checks against it

HIDDEN_LAYERS_TO_SKIP = 2
CLIP_MAX_LENGTH = 77
LLAMA3_VOCAB = 128_000

MAGIC141_TEXT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>\n\n"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
MAGIC141_IMAGE_TEMPLATE = (
    "<|start_header_id|>user<|end_header_id|>\n\n<image>\nDescribe this image.<|eot_id|>"
)
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
) -> PromptEmbeds:
    """Magic 1-For-1 conditioning: LLM(text) and VLM(image), image tokens [::4] first."""
    # Text: the language model alone, no image in the template.
    crop = _template_prefix_length(tokenizer, MAGIC141_TEXT_TEMPLATE)
    text = tokenizer(
        [MAGIC141_TEXT_TEMPLATE.format(prompt)],
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

    # Image: the VLM on a template holding only the image; its <image> placeholder expands to one
    # token per vision patch, and the hidden states at those positions are the image tokens.
    image_token = text_encoder.config.image_token_index
    n_patches = text_encoder.config.image_seq_length
    ids = tokenizer(MAGIC141_IMAGE_TEMPLATE, return_tensors="pt").input_ids[0]
    at = int((ids == image_token).nonzero()[0, 0])
    ids = torch.cat([ids[:at], ids.new_full((n_patches,), image_token), ids[at + 1 :]])[None].to(device)
    pixels = image_processor(image, return_tensors="pt").pixel_values.to(device, text_encoder.dtype)
    hidden = text_encoder(
        input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids), output_hidden_states=True
    ).hidden_states[-(HIDDEN_LAYERS_TO_SKIP + 1)]
    image_embeds = hidden[:, at : at + n_patches][:, ::MAGIC141_IMAGE_TOKEN_STRIDE]

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
