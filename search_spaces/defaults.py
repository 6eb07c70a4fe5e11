"""The study's settings, and what each trial asks of a node.

Each model's training defaults, pretrained weights, as-run mode, GPU share and memory model are on
its card (trainables/models/cards.py), with their sources; the functions below read the cards.
Training defaults are fields of ``ExperimentSpec``; resources (GPU share, CPUs) are not, because
they change where a trial runs, not what it computes.
"""

from __future__ import annotations

from trainables.models import card

# The demo and tests train the small architectures on synthetic data in a few CPU-minutes.
SMALL_OVERRIDES: dict = {"size": "small", "batch_size": 8, "max_epochs": 50, "patience": 15}

# The study's runs: full-size models and an epoch cap that early stopping always reaches first (the
# released code's Lightning trainer: max_epochs 1000; the paper reports 45-90 epochs on average).
STUDY = {"size": "full", "max_epochs": 1000}

# -- resources ---------------------------------------------------------------------------------
GPU_MEMORY_GIB = 24.0  # an A10G (cluster.yaml's g5 workers); pass another size for other GPUs
CUDA_CONTEXT_GIB = 0.5  # per process, outside PyTorch's allocator (and its per-process cap)
HEADROOM = 1.15  # allocator fragmentation and evaluation at the original resolution


def gpu_fraction(model: str) -> float:
    return card(model).gpu_fraction


def training_defaults(model: str) -> dict:
    return dict(card(model).defaults)


def estimated_memory_gib(spec: dict, replicas: int = 1) -> float | None:
    """Estimated GPU memory of a full-size trial (None for the small test models): ``replicas``
    models held at once (an hpo trial holds one per dataset), one batch of activations at a time."""
    if spec.get("size", "full") != "full":
        return None
    per_mode = card(spec["model"]).memory
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
    model_card = card(spec["model"])
    cpu = model_card.cpus if cpus is None else cpus
    if gpus_per_trial is not None:
        return {"cpu": cpu, "gpu": gpus_per_trial}
    share = model_card.gpu_fraction
    need = estimated_memory_gib(spec, replicas)
    while need is not None and share < 1.0 and need > share * gpu_memory_gib:
        share *= 2
    return {"cpu": cpu, "gpu": min(share, 1.0)}
