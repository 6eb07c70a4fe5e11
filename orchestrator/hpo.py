"""``python -m orchestrator.run hpo``: Table 4's search for one model, and the study's selection rule.

A trial is one setting of Table 4 (optimizer, learning rate, scheduler, batch size) trained on every
chosen dataset side by side, one epoch of each per step: it reports the mean validation dice over
the datasets, which Optuna's TPE learns from and ASHA cuts weak settings on, and each dataset's best
validation dice, which the selection rule reads. Sharing settings across datasets is what makes the
study's rule (Appendix C.2: the setting "that showed optimal performance in most datasets") well
defined: the selected setting is the one with the best validation dice on the most datasets.

The grid never runs under ASHA; this search is where cutting trials short is the point.
"""

from __future__ import annotations

import argparse
import json
import math
import posixpath
import statistics
import sys
from collections import Counter

from datasets.cli import name_type
from datasets.shards import ShardError, absolute_uri
from datasets.storage import error_text, is_infrastructure
from orchestrator.arguments import (
    above_one,
    gpu_share,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from orchestrator.hpo_state import (
    METRIC,
    MODE,
    clear_tune_state,
    load_trial_state,
    read_trial_records,
    replay_rungs,
    sampled,
    search_settings,
    setting_key,
    trial_recorder,
)
from orchestrator.launch import add_verbose_argument, fit, place_trials, session, trial_resources
from orchestrator.lease import add_force_argument
from orchestrator.selection import (
    SEARCH_FILE,
    SELECTION_FILE,
    hpo_uri,
    read_json,
    search_name,
    trial_record,
    write_json,
)
from orchestrator.trackers import TrackerError, add_tracker_arguments, tracker_callbacks
from search_spaces.defaults import SMALL_OVERRIDES, STUDY, resources_for, training_defaults
from search_spaces.estimates import expected_epochs, load_step_times
from search_spaces.experiment import ExperimentSpec
from search_spaces.hpo import (
    BATCH_SIZES,
    ENCODER_LR_SCALE_RANGE,
    GRACE_PERIOD,
    HPO_DATASETS,
    HPO_PROMPT,
    LR_RANGE,
    MAX_T,
    NUM_SAMPLES,
    OPTIMIZERS,
    REDUCTION_FACTOR,
    SCHEDULERS,
    SEARCHED,
    tune_space,
)
from trainables.models import card, model_names

# Ray, Optuna and PyTorch (seconds) are imported inside the functions that search or train: every
# command's parser imports this module for its flags.

RULE = ("the setting with the best validation dice on the most datasets (Appendix C.2: 'optimal performance "
        "in most datasets'); a tie goes to the higher mean of the datasets' best validation dice")


class SearchStopped(Exception):
    """The search ended before every trial did; its state is saved and the same command resumes it."""


def check_same_search(where: str, settings: dict) -> None:
    """A search folder holds one search: continuing it with other settings would mix two."""
    stored = read_json(f"{where}/{SEARCH_FILE}")
    if stored is None:
        raise ValueError(f"{where} holds a search started by an earlier version, which recorded no {SEARCH_FILE}: "
                         "rerun it with the flags it was started with on that version, or start a new search "
                         "under another --study")
    changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
    if changed:
        shown = "; ".join(f"{k}: {stored.get(k)!r} there, {settings.get(k)!r} now" for k in changed[:6])
        raise ValueError(f"{where} holds a search with other settings ({shown}): rerun it with its own flags, "
                         "or start a new search under another --study")


def grid_epochs(model: str, mode: str, size: str) -> tuple[int, str]:
    """The epochs a grid run of this model is expected to take, and the figure's source: the cosine
    horizon of every hpo trial, so a schedule chosen here decays as it will in the grid."""
    sizing = SMALL_OVERRIDES if size == "small" else STUDY
    grid_spec = {**training_defaults(model), **sizing, "model": model, "mode": mode}
    epochs = expected_epochs(grid_spec, load_step_times())
    paper = size == "full" and card(model).paper_time is not None
    return epochs, ("the paper's average epochs per experiment (App. C.1)" if paper else
                    f"twice the early-stopping patience ({grid_spec['patience']}), capped at max_epochs")


def base_spec(model: str, mode: str, size: str, prompt: str, max_epochs: int, weights: str | None) -> dict:
    """The spec every trial starts from; a trial sets the searched fields and the dataset."""
    sizing = {**SMALL_OVERRIDES} if size == "small" else {**STUDY}
    encoder_lr_scale = card(model).encoder_lr_scale if mode == "finetune" else 1.0  # as the grid's
    spec = ExperimentSpec(model=model, mode=mode, train_set="-", prompt_type=prompt, weights=weights,
                          encoder_lr_scale=encoder_lr_scale, schedule_epochs=grid_epochs(model, mode, size)[0],
                          **{**training_defaults(model), **sizing, "max_epochs": max_epochs})
    return spec.to_dict()


def searched(mode: str, model: str) -> tuple[str, ...]:
    """The spec fields a trial samples: Table 4's, and the encoders' LR scale where they train too."""
    end_to_end = mode == "finetune" and card(model).as_run_mode == "frozen"
    return SEARCHED + (("encoder_lr_scale",) if end_to_end else ())


def trial_specs(base: dict, setting: dict, datasets: list[str], grad_accum: dict[int, int] | None = None
                ) -> dict[str, dict]:
    """One spec per dataset for a setting; no test sets (the search reads validation dice only).
    ``grad_accum`` maps a batch size to the micro-batches its placement needs (default 1)."""
    sampled = {k: setting[k] for k in searched(base["mode"], base["model"])}
    accumulate = (grad_accum or {}).get(sampled["batch_size"], 1)
    return {name: {**base, **sampled, "grad_accum": accumulate, "train_set": name, "eval_sets": []}
            for name in datasets}


def search_trial(config: dict, base: dict, datasets: list[str], data: str, threads: int = 1,
                 checkpoint_interval_s: float | None = None, grad_accum: dict[int, int] | None = None,
                 checkpoints: dict[str, str] | None = None) -> None:
    """Ray Tune function trainable: train ``config``'s setting on every dataset, one epoch of each per
    report, until the epoch budget or every dataset's early stopping. Checkpoints (every trainer's
    state, as tensors, and JSON) let a continued search resume an interrupted trial where it stopped:
    ``checkpoints`` maps a setting's key (``setting_key``) to the folder of its last checkpoint."""
    import os
    import tempfile
    import time

    import torch
    from ray import tune

    from trainables.experiment import prepare
    from trainables.tune_trainable import CHECKPOINT_INTERVAL_S, FULL_SIZE_CHECKPOINT_INTERVAL_S, claim_resources

    claim_resources(threads)
    trainers = {name: prepare(spec, data)[0] for name, spec in trial_specs(base, config, datasets, grad_accum).items()}
    latest: dict[str, float] = {}
    resumed = None
    if source := (checkpoints or {}).get(setting_key(sampled(config))):  # an interrupted trial, continued
        latest = load_trial_state(trainers, source)
        resumed = max(t.epoch for t in trainers.values())
    interval = checkpoint_interval_s
    if interval is None:
        interval = FULL_SIZE_CHECKPOINT_INTERVAL_S if base["size"] == "full" else CHECKPOINT_INTERVAL_S
    last_checkpoint = time.monotonic()
    while not all(t.finished for t in trainers.values()):
        for name, trainer in trainers.items():
            if not trainer.finished:
                latest[name] = trainer.step().val_dice
        best = {name: t.best_dice for name, t in trainers.items()}
        metrics = {METRIC: statistics.fmean(latest.values()), "best_val_dice": statistics.fmean(best.values()),
                   "epoch": max(t.epoch for t in trainers.values()), "resumed_from_epoch": resumed,
                   "val_dice_by_dataset": dict(latest), "best_val_dice_by_dataset": best}
        if time.monotonic() - last_checkpoint < interval:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as d:
            for name, trainer in trainers.items():
                torch.save(trainer.state_dict(), os.path.join(d, f"{name}.pt"))
            with open(os.path.join(d, "latest.json"), "w") as f:
                json.dump(latest, f)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        last_checkpoint = time.monotonic()


def select_setting(trials: list[dict], datasets: list[str]) -> dict:
    """The study's rule over trial records (``trial_record``): each dataset's best trial, and the
    setting best on the most datasets (ties: the higher mean best validation dice, then trial id)."""
    usable = sorted((t for t in trials if all(d in t["best_val_dice"] for d in datasets)),
                    key=lambda t: t["trial_id"])
    if not usable:
        raise ValueError(f"no trial reported a validation dice on every dataset ({', '.join(datasets)})")
    per_dataset = {}
    for name in datasets:
        best = max(usable, key=lambda t: t["best_val_dice"][name])  # the first of equals: lowest trial id
        per_dataset[name] = {"trial_id": best["trial_id"], "setting": best["setting"],
                             "best_val_dice": best["best_val_dice"][name]}
    wins = Counter(entry["trial_id"] for entry in per_dataset.values())
    chosen = max(usable, key=lambda t: (wins[t["trial_id"]], t["mean_best_val_dice"]))
    won = [d for d in datasets if per_dataset[d]["trial_id"] == chosen["trial_id"]]
    return {
        "rule": RULE,
        "selected": {**chosen, "datasets_won": won, "wins": len(won), "of_datasets": len(datasets)},
        "per_dataset": per_dataset,
    }


def run_search(model: str, datasets: list[str], *, data: str, storage: str, study: str, size: str = "small",
               mode: str | None = None, prompt: str = HPO_PROMPT, num_samples: int = NUM_SAMPLES,
               max_epochs: int = MAX_T, grace_period: int = GRACE_PERIOD, reduction_factor: float = REDUCTION_FACTOR,
               seed: int = 0, max_concurrent: int | None = 4,
               weights: str | None = None, address: str | None = None, fake_gpus: int | None = None,
               gpus_per_trial: float | None = None, cpus_per_trial: float | None = None, dashboard: bool = True,
               checkpoint_interval_s: float | None = None, verbose: int = 1, force: bool = False,
               cluster_file: str | None = None, callbacks: list | None = None) -> dict:
    """Run the search and the selection; returns the selection record, also written to storage.

    The search keeps its own state as JSON: ``search.json`` (its settings) and a record per trial in
    ``trials/``. The same command again continues it from them, never from Tune's pickled state (whoever
    can write --storage could make that run code here): the finished trials are kept (not rerun) and given
    to a new TPE sampler as evaluated points (seeded ``seed`` + the trials so far, so it does not draw the
    first launch's start-up settings again) and to ASHA's rungs (``replay_rungs``); the interrupted ones run
    first, with their own settings, each from its last checkpoint (weights and JSON); then new settings
    until ``num_samples`` trials have ended. Lost on the way: a sampler's random state, and a trial's
    epochs after its last checkpoint (run again). ``callbacks``: Tune callbacks beside the search's own
    (experiment trackers: orchestrator/trackers.py)."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    if verbose < 2:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not its "new study created" note
    mode = mode or card(model).as_run_mode
    data, storage = absolute_uri(data), absolute_uri(storage)
    base = base_spec(model, mode, size, prompt, max_epochs, weights)
    cpus = cpus_per_trial if cpus_per_trial is not None else (1.0 if size == "small" else None)
    where = hpo_uri(storage, study, model, mode)
    settings = search_settings(base, datasets, num_samples=num_samples, max_epochs=max_epochs,
                               grace_period=grace_period, reduction_factor=reduction_factor, seed=seed)
    continuing = read_json(f"{where}/{SEARCH_FILE}") is not None
    records: dict[str, dict] = {}
    if continuing:
        check_same_search(where, settings)
        records = read_trial_records(where, searched(mode, model))
    done = {k: r for k, r in records.items() if r.get("done")}
    interrupted = sorted((r for r in records.values() if not r.get("done")), key=lambda r: r["trial_id"])
    left = num_samples - len(done)
    errors: dict[str, str] = {}
    if continuing:
        # The same command again: an interrupted search goes on, a finished one only re-derives the selection.
        print(f"continuing the search in {where}: {len(done)} of {num_samples} trials finished"
              + (f", {len(interrupted)} interrupted (they go on from their last checkpoints)" if interrupted else ""))

    # One driver per search folder; the lease goes only once selection.json is written.
    with session(storage, f"{study}/hpo/{search_name(model, mode)}", address=address, fake_gpus=fake_gpus,
                 dashboard=dashboard, force=force, verbose=verbose) as use_gpus:

        # An hpo trial holds one model per dataset; the sampled batch size sets the activations. Each
        # batch size of the space is placed before anything starts (raises Unplaceable), a batch that
        # fits no GPU whole in micro-batches (the same effective batch).
        placements = place_trials([{**base, "batch_size": b, "id": f"{model} batch {b}"} for b in BATCH_SIZES],
                                  cluster_file, cpus=cpus, gpus=gpus_per_trial, use_gpus=use_gpus,
                                  replicas=len(datasets), auto_accumulate=True, joined=address is not None)
        by_batch = {b: placements[f"{model} batch {b}"] for b in BATCH_SIZES}
        accumulate = {b: p.grad_accum for b, p in by_batch.items() if p.grad_accum > 1}
        for b, p in by_batch.items():
            if p.need_gib is not None:
                parts = f", in {p.grad_accum} micro-batches" if p.grad_accum > 1 else ""
                print(f"hpo {model}, batch {b}: ~{p.need_gib:.1f} GiB on {p.node_type or 'any GPU'}{parts}")

        if left > 0:
            resources = trial_resources(by_batch, "batch_size")
            threads = max(1, math.floor(cpus or resources_for(base)["cpu"]))
            checkpoints = {setting_key(r["setting"]): f"{where}/{r['checkpoint']}" for r in interrupted
                           if r.get("checkpoint")}
            trainable = tune.with_parameters(search_trial, base=base, datasets=list(datasets), data=data,
                                             threads=threads, checkpoint_interval_s=checkpoint_interval_s,
                                             grad_accum=accumulate, checkpoints=checkpoints)
            if not continuing:
                write_json(f"{where}/{SEARCH_FILE}", settings)
            space = OptunaSearch.convert_search_space(
                tune_space(with_encoder_lr=len(searched(mode, model)) > len(SEARCHED)))
            searcher = OptunaSearch(space=space, metric=METRIC, mode=MODE,
                                    sampler=optuna.samplers.TPESampler(seed=seed + len(records)),
                                    points_to_evaluate=[r["setting"] for r in interrupted][:left])
            for record in sorted(done.values(), key=lambda r: r["trial_id"]):  # what TPE learns from
                searcher.add_evaluated_point(record["setting"], record["metrics"][METRIC],
                                             intermediate_values=[value for _, value in record["history"]])
            if max_concurrent:
                searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
            # ASHA counts a trial's epochs, not its reports, so a continued trial sits at its own rung.
            scheduler = ASHAScheduler(metric=METRIC, mode=MODE, time_attr="epoch", max_t=max_epochs,
                                      grace_period=grace_period, reduction_factor=reduction_factor)
            replay_rungs(scheduler, records)
            clear_tune_state(where)
            grid = fit(trainable, resources, storage_path=where, name="tune", verbose=verbose,
                       callbacks=[trial_recorder(where, records), *(callbacks or [])],
                       tune_config=tune.TuneConfig(
                           search_alg=searcher, scheduler=scheduler, num_samples=left, reuse_actors=True,
                           trial_name_creator=lambda trial: f"{model}-{trial.trial_id}",
                           trial_dirname_creator=lambda trial: f"{model}-{trial.trial_id}"),
                       checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
            # A trial stopped by a fault of storage, network, node or memory has not ended: the next launch
            # continues it (its record is not done). Any other error ends it.
            errors = {posixpath.basename(r.path): error_text(r.error) for r in grid
                      if r.error is not None and (isinstance(r.error, str) or not is_infrastructure(r.error))}

        # Trials that ran out or that ASHA stopped are done; a Ctrl-C (or a lost lease) leaves the running
        # ones TERMINATED all the same, but not done.
        done = {k: r for k, r in records.items() if r.get("done")}
        ended = len(done) + len(errors)
        if ended < num_samples:  # Ctrl-C, or the driver lost
            raise SearchStopped(f"the search stopped after {ended} of {num_samples} trials; "
                                "rerun the same command to continue it")

        trials = [trial_record(r["trial_id"], r["setting"], {**r["metrics"], "training_iteration": r["metrics"]
                                                             .get("epoch", 0)}) for r in done.values()]
        selection = select_setting(trials, list(datasets))
        record = {
            "model": model, "mode": mode, "size": size, "prompt_type": prompt, "datasets": list(datasets),
            "metric": f"{METRIC} ({MODE}), mean over the datasets; the rule reads each dataset's best",
            "regime": ExperimentSpec.from_dict({**base, "train_set": "-"}).regime,
            "schedule_epochs": {"epochs": base["schedule_epochs"], "source": grid_epochs(model, mode, size)[1]},
            "grad_accum": accumulate,
            "search": {"space": {"optimizer": list(OPTIMIZERS), "lr": {"loguniform": list(LR_RANGE)},
                                 "scheduler": list(SCHEDULERS), "batch_size": list(BATCH_SIZES),
                                 **({"encoder_lr_scale": {"loguniform": list(ENCODER_LR_SCALE_RANGE)}}
                                    if len(searched(mode, model)) > len(SEARCHED) else {})},
                       "searcher": f"OptunaSearch (TPE, seed {seed})", "num_samples": num_samples,
                       "scheduler": {"ASHA": {"max_t": max_epochs, "grace_period": grace_period,
                                              "reduction_factor": reduction_factor, "time_attr": "epoch"}},
                       "base_spec": {k: v for k, v in base.items() if k not in ("train_set", "eval_sets", *SEARCHED)}},
            **selection,
            "trials": sorted(trials, key=lambda t: t["trial_id"]),
            "errors": errors,
            "tune_dir": f"{where}/tune",
        }
        record["uri"] = write_json(f"{where}/{SELECTION_FILE}", record)
        return record


def describe(record: dict) -> list[str]:
    """The selection in a few lines: the setting, its wins, and each dataset's best trial."""
    def setting(s: dict) -> str:
        return f"{s['optimizer']}, lr {s['lr']:.2e}, {s['scheduler']}, batch {s['batch_size']}"

    chosen = record["selected"]
    stopped = sum(t["epochs"] < record["search"]["scheduler"]["ASHA"]["max_t"] for t in record["trials"])
    lines = [f"{len(record['trials'])} trials ({stopped} stopped before the last epoch), "
             f"{len(record['errors'])} errors",
             f"selected for {record['model']} ({record['mode']}, {record['size']}): {setting(chosen['setting'])}",
             f"  best on {chosen['wins']} of {chosen['of_datasets']} datasets ({', '.join(chosen['datasets_won'])}); "
             f"mean best validation dice {chosen['mean_best_val_dice']:.4f} (trial {chosen['trial_id']})",
             "per dataset, the best trial:"]
    for name, best in record["per_dataset"].items():
        lines.append(f"  {name:<16} {best['best_val_dice']:.4f}  {best['trial_id']}: {setting(best['setting'])}")
    lines.append(f"selection and evidence: {record['uri']}")
    return lines


def add_hpo_arguments(p: argparse.ArgumentParser, default_data: str, default_storage: str) -> None:
    p.add_argument("--model", required=True, choices=model_names(), help="the model to search for")
    p.add_argument("--datasets", nargs="+", metavar="NAME",
                   help="datasets to search on; 'study' means the study's eight "
                        f"({', '.join(HPO_DATASETS)}) (none: the synthetic demo sets)")
    p.add_argument("--size", choices=("small", "full"), default="small",
                   help="model size: small (tests and the demo) or full (the study; pretrained weights)")
    p.add_argument("--regime", choices=("as_run", "end_to_end"), default="as_run",
                   help="what trains: as_run, as the study's code trained the model (the blocks grid runs without "
                        "--block: the CLIPSeg family's decoder alone, CRIS and the CNNs end to end), or end_to_end "
                        "(the opt-in end_to_end block; also searches the encoders' LR scale)")
    p.add_argument("--mode", choices=("frozen", "finetune"), help="what trains, overriding --regime")
    p.add_argument("--prompts", dest="prompt", default=HPO_PROMPT, metavar="P",
                   help="prompt type on every dataset (random: a draw among P1..PN per sample)")
    p.add_argument("--num-samples", type=positive_int, default=NUM_SAMPLES, metavar="N",
                   help="settings to try (TPE models the N-10 or so finished after its 10 random start-up "
                        "ones). Budget: at most N x max-epochs x datasets epochs; ASHA stops about half at each rung")
    p.add_argument("--max-epochs", type=positive_int, default=MAX_T, metavar="E",
                   help="epochs per trial, ASHA's max_t (rungs at grace, 2x grace, ...). The cosine schedule "
                        "spans the grid's expected epochs, not these")
    p.add_argument("--grace-period", type=positive_int, default=GRACE_PERIOD, metavar="E",
                   help="ASHA grace period: twice the plateau scheduler's patience, so plateau schedules have "
                        "cut their LR once before ASHA compares settings")
    p.add_argument("--reduction-factor", type=above_one, default=REDUCTION_FACTOR, metavar="R",
                   help="ASHA reduction factor")
    p.add_argument("--max-concurrent", type=positive_int, default=4, metavar="K",
                   help="trials running at once, so TPE learns from finished ones")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    p.add_argument("--data", default=default_data, help="shard root, folder or s3://")
    p.add_argument("--storage", default=default_storage, help="results root, folder or s3://")
    p.add_argument("--study", type=name_type,
                   help="study name under --storage (none: demo for --size small, else study)")
    p.add_argument("--address", help="Ray cluster to join (e.g. auto; none: a local Ray)")
    p.add_argument("--fake-gpus", type=non_negative_int, metavar="N", help="declare N logical GPUs on a local Ray")
    p.add_argument("--gpus-per-trial", type=gpu_share, metavar="F",
                   help="GPU share per trial (none: from the model and the sampled batch size)")
    p.add_argument("--cpus-per-trial", type=positive_float, metavar="C",
                   help="CPUs per trial (none: 1 for small models, else the model's)")
    p.add_argument("--checkpoint-interval", type=non_negative_float, metavar="S",
                   help="seconds between a trial's checkpoints (none: 30, full-size models 300)")
    p.add_argument("--no-dashboard", action="store_true", help="start the local Ray without its dashboard")
    add_verbose_argument(p)
    add_tracker_arguments(p)
    p.add_argument("--cluster", metavar="YAML",
                   help="Ray cluster file whose node types trials must fit (none: the running cluster's nodes "
                        "and the head's ~/ray_bootstrap_config.yaml)")
    add_force_argument(p)


def cmd_hpo(args: argparse.Namespace) -> int:
    from datasets.synthetic import SYNTHETIC_DATASETS
    from orchestrator.common import ensure_synthetic
    from orchestrator.grid_runner import input_problems
    datasets = args.datasets or list(SYNTHETIC_DATASETS)
    if datasets == ["study"]:
        datasets = list(HPO_DATASETS)
    study = args.study or ("demo" if args.size == "small" else "study")
    mode = args.mode or ("finetune" if args.regime == "end_to_end" else card(args.model).as_run_mode)
    if mode == "frozen" and card(args.model).family == "cnn":
        print(f"{args.model} is a CNN baseline: it trains end to end (--mode finetune)", file=sys.stderr)
        return 2
    weights = card(args.model).weights if args.size == "full" else None
    base = base_spec(args.model, mode, args.size, args.prompt, args.max_epochs, weights)
    specs = [ExperimentSpec.from_dict(spec) for spec in trial_specs(base, base, datasets).values()]
    try:
        if any(name in SYNTHETIC_DATASETS for name in datasets):
            ensure_synthetic(args.data, "demo")
        problems = input_problems(specs, args.data)
    except ShardError as e:
        problems = [str(e)]
    except OSError as e:
        problems = [f"cannot read shards at {args.data} ({e}); check --data and your credentials"]
    if problems:
        print("cannot start the search; fix these first:", *problems, sep="\n  ", file=sys.stderr)
        return 2
    try:
        callbacks = tracker_callbacks(args.log, storage=args.storage, study=study, mlflow_uri=args.mlflow_uri)
    except TrackerError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        record = run_search(args.model, datasets, data=args.data, storage=args.storage, study=study, size=args.size,
                            mode=mode, prompt=args.prompt, num_samples=args.num_samples, max_epochs=args.max_epochs,
                            grace_period=args.grace_period, reduction_factor=args.reduction_factor, seed=args.seed,
                            max_concurrent=args.max_concurrent, weights=weights, address=args.address,
                            fake_gpus=args.fake_gpus, gpus_per_trial=args.gpus_per_trial,
                            cpus_per_trial=args.cpus_per_trial, dashboard=not args.no_dashboard,
                            checkpoint_interval_s=args.checkpoint_interval,
                            verbose=args.verbose, force=args.force, cluster_file=args.cluster,
                            callbacks=callbacks)
    except (SearchStopped, ValueError) as e:  # interrupted, or no trial scored every dataset
        print(f"no setting selected: {e}", file=sys.stderr)
        return 1
    print(*describe(record), sep="\n")
    return 0
