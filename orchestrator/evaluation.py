"""Evaluation runs: the study's zero-shot grid, and finished experiments' best weights scored again.

- ``zeroshot`` (paper, Figure 2): pretrained weights on every dataset and prompt type. These are
  experiments of mode ``zeroshot`` (the Trainer trains 0 epochs and scores the weights as built), run
  by the grid runner like any other: they get experiment ids, DONE markers, the report's rows and
  ``status`` counts, and they spread over the cluster's GPUs one trial each.
- ``ablate`` (Figure 3): each finished experiment on its test sets with its prompt perturbed at
  inference: one attribute replaced by an uncommon word or by its opposite, or the class name alone;
  the unperturbed prompt is scored too, as the reference for the relative change.
- ``ood`` (Table 3): each finished experiment trained on one endoscopy set, on all six polyp test sets.

An evaluation of ``ablate`` or ``ood`` has an id like an experiment's, a readable slug and a short
hash: ``ablate-<experiment id>-<test set>-opposite-location-1a2b3c4d``. Its results go to
``<storage>/<study>/evaluations/<id>/``, in the experiments' layout (spec.json, result.json,
per_image.parquet, DONE last, or FAILED.json). One Ray Tune trial per source experiment, named
``<kind>-<experiment id>``, rebuilds the model once, loads the stored best weights
(``best_model.pt``, which live in S3 on a cluster) and runs that experiment's evaluations that are
not finished; one that breaks records FAILED.json and the others go on.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
import types
from dataclasses import dataclass

from datasets.catalogue import ENDOSCOPY, POOLS
from datasets.cli import DefaultsHelpFormatter
from datasets.shards import ShardError, ShardStore, absolute_uri
from datasets.storage import error_text, is_infrastructure
from orchestrator.arguments import gpu_share, non_negative_int, positive_float
from orchestrator.launch import Job, Outcome, add_verbose_argument, launch
from orchestrator.lease import add_force_argument
from orchestrator.trackers import TrackerError, add_tracker_arguments, tracker_callbacks
from prompts.perturb import OPPOSITES, PerturbationError, parse_perturbation
from prompts.templates import TEMPLATE_ATTRIBUTES
from search_spaces.experiment import ExperimentSpec
from trainables.models import card, model_names
from trainables.results import ResultStore, eval_summary, split_scores

# Imports inside functions: Ray, PyTorch and the trainables (seconds) only where a trial runs; the
# grid's runner (PyTorch) only where a command launches; orchestrator.common and search_spaces.grid
# there too, because orchestrator.common imports the report, which reads this module's records.

EVALUATIONS = "evaluations"  # the folder beside "experiments" in <storage>/<study>/
KINDS = ("ablate", "ood")
# Table 3: models trained on one endoscopy set (Kvasir-SEG, ClinicDB, BKAI) tested on all six.
POLYP_TEST_SETS = ENDOSCOPY
# Values the ablation leaves alone: the class name (``class_only`` tests it) and whole sentences.
NOT_PERTURBED = ("class_name", "description", "report")
# Figure 4: an ablation keeps the predicted masks (clean and perturbed prompt) of the images whose dice
# dropped most, this many (the paper's Figure 4 shows four).
MASK_EXAMPLES = 4
# Figure 2's zero-shot models with the study's weights (BiomedCLIPSeg has no pretrained decoder).
DEFAULT_ZEROSHOT_WEIGHTS = {model: card(model).weights for model in ("cris", "clipseg")}


@dataclass(frozen=True)
class EvaluationSpec:
    kind: str  # ablate | ood
    source: str  # id of the finished experiment whose best weights are scored
    eval_set: str  # dataset whose test split is scored
    prompt_type: str  # the prompt type given at inference (the one the source trained on)
    perturbation: str | None = None  # e.g. "opposite:location"; None: the prompts as rendered

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown evaluation kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        parse_perturbation(self.perturbation)  # a malformed one fails here, not in a trial

    @property
    def id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode())
        change = f"-{self.perturbation.replace(':', '-')}" if self.perturbation else ""
        return f"{self.kind}-{self.source}-{self.eval_set}{change}-{digest.hexdigest()[:8]}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EvaluationSpec:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


# -- which evaluations ---------------------------------------------------------------------------
def zeroshot_specs(weights: dict[str, str], prompts: dict[str, tuple[str, ...]], size: str = "full"
                   ) -> list[ExperimentSpec]:
    """One zero-shot experiment per (model and its weights, dataset, prompt type).

    Built as the grid's zero-shot blocks build theirs, so with the study's weights at full size the
    ids are the same: ``zeroshot`` and ``grid --block zeroshot`` skip each other's finished work.
    """
    from search_spaces.grid import study_spec

    return [dataclasses.replace(study_spec(model, "zeroshot", dataset, prompt), weights=w, size=size)
            for model, w in weights.items() for dataset, types_ in prompts.items() for prompt in types_]


def ablation_perturbations(family: str, prompt_type: str, requested: list[str] | None = None) -> list[str | None]:
    """None (the reference), then the perturbations of Figure 3 this prompt type can take.

    By default: every attribute value the prompt shows replaced by an uncommon word, and by its
    opposite where the attribute has opposites, and the class name alone (unless that is the prompt).
    ``requested`` narrows the list to those perturbations, where the prompt shows their attribute.
    """
    shown = TEMPLATE_ATTRIBUTES[family][prompt_type]
    if requested is None:
        values = [a for a in shown if a not in NOT_PERTURBED]
        requested = [f"random_word:{a}" for a in values] + [f"opposite:{a}" for a in values if a in OPPOSITES]
        requested += [] if prompt_type == "p1" else ["class_only"]
    return [None, *(p for p in requested if p == "class_only" or p.partition(":")[2] in shown)]


def ablation_specs(sources: list[dict], store: ShardStore, requested: list[str] | None = None
                   ) -> tuple[list[EvaluationSpec], list[str]]:
    """The ablation of each source on each of its test sets; also the sources whose prompts cannot
    be perturbed (e.g. prompt type ``random``, a dataset without a prompt family)."""
    specs, skipped = [], []
    for source in sources:
        if not card(source["model"]).reads_text:  # nothing to perturb
            skipped.append(f"{source['id']} ({source['model']} reads no prompt)")
            continue
        for eval_set in source["eval_sets"]:
            family = store.manifest(eval_set).prompt_family
            if source["prompt_type"] not in TEMPLATE_ATTRIBUTES.get(family, {}):
                skipped.append(f"{source['id']} on {eval_set}")
                continue
            specs += [EvaluationSpec("ablate", source["id"], eval_set, source["prompt_type"], p)
                      for p in ablation_perturbations(family, source["prompt_type"], requested)]
    return specs, skipped


def ood_specs(sources: list[dict], test_sets: tuple[str, ...]) -> list[EvaluationSpec]:
    """Each source trained on one of ``test_sets``, scored on every one of them, itself included."""
    return [EvaluationSpec("ood", s["id"], test_set, s["prompt_type"])
            for s in sources if s["mode"] != "zeroshot" and s["train_set"] in test_sets for test_set in test_sets]


def finished_sources(storage: str, study: str, patterns: list[str] | None) -> list[dict]:
    """Specs (with their ids) of the finished experiments whose ids match ``patterns``."""
    from orchestrator.common import select

    found = []
    for result in ResultStore(storage, study).results():
        # from_dict fills fields added since the experiment ran with their defaults.
        spec = {**ExperimentSpec.from_dict(result["spec"]).to_dict(), "id": result["experiment_id"]}
        found.append(types.SimpleNamespace(id=spec["id"], spec=spec))
    return [f.spec for f in select(found, patterns)]


def evaluation_problems(evaluations: list[EvaluationSpec], sources: dict[str, dict], data: str,
                        experiments: ResultStore) -> list[str]:
    """Missing test splits, prompt types, shard files and best weights, before any trial starts."""
    store, problems, seen = ShardStore(data), [], set()
    for spec in evaluations:
        if (spec.eval_set, spec.prompt_type) in seen:
            continue
        seen.add((spec.eval_set, spec.prompt_type))
        try:
            store.check_split(spec.eval_set, "test", spec.prompt_type)
            problems += [f"missing shard {uri}: the manifest lists it; re-ingest {spec.eval_set!r}"
                         for uri in store.missing_files(spec.eval_set, "test")]
        except ShardError as e:
            problems.append(f"{spec.id}: {e}")
    for source_id in sorted({s.source for s in evaluations}):
        if sources[source_id]["mode"] != "zeroshot" and not experiments.has_weights(source_id):
            problems.append(f"{source_id}: no best_model.pt in {experiments.uri}/experiments/{source_id}/ (it "
                            "finished before weights were stored); run it again after deleting its DONE "
                            "marker, or leave it out with --only")
    return sorted(set(problems))


# -- running them --------------------------------------------------------------------------------
def evaluation_result(spec: EvaluationSpec, source: dict, dice: dict[str, float], prompts: dict[str, str],
                      run: dict, boundary: dict[str, dict[str, float | None]] | None = None) -> dict:
    """The result.json of an evaluation: mean and spread of dice (and boundary metrics' means), and
    the prompt each image got."""
    return {
        "evaluation_id": spec.id, "kind": spec.kind, "spec": spec.to_dict(), "source": source["id"],
        "source_spec": source,
        "eval": {spec.eval_set: eval_summary(dice, boundary)},
        "prompts": dict(sorted(prompts.items())), "run": run,
    }


def evaluation_trial(config: dict, jobs: dict[str, dict], data: str, storage: str, study: str,
                     threads: int = 1) -> None:
    """A Tune trial: one source experiment's pending evaluations (its job's records), one after another.
    An evaluation that breaks on its input or code is recorded FAILED and the others go on; a fault of
    storage, network or memory (``datasets.storage.is_infrastructure``) ends the trial, for Ray to retry
    it (the finished evaluations are skipped) and, if it still fails, for the next launch to run it."""
    import ray
    from ray import tune

    from trainables.evaluate import Evaluator
    from trainables.tune_trainable import claim_resources

    job = jobs[config["trial"]]
    source = job["source"]
    evaluations = ResultStore(storage, study, EVALUATIONS)
    resources = claim_resources(threads)
    done = evaluations.finished_ids()  # a retry after a lost worker skips what already finished
    pending = [spec for spec in map(EvaluationSpec.from_dict, job["records"].values()) if spec.id not in done]
    if not pending:
        tune.report({"finished": 0, "failed": 0, "pending": 0})
        return
    try:
        state = ResultStore(storage, study).read_weights(source["id"])
        if state is None and source["mode"] != "zeroshot":
            raise FileNotFoundError(f"no best_model.pt stored for {source['id']}")
        evaluator = Evaluator(source, state, data)
    except Exception as e:  # every evaluation of this source needs the model: record them all
        if is_infrastructure(e):  # storage, network, memory: Ray retries the trial; never FAILED
            raise
        for spec in pending:
            evaluations.write_failure(spec.id, spec.to_dict(), f"cannot rebuild {source['id']}: {error_text(e)}")
        tune.report({"finished": 0, "failed": len(pending)})
        return
    counts = {"finished": 0, "failed": 0}
    scores = {}  # each finished evaluation's mean dice, in every report: the last shows them all to Ray
    clean: dict[str, tuple[dict, dict]] = {}  # reference (unperturbed) evaluation id -> its dice, prompts
    for spec in pending:
        started = time.time()
        try:
            per_image, prompts = evaluator.evaluate(spec.eval_set, spec.prompt_type,
                                                    parse_perturbation(spec.perturbation))
            dice, boundary = split_scores(per_image)
            if spec.kind == "ablate" and spec.perturbation is None:
                clean[spec.id] = (dice, prompts)
            elif spec.kind == "ablate":  # before DONE, which commits them with the result
                keep_masks(evaluator, evaluations, spec, source, dice, prompts, clean, storage, study)
        except Exception as e:  # a broken evaluation (bad rows, an attribute a sample lacks) is recorded
            if is_infrastructure(e):  # storage, network, memory: Ray retries the trial, which skips the done
                raise
            evaluations.write_failure(spec.id, spec.to_dict(), error_text(e))
            counts["failed"] += 1
        else:
            run = {"started_at": started, "finished_at": time.time(), "resources": resources,
                   "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "node_ip": ray.util.get_node_ip_address()}
            result = evaluation_result(spec, source, dice, prompts, run, boundary)
            evaluations.write_result(spec.to_dict(), result, {spec.eval_set: dice}, record_id=spec.id,
                                     metrics={m: {spec.eval_set: values} for m, values in boundary.items()})
            counts["finished"] += 1
            scores[f"test_dice/{spec.id}"] = result["eval"][spec.eval_set]["dice_mean"]
        tune.report({**counts, "pending": len(pending) - counts["finished"] - counts["failed"], **scores})


def keep_masks(evaluator, evaluations: ResultStore, spec: EvaluationSpec, source: dict, dice: dict[str, float],
               prompts: dict[str, str], clean: dict[str, tuple[dict, dict]], storage: str, study: str) -> None:
    """Store the image, ground truth and both predictions of the MASK_EXAMPLES images whose dice this
    perturbation dropped most against the unperturbed prompt (Figure 4; orchestrator/figures.py reads them).
    Never fails the evaluation: a problem is printed and the masks are skipped."""
    from orchestrator.figures import write_mask_examples  # matplotlib: only this trial draws on it

    reference = dataclasses.replace(spec, perturbation=None)
    try:
        if reference.id not in clean:  # finished in an earlier launch
            stored = evaluations.result(reference.id)
            if stored is None:
                print(f"{spec.id}: no unperturbed reference yet, so no Figure 4 masks")
                return
            clean[reference.id] = (evaluations.per_image(reference.id)[0][spec.eval_set], stored.get("prompts", {}))
        clean_dice, clean_prompts = clean[reference.id]
        drops = sorted((dice[s] - clean_dice[s], s) for s in dice if s in clean_dice)  # most negative first
        worst = [s for change, s in drops if change < 0][:MASK_EXAMPLES]
        if not worst:
            return
        before = evaluator.predict(spec.eval_set, spec.prompt_type, None, worst)
        after = evaluator.predict(spec.eval_set, spec.prompt_type, parse_perturbation(spec.perturbation), worst)
        originals = evaluator.originals(spec.eval_set, worst)
        examples = [{"sample_id": s, "dice_clean": clean_dice[s], "dice_perturbed": dice[s],
                     "prompt_clean": clean_prompts.get(s, before[s][1]), "prompt_perturbed": prompts.get(s),
                     "image": originals[s][0], "truth": originals[s][1], "clean": before[s][0],
                     "perturbed": after[s][0]} for s in worst]
        write_mask_examples(storage, study, spec.id, {
            "reference_id": reference.id, "source": source["id"], "model": source["model"], "mode": source["mode"],
            "eval_set": spec.eval_set, "prompt_type": spec.prompt_type, "perturbation": spec.perturbation,
        }, examples)
    except Exception as e:  # the figure's inputs are a bonus: the evaluation itself stands
        print(f"{spec.id}: Figure 4 masks not stored ({type(e).__name__}: {e})")


def run_evaluations(evaluations: list[EvaluationSpec], sources: dict[str, dict], *, data: str, storage: str,
                    study: str, address: str | None = None, fake_gpus: int | None = None,
                    gpus_per_trial: float | None = None, cpus_per_trial: float = 1.0, dashboard: bool = True,
                    max_failures: int = 1, retry_failed: bool = False, verbose: int = 1,
                    force: bool = False, cluster_file: str | None = None, callbacks: list | None = None) -> Outcome:
    """Run the evaluations not finished yet (nor failed, unless ``retry_failed``) as Tune trials: one per
    source experiment and kind, named ``<kind>-<source id>``, through ``orchestrator.launch``; ``callbacks``:
    Tune callbacks beside the console (experiment trackers: orchestrator/trackers.py)."""
    data, storage = absolute_uri(data), absolute_uri(storage)
    jobs: dict[str, Job] = {}
    for spec in evaluations:
        name, source = f"{spec.kind}-{spec.source}", sources[spec.source]
        # An evaluation holds its source's model without gradients: the zero-shot (frozen) memory.
        job = jobs.setdefault(name, Job(name, {}, placed_as={**source, "mode": "zeroshot"}, context={"source": source},
                                        spec=source))
        job.records[spec.id] = spec.to_dict()
    return launch(list(jobs.values()), ResultStore(storage, study, EVALUATIONS), evaluation_trial,
                  what=EVALUATIONS, storage=storage, lease=study,
                  address=address, fake_gpus=fake_gpus, gpus_per_trial=gpus_per_trial,
                  cpus_per_trial=cpus_per_trial, dashboard=dashboard, max_failures=max_failures,
                  retry_failed=retry_failed, verbose=verbose, force=force, cluster_file=cluster_file,
                  callbacks=callbacks, bound={"data": data, "storage": storage, "study": study})


# -- command line (python -m orchestrator.run zeroshot|ablate|ood) --------------------------------
def add_commands(sub: argparse._SubParsersAction) -> None:
    from orchestrator.common import DEFAULT_DATA, DEFAULT_STORAGE, add_cluster_argument, add_study_arguments
    from search_spaces.grid import PROFILES

    def common(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--data", default=DEFAULT_DATA,
                       help="shard root: a folder or s3://...")
        p.add_argument("--storage", default=DEFAULT_STORAGE, help="results root, a folder or s3://...")
        add_study_arguments(p, sorted(PROFILES))
        add_force_argument(p)
        p.add_argument("--only", action="append", metavar="PATTERN",
                       help=f"only {what} whose id matches PATTERN (glob or substring); repeatable")
        p.add_argument("--dry-run", action="store_true", help="list what would run and its status, run nothing")
        p.add_argument("--retry-failed", action="store_true", help="run again those that failed before")
        p.add_argument("--address", help="Ray cluster to join (e.g. auto; none: a local Ray)")
        p.add_argument("--fake-gpus", type=non_negative_int, metavar="N", help="declare N logical GPUs on a local Ray")
        p.add_argument("--gpus-per-trial", type=gpu_share, metavar="F", help="GPU share per trial (none: the model's)")
        p.add_argument("--cpus-per-trial", type=positive_float, default=1.0, metavar="C", help="CPUs per trial")
        p.add_argument("--max-failures", type=non_negative_int, default=1, metavar="K",
                       help="times Ray retries a crashed trial")
        p.add_argument("--no-dashboard", action="store_true", help="start the local Ray without its dashboard")
        add_verbose_argument(p)
        add_cluster_argument(p)
        add_tracker_arguments(p)

    zeroshot = sub.add_parser(
        "zeroshot", help="score pretrained weights on every dataset and prompt type (Figure 2)",
        formatter_class=DefaultsHelpFormatter,
        description="Zero-shot experiments: each model's pretrained weights on the test split of every "
                    "dataset (with train, val and test splits; pools left out) and every prompt type, as grid "
                    "experiments of mode zeroshot, built as the grid's zero-shot block builds them: finished "
                    "ones are skipped and the results join the grid's.")
    common(zeroshot, "experiments")
    zeroshot.add_argument("--weights", action="append", metavar="MODEL=WEIGHTS",
                          help="a model and its weights (hub id, folder or file); repeatable "
                               f"(none: {' '.join(f'{m}={w}' for m, w in DEFAULT_ZEROSHOT_WEIGHTS.items())})")
    zeroshot.add_argument("--size", choices=("full", "small"), default="full",
                          help="architecture size the weights fit")
    zeroshot.add_argument("--datasets", nargs="+", metavar="NAME", help="datasets (none: every one in --data "
                                                                        "with train, val and test splits)")
    zeroshot.add_argument("--prompts", nargs="+", metavar="P", help="prompt types (none: all of each dataset)")
    zeroshot.set_defaults(func=cmd_zeroshot)

    ablate = sub.add_parser(
        "ablate", help="score finished experiments with perturbed prompts (Figure 3)",
        formatter_class=DefaultsHelpFormatter,
        description="For each finished experiment chosen by --only: its best weights on its test sets with "
                    "the prompt as trained and with each perturbation at inference (an attribute value "
                    "replaced by an uncommon word or by its opposite, or the class name alone).")
    common(ablate, "source experiments")
    ablate.add_argument("--perturb", action="append", metavar="KIND[:ATTRIBUTE]",
                        help="only this perturbation, e.g. opposite:location, random_word:size, class_only; "
                             "repeatable (none: every one the prompt type can take)")
    ablate.set_defaults(func=cmd_ablate)

    ood = sub.add_parser(
        "ood", help="score experiments trained on one polyp set on all of them (Table 3)",
        formatter_class=DefaultsHelpFormatter,
        description="For each finished experiment chosen by --only that trained on one of --test-sets: its "
                    "best weights on the test split of every one of them.")
    common(ood, "source experiments")
    ood.add_argument("--test-sets", nargs="+", default=list(POLYP_TEST_SETS), metavar="NAME",
                     help="the endoscopy sets")
    ood.set_defaults(func=cmd_ood)


def parse_weights(items: list[str] | None) -> dict[str, str]:
    weights = {}
    for item in items or ():
        model, sep, value = item.partition("=")
        if not sep or not model or not value:
            raise ValueError(f"--weights {item!r}: expected MODEL=WEIGHTS, e.g. clipseg=CIDAS/clipseg-rd64-refined")
        if model not in model_names():
            raise ValueError(f"--weights {item!r}: unknown model {model!r} (known: {', '.join(model_names())})")
        # Kept as given, so ids do not depend on the machine: trials resolve relative paths against
        # the folder this command runs in (trainables.models.resolve_weights).
        weights[model] = value
    return weights


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from orchestrator.common import select, summarize_outcome
    from orchestrator.grid_runner import input_problems, run_grid

    try:
        weights = parse_weights(args.weights) or DEFAULT_ZEROSHOT_WEIGHTS
        store = ShardStore(args.data)
        datasets = args.datasets or [d for d in store.datasets() if d not in POOLS
                                     and {"train", "val", "test"} <= set(store.manifest(d).splits)]
        prompts = {d: tuple(args.prompts or store.manifest(d).prompt_types) for d in datasets}
    except (ValueError, ShardError, OSError) as e:
        print(e, file=sys.stderr)
        return 2
    specs = select(zeroshot_specs(weights, prompts, args.size), args.only)
    if not specs:
        print(f"no zero-shot experiment: no dataset in {args.data}, or none matches --only {args.only}",
              file=sys.stderr)
        return 2
    if args.dry_run:
        print(*_fit([{**s.to_dict(), "id": s.id} for s in specs], args), sep="\n")
        return _list(specs, ResultStore(args.storage, args.study), "experiments")
    problems = input_problems(specs, args.data)
    if problems:
        print("cannot start; fix these first:", *problems, sep="\n  ", file=sys.stderr)
        return 2
    if (callbacks := trackers(args)) is None:
        return 2
    outcome = run_grid(specs, data=args.data, storage=args.storage, study=args.study, address=args.address,
                       fake_gpus=args.fake_gpus, gpus_per_trial=args.gpus_per_trial,
                       cpus_per_trial=args.cpus_per_trial, dashboard=not args.no_dashboard,
                       max_failures=args.max_failures, retry_failed=args.retry_failed, verbose=args.verbose,
                       force=args.force, cluster_file=args.cluster, callbacks=callbacks)
    return summarize_outcome(outcome, "experiments", args.storage, args.study, args.data)


def trackers(args: argparse.Namespace) -> list | None:
    """The ``--log`` trackers' Tune callbacks; None (said on stderr) where one cannot log."""
    try:
        return tracker_callbacks(args.log, storage=args.storage, study=args.study, mlflow_uri=args.mlflow_uri)
    except TrackerError as e:
        print(e, file=sys.stderr)
        return None


def cmd_ablate(args: argparse.Namespace) -> int:
    try:
        for item in args.perturb or ():
            parse_perturbation(item)
        sources = finished_sources(args.storage, args.study, args.only)
        evaluations, skipped = ablation_specs(sources, ShardStore(args.data), args.perturb)
    except (PerturbationError, ShardError, OSError) as e:
        print(e, file=sys.stderr)
        return 2
    if skipped:
        print(f"{len(skipped)} cannot be ablated (their prompt type has no attributes to perturb): "
              + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    return _evaluate(args, evaluations, sources, "")


def cmd_ood(args: argparse.Namespace) -> int:
    try:
        sources = finished_sources(args.storage, args.study, args.only)
    except OSError as e:
        print(e, file=sys.stderr)
        return 2
    return _evaluate(args, ood_specs(sources, tuple(args.test_sets)), sources,
                     f" trained on one of {', '.join(args.test_sets)}")


def _evaluate(args: argparse.Namespace, evaluations: list[EvaluationSpec], sources: list[dict], which: str) -> int:
    from orchestrator.common import summarize_outcome

    if not evaluations:
        chosen = f" matching --only {' '.join(args.only)}" if args.only else ""
        print(f"nothing to evaluate: no finished experiment{chosen}{which} under "
              f"{args.storage.rstrip('/')}/{args.study}; `report` lists the finished ones", file=sys.stderr)
        return 2
    experiments = ResultStore(args.storage, args.study)
    if args.dry_run:
        print(*_fit([{**s, "mode": "zeroshot"} for s in sources], args), sep="\n")
        return _list(evaluations, ResultStore(args.storage, args.study, EVALUATIONS), "evaluations")
    by_id = {s["id"]: s for s in sources}
    try:
        problems = evaluation_problems(evaluations, by_id, args.data, experiments)
    except OSError as e:
        problems = [f"cannot read shards at {args.data} ({e}); check --data and your credentials"]
    if problems:
        print("cannot start; fix these first:", *problems, sep="\n  ", file=sys.stderr)
        return 2
    if (callbacks := trackers(args)) is None:
        return 2
    outcome = run_evaluations(evaluations, by_id, data=args.data, storage=args.storage, study=args.study,
                              address=args.address, fake_gpus=args.fake_gpus, gpus_per_trial=args.gpus_per_trial,
                              cpus_per_trial=args.cpus_per_trial, dashboard=not args.no_dashboard,
                              max_failures=args.max_failures, retry_failed=args.retry_failed,
                              verbose=args.verbose, force=args.force, cluster_file=args.cluster,
                              callbacks=callbacks)
    return summarize_outcome(outcome, "evaluations", args.storage, args.study, args.data)


def _fit(specs: list[dict], args: argparse.Namespace) -> list[str]:
    """Where the trials' models fit on the cluster file (--cluster, else the repository's)."""
    from orchestrator.placement import REPO_CLUSTER_FILE, fit_summary, node_types_from_cluster_file

    path = args.cluster or str(REPO_CLUSTER_FILE)
    return fit_summary({args.command: specs}, node_types_from_cluster_file(path), path, cpus=args.cpus_per_trial,
                       gpus_per_trial=args.gpus_per_trial)


def _list(specs: list, store: ResultStore, what: str) -> int:
    done, failed = store.finished_ids(), store.failed_ids()
    for spec in specs:
        print(f"{spec.id:<100} {'done' if spec.id in done else 'failed' if spec.id in failed else 'pending'}")
    print(f"total: {len(specs)} {what} ({sum(s.id in done for s in specs)} done, "
          f"{sum(s.id in failed for s in specs)} failed)")
    return 0
