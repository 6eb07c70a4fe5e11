"""Text tokenizers that work offline.

Pretrained weights bring their own tokenizer files; without them, the CLIP BPE vocabulary that
open_clip ships inside its package gives the same ids as the hub's CLIP tokenizer.
"""

from __future__ import annotations

import functools
import os

import torch
from transformers import AutoTokenizer, CLIPTokenizer, PreTrainedTokenizerBase


@functools.cache
def clip_bpe_tokenizer(weights: str | None = None) -> CLIPTokenizer:
    """CLIP's BPE vocabulary (open_clip's copy, offline); CRIS and the CNNs read it whatever their
    ``weights``."""
    # costly (open_clip ~2 s beyond torch and transformers): a CLIPSeg trial with its own tokenizer never needs it
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    vocab = dict(bpe.encoder)
    # open_clip names its special tokens differently from Hugging Face's CLIP vocabulary.
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    # transformers v5 takes the vocabulary itself; vocab_file= is silently ignored there.
    return CLIPTokenizer(vocab=vocab, merges=merges)


def load_tokenizer(weights: str | None) -> PreTrainedTokenizerBase:
    """The tokenizer that goes with ``weights``: its own files if it has them, else the CLIP BPE."""
    if weights and (not os.path.isdir(weights) or os.path.exists(os.path.join(weights, "tokenizer_config.json"))):
        return AutoTokenizer.from_pretrained(weights)
    return clip_bpe_tokenizer()


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], context_length: int) -> dict[str, torch.Tensor]:
    out = tokenizer(texts, padding="max_length", max_length=context_length, truncation=True, return_tensors="pt")
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}
