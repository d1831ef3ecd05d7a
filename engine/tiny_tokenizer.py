"""Tokenizers built in code, offline: byte-level, no merges, with named special tokens.

The tiny models need real ``transformers`` tokenizers (the same call signatures, padding,
truncation and special-token lookups as the Llama-3 and CLIP tokenizers of the real model),
but nothing may be downloaded. A byte-level BPE with an empty merge table covers any text,
is deterministic, and is small enough to build in a few milliseconds.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BYTE_VOCAB = 256


def byte_tokenizer(
    specials: list[str],
    *,
    bos: str | None,
    eos: str | None,
    pad: str,
    model_max_length: int,
    append_eos: bool = False,
) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer whose 256 byte tokens are followed by ``specials`` in order.

    ``bos`` (if given) is prepended to every encoded sequence, as Llama-3 and CLIP do;
    ``append_eos`` closes each sequence with ``eos``, as CLIP and T5 do.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    assert len(vocab) == BYTE_VOCAB
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(specials))
    head = [bos] if bos is not None else []
    tail = [eos] if append_eos and eos is not None else []
    if head or tail:
        single = " ".join([*head, "$A", *tail])
        core.post_processor = processors.TemplateProcessing(
            single=single,
            pair=f"{single} {single.replace('$A', '$B')}",
            special_tokens=[(tok, core.token_to_id(tok)) for tok in dict.fromkeys(head + tail)],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        model_max_length=model_max_length,
        padding_side="right",
    )


LLAMA_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|pad|>",
    "<image>",
]
CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]


def tiny_llama_tokenizer() -> PreTrainedTokenizerFast:
    """Stands in for the Llama-3 tokenizer: same special tokens, byte-level vocabulary."""
    return byte_tokenizer(
        LLAMA_SPECIALS, bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<|pad|>", model_max_length=4096
    )


def tiny_clip_tokenizer() -> PreTrainedTokenizerFast:
    """Stands in for the CLIP-L tokenizer (77 tokens)."""
    return byte_tokenizer(
        CLIP_SPECIALS, bos="<|startoftext|>", eos="<|endoftext|>", pad="<|endoftext|>", model_max_length=77,
        append_eos=True,
    )


def tiny_t5_tokenizer() -> PreTrainedTokenizerFast:
    """Stands in for a T5 tokenizer (used by the tiny text-to-image model)."""
    return byte_tokenizer(
        ["<pad>", "</s>"], bos=None, eos="</s>", pad="<pad>", model_max_length=512, append_eos=True
    )
