"""Per-model training defaults, the study's settings, and what each trial asks of a node.

Training defaults are fields of ``ExperimentSpec``; resources (GPU share, CPUs) are not, because
they change where a trial runs, not what it computes.
"""

from __future__ import annotations

# How the study trained each model (paper section 2.4, Appendices C.1 and C.3; MODEL-FACTS). VLSMs:
# AdamW, weight decay 1e-3, dice + 0.2 BCE, LR x0.1 on a validation-loss plateau (5 epochs); LR 2e-3
# and batch 128 for the CLIPSeg family, 2e-5 and batch 32 for CRIS; early-stopping patience on
# validation dice 50 for the CLIPSeg variants, 10 for CRIS (C.1). CNNs: Adam 1e-3, no weight decay,
# Dice alone, constant LR, batch 16 (C.3); patience 20, the released code's early-stopping callback.
VLSM = {"weight_decay": 1e-3, "optimizer": "adamw", "scheduler": "plateau", "bce_weight": 0.2}
CNN = {"lr": 1e-3, "weight_decay": 0.0, "optimizer": "adam", "scheduler": "constant", "bce_weight": 0.0,
       "batch_size": 16, "patience": 20}
MODEL_DEFAULTS: dict[str, dict] = {
    "clipseg": {**VLSM, "lr": 2e-3, "batch_size": 128, "patience": 50},
    "cris": {**VLSM, "lr": 2e-5, "batch_size": 32, "patience": 10},
    "biomedclipseg": {**VLSM, "lr": 2e-3, "batch_size": 128, "patience": 50},
    "biomedclipseg_d": {**VLSM, "lr": 2e-3, "batch_size": 128, "patience": 50},
    "unet": CNN,
    "unetpp": CNN,
    "deeplabv3plus": CNN,
}

# The demo and tests train the small architectures on synthetic data in a few CPU-minutes.
SMALL_OVERRIDES: dict = {"size": "small", "batch_size": 8, "max_epochs": 50, "patience": 15}

# The study's runs: full-size models and an epoch cap that early stopping always reaches first (the
# released code's Lightning trainer: max_epochs 1000; the paper reports 45-90 epochs on average).
STUDY = {"size": "full", "max_epochs": 1000}
# Pretrained weights the study started from (builders in trainables.models take these names). CRIS:
# the community RefCOCO checkpoint the study's config loads (pretrain/cris_best.pth, original format).
STUDY_WEIGHTS: dict[str, str] = {
    "clipseg": "CIDAS/clipseg-rd64-refined",
    "cris": "pretrain/cris_best.pth",
    "biomedclipseg": "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    "biomedclipseg_d": "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    "unet": "imagenet", "unetpp": "imagenet", "deeplabv3plus": "imagenet",
}
# What trains in the study's runs of each model (its "as run" regime; MODEL-FACTS, "What finetuning
# really did"): the CLIPSeg family's decoder alone (frozen encoders, whatever the configs said), CRIS
# and the CNNs end to end. The grid's default blocks train every model so.
AS_RUN_MODE: dict[str, str] = {
    "clipseg": "frozen", "biomedclipseg": "frozen", "biomedclipseg_d": "frozen",
    "cris": "finetune", "unet": "finetune", "unetpp": "finetune", "deeplabv3plus": "finetune",
}
# Encoders' LR relative to the decoder's when they train end to end (mode "finetune"). CRIS: 1.0,
# the study's single AdamW LR of 2e-5 for the whole model. CLIPSeg family (the opt-in end_to_end
# block, which the study never ran): 0.01, so the CLIP towers train at 2e-5 (the LR the study gave
# CLIP inside CRIS) while the decoder keeps the 2e-3 tuned for it alone. A choice of ours, recorded in
# every spec and its id; `hpo --regime end_to_end` searches it (search_spaces/hpo.py).
FINETUNE_ENCODER_LR_SCALE: dict[str, float] = {
    "clipseg": 0.01, "cris": 1.0, "biomedclipseg": 0.01, "biomedclipseg_d": 0.01,
    "unet": 1.0, "unetpp": 1.0, "deeplabv3plus": 1.0,
}

# -- resources ---------------------------------------------------------------------------------
GPU_MEMORY_GIB = 24.0  # an A10G (cluster.yaml's g5 workers); pass another size for other GPUs
CUDA_CONTEXT_GIB = 0.5  # per process, outside PyTorch's allocator (and its per-process cap)
HEADROOM = 1.15  # allocator fragmentation and evaluation at the original resolution

# GPU share and CPUs each model's trial asks for by default: a share divides 1 and holds the
# study's batch in the study's usual mode on an A10G, by MEMORY below: CLIPSeg frozen, batch 128,
# ~6.3 GiB -> 0.5 (12 GiB); CRIS frozen, batch 32, ~6.2 GiB -> 0.5 (end to end, ~14.1 GiB, it gets a
# whole GPU); BiomedCLIPSeg(-D) frozen, batch 128, ~4.3 GiB -> 0.5 (0.25 is under 1.5x its estimate);
# CNNs, batch 16, 1.7-4.1 GiB -> 0.25. CPUs: a g5 node has 4 vCPUs per GPU, shared by its trials.
RESOURCES: dict[str, dict[str, float]] = {
    "clipseg": {"gpu_fraction": 0.5, "cpus": 2},
    "cris": {"gpu_fraction": 0.5, "cpus": 2},
    "biomedclipseg": {"gpu_fraction": 0.5, "cpus": 2},
    "biomedclipseg_d": {"gpu_fraction": 0.5, "cpus": 2},
    "unet": {"gpu_fraction": 0.25, "cpus": 1},
    "unetpp": {"gpu_fraction": 0.25, "cpus": 1},
    "deeplabv3plus": {"gpu_fraction": 0.25, "cpus": 1},
}

# Peak training memory of the full-size models at their study input size (bf16 autocast, AdamW):
# (fixed GiB, GiB per sample of the batch) per mode. Fixed = weights, plus gradients and two AdamW
# moments for what trains. Measured: CLIPSeg at 352 on an H200, batch 32: frozen 1.7 GiB peak,
# finetune 10.1 GiB (fixed from the parameter count, per sample the rest / 32). The others are
# estimates scaled from CLIPSeg by tokens and pixels per sample (BiomedCLIP: 196 image tokens at 224
# and a 256-token BERT; CRIS: RN50 at 416 and a 104x104 projector; CNNs at 256); replace them with
# `python -m benchmarks.models` numbers from the target GPU. Zero-shot evaluates without gradients:
# the frozen numbers bound it.
MEMORY: dict[str, dict[str, tuple[float, float]]] = {
    "clipseg": {"frozen": (0.56, 0.035), "finetune": (2.25, 0.245)},  # measured
    "cris": {"frozen": (1.15, 0.12), "finetune": (2.20, 0.30)},  # estimated
    "biomedclipseg": {"frozen": (0.74, 0.02), "finetune": (2.94, 0.23)},  # estimated
    "biomedclipseg_d": {"frozen": (0.74, 0.02), "finetune": (2.94, 0.23)},  # estimated
    "unet": {"finetune": (0.49, 0.06)},  # estimated
    "unetpp": {"finetune": (0.73, 0.15)},  # estimated
    "deeplabv3plus": {"finetune": (0.40, 0.04)},  # estimated
}


def gpu_fraction(model: str) -> float:
    return RESOURCES[model]["gpu_fraction"]


def training_defaults(model: str) -> dict:
    return dict(MODEL_DEFAULTS[model])


def estimated_memory_gib(spec: dict, replicas: int = 1) -> float | None:
    """Estimated GPU memory of a full-size trial (None for the small test models): ``replicas``
    models held at once (an hpo trial holds one per dataset), one batch of activations at a time."""
    if spec.get("size", "full") != "full":
        return None
    per_mode = MEMORY[spec["model"]]
    fixed, per_sample = per_mode.get(spec["mode"]) or per_mode.get("frozen") or per_mode["finetune"]
    micro_batch = spec["batch_size"] // spec.get("grad_accum", 1)  # activations of one micro-batch at a time
    return (replicas * fixed + per_sample * micro_batch) * HEADROOM + CUDA_CONTEXT_GIB


def resources_for(spec: dict, gpus_per_trial: float | None = None, cpus: float | None = None, *,
                  replicas: int = 1, gpu_memory_gib: float = GPU_MEMORY_GIB) -> dict[str, float]:
    """What one trial of ``spec`` (an ExperimentSpec dict) asks for: ``{"cpu": C, "gpu": F}``.

    The GPU share starts at the model's default and doubles (0.25 -> 0.5 -> 1) while the spec's
    estimated memory does not fit it, so a larger batch gets more of a GPU. A trial needing more
    than one whole GPU still asks for one (it fits a larger card). ``gpus_per_trial`` overrides
    the share; ``cpus`` overrides the model's CPUs.
    """
    model = spec["model"]
    if model not in RESOURCES:
        raise ValueError(f"unknown model {model!r}: expected one of {', '.join(RESOURCES)}")
    cpu = RESOURCES[model]["cpus"] if cpus is None else cpus
    if gpus_per_trial is not None:
        return {"cpu": cpu, "gpu": gpus_per_trial}
    share = RESOURCES[model]["gpu_fraction"]
    need = estimated_memory_gib(spec, replicas)
    while need is not None and share < 1.0 and need > share * gpu_memory_gib:
        share *= 2
    return {"cpu": cpu, "gpu": min(share, 1.0)}
