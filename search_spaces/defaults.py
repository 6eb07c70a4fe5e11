"""Per-model training defaults and the share of a GPU each trial asks for."""

from __future__ import annotations

# How the study trained each model (paper section 4, Appendices B and C; MODEL-FACTS). VLSMs:
# AdamW, weight decay 1e-3, dice + 0.2 BCE, LR x0.1 on a validation-loss plateau; early-stopping
# patience 50 for the CLIPSeg family, 10 for CRIS. CNNs: Adam 1e-3, no weight decay, Dice alone,
# constant LR, batch 16 (MODEL-FACTS gives patience 20). gpu_fraction divides 1 and is sized so
# the batch fits a 24 GB A10G; a trial caps its CUDA memory at that share.
VLSM = {"weight_decay": 1e-3, "optimizer": "adamw", "scheduler": "plateau", "bce_weight": 0.2}
CNN = {"lr": 1e-3, "weight_decay": 0.0, "optimizer": "adam", "scheduler": "constant", "bce_weight": 0.0,
       "batch_size": 16, "patience": 20, "gpu_fraction": 0.25}
MODEL_DEFAULTS: dict[str, dict] = {
    "clipseg": {**VLSM, "lr": 2e-3, "batch_size": 128, "patience": 50, "gpu_fraction": 0.5},
    "cris": {**VLSM, "lr": 2e-5, "batch_size": 32, "patience": 10, "gpu_fraction": 1.0},
    "biomedclipseg": {**VLSM, "lr": 2e-3, "batch_size": 128, "patience": 50, "gpu_fraction": 0.5},
    "biomedclipseg_d": {**VLSM, "lr": 2e-3, "batch_size": 128, "patience": 50, "gpu_fraction": 0.5},
    "unet": CNN,
    "unetpp": CNN,
    "deeplabv3plus": CNN,
}

# The demo and tests train the small architectures on synthetic data in a few CPU-minutes.
SMALL_OVERRIDES: dict = {"size": "small", "batch_size": 8, "max_epochs": 50, "patience": 15}


def gpu_fraction(model: str) -> float:
    return MODEL_DEFAULTS[model]["gpu_fraction"]


def training_defaults(model: str) -> dict:
    return {k: v for k, v in MODEL_DEFAULTS[model].items() if k != "gpu_fraction"}
