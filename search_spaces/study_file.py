"""A study as a file: models, modes, datasets, prompt types, blocks, settings, seeds and resources in YAML.

The built-in profiles are such files (``search_spaces/studies/demo.yaml`` and ``study.yaml``), read by
this module as a user's own file is (``--study-file PATH``; ``new-study NAME`` writes one to start from).
The whole file is checked when it is read, before anything runs: every error names the file, the line,
the key, and what was expected. docs/study.md ("Your own study") describes the format.

A block expands to one experiment per seed x model x dataset x prompt type, in that order. Each spec
starts from its model card's training defaults; ``weights: pretrained`` adds the card's pretrained
weights; a model trained end to end (mode finetune) gets its card's encoder LR scale; then the file's
``settings`` (the block's over the file's). A model that reads no text takes the empty prompt p0 alone;
a zero-shot experiment, which trains nothing, runs once whatever the seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from datasets.catalogue import DATASETS, POOLS
from datasets.cli import name_problem
from datasets.shards import ShardError, ShardStore
from datasets.synthetic import SYNTHETIC_DATASETS
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES
from search_spaces.experiment import CHOICES, HYPERPARAMETERS, ExperimentSpec
from trainables.models import card
from trainables.models.cards import PLUGINS_ENV

STUDIES_DIR = Path(__file__).resolve().parent / "studies"  # the built-in profiles, shipped in the package
MODES = ("as_run", "frozen", "finetune", "zeroshot")  # as_run: each model as the study's code trained it
WEIGHTS = ("pretrained", "none")
TOP_KEYS = ("name", "description", "plugins", "weights", "settings", "seeds", "resources", "any_model",
            "default_blocks", "blocks")
BLOCK_KEYS = ("source", "models", "mode", "datasets", "prompts", "eval_sets", "settings", "seeds", "finetuning")
RESOURCES = ("gpus_per_trial", "cpus_per_trial")
FIXED_BY_BLOCKS = ("model", "mode", "train_set", "prompt_type", "eval_sets", "seed")  # blocks and seeds say these
SPEC_FIELDS = {f.name: f for f in dataclasses.fields(ExperimentSpec)}
SETTINGS = tuple(n for n in SPEC_FIELDS if n not in FIXED_BY_BLOCKS)
SIZES = ("full", "small")  # every model card's input sizes (trainables.models.cards)
# Counts and rates that only mean something above 0.
POSITIVE = ("lr", "batch_size", "max_epochs", "patience", "lr_patience", "grad_accum", "schedule_epochs")


class StudyFileError(ValueError):
    """A study file that cannot run: the message names the file, the line, the key and what was expected."""


@dataclass(frozen=True)
class Block:
    """A named group of experiments and where they come from (for the paper's blocks, where it lists them)."""

    name: str
    source: str
    specs: Callable[[], list[ExperimentSpec]]
    finetuning: bool = False  # counted among the paper's finetuning experiments (the study file's blocks only)


@dataclass(frozen=True)
class BlockPlan:
    """What a block expands: the file's values, checked."""

    models: tuple[str, ...]
    mode: str
    datasets: tuple[str, ...]
    prompts: dict[str, tuple[str, ...]]  # per dataset
    eval_sets: tuple[str, ...] | None  # None: each dataset's own (a pool's: its eval sets)
    settings: dict
    seeds: tuple[int, ...] | None
    weights: str


@dataclass(frozen=True)
class Study:
    name: str
    path: str
    description: str
    blocks: dict[str, Block]
    default_blocks: tuple[str, ...]  # what runs without --block
    plans: dict[str, BlockPlan]
    settings: dict = field(default_factory=dict)  # the file's own settings (its blocks may add theirs)
    any_model: bool = False  # --model NAME runs the blocks for that model instead of keeping its experiments
    plugins: tuple[str, ...] = ()
    from_hpo: str | None = None  # a study whose hpo selections give the hyperparameters (--hparams-from-hpo)
    resources: dict = field(default_factory=dict)  # gpus_per_trial, cpus_per_trial: a trial's defaults
    synthetic: tuple[str, ...] = ()  # synthetic datasets it names: generated into --data where missing

    def blocks_for(self, names: list[str] | None = None, models: list[str] | None = None) -> tuple[Block, ...]:
        """The blocks a launch runs: the default ones, or those ``names`` picks; for ``models`` where the file
        says ``any_model`` (its blocks for those models instead)."""
        if not names:
            chosen = tuple(self.blocks[n] for n in self.default_blocks)
        else:
            unknown = [n for n in names if n not in self.blocks]
            if unknown:
                raise ValueError(f"unknown block {unknown[0]!r} of {self.where()}: expected one of "
                                 f"{', '.join(self.blocks)}")
            chosen = tuple(self.blocks[n] for n in dict.fromkeys(names))
        if self.any_model and models:
            wanted = tuple(dict.fromkeys(models))
            chosen = tuple(dataclasses.replace(b, specs=functools.partial(
                expand, dataclasses.replace(self.plans[b.name], models=wanted))) for b in chosen)
        return chosen

    def specs(self, names: list[str] | None = None, models: list[str] | None = None) -> list[ExperimentSpec]:
        """The experiments of ``blocks_for(names, models)``, each once (two blocks may list one spec); with
        ``models``, only theirs."""
        for model in models or ():
            card(model)  # an unknown name fails here, with the known ones
        specs = list({s.id: s for b in self.blocks_for(names, models) for s in b.specs()}.values())
        if models and not self.any_model:
            specs = [s for s in specs if s.model in models]
            if not specs:
                raise ValueError(f"no experiment of {self.where()} trains {', '.join(models)}"
                                 + (" in the chosen blocks" if names else ""))
        return specs

    def where(self) -> str:
        return f"profile {self.name!r}" if Path(self.path).parent == STUDIES_DIR else f"study file {self.path}"


def experiment(model: str, mode: str, train_set: str, prompt_type: str, eval_sets: tuple[str, ...] = (), *,
               weights: str = "pretrained", settings: dict | None = None, seed: int | None = None) -> ExperimentSpec:
    """One spec by the file's rule (the module's docstring): card defaults, weights, encoder LR scale, settings."""
    model_card = card(model)
    mode = model_card.as_run_mode if mode == "as_run" else mode
    fields = dict(model_card.defaults)
    if weights == "pretrained":
        fields["weights"] = model_card.weights
    fields["encoder_lr_scale"] = model_card.encoder_lr_scale if mode == "finetune" else 1.0
    fields.update(settings or {})
    if seed is not None:
        fields["seed"] = seed
    return ExperimentSpec(model=model, mode=mode, train_set=train_set, prompt_type=prompt_type,
                          eval_sets=eval_sets, **fields)


def expand(plan: BlockPlan) -> list[ExperimentSpec]:
    """A block's experiments: seed by seed, then model, dataset and prompt type."""
    specs = []
    for r, seed in enumerate(plan.seeds or (None,)):
        for model in plan.models:
            model_card = card(model)
            mode = model_card.as_run_mode if plan.mode == "as_run" else plan.mode
            if r and mode == "zeroshot":
                continue  # trains nothing: one run whatever the seeds
            for dataset in plan.datasets:
                prompts = plan.prompts[dataset] if model_card.reads_text else ("p0",)
                eval_sets = plan.eval_sets if plan.eval_sets is not None else default_eval_sets(dataset)
                specs += [experiment(model, mode, dataset, p, eval_sets, weights=plan.weights, settings=plan.settings,
                                     seed=seed) for p in prompts]
    return specs


def default_eval_sets(dataset: str) -> tuple[str, ...]:
    """A pool's test sets (as the study's pooled datamodules list them); another dataset's own test split."""
    return POOLS[dataset].eval_sets if dataset in POOLS else ()


def catalogue_prompt_types(name: str) -> tuple[str, ...] | None:
    """The prompt types of a dataset the project knows without reading shards, or None."""
    if name in DATASETS:
        return DATASETS[name].prompt_types
    if name in POOLS:
        return POOLS[name].prompt_types
    if name in SYNTHETIC_DATASETS:
        return NON_RADIOLOGY_PROMPT_TYPES  # datasets.synthetic writes the non-radiology family
    return None


def use_plugins(modules: tuple[str, ...]) -> None:
    """Add ``modules`` to VLSM_MODELS (trainables/models/cards.py), so this process registers their model
    cards and Ray's trials, which get the variable (orchestrator/launch.py), register them too."""
    present = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    os.environ[PLUGINS_ENV] = ",".join(dict.fromkeys([*present, *modules]))


# -- reading a file ------------------------------------------------------------------------------

@dataclass
class Value:
    """A YAML value and the line it starts on; a mapping's items are Values, keyed by their key's text."""

    data: object
    line: int
    key: str  # dotted path from the top, for messages


class Reader:
    """Turns a YAML document into Values, refusing what is wrong with the file, line and key."""

    def __init__(self, path: str):
        self.path = path

    def error(self, value: Value | None, problem: str, line: int | None = None) -> StudyFileError:
        line = line if line is not None else (value.line if value else 1)
        key = f"{value.key}: " if value and value.key else ""
        return StudyFileError(f"{self.path}, line {line}: {key}{problem}")

    def load(self, text: str) -> Value:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise self.error(None, "the file is empty; expected a study (`new-study NAME` writes one)")
            return self.value(loader, node, "")
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
            problem = " ".join(str(getattr(e, "problem", None) or e).split())
            context, opened = getattr(e, "context", None), getattr(e, "context_mark", None)
            if context and opened and opened is not mark:
                problem += f", {context} on line {opened.line + 1}"
            raise self.error(None, f"not valid YAML ({problem}); fix the file's syntax there",
                             line=mark.line + 1 if mark else 1) from None
        finally:
            loader.dispose()

    def value(self, loader: yaml.SafeLoader, node: yaml.Node, key: str) -> Value:
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            items: dict[str, Value] = {}
            for knode, vnode in node.value:
                name = str(loader.construct_object(knode))
                child = self.value(loader, vnode, f"{key}.{name}" if key else name)
                if name in items:
                    raise self.error(Value(None, knode.start_mark.line + 1, key), f"key {name!r} is given twice; "
                                     f"keep one (the first is on line {items[name].line})")
                child.line = knode.start_mark.line + 1
                items[name] = child
            return Value(items, line, key)
        if isinstance(node, yaml.SequenceNode):
            return Value([self.value(loader, n, f"{key}[{i}]") for i, n in enumerate(node.value)], line, key)
        return Value(loader.construct_object(node), line, key)

    # -- checks of one value -------------------------------------------------------------------
    def mapping(self, value: Value, allowed: tuple[str, ...], what: str) -> dict[str, Value]:
        if not isinstance(value.data, dict):
            raise self.error(value, f"expected {what} (a mapping of keys to values), got {shown(value)}")
        for name, item in value.data.items():
            if name not in allowed:
                raise self.error(Value(None, item.line, value.key),
                                 f"unknown key {name!r}; expected one of {', '.join(allowed)}")
        return value.data

    def text(self, value: Value, what: str = "a text") -> str:
        if not isinstance(value.data, str) or not value.data.strip():
            raise self.error(value, f"expected {what}, got {shown(value)}")
        return value.data

    def choice(self, value: Value, allowed: tuple[str, ...]) -> str:
        if not isinstance(value.data, str) or value.data not in allowed:
            raise self.error(value, f"{shown(value)} is not one of {', '.join(allowed)}")
        return value.data

    def names(self, value: Value, what: str) -> list[Value]:
        """A list of names (a single name is a list of one)."""
        items = value.data if isinstance(value.data, list) else [value]
        if not items or any(not isinstance(i.data, str) or not i.data for i in items):
            raise self.error(value, f"expected a list of {what}, got {shown(value)}")
        return items

    def flag(self, value: Value) -> bool:
        if not isinstance(value.data, bool):
            raise self.error(value, f"expected true or false, got {shown(value)}")
        return value.data

    def seeds(self, value: Value) -> tuple[int, ...]:
        items = value.data if isinstance(value.data, list) else None
        if not items or any(isinstance(i.data, bool) or not isinstance(i.data, int) for i in items):
            raise self.error(value, f"expected a list of whole numbers (e.g. [42, 43, 44]), got {shown(value)}")
        return tuple(dict.fromkeys(i.data for i in items))

    def settings(self, value: Value, top: bool) -> tuple[dict, str | None]:
        """Spec fields (and, in the file's own settings, ``from_hpo``), each checked against the spec."""
        allowed = (*SETTINGS, "from_hpo") if top else SETTINGS
        if isinstance(value.data, dict):
            for name, item in value.data.items():
                if name in FIXED_BY_BLOCKS:
                    raise self.error(Value(None, item.line, value.key),
                                     f"{name!r} is not a setting: blocks say it (models, mode, datasets, prompts, "
                                     "eval_sets) and seeds the seeds")
                if name == "from_hpo" and not top:
                    raise self.error(item, "from_hpo applies to the whole study: put it in the file's own settings")
        items = self.mapping(value, allowed, "spec fields and their values")
        from_hpo = None
        if "from_hpo" in items:
            item = items.pop("from_hpo")
            from_hpo = self.text(item, "a study name whose hpo selections to take")
            if problem := name_problem(from_hpo):  # it becomes <storage>/<from_hpo>/hpo/
                raise self.error(item, problem)
        return {name: self.setting(name, item) for name, item in items.items()}, from_hpo

    def setting(self, name: str, value: Value) -> object:
        """One spec field's value as written (a whole number stays one, as ``--set`` keeps it: the id is the
        same either way), checked: its type, its choices, and above 0 where a count or rate must be."""
        v = value.data
        kind, optional = field_type(SPEC_FIELDS[name])
        if kind is float and isinstance(v, str):  # YAML reads 1e-4 (no point before the e) as text
            try:
                v = float(v)
            except ValueError:
                pass
        if name == "size" and v not in SIZES:
            raise self.error(value, f"{shown(value)} is not a size: expected one of {', '.join(SIZES)}")
        if name in CHOICES and v not in CHOICES[name]:
            raise self.error(value, f"{shown(value)} is not one of {', '.join(map(str, CHOICES[name]))}")
        if v is None and optional:
            return v
        ok = (isinstance(v, bool) if kind is bool else isinstance(v, kind) and not isinstance(v, bool)
              or kind is float and isinstance(v, int) and not isinstance(v, bool))
        if not ok:
            raise self.error(value, f"expected {'nothing (null) or ' if optional else ''}a {kind.__name__}, "
                                    f"got {shown(value)}")
        if name in POSITIVE and v <= 0:
            raise self.error(value, f"expected a number above 0, got {shown(value)}")
        return v


def field_type(f: dataclasses.Field) -> tuple[type, bool]:
    """A spec field's Python type and whether it may be None (from its annotation)."""
    text = str(f.type)
    kind = next(t for name, t in (("bool", bool), ("float", float), ("int", int), ("str", str)) if name in text)
    return kind, "None" in text


def shown(value: Value) -> str:
    data = value.data
    if isinstance(data, dict):
        return "a mapping"
    if isinstance(data, list):
        return "a list"
    return repr(data)


class Datasets:
    """Dataset names a study may use: the catalogue's (datasets.catalogue, pools, synthetic sets), then
    those with a manifest in the shard root (read once, and only where the catalogue does not know one)."""

    def __init__(self, data: str | None):
        self.data = data
        self._store: ShardStore | None = None

    def prompt_types(self, name: str) -> tuple[str, ...] | str:
        """A dataset's prompt types, or why it cannot be used (a message)."""
        known = catalogue_prompt_types(name)
        if known is not None:
            return known
        if self.data is None:
            return (f"dataset {name!r} is not in the catalogue ({', '.join([*DATASETS, *POOLS])}); a dataset of "
                    "your own needs --data naming the shard root it was ingested into")
        try:
            self._store = self._store or ShardStore(self.data, cache=False)
            if name not in self._store.datasets():
                return (f"dataset {name!r} is neither in the catalogue nor in the shard root --data {self.data} "
                        f"(there: {', '.join(self._store.datasets()) or 'none'}); ingest it there "
                        "(python -m datasets.ingest) or pass the --data that holds it")
            return tuple(self._store.manifest(name).prompt_types)
        except (ShardError, OSError) as e:
            return f"dataset {name!r}: cannot read it from --data {self.data} ({' '.join(str(e).split())})"


def load_study(path: str | Path, data: str | None = None) -> Study:
    """Read and check a study file. ``data`` (the shard root, --data) is where datasets that the catalogue
    does not know are found, with their prompt types from their manifests. Its ``plugins`` are imported
    (and added to VLSM_MODELS for Ray's trials) before its models are checked."""
    path = str(path)
    reader = Reader(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StudyFileError(f"{path}: cannot read the study file ({e}); check the path") from None
    top = reader.mapping(reader.load(text), TOP_KEYS, "a study")
    name = reader.text(top["name"], "a study name") if "name" in top else Path(path).stem
    if problem := name_problem(name):  # it becomes <storage>/<name>/
        raise reader.error(top.get("name"), f"the study's name: {problem}")
    description = reader.text(top["description"]) if "description" in top else ""
    plugins = tuple(v.data for v in reader.names(top["plugins"], "module names")) if "plugins" in top else ()
    if plugins:
        for module in reader.names(top["plugins"], "module names"):
            try:
                importlib.import_module(module.data)  # it registers its cards (trainables.models.register)
            except Exception as e:  # noqa: BLE001 (a user's module may fail any way; say where it is named)
                raise reader.error(module, f"importing plugin {module.data!r} failed ({type(e).__name__}: {e}); "
                                           "check that it is on PYTHONPATH and imports on its own") from None
        use_plugins(plugins)  # imported here: Ray's trials import them too
    weights = reader.choice(top["weights"], WEIGHTS) if "weights" in top else "pretrained"
    settings, from_hpo = reader.settings(top["settings"], top=True) if "settings" in top else ({}, None)
    seeds = reader.seeds(top["seeds"]) if "seeds" in top else None
    resources = read_resources(reader, top["resources"]) if "resources" in top else {}
    any_model = reader.flag(top["any_model"]) if "any_model" in top else False
    if "blocks" not in top:
        raise reader.error(None, "no blocks: expected `blocks:` with at least one named block of experiments")
    blocks_value = top["blocks"]
    datasets = Datasets(data)
    plans, blocks = {}, {}
    for block_name, value in reader.mapping(blocks_value, tuple(blocks_value.data or ()) if isinstance(
            blocks_value.data, dict) else (), "blocks, each a name and its experiments").items():
        plan, block = read_block(reader, block_name, value, datasets, weights, settings, seeds)
        plans[block_name], blocks[block_name] = plan, block
    if not blocks:
        raise reader.error(blocks_value, "expected at least one block")
    default_blocks = tuple(blocks)
    if "default_blocks" in top:
        chosen = reader.names(top["default_blocks"], "block names")
        for item in chosen:
            if item.data not in blocks:
                raise reader.error(item, f"{item.data!r} is not a block of this file ({', '.join(blocks)})")
        default_blocks = tuple(dict.fromkeys(v.data for v in chosen))
    synthetic = tuple(dict.fromkeys(d for p in plans.values() for d in (*p.datasets, *(p.eval_sets or ()))
                                    if d in SYNTHETIC_DATASETS))
    return Study(name=name, path=path, description=description, blocks=blocks, default_blocks=default_blocks,
                 plans=plans, settings=settings, any_model=any_model, plugins=plugins, from_hpo=from_hpo,
                 resources=resources, synthetic=synthetic)


def read_resources(reader: Reader, value: Value) -> dict:
    items = reader.mapping(value, RESOURCES, "a trial's resources")
    resources = {}
    for name, item in items.items():
        v = item.data
        number = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
        if name == "gpus_per_trial" and not (number and (v <= 1 or float(v).is_integer())):
            raise reader.error(item, f"{shown(item)} is not a GPU share: expected a fraction in (0, 1] or a whole "
                                     "number of GPUs")
        if name == "cpus_per_trial" and not number:
            raise reader.error(item, f"{shown(item)} is not a number of CPUs above 0")
        resources[name] = float(v)
    return resources


def read_block(reader: Reader, name: str, value: Value, datasets: Datasets, weights: str, settings: dict,
               seeds: tuple[int, ...] | None) -> tuple[BlockPlan, Block]:
    items = reader.mapping(value, BLOCK_KEYS, f"block {name!r}")
    for required in ("source", "models", "mode", "datasets"):
        if required not in items:
            raise reader.error(value, f"block {name!r} has no {required!r}; expected "
                                      + ("a text saying where its experiments come from" if required == "source"
                                         else f"its {required}"))
    source = reader.text(items["source"], "a text saying where the block's experiments come from")
    models = []
    for item in reader.names(items["models"], "model names"):
        try:
            card(item.data)
        except ValueError as e:
            raise reader.error(item, f"{e}; a model of your own is registered by a module named in `plugins:`") \
                from None
        models.append(item.data)
    mode = reader.choice(items["mode"], MODES)
    chosen = reader.names(items["datasets"], "dataset names")
    prompts: dict[str, tuple[str, ...]] = {}
    for item in chosen:
        offered = datasets.prompt_types(item.data)
        if isinstance(offered, str):
            raise reader.error(item, offered)
        prompts[item.data] = offered
    if "prompts" in items:
        p = items["prompts"]
        if p.data != "each":
            wanted = [v.data for v in reader.names(p, "prompt types (or `each`)")]
            for dataset, offered in prompts.items():
                missing = [w for w in wanted if w not in offered]
                if missing:
                    raise reader.error(p, f"dataset {dataset!r} has no prompt type {missing[0]!r}; expected "
                                          f"`each` or some of {', '.join(offered)}")
            prompts = {d: tuple(dict.fromkeys(wanted)) for d in prompts}
    eval_sets = None
    if "eval_sets" in items:
        eval_sets = []
        for item in reader.names(items["eval_sets"], "dataset names"):
            offered = datasets.prompt_types(item.data)
            if isinstance(offered, str):
                raise reader.error(item, offered)
            eval_sets.append(item.data)
        eval_sets = tuple(dict.fromkeys(eval_sets))
    own, _ = reader.settings(items["settings"], top=False) if "settings" in items else ({}, None)
    merged = {**settings, **own}
    if "hparams" not in merged and any(k in HYPERPARAMETERS for k in merged):
        merged["hparams"] = "set"  # as --set: no longer the paper's, the release's or a selection's
    plan = BlockPlan(models=tuple(dict.fromkeys(models)), mode=mode, datasets=tuple(prompts), prompts=prompts,
                     eval_sets=eval_sets, settings=merged,
                     seeds=reader.seeds(items["seeds"]) if "seeds" in items else seeds, weights=weights)
    try:
        expand(plan)  # every spec checked now (grad_accum against batch_size, ...), not when it runs
    except ValueError as e:
        raise reader.error(value, f"block {name!r}: {e}") from None
    finetuning = reader.flag(items["finetuning"]) if "finetuning" in items else False
    return plan, Block(name, " ".join(source.split()), functools.partial(expand, plan), finetuning)


NEW_STUDY = """\
# A study file for vlsm-tune (docs/study.md, "Your own study"). List its experiments with
#   python -m orchestrator.run grid --study-file {name}.yaml --dry-run
# then run them with the same command without --dry-run; status, report and plan take --study-file too.
# As written it trains the demo's small models on the synthetic sets (generated into --data where missing)
# in a few CPU-minutes: swap in your models, datasets and prompts.

name: {name}                  # results go to <storage>/{name}/ (--study overrides)
description: my first study

# Python modules that register model cards of your own (trainables.models.register), as VLSM_MODELS
# does; each must import from PYTHONPATH, on every node. docs/models.md shows a card and its builder.
# plugins: [my_lab.models]

weights: none                 # pretrained: each model card's pretrained weights; none: random init

# Spec fields for every experiment, over each model card's training defaults (search_spaces/experiment.py
# lists them: lr, weight_decay, batch_size, optimizer, scheduler, max_epochs, patience, bce_weight, ...).
# Changing a hyperparameter records hparams "set" unless you say where it comes from (hparams: ...).
# from_hpo: STUDY takes each model's hpo selection from <storage>/STUDY/hpo/ (as --hparams-from-hpo).
settings:
  size: small                 # small: narrow architectures for a CPU; full: the study's sizes
  batch_size: 8
  max_epochs: 20
  patience: 5

seeds: [42]                   # every experiment once per seed (zero-shot ones once); 42: the study's seed

# What one trial asks of a node; the command's flags win over these.
# resources: {{gpus_per_trial: 0.5, cpus_per_trial: 2}}

# Named groups of experiments: seed x model x dataset x prompt type each. `grid --block NAME` runs one;
# default_blocks: [...] says which run without --block (none: all of them).
blocks:
  polyps:
    source: my question, e.g. does the rich prompt (p6) help a small CLIPSeg?   # where the block comes from
    models: [clipseg, unet]   # registered models (docs/models.md) or your plugins'
    mode: as_run              # as_run (each model as the study trained it), frozen, finetune or zeroshot
    # Catalogue names (docs/data.md: kvasir_polyp, isic, camus, ..., pooled_polyp, pooled_all, synth_polyp,
    # synth_pairs) or a dataset you ingested into --data (python -m datasets.ingest), found by its manifest.
    datasets: [synth_polyp]
    prompts: [p0, p1, p6]     # or `each`: every prompt type the dataset has; models that read no text take p0
    # eval_sets: [synth_polyp, synth_pairs]   # test splits scored (none: the dataset's own; a pool's sets)
    # settings: {{lr: 0.001}}  # this block's own spec fields, over the file's
    # seeds: [42, 43]         # this block's own seeds
"""


def new_study_text(name: str) -> str:
    """The commented study file `new-study NAME` writes: valid as written (a test loads and dry-runs it)."""
    return NEW_STUDY.format(name=name)
