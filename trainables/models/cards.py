"""One card per model: everything the project knows about a model, in one place (the timm habit).

A card names its builder and tokenizer by import path, so reading cards costs no PyTorch import:
the grid, ``plan`` and ``--dry-run`` read them in a fraction of a second, and only a trial that
builds the model imports it. Every table that used to key on model names (inputs, training
defaults, weights, the as-run mode, GPU share, memory model, encoder prefixes, builder options)
is a field here; measured step times stay a data file (search_spaces/step_times.json).

Adding a model is a builder plus a card: ``register(ModelCard(...))`` in a module that the
``VLSM_MODELS`` environment variable names (comma-separated module names), so that every process,
Ray's trial workers included, registers it before reading the cards (docs/models.md).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

PLUGINS_ENV = "VLSM_MODELS"  # modules that register more cards, imported on the first lookup

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ModelInputs:
    """What the data pipeline needs to feed a model at one size."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    context_length: int
    threshold: float  # on the sigmoid of the logits, for dice


@dataclass(frozen=True)
class ModelCard:
    name: str  # the name specs, flags and result ids use
    title: str  # as the paper writes it
    family: str  # "vlsm" (reads the prompt) or "cnn" (ignores it)
    builder: str | Callable  # "module:function" or a callable: (mode=, size=, weights=, **options) -> nn.Module
    inputs: Mapping[str, ModelInputs]  # per size: "full" (the study's), "small" (tests and the demo)
    encoder_prefixes: tuple[str, ...]  # parameter-name prefixes of the pretrained encoders
    defaults: Mapping[str, object]  # training defaults: ExperimentSpec fields, with their source below
    # What the study's runs trained (MODEL-FACTS, "What finetuning really did"): "frozen" for the
    # CLIPSeg family (decoder alone, whatever the configs said), "finetune" (end to end) for the rest.
    # The grid's default blocks train every model so.
    as_run_mode: str
    gpu_fraction: float  # GPU share a trial asks for by default (it doubles while the memory model says so)
    cpus: float  # CPUs a trial asks for by default
    # Peak training memory at full size, per mode: (fixed GiB, GiB per sample of the batch); zero-shot
    # is bounded by "frozen". "measured" or "estimated" in memory_source.
    memory: Mapping[str, tuple[float, float]]
    memory_source: str
    tokenizer: str | Callable = "trainables.tokenizers:clip_bpe_tokenizer"  # (weights) -> tokenizer
    builder_kwargs: Mapping[str, object] = field(default_factory=dict)
    options: tuple[str, ...] = ()  # ExperimentSpec fields the builder takes as keyword arguments
    weights: str | None = None  # pretrained weights the study started from (a hub id, a path, "imagenet")
    # Encoders' LR relative to the decoder's when mode is finetune. CRIS 1.0: the study's single AdamW
    # LR. CLIPSeg family 0.01, our choice for the opt-in end_to_end block, which the study never ran:
    # CLIP towers at 2e-5 (the LR the study gave CLIP inside CRIS), the decoder at its 2e-3. Recorded
    # in every spec; `hpo --regime end_to_end` searches it.
    encoder_lr_scale: float = 1.0
    parameters: int | None = None  # full-size parameter count, where the source gives it exactly
    # The paper's average training time and epochs per experiment (one dataset, one prompt; Appendix
    # C.1, on a GPU it does not name): (minutes, epochs). `plan` prices with it where no step time is
    # measured, and it is the expected epochs of an early-stopped run (hpo's cosine horizon).
    paper_time: tuple[float, int] | None = None
    in_study: bool = True  # one of the paper's seven models (a registered plug-in is not)
    sources: str = ""  # where the facts above come from

    @property
    def reads_text(self) -> bool:
        return self.family == "vlsm"


# -- the study's seven models --------------------------------------------------------------------
# Training defaults (paper section 2.4, Appendices C.1 and C.3; MODEL-FACTS). VLSMs: AdamW, weight
# decay 1e-3, dice + 0.2 BCE, LR x0.1 on a validation-loss plateau (5 epochs); LR 2e-3 and batch 128
# for the CLIPSeg family, 2e-5 and batch 32 for CRIS; early-stopping patience on validation dice 50
# for the CLIPSeg variants, 10 for CRIS (C.1). CNNs: Adam 1e-3, no weight decay, Dice alone, constant
# LR, batch 16 (C.3); patience 20, the released code's early-stopping callback.
VLSM_DEFAULTS = {"weight_decay": 1e-3, "optimizer": "adamw", "scheduler": "plateau", "bce_weight": 0.2}
CLIPSEG_FAMILY_DEFAULTS = {**VLSM_DEFAULTS, "lr": 2e-3, "batch_size": 128, "patience": 50}
CNN_DEFAULTS = {"lr": 1e-3, "weight_decay": 0.0, "optimizer": "adam", "scheduler": "constant", "bce_weight": 0.0,
                "batch_size": 16, "patience": 20}

# Small is the same architecture at a width that trains in seconds on a CPU.
SMALL_IMAGENET = ModelInputs(128, IMAGENET_MEAN, IMAGENET_STD, 32, 0.5)
SMALL_CLIP = ModelInputs(128, CLIP_MEAN, CLIP_STD, 32, 0.5)

# GPU shares: each divides 1 and holds the study's batch in the as-run mode on an A10G (24 GiB) by
# the memory model: CLIPSeg frozen, batch 128, ~6.3 GiB -> 0.5; CRIS end to end, batch 32, ~14 GiB
# -> 0.5 doubled to 1 by placement; BiomedCLIPSeg(-D) frozen, batch 128, ~4.3 GiB -> 0.5 (0.25 is
# under 1.5x its estimate); CNNs, batch 16, 1.7-4.1 GiB -> 0.25. CPUs: a g5 node has 4 vCPUs per GPU.
# Memory: CLIPSeg measured at 352 on an H200 (batch 32: frozen 1.7 GiB peak, finetune 10.1 GiB; fixed
# from the parameter count, per sample the rest / 32); the others scaled from CLIPSeg by tokens and
# pixels per sample. Replace estimates with `python -m benchmarks.models` figures from the target GPU.

CLIPSEG = ModelCard(
    name="clipseg", title="CLIPSeg", family="vlsm", builder="trainables.models.clipseg:build_clipseg",
    inputs={"full": ModelInputs(352, IMAGENET_MEAN, IMAGENET_STD, 77, 0.5), "small": SMALL_IMAGENET},
    tokenizer="trainables.tokenizers:load_tokenizer",  # pretrained CLIPSeg folders bring their own
    encoder_prefixes=("net.clip.",), defaults=CLIPSEG_FAMILY_DEFAULTS, as_run_mode="frozen",
    weights="CIDAS/clipseg-rd64-refined", encoder_lr_scale=0.01, paper_time=(40, 90),
    gpu_fraction=0.5, cpus=2, memory={"frozen": (0.56, 0.035), "finetune": (2.25, 0.245)}, memory_source="measured",
    parameters=150_747_746,
    sources="DATA-FACTS (inputs), MODEL-FACTS (weights, parameters, decoder-only as run), paper C.1 (training)",
)
CRIS = ModelCard(
    name="cris", title="CRIS", family="vlsm", builder="trainables.models.cris:build_cris",
    # 416 input, CLIP statistics, CLIP BPE at 77 tokens, threshold 0.35 (MODEL-FACTS).
    inputs={"full": ModelInputs(416, CLIP_MEAN, CLIP_STD, 77, 0.35), "small": ModelInputs(128, CLIP_MEAN, CLIP_STD,
                                                                                           32, 0.35)},
    encoder_prefixes=("backbone.",), options=("decoder_dropout", "mask_padding", "upsample"),
    defaults={**VLSM_DEFAULTS, "lr": 2e-5, "batch_size": 32, "patience": 10}, as_run_mode="finetune",
    # The community RefCOCO checkpoint the study's config loads (original format); one AdamW LR for
    # the whole model, so the encoders' scale is 1.
    weights="pretrain/cris_best.pth", encoder_lr_scale=1.0, paper_time=(60, 45),
    gpu_fraction=0.5, cpus=2, memory={"frozen": (1.15, 0.12), "finetune": (2.20, 0.30)}, memory_source="estimated",
    parameters=146_849_122,
    sources="MODEL-FACTS (inputs, weights, parameters, trained end to end), paper C.1 (training)",
)
# BiomedCLIP: 224 input, CLIP statistics, PubMedBERT context 256 (MODEL-FACTS). The two variants
# differ only in where the decoder starts (trainables/models/biomedclipseg.py).
_BIOMED = dict(
    family="vlsm", builder="trainables.models.biomedclipseg:build_biomedclipseg",
    inputs={"full": ModelInputs(224, CLIP_MEAN, CLIP_STD, 256, 0.5), "small": SMALL_CLIP},
    tokenizer="trainables.models.biomedclipseg:biomed_tokenizer",  # BiomedBERT WordPiece; a test vocabulary offline
    encoder_prefixes=("clip.",), defaults=CLIPSEG_FAMILY_DEFAULTS, as_run_mode="frozen",
    weights="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", encoder_lr_scale=0.01,
    gpu_fraction=0.5, cpus=2, memory={"frozen": (0.74, 0.02), "finetune": (2.94, 0.23)}, memory_source="estimated",
    sources="MODEL-FACTS (inputs, weights, decoder-only as run; 197.03M parameters), paper C.1 (training)",
)
BIOMEDCLIPSEG = ModelCard(name="biomedclipseg", title="BiomedCLIPSeg", paper_time=(20, 80),
                          builder_kwargs={"variant": "biomedclipseg"}, **_BIOMED)
BIOMEDCLIPSEG_D = ModelCard(name="biomedclipseg_d", title="BiomedCLIPSeg-D", paper_time=(30, 50),
                            builder_kwargs={"variant": "biomedclipseg_d"}, **_BIOMED)


def _cnn(name: str, title: str, memory: tuple[float, float], parameters: int) -> ModelCard:
    # The CNNs read no text; their context length only sizes the (ignored) token batch.
    return ModelCard(
        name=name, title=title, family="cnn", builder="trainables.models.cnn:build_cnn",
        builder_kwargs={"name": name},
        inputs={"full": ModelInputs(256, IMAGENET_MEAN, IMAGENET_STD, 8, 0.5),
                "small": ModelInputs(128, IMAGENET_MEAN, IMAGENET_STD, 8, 0.5)},
        encoder_prefixes=("net.encoder.",), defaults=CNN_DEFAULTS, as_run_mode="finetune", weights="imagenet",
        gpu_fraction=0.25, cpus=1, memory={"finetune": memory}, memory_source="estimated", parameters=parameters,
        sources="paper C.3 (training, ResNet-50 encoder), MODEL-FACTS (parameters), segmentation_models_pytorch",
    )


STUDY_CARDS = (
    CRIS, CLIPSEG, BIOMEDCLIPSEG, BIOMEDCLIPSEG_D,
    _cnn("unet", "UNet", (0.49, 0.06), 32_521_105),
    _cnn("unetpp", "UNet++", (0.73, 0.15), 48_985_745),
    _cnn("deeplabv3plus", "DeepLabV3+", (0.40, 0.04), 26_677_585),
)

# -- the registry --------------------------------------------------------------------------------
_CARDS: dict[str, ModelCard] = {c.name: c for c in STUDY_CARDS}
_plugins_loaded: set[str] = set()


def register(card: ModelCard) -> ModelCard:
    """Add a model (or replace a plug-in's card of the same name); returns the card."""
    if card.name in {c.name for c in STUDY_CARDS} and _CARDS[card.name] is not card:
        raise ValueError(f"model {card.name!r} is one of the study's: register yours under another name")
    unknown = {"full", "small"} ^ set(card.inputs)
    if unknown:
        raise ValueError(f"model {card.name!r}: inputs needs the sizes full and small, not {sorted(card.inputs)}")
    if card.family not in ("vlsm", "cnn") or card.as_run_mode not in ("frozen", "finetune") or not card.memory:
        raise ValueError(f"model {card.name!r}: family must be vlsm or cnn, as_run_mode frozen or finetune, "
                         f"and memory name at least one mode")
    _CARDS[card.name] = card
    return card


def _load_plugins() -> None:
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        if module not in _plugins_loaded:
            _plugins_loaded.add(module)
            importlib.import_module(module)  # it calls register()


def cards() -> tuple[ModelCard, ...]:
    """Every registered model's card: the study's seven, then plug-ins."""
    _load_plugins()
    return tuple(_CARDS.values())


def card(name: str) -> ModelCard:
    _load_plugins()
    try:
        return _CARDS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(_CARDS)})") from None


def model_names(*, family: str | None = None, study_only: bool = False) -> tuple[str, ...]:
    return tuple(c.name for c in cards() if (family is None or c.family == family) and (c.in_study or not study_only))


def resolve(ref: str | Callable) -> Callable:
    """A card's builder or tokenizer: the callable itself, or imported from "module:function"."""
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
