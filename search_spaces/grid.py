"""Named grids of experiments. A profile is a function returning specs; ``--profile`` picks one."""

from __future__ import annotations

from collections.abc import Callable

from datasets.synthetic import SYNTHETIC_DATASETS
from orchestrator.experiment import ExperimentSpec
from search_spaces.defaults import SMALL_OVERRIDES, training_defaults


def demo() -> list[ExperimentSpec]:
    """Small CLIPSeg, decoder trained on frozen encoders (as the study did), on both synthetic sets,
    with no prompt (p0), the class name (p1) and a rich prompt naming size, colour and place (p6)."""
    base = {**training_defaults("clipseg"), **SMALL_OVERRIDES}
    return [
        ExperimentSpec(model="clipseg", mode="frozen", train_set=dataset, prompt_type=prompt, **base)
        for dataset in SYNTHETIC_DATASETS
        for prompt in ("p0", "p1", "p6")
    ]


PROFILES: dict[str, Callable[[], list[ExperimentSpec]]] = {"demo": demo}
# Datasets each profile can generate itself when they are missing from --data.
PROFILE_SYNTHETIC: dict[str, tuple[str, ...]] = {"demo": tuple(SYNTHETIC_DATASETS)}
