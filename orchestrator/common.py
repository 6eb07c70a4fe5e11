"""What the commands share: default locations, how a launch's experiments are built from the command
line (profile, blocks, --as-released, --hparams-from-hpo, --set, ...), the flags for them, and the
summary of a launch. Below ``orchestrator.run`` and the commands it dispatches to."""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import sys

from datasets.cli import name_type
from datasets.shards import ShardStore
from datasets.synthetic import write_synthetic
from orchestrator.arguments import positive_int
from orchestrator.placement import REPO_CLUSTER_FILE, fit_summary, node_types_from_cluster_file
from orchestrator.report import write_report
from orchestrator.selection import apply_selections
from search_spaces.experiment import CHOICES, HYPERPARAMETERS, ExperimentSpec
from search_spaces.fidelity import as_released
from search_spaces.grid import PROFILE_SYNTHETIC, Study, block_members, builtin, profile_specs
from search_spaces.study_file import load_study
from trainables.models import card, cards

DEFAULT_DATA = "data/shards"
DEFAULT_STORAGE = "runs"


def select(specs: list[ExperimentSpec], patterns: list[str] | None) -> list[ExperimentSpec]:
    """Keep specs whose id matches any pattern (a glob, or a plain substring)."""
    if not patterns:
        return specs
    return [s for s in specs if any(fnmatch.fnmatchcase(s.id, p if any(c in p for c in "*?[") else f"*{p}*")
                                    for p in patterns)]


def with_seeds(specs: list[ExperimentSpec], n: int) -> list[ExperimentSpec]:
    """Every spec ``n`` times (--seeds), with its own seed and the ``n - 1`` after it: replicate 0 is the
    spec itself, so its id is today's, and each later seed (a field that differs from its default, so
    hashed) its own experiment id. Seed by seed: the first ``len(specs)`` are the grid as without --seeds,
    so a launch stopped early has whole seeds. A spec that trains nothing (mode zeroshot) runs once."""
    return [spec if r == 0 else dataclasses.replace(spec, seed=spec.seed + r)
            for r in range(n) for spec in specs if r == 0 or spec.mode != "zeroshot"]


def build_specs(args: argparse.Namespace) -> list[ExperimentSpec]:
    """The profile's (or blocks') specs with the launch's changes, in this order: --as-released, the
    hpo selections (--hparams-from-hpo), --set, --grad-accum, --max-epochs; then --seeds, then --only
    (so --only matches every seed's id: a pattern of today's id's slug keeps all its seeds, a whole id
    one seed). Each change is part of the spec, so of its id: `status` and `report` need the same flags
    as the launch."""
    study = study_of(args)
    specs = profile_specs(study, getattr(args, "block", None), getattr(args, "model", None))
    if getattr(args, "as_released", False):
        specs = [as_released(s) for s in specs]
    from_hpo = getattr(args, "hparams_from_hpo", None) or study.from_hpo  # the flag over the file's from_hpo
    if from_hpo:
        specs = apply_selections(specs, args.storage, from_hpo)
    changes = dict(getattr(args, "set", None) or [])
    if any(k in HYPERPARAMETERS for k in changes):
        changes.setdefault("hparams", "set")  # no longer the paper's, the release's or a selection's
    if getattr(args, "grad_accum", None):
        changes["grad_accum"] = args.grad_accum
    if args.max_epochs is not None:
        changes["max_epochs"] = args.max_epochs
    if changes:
        specs = [ExperimentSpec.from_dict({**s.to_dict(), **only_options_of(s.model, changes)}) for s in specs]
    specs = with_seeds(specs, getattr(args, "seeds", None) or 1)
    specs = list({s.id: s for s in specs}.values())  # --seeds over a file's seeds may name a seed twice
    return select(specs, args.only)


def study_of(args: argparse.Namespace) -> Study:
    """The study a command runs: its --study-file's (read by ``use_study_file``), else the built-in --profile's."""
    return getattr(args, "study_def", None) or builtin(args.profile)


def use_study_file(args: argparse.Namespace) -> None:
    """Read and check --study-file (a StudyFileError names the file, line and key), before anything runs:
    the study is named after the file's ``name``, and its ``resources`` fill the resource flags not given.
    Datasets the catalogue does not know are found in --data (status: the default shard root)."""
    study = load_study(args.study_file, getattr(args, "data", None) or DEFAULT_DATA)
    args.study_def, args.profile = study, study.name
    for flag, value in study.resources.items():
        if getattr(args, flag, 0) is None:
            setattr(args, flag, value)


def only_options_of(model: str, changes: dict) -> dict:
    """``changes`` less the builder options (fields of model cards' ``options``) that ``model`` does
    not take: `--set decoder_dropout=0.2` changes the CRIS experiments, not every id of the grid."""
    others = {o for c in cards() for o in c.options} - set(card(model).options)
    return {k: v for k, v in changes.items() if k not in others}


SETTABLE = {f.name: f for f in dataclasses.fields(ExperimentSpec)}
FIXED_BY_GRID = ("model", "mode", "train_set", "prompt_type", "eval_sets")


def spec_setting(text: str) -> tuple[str, object]:
    """``--set FIELD=VALUE``: a spec field and its value (JSON: 0.2, true, null, "x"; else a string)."""
    name, sep, raw = text.partition("=")
    if not sep or name not in SETTABLE or name in FIXED_BY_GRID:
        settable = ", ".join(n for n in SETTABLE if n not in FIXED_BY_GRID)
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIELD=VALUE with FIELD one of {settable}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    default = SETTABLE[name].default
    if name in CHOICES and value not in CHOICES[name]:
        raise argparse.ArgumentTypeError(f"{text!r}: {name} takes one of {', '.join(map(str, CHOICES[name]))}")
    if isinstance(default, bool) and not isinstance(value, bool) or (
            isinstance(default, (int, float)) and not isinstance(default, bool)
            and (isinstance(value, bool) or not isinstance(value, (int, float)))):
        raise argparse.ArgumentTypeError(f"{text!r}: {name} takes a {type(default).__name__}, got {raw!r}")
    return name, value


def seed_count(text: str) -> int:
    """``--seeds N``: a whole number of seeds, at least 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seeds, 1 or more")
    return n


def add_study_file_argument(p: argparse.ArgumentParser) -> None:
    """--study-file, on every command that takes --profile."""
    p.add_argument("--study-file", metavar="PATH",
                   help="run the study this YAML file describes instead of a --profile (its blocks, models, "
                        "datasets, prompts, settings, seeds; docs/study.md; `new-study NAME` writes one); the "
                        "study is named after the file's `name` (none: the file's stem)")


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    """Flags that choose and change what experiments train (so their ids); grid, status and plan share them."""
    add_study_file_argument(p)
    p.add_argument("--model", action="append", metavar="NAME",
                   help="only this model's experiments (repeatable); with --profile demo, the demo for this "
                        "model instead of CLIPSeg: any registered model, its card's defaults (docs/models.md)")
    p.add_argument("--as-released", action="store_true",
                   help="train as the study's released code did where it differs from the paper's text: loss, "
                        "learning rate, batch, patience, CRIS dropout, padding and upsampling "
                        "(search_spaces/fidelity.py; docs/fidelity.md)")
    p.add_argument("--hparams-from-hpo", metavar="STUDY", type=name_type,
                   help="take each model's optimizer, learning rate, scheduler and batch size from the hpo "
                        "selection in <storage>/STUDY/hpo/<model>/selection.json (for the specs of the mode it "
                        "searched); the source is recorded in each spec (field hparams)")
    p.add_argument("--set", action="append", type=spec_setting, metavar="FIELD=VALUE",
                   help="set one spec field in every experiment, e.g. bce_weight=0 or mask_padding=false "
                        "(repeatable; changes the ids)")
    p.add_argument("--grad-accum", type=positive_int, metavar="K",
                   help="split every batch into K micro-batches (the same effective batch, about 1/K of the "
                        "activation memory; changes the ids)")
    p.add_argument("--seeds", type=seed_count, default=1, metavar="N",
                   help="run every experiment with N seeds: its own (42, or --set seed=S) and the N-1 after it, "
                        "each seed its own experiment id (the first keeps today's ids); zero-shot experiments, "
                        "which train nothing, run once")


def workers_per_trial(text: str) -> str | int:
    """``--workers-per-trial``: ``auto`` or a whole number of workers, 1 or more."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto or a number of workers, 1 or more")
    return n


def add_workers_argument(p: argparse.ArgumentParser) -> None:
    """--workers-per-trial, the same for grid and plan."""
    p.add_argument("--workers-per-trial", type=workers_per_trial, default="auto", metavar="auto|N",
                   help="Ray Train (DDP) workers per trial, one GPU each. auto: a trial longer than the makespan's "
                        "lower bound (busy GPU-hours / GPUs) gets the fewest workers (a power of two, at most the "
                        "GPUs of the largest node type) that bring it under; one each without GPUs. N: every trial N")


def add_cluster_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", metavar="YAML",
                   help="Ray cluster file whose node types trials must fit (none: on a running cluster its "
                        "nodes and the head's ~/ray_bootstrap_config.yaml; for --dry-run and plan, "
                        "the repository's cluster.yaml)")


def ensure_synthetic(data: str, profile: str | Study) -> None:
    """Generate the profile's (or study's) synthetic datasets into ``data`` if they are not there yet."""
    store = ShardStore(data)
    present = set(store.datasets())
    for name in profile.synthetic if isinstance(profile, Study) else PROFILE_SYNTHETIC.get(profile, ()):
        if name not in present:
            manifest = write_synthetic(store, name)
            rows = ", ".join(f"{split} {entry['rows']}" for split, entry in manifest.splits.items())
            print(f"generated synthetic dataset {name} in {store.root}/{name} ({rows})")


def fit_lines(blocks, specs: list[ExperimentSpec], args: argparse.Namespace) -> list[str]:
    """Per block, the largest memory need and the node types of the cluster file its trials go to."""
    path = args.cluster or str(REPO_CLUSTER_FILE)
    by_block = {b.name: [{**s.to_dict(), "id": s.id} for s in block_members(b, specs)] for b in blocks}
    return fit_summary({k: v for k, v in by_block.items() if v}, node_types_from_cluster_file(path), path,
                       cpus=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial)


def summarize_outcome(outcome, what: str, storage: str, study: str, data: str | None = None) -> int:
    """Print what a launch did (of grid, zeroshot, ablate or ood), write the report; the exit code."""
    ran = len(outcome.finished) + len(outcome.failed) + len(outcome.unfinished)
    print(f"ran {ran} {what}: {len(outcome.finished)} finished, {len(outcome.failed)} failed, "
          f"{len(outcome.unfinished)} stopped before the end, {outcome.skipped} skipped as already finished")
    for record_id, error in outcome.failed.items():
        print(f"  FAILED {record_id}: {error}", file=sys.stderr)
    if outcome.skipped_failed:
        print(f"  {len(outcome.skipped_failed)} {what} failed in an earlier launch and were skipped "
              "(see FAILED.json in each; --retry-failed reruns them):", *outcome.skipped_failed, sep="\n    ",
              file=sys.stderr)
    if outcome.unfinished:
        # Tune's own hint on Ctrl-C, Tuner.restore, does not apply: trials resume from storage.
        print(f"  rerun the same command to finish the stopped {what} (training resumes from its checkpoints)",
              file=sys.stderr)
    md, csv_uri, rows = write_report(storage, study, data)
    print(f"results table ({len(rows)} rows): {md}\n                  csv: {csv_uri}")
    return 1 if outcome.failed or outcome.unfinished or outcome.skipped_failed else 0


def add_study_arguments(p: argparse.ArgumentParser, profiles: list[str], default: str | None = "demo") -> None:
    """--profile and --study for commands that read a grid's results: the study is named after its grid.
    ``default`` None (report): the profile is the study's name where it names one."""
    p.add_argument("--profile", choices=profiles, default=default,
                   help="the grid whose results to read" + ("" if default else
                                                             " (none: the study's name where it names one)"))
    p.add_argument("--study", type=name_type,
                   help="study name under --storage (none: the profile name, as grid names it)")
