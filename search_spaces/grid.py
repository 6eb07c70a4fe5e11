"""Named grids of experiments. A profile is a function returning specs; ``--profile`` picks one.

``study`` is the paper's finetuning experiments, itemized block by block, each block citing where
the paper lists it. The CNN baselines and the zero-shot evaluations are blocks of their own, picked
with ``--block``: they are not among the paper's "442 finetuning experiments" (Appendix C.1).
Every study spec runs to the paper's stopping rule (early stopping on validation dice with the
model's patience), never under ASHA.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

from datasets.catalogue import ALL_POOL, DATASETS, ENDOSCOPY_POOL, INDIVIDUAL, POOLS
from datasets.synthetic import SYNTHETIC_DATASETS
from search_spaces.defaults import SMALL_OVERRIDES, STUDY, estimated_memory_gib, training_defaults
from search_spaces.experiment import ExperimentSpec
from trainables.models import card, model_names

PAPER_FINETUNING_TOTAL = 442  # Appendix C.1: "we have 442 finetuning experiments"

VLSMS = model_names(family="vlsm", study_only=True)  # CRIS, CLIPSeg, BiomedCLIPSeg, BiomedCLIPSeg-D
CNNS = model_names(family="cnn", study_only=True)  # UNet, UNet++, DeepLabV3+
MIMIC = "mimic_cxr_lungs"
# Prompt type of pooled training: `random`, each sample drawing among its own dataset's P1..PN every
# epoch. Table 2 gives one score per pooled model, so one prompt setting per pool; the paper does
# not name it, the released pooled datamodules take it as a parameter and the study's later runs
# pass "random" (DATA-FACTS). CNNs read no text: they take the empty prompt P0.
POOLED_PROMPT = "random"


def study_spec(model: str, mode: str, train_set: str, prompt_type: str, eval_sets: tuple[str, ...] = ()
               ) -> ExperimentSpec:
    """A full-size experiment with the study's weights and the model's defaults."""
    encoder_lr_scale = card(model).encoder_lr_scale if mode == "finetune" else 1.0
    return ExperimentSpec(model=model, mode=mode, train_set=train_set, prompt_type=prompt_type,
                          eval_sets=eval_sets, weights=card(model).weights, encoder_lr_scale=encoder_lr_scale,
                          **training_defaults(model), **STUDY)


def each_dataset_and_prompt(model: str, mode: str) -> list[ExperimentSpec]:
    """The eight individual datasets, each with every prompt type of its family."""
    return [study_spec(model, mode, name, prompt) for name in INDIVIDUAL for prompt in DATASETS[name].prompt_types]


def individual() -> list[ExperimentSpec]:
    # C.1: five non-radiology datasets x P0-P9 (50) + CAMUS P0-P7, BUSI P0-P6, CheXlocalize P0-P6 (22)
    # = 72 per VLSM; Figure 2 (finetuned) and Table 2 ("Individual"). Trained as the study's code
    # trained them (each card's as_run_mode): CRIS end to end, the CLIPSeg family's decoder alone, so
    # CLIPSeg's 72 are the frozen block's CLIPSeg experiments, run once and counted in both blocks.
    return [s for model in VLSMS for s in each_dataset_and_prompt(model, card(model).as_run_mode)]


def end_to_end() -> list[ExperimentSpec]:
    # Beyond the paper (opt-in): the CLIPSeg family with its pretrained encoders trained too, at
    # the card's encoder_lr_scale of the decoder's LR. The paper believed its individual block did this;
    # its code did not (MODEL-FACTS), so no published number comes from this regime.
    return [s for model in VLSMS if card(model).as_run_mode == "frozen"
            for s in each_dataset_and_prompt(model, "finetune")]


def frozen() -> list[ExperimentSpec]:
    # Appendix F.1, Tables 6 (CRIS) and 7 (CLIPSeg): the same 8 datasets and prompts, decoder
    # trained on frozen CLIP encoders.
    return [s for model in ("cris", "clipseg") for s in each_dataset_and_prompt(model, "frozen")]


def pooled() -> list[ExperimentSpec]:
    # C.1 ("we also finetune CRIS and CLIPSeg with the pooled datasets comprising only endoscopic and
    # all datasets") and Table 2's "Endoscopy Pooled" and "Pooled" rows, scored on their test sets.
    return [study_spec(model, card(model).as_run_mode, pool, POOLED_PROMPT, POOLS[pool].eval_sets)
            for model in ("cris", "clipseg") for pool in (ENDOSCOPY_POOL, ALL_POOL)]


def mimic() -> list[ExperimentSpec]:
    # Appendix F.2, Table 8 ("Finetuning" rows): CRIS and CLIPSeg on MIMIC-CXR lungs with the empty
    # prompt (P0) and the radiology report (P1).
    return [study_spec(model, card(model).as_run_mode, MIMIC, prompt) for model in ("cris", "clipseg")
            for prompt in ("p0", "p1")]


def cnn() -> list[ExperimentSpec]:
    # Table 2 and C.3: UNet, UNet++ and DeepLabV3+ (ResNet-50, ImageNet) on each of the 8 individual
    # datasets and on both pools. No text: prompt P0, one run per dataset.
    individual_runs = [study_spec(model, "finetune", name, "p0") for model in CNNS for name in INDIVIDUAL]
    pooled_runs = [study_spec(model, "finetune", pool, "p0", POOLS[pool].eval_sets)
                   for model in CNNS for pool in (ENDOSCOPY_POOL, ALL_POOL)]
    return individual_runs + pooled_runs


def zeroshot() -> list[ExperimentSpec]:
    # Figure 2 (zero-shot): CRIS and CLIPSeg as pretrained, every dataset and prompt; no training.
    # BiomedCLIPSeg(-D) have no pretrained decoder, so no zero-shot (section 2.1).
    return [s for model in ("cris", "clipseg") for s in each_dataset_and_prompt(model, "zeroshot")]


def zeroshot_mimic() -> list[ExperimentSpec]:
    # Appendix F.2, Table 8 ("Zero-shot" rows): CRIS and CLIPSeg on MIMIC-CXR lungs, P0 and P1.
    return [study_spec(model, "zeroshot", MIMIC, prompt) for model in ("cris", "clipseg") for prompt in ("p0", "p1")]


def demo(models: tuple[str, ...] = ("clipseg",)) -> list[ExperimentSpec]:
    """Small CLIPSeg, decoder trained on frozen encoders (as the study did), on both synthetic sets,
    with no prompt (p0), the class name (p1) and a rich prompt naming size, colour and place (p6).
    ``models`` (grid --model) runs the same for other registered models, each in its as-run mode; a
    model that reads no text takes p0 alone."""
    return [
        ExperimentSpec(model=model, mode=card(model).as_run_mode, train_set=dataset, prompt_type=prompt,
                       **{**training_defaults(model), **SMALL_OVERRIDES})
        for model in models
        for dataset in SYNTHETIC_DATASETS
        for prompt in (("p0", "p1", "p6") if card(model).reads_text else ("p0",))
    ]


@dataclass(frozen=True)
class Block:
    name: str
    source: str  # where the paper lists these experiments
    specs: Callable[[], list[ExperimentSpec]]
    finetuning: bool  # counted among the paper's 442 finetuning experiments


STUDY_BLOCKS: dict[str, Block] = {b.name: b for b in (
    Block("individual", "App. C.1; Fig. 2, Table 2 (Individual): 4 VLSMs x 8 datasets x their prompts",
          individual, True),
    Block("frozen", "App. F.1; Tables 6, 7: CRIS, CLIPSeg with frozen encoders, 8 datasets x prompts", frozen, True),
    Block("pooled", "App. C.1; Table 2 (Endoscopy Pooled, Pooled): CRIS, CLIPSeg x 2 pools", pooled, True),
    Block("mimic", "App. F.2; Table 8 (Finetuning): CRIS, CLIPSeg x P0, P1", mimic, True),
    Block("cnn", "App. C.3; Table 2: UNet, UNet++, DeepLabV3+ x (8 datasets + 2 pools)", cnn, False),
    Block("zeroshot", "Fig. 2 (zero-shot): CRIS, CLIPSeg x 8 datasets x prompts; no training", zeroshot, False),
    Block("zeroshot_mimic", "App. F.2; Table 8 (Zero-shot): CRIS, CLIPSeg x P0, P1; no training",
          zeroshot_mimic, False),
    Block("end_to_end", "beyond the paper: CLIPSeg family x 8 datasets x prompts, encoders trained too",
          end_to_end, False),
)}
DEMO_BLOCK = Block("demo", "none: the embedded default (small CLIPSeg, synthetic data)", demo, False)

# Blocks of each profile; --block picks among the study's blocks, all of them allowed.
PROFILE_BLOCKS: dict[str, tuple[Block, ...]] = {
    "demo": (DEMO_BLOCK,),
    "study": tuple(b for b in STUDY_BLOCKS.values() if b.finetuning),
}


def blocks_for(profile: str, names: list[str] | None = None, models: list[str] | None = None) -> tuple[Block, ...]:
    """The blocks a launch runs: the profile's, or the study's blocks named with --block. The demo of
    other ``models`` (grid --model) is a demo block of theirs, so --dry-run counts its experiments."""
    if profile == "demo" and models and not names:
        chosen = tuple(dict.fromkeys(models))
        return (dataclasses.replace(DEMO_BLOCK, specs=lambda: demo(chosen)),)
    if not names:
        return PROFILE_BLOCKS[profile]
    if profile != "study":
        raise ValueError(f"--block picks blocks of --profile study, not of {profile!r}")
    unknown = [n for n in names if n not in STUDY_BLOCKS]
    if unknown:
        raise ValueError(f"unknown block {unknown[0]!r}: expected one of {', '.join(STUDY_BLOCKS)}")
    return tuple(STUDY_BLOCKS[n] for n in dict.fromkeys(names))


@functools.cache
def _block_names() -> dict[tuple[str, str, str, str], str]:
    # (model, mode, train set, prompt) names one block: blocks differ in at least one of them.
    # An experiment two blocks share (CLIPSeg decoder-only: individual and frozen) counts in the first.
    names: dict[tuple[str, str, str, str], str] = {}
    for block in STUDY_BLOCKS.values():
        for s in block.specs():
            names.setdefault((s.model, s.mode, s.train_set, s.prompt_type), block.name)
    return names


def block_of(spec: ExperimentSpec) -> str:
    """The study block a spec belongs to (found under --max-epochs too, which changes ids); for other
    specs (the demo's), "model mode train-set"."""
    key = (spec.model, spec.mode, spec.train_set, spec.prompt_type)
    return _block_names().get(key, f"{spec.model} {spec.mode} {spec.train_set}")


def specs_of(blocks: tuple[Block, ...]) -> list[ExperimentSpec]:
    """The blocks' experiments, each once: an experiment two blocks list (CLIPSeg decoder-only in
    `individual` and `frozen`) is one spec, one id, one run."""
    return list({s.id: s for block in blocks for s in block.specs()}.values())


def profile_specs(profile: str, blocks: list[str] | None = None, models: list[str] | None = None
                  ) -> list[ExperimentSpec]:
    """A launch's experiments: the profile's blocks (or the study's named ``blocks``), for ``models``
    only where given. The demo runs for any registered model; the study's blocks list only theirs."""
    for model in models or ():
        card(model)  # unknown names fail here, with the known ones
    if profile == "demo" and models:
        return demo(tuple(dict.fromkeys(models)))
    specs = specs_of(blocks_for(profile, blocks))
    if models:
        specs = [s for s in specs if s.model in models]
        if not specs:
            raise ValueError(f"no experiment of profile {profile!r} trains {', '.join(models)}"
                             + (" in the chosen blocks" if blocks else "") + ": the demo runs any model "
                             "(--profile demo --model NAME)")
    return specs


def shared_experiments(blocks: tuple[Block, ...]) -> dict[tuple[str, str], list[str]]:
    """Ids listed by two blocks, per pair of block names (in block order)."""
    ids = {block.name: [s.id for s in block.specs()] for block in blocks}
    shared = {}
    for i, a in enumerate(blocks):
        for b in blocks[i + 1:]:
            common = [x for x in ids[a.name] if x in set(ids[b.name])]
            if common:
                shared[(a.name, b.name)] = common
    return shared


def _grid_key(spec: ExperimentSpec) -> tuple:
    # What a block fixes of its experiments; --set, --max-epochs, --seeds and the rest change the others.
    return spec.model, spec.mode, spec.train_set, spec.prompt_type, spec.eval_sets


def block_members(block: Block, selected: list[ExperimentSpec]) -> list[ExperimentSpec]:
    """The ``selected`` specs that are ``block``'s experiments, as the launch changed them (their fields,
    so their ids: --set, --max-epochs, --seeds, ...)."""
    keys = {_grid_key(s) for s in block.specs()}
    return [s for s in selected if _grid_key(s) in keys]


def block_summary(blocks: tuple[Block, ...], selected: list[ExperimentSpec]) -> list[str]:
    """Lines for --dry-run: each block's name, count (after --seeds and --only), regime, largest estimated
    GPU memory of a trial and source; the experiments two blocks share; the count against the paper's."""
    chosen = {s.id for s in selected}
    lines = [f"{'block':<15} {'count':>5}  {'regime':<10} {'need GiB':>8}  source in the paper"]
    finetuning = 0
    for block in blocks:
        specs = block_members(block, selected)
        finetuning += len(specs) if block.finetuning else 0
        regimes = "/".join(sorted({s.regime for s in specs})) or "-"
        needs = [n for n in (estimated_memory_gib(s.to_dict()) for s in specs) if n is not None]
        need = f"{max(needs):8.1f}" if needs else f"{'-':>8}"
        lines.append(f"{block.name:<15} {len(specs):>5}  {regimes:<10} {need}  {block.source}")
    named = {block.name: block for block in blocks}
    for a, b in shared_experiments(blocks):
        ids = {s.id for s in block_members(named[a], selected)} & {s.id for s in block_members(named[b], selected)}
        if ids:
            lines.append(f"shared: {len(ids)} experiments are in both {a} and {b} (the same spec): "
                         f"run once, reported in both")
    if any(b.finetuning for b in blocks):
        lines.append(f"finetuning experiments here: {finetuning} listed, {len(chosen)} to run; the paper counts "
                     f"{PAPER_FINETUNING_TOTAL} (docs/study.md reconciles the two)")
    return lines


PROFILES: dict[str, Callable[[], list[ExperimentSpec]]] = {
    name: (lambda blocks=blocks: specs_of(blocks)) for name, blocks in PROFILE_BLOCKS.items()
}
# Datasets each profile can generate itself when they are missing from --data.
PROFILE_SYNTHETIC: dict[str, tuple[str, ...]] = {"demo": tuple(SYNTHETIC_DATASETS)}
