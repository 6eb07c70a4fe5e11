"""Per-model training defaults and the share of a GPU each trial asks for."""

from __future__ import annotations

# lr, weight decay, batch size and early-stopping patience as the study trained CLIPSeg
# (paper section 4 and Appendix B); gpu_fraction divides 1 and fits the batch on a 24 GB A10G.
MODEL_DEFAULTS: dict[str, dict] = {
    "clipseg": {"lr": 2e-3, "weight_decay": 1e-3, "batch_size": 128, "patience": 50, "gpu_fraction": 0.5},
}

# The demo and tests train the small architectures on synthetic data in a few CPU-minutes.
SMALL_OVERRIDES: dict = {"size": "small", "batch_size": 8, "max_epochs": 50, "patience": 15}


def gpu_fraction(model: str) -> float:
    return MODEL_DEFAULTS[model]["gpu_fraction"]


def training_defaults(model: str) -> dict:
    return {k: v for k, v in MODEL_DEFAULTS[model].items() if k != "gpu_fraction"}
