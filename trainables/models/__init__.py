"""Model registry: one factory, ``build_model(name, mode, size, weights)``, and the per-model input table.

Architecture and weights are kept apart: every model builds offline from a config with random
weights, and loads pretrained weights only when ``weights`` names a hub id, a local folder or a
checkpoint file. Every model's forward takes ``(pixel_values, input_ids, attention_mask)`` and
returns logits ``(B, 1, H, W)`` at the input size; the CNNs ignore the text. The VLSMs split it
into ``encode_image``, ``encode_text`` and ``decode`` (forward is the three in a row), so frozen
encoders can run once and be read back (trainables/feature_cache.py).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from trainables.models.biomedclipseg import biomed_tokenizer, build_biomedclipseg
from trainables.models.clipseg import build_clipseg
from trainables.models.cnn import ARCHITECTURES as CNN_ARCHITECTURES
from trainables.models.cnn import build_cnn
from trainables.models.cris import build_cris

MODES = ("frozen", "finetune", "zeroshot")
SIZES = ("small", "full")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ModelInputs:
    """What the data pipeline needs to feed a model: one row of the input table."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    context_length: int
    threshold: float


# Full size follows the study (DATA-FACTS, "Inputs per model"); small is the same architecture at
# a width that trains in seconds on a CPU, for tests and the demo.
MODEL_INPUTS: dict[tuple[str, str], ModelInputs] = {
    ("clipseg", "full"): ModelInputs(352, IMAGENET_MEAN, IMAGENET_STD, 77, 0.5),
    ("clipseg", "small"): ModelInputs(128, IMAGENET_MEAN, IMAGENET_STD, 32, 0.5),
    # CRIS: 416 input, CLIP statistics, CLIP BPE at 77 tokens, threshold 0.35 (MODEL-FACTS).
    ("cris", "full"): ModelInputs(416, CLIP_MEAN, CLIP_STD, 77, 0.35),
    ("cris", "small"): ModelInputs(128, CLIP_MEAN, CLIP_STD, 32, 0.35),
    # BiomedCLIP: 224 input, CLIP statistics, PubMedBERT context 256 (MODEL-FACTS).
    **{(v, "full"): ModelInputs(224, CLIP_MEAN, CLIP_STD, 256, 0.5) for v in ("biomedclipseg", "biomedclipseg_d")},
    **{(v, "small"): ModelInputs(128, CLIP_MEAN, CLIP_STD, 32, 0.5) for v in ("biomedclipseg", "biomedclipseg_d")},
    # CNNs read no text; their context length only sizes the (ignored) token batch.
    **{(cnn, "full"): ModelInputs(256, IMAGENET_MEAN, IMAGENET_STD, 8, 0.5) for cnn in CNN_ARCHITECTURES},
    **{(cnn, "small"): ModelInputs(128, IMAGENET_MEAN, IMAGENET_STD, 8, 0.5) for cnn in CNN_ARCHITECTURES},
}

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "clipseg": build_clipseg,
    "cris": build_cris,
    "biomedclipseg": functools.partial(build_biomedclipseg, variant="biomedclipseg"),
    "biomedclipseg_d": functools.partial(build_biomedclipseg, variant="biomedclipseg_d"),
    **{cnn: functools.partial(build_cnn, cnn) for cnn in CNN_ARCHITECTURES},
}


# Where each model's pretrained encoders live, for a separate (lower) learning rate in finetuning.
ENCODER_PREFIXES: dict[str, tuple[str, ...]] = {
    "clipseg": ("net.clip.",), "cris": ("backbone.",), "biomedclipseg": ("clip.",), "biomedclipseg_d": ("clip.",),
    "unet": ("net.encoder.",), "unetpp": ("net.encoder.",), "deeplabv3plus": ("net.encoder.",),
}


# Ray runs trials in folders of their own: the driver names the folder it was started in here,
# so that a relative weights path such as "pretrain/cris_best.pth" means the same in every trial.
WEIGHTS_ROOT_ENV = "VLSM_WEIGHTS_ROOT"


def resolve_weights(weights: str | None) -> str | None:
    """A local weights path as the user meant it; anything else (a hub id, None) unchanged."""
    if not weights or os.path.isabs(weights) or os.path.exists(weights):
        return weights
    root = os.environ.get(WEIGHTS_ROOT_ENV)
    if root and os.path.exists(os.path.join(root, weights)):
        return os.path.join(root, weights)
    return weights


def build_tokenizer(name: str, weights: str | None = None):
    """The tokenizer a model reads its prompts with (CNNs get one too, and ignore its ids)."""
    from trainables.tokenizers import clip_bpe_tokenizer, load_tokenizer

    weights = resolve_weights(weights)

    if name == "clipseg":
        return load_tokenizer(weights)  # pretrained CLIPSeg folders bring their own
    if name.startswith("biomedclipseg"):
        return biomed_tokenizer(weights)  # BiomedBERT WordPiece; a test vocabulary offline
    return clip_bpe_tokenizer()


def model_inputs(name: str, size: str) -> ModelInputs:
    try:
        return MODEL_INPUTS[(name, size)]
    except KeyError:
        known = ", ".join(f"{n}/{s}" for n, s in MODEL_INPUTS)
        raise ValueError(f"unknown model {name!r} at size {size!r} (known: {known})") from None


# Spec fields that change a model's architecture or forward, per model (the builders' keyword
# arguments); every other model takes none of them.
MODEL_OPTIONS: dict[str, tuple[str, ...]] = {"cris": ("decoder_dropout", "mask_padding", "upsample")}


def model_options(spec: dict) -> dict:
    """The spec's fields that are options of its model's builder (MODEL_OPTIONS); a spec written
    before a field existed leaves the builder's default."""
    return {k: spec[k] for k in MODEL_OPTIONS.get(spec["model"], ()) if k in spec}


def build_model(name: str, mode: str = "frozen", size: str = "small", weights: str | None = None,
                **options) -> nn.Module:
    """Build a registered model; ``weights`` names pretrained weights, None for random init;
    ``options`` are the model's MODEL_OPTIONS."""
    unknown = set(options) - set(MODEL_OPTIONS.get(name, ()))
    if unknown:
        raise ValueError(f"{name} takes no option {', '.join(sorted(unknown))} "
                         f"(its options: {', '.join(MODEL_OPTIONS.get(name, ())) or 'none'})")
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(BUILDERS)})")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: expected one of {', '.join(SIZES)}")
    return BUILDERS[name](mode=mode, size=size, weights=resolve_weights(weights), **options)
