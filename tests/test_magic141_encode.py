"""The ``magic141`` conditioning is Magic 1-For-1's own (its release's ``TextEncoderVLM.encode`` and I2V
``predict_step``), checked against a step-by-step reimplementation of that code on the tiny LLaVA."""

from __future__ import annotations

import pytest
import torch

from magic141.engine import conditioning
from magic141.engine.pipeline import Magic141Pipeline

# As in Magic 1-For-1's release: constants.PROMPT_TEMPLATE_ENCODE_VIDEO (the text) and text_encoder_vlm's
# LLAVA_LLAMA_3_8B_HUMAN_IMAGE_PROMPT (the image), written out here so that a change to ours shows.
UPSTREAM_TEXT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
UPSTREAM_IMAGE_PROMPT = (
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
    "<|start_header_id|>user<|end_header_id|>\n\n<image><|eot_id|>"
)


def upstream_image_tokens(llava, tokenizer, image_processor, image) -> torch.Tensor:
    """``TextEncoderVLM.forward(text=LLAVA_LLAMA_3_8B_HUMAN_IMAGE_PROMPT, image1=image).hidden_state``:
    the processor's ids (the placeholder expanded per patch), the last hidden layer, everything after
    the one user header, of the image's hidden states every 4th ("::4")."""
    patches = llava.config.image_seq_length
    expanded = UPSTREAM_IMAGE_PROMPT.replace("<image>", "<image>" * patches)
    ids = tokenizer(expanded, return_tensors="pt").input_ids
    pixels = image_processor(image, return_tensors="pt").pixel_values
    out = llava(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
                output_hidden_states=True)
    header = tokenizer("<|start_header_id|>user<|end_header_id|>", add_special_tokens=False,
                       return_tensors="pt").input_ids[0]
    starts = [i for i in range(ids.shape[1] - len(header) + 1)
              if torch.equal(ids[0, i : i + len(header)], header)]
    assert len(starts) == 1  # upstream refuses any other template
    user = ids[:, starts[0] + len(header) :]
    hidden = out.hidden_states[-1][:, starts[0] + len(header) :]
    image_token = tokenizer("<image>", add_special_tokens=False).input_ids[0]
    first = int((user[0] == image_token).nonzero()[0, 0])
    keep = torch.ones(hidden.shape[1], dtype=torch.bool)
    selected = torch.zeros(patches, dtype=torch.bool)
    selected[::4] = True
    keep[first : first + patches] = selected
    return hidden[:, keep]


def upstream_text_tokens(llama, tokenizer, prompt: str, max_length: int = 256) -> torch.Tensor:
    """HunyuanVideo's ``TextEncoder`` as Magic 1-For-1 configures it: the video template, hidden states
    two layers before the last, the template's system prefix cropped (crop_start)."""
    crop = len(tokenizer(UPSTREAM_TEXT_TEMPLATE.split("{}")[0]).input_ids)
    text = tokenizer([UPSTREAM_TEXT_TEMPLATE.format(prompt)], max_length=crop + max_length,
                     padding="max_length", truncation=True, return_tensors="pt")
    hidden = llama(input_ids=text.input_ids, attention_mask=text.attention_mask,
                   output_hidden_states=True).hidden_states[-3]
    return hidden[:, crop:]


def test_the_templates_are_upstream_s():
    assert conditioning.MAGIC141_TEXT_TEMPLATE == UPSTREAM_TEXT_TEMPLATE
    assert conditioning.MAGIC141_IMAGE_TEMPLATE == UPSTREAM_IMAGE_PROMPT


@pytest.mark.parametrize("prompt", ["a red ball rolls right", "the camera pans left over a quiet street"])
def test_magic141_conditioning_is_upstream_encode(tiny_components, sample_image, prompt):
    parts = tiny_components
    embeds = Magic141Pipeline(**parts).encode_prompt(sample_image, prompt, "magic141")
    with torch.no_grad():
        image = upstream_image_tokens(parts["text_encoder"], parts["tokenizer"], parts["image_processor"],
                                      sample_image)
        text = upstream_text_tokens(parts["text_encoder"].get_decoder(), parts["tokenizer"], prompt)
    # The image part first (upstream's torch.cat([image_embeds, prompt_embeds], dim=1)), unmasked.
    assert image.shape[1] == parts["text_encoder"].config.image_seq_length // 4 + 3  # "\n\n", <|eot_id|>
    assert torch.equal(embeds.embeds[:, : image.shape[1]], image)
    assert torch.equal(embeds.embeds[:, image.shape[1] :], text)
    assert embeds.mask[0, : image.shape[1]].all()


def test_the_image_latent_is_drawn_from_the_posterior_as_upstream_takes_it(tiny_components, sample_image):
    """Upstream: ``vae.encode(image * 2 - 1).latent_dist.sample() * scaling_factor``; drawn here with
    the job's generator, so a seed gives the same latent; the world model's conditioning keeps the mode."""
    pipe = Magic141Pipeline(**tiny_components)
    video = pipe.preprocess_image(sample_image, 32, 48)
    mode = pipe.encode_video(video)
    drawn = [pipe.encode_video(video, torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], drawn[2])
    assert not torch.equal(drawn[0], mode)
    with torch.no_grad():
        dist = pipe.vae.encode(video).latent_dist
    z = (drawn[0] / pipe.vae.config.scaling_factor - dist.mean) / dist.std  # a standard normal draw
    assert abs(float(z.mean())) < 0.2 and 0.8 < float(z.std()) < 1.2
