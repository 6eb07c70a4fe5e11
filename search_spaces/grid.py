"""Named grids of experiments: the built-in study files (``search_spaces/studies/*.yaml``); ``--profile``
picks one, ``--study-file`` names a user's own (``search_spaces.study_file`` reads both).

``study`` is the paper's finetuning experiments, itemized block by block, each block citing where
the paper lists it. The CNN baselines and the zero-shot evaluations are blocks of their own, picked
with ``--block``: they are not among the paper's "442 finetuning experiments" (Appendix C.1).
Every study spec runs to the paper's stopping rule (early stopping on validation dice with the
model's patience), never under ASHA. The functions below take a profile's name or a loaded ``Study``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from search_spaces.defaults import estimated_memory_gib
from search_spaces.experiment import ExperimentSpec
from search_spaces.study_file import STUDIES_DIR, Block, Study, experiment, load_study

__all__ = ["Block", "Study"]  # re-exported: the grid's blocks are the study file's

PAPER_FINETUNING_TOTAL = 442  # Appendix C.1: "we have 442 finetuning experiments"

MIMIC = "mimic_cxr_lungs"


@functools.cache
def builtin(name: str) -> Study:
    """A built-in profile: the study file shipped as ``search_spaces/studies/<name>.yaml``."""
    path = STUDIES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown profile {name!r}: expected one of {', '.join(PROFILE_NAMES)}")
    return load_study(path)


PROFILE_NAMES = tuple(sorted(p.stem for p in STUDIES_DIR.glob("*.yaml")))


def study_of(profile: str | Study) -> Study:
    return profile if isinstance(profile, Study) else builtin(profile)


def study_spec(model: str, mode: str, train_set: str, prompt_type: str, eval_sets: tuple[str, ...] = ()
               ) -> ExperimentSpec:
    """A full-size experiment with the study's weights, the model's defaults and the study's settings."""
    study = builtin("study")
    return experiment(model, mode, train_set, prompt_type, eval_sets, weights="pretrained", settings=study.settings)


def demo(models: tuple[str, ...] = ("clipseg",)) -> list[ExperimentSpec]:
    """Small CLIPSeg, decoder trained on frozen encoders (as the study did), on both synthetic sets,
    with no prompt (p0), the class name (p1) and a rich prompt naming size, colour and place (p6).
    ``models`` (grid --model) runs the same for other registered models, each in its as-run mode; a
    model that reads no text takes p0 alone (studies/demo.yaml)."""
    return builtin("demo").specs(models=list(models))


def zeroshot() -> list[ExperimentSpec]:
    """The study's zero-shot block (Figure 2): CRIS and CLIPSeg as pretrained, every dataset and prompt."""
    return STUDY_BLOCKS["zeroshot"].specs()


STUDY_BLOCKS: dict[str, Block] = dict(builtin("study").blocks)

# Blocks each profile runs without --block.
PROFILE_BLOCKS: dict[str, tuple[Block, ...]] = {name: builtin(name).blocks_for() for name in PROFILE_NAMES}


def blocks_for(profile: str | Study, names: list[str] | None = None, models: list[str] | None = None
               ) -> tuple[Block, ...]:
    """The blocks a launch runs: the profile's default ones, or those named with --block. The demo of
    other ``models`` (grid --model) is a demo block of theirs, so --dry-run counts its experiments."""
    study = study_of(profile)
    try:
        return study.blocks_for(names, models)
    except ValueError as e:
        raise ValueError(hinted(e, study, names)) from None


def hinted(error: ValueError, study: Study, names: list[str] | None) -> str:
    """``error``'s message, saying where a block the study lacks is found, if it is one of the paper's."""
    paper = [n for n in names or () if n not in study.blocks and n in STUDY_BLOCKS]
    return f"{error}; {paper[0]!r} is a block of --profile study" if paper else str(error)


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


def profile_specs(profile: str | Study, blocks: list[str] | None = None, models: list[str] | None = None
                  ) -> list[ExperimentSpec]:
    """A launch's experiments: the profile's blocks (or the named ``blocks``), for ``models`` only where
    given. The demo runs for any registered model (its file says ``any_model``); the study's blocks list
    only theirs."""
    study = study_of(profile)
    try:
        return study.specs(blocks, models)
    except ValueError as e:
        if models and not study.any_model and str(e).startswith("no experiment"):
            raise ValueError(f"{e}: the demo runs any model (--profile demo --model NAME)") from None
        raise ValueError(hinted(e, study, blocks)) from None


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
# Datasets each profile can generate itself when they are missing from --data: the synthetic sets it names.
PROFILE_SYNTHETIC: dict[str, tuple[str, ...]] = {name: builtin(name).synthetic for name in PROFILE_NAMES}
