"""Model registry: one factory, ``build_model(name, mode, size, weights)``, reading each model's card.

Every fact about a model lives on its ``ModelCard`` (trainables/models/cards.py); this module
builds from it. Architecture and weights are kept apart: every model builds offline from a config
with random weights, and loads pretrained weights only when ``weights`` names a hub id, a local
folder or a checkpoint file. Every model's forward takes ``(pixel_values, input_ids,
attention_mask)`` and returns logits ``(B, 1, H, W)`` at the input size; the CNNs ignore the text.
The VLSMs split it into ``encode_image``, ``encode_text`` and ``decode`` (forward is the three in a
row), so frozen encoders can run once and be read back (trainables/feature_cache.py).

Importing this package loads no PyTorch: a builder's module is imported when it builds.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from trainables.models.cards import (  # noqa: F401 (the registry's API, re-exported)
    ModelCard,
    ModelInputs,
    card,
    cards,
    model_names,
    register,
    resolve,
)

if TYPE_CHECKING:
    from torch import nn

MODES = ("frozen", "finetune", "zeroshot")
SIZES = ("small", "full")

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
    return resolve(card(name).tokenizer)(resolve_weights(weights))


def model_inputs(name: str, size: str) -> ModelInputs:
    inputs = card(name).inputs
    if size not in inputs:
        raise ValueError(f"unknown size {size!r} for model {name!r}: expected one of {', '.join(inputs)}")
    return inputs[size]


def encoder_prefixes(name: str) -> tuple[str, ...]:
    return card(name).encoder_prefixes


def model_options(spec: dict) -> dict:
    """The spec's fields that are options of its model's builder (its card's ``options``); a spec
    written before a field existed leaves the builder's default."""
    return {k: spec[k] for k in card(spec["model"]).options if k in spec}


def build_model(name: str, mode: str = "frozen", size: str = "small", weights: str | None = None,
                **options) -> nn.Module:
    """Build a registered model; ``weights`` names pretrained weights, None for random init;
    ``options`` are the card's builder options."""
    model_card = card(name)
    unknown = set(options) - set(model_card.options)
    if unknown:
        raise ValueError(f"{name} takes no option {', '.join(sorted(unknown))} "
                         f"(its options: {', '.join(model_card.options) or 'none'})")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: expected one of {', '.join(SIZES)}")
    builder = resolve(model_card.builder)
    return builder(mode=mode, size=size, weights=resolve_weights(weights), **model_card.builder_kwargs, **options)
