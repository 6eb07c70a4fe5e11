"""Run a list of experiments as Ray Tune trials: check inputs, skip finished ids, fit, summarise.

A launch skips experiments with DONE and, unless ``retry_failed``, those with FAILED.json (bad input
fails the same way again); the others start, from their stored checkpoint where one exists
(trainables.tune_trainable), so stopping the driver and rerunning the same command repeats no work.
"""

from __future__ import annotations

import math

from datasets.pooled import member_splits
from datasets.shards import ShardError, ShardStore, absolute_uri
from orchestrator.launch import Outcome, fit, place_trials, session
from orchestrator.placement import Placement
from search_spaces.experiment import ExperimentSpec
from trainables.models import MODES, model_inputs
from trainables.results import ResultStore


def input_problems(specs: list[ExperimentSpec], data: str) -> list[str]:
    """Every unknown model, dataset, split, prompt type and missing shard file, before any trial starts."""
    store, problems, seen = ShardStore(data), [], set()
    for spec in specs:
        try:
            model_inputs(spec.model, spec.size)
            if spec.mode not in MODES:
                raise ValueError(f"unknown mode {spec.mode!r}: expected one of {', '.join(MODES)}")
        except ValueError as e:
            problems.append(f"{spec.id}: {e}")
        # A pooled train set needs its members' splits; a zero-shot experiment only its test sets.
        trained = [] if spec.mode == "zeroshot" else member_splits(spec.train_set, "train") + member_splits(
            spec.train_set, "val")
        wanted = trained + [(s, "test") for s in spec.eval_sets]
        for dataset, split in wanted:
            key = (dataset, split, spec.prompt_type)
            if key in seen:
                continue
            seen.add(key)
            try:
                store.check_split(dataset, split, spec.prompt_type)
                problems += [f"missing shard {uri}: the manifest lists it; re-ingest {dataset!r}"
                             for uri in store.missing_files(dataset, split)]
            except ShardError as e:
                problems.append(f"{spec.id}: {e}")
    return sorted(set(problems))


def trial_resources(placements: dict[str, Placement]):
    """Resources as a function of the trial's config: what its placement asks of Ray."""

    def resources(config: dict) -> dict:
        return dict(placements[config["experiment_id"]].resources)

    return resources


def run_grid(specs: list[ExperimentSpec], *, data: str, storage: str, study: str,
             address: str | None = None, fake_gpus: int | None = None, gpus_per_trial: float | None = None,
             cpus_per_trial: float = 1.0, dashboard: bool = True, max_failures: int = 1,
             checkpoint_interval_s: float | None = None, retry_failed: bool = False,
             verbose: int = 1, force: bool = False, cluster_file: str | None = None) -> Outcome:
    from ray import tune

    from trainables.tune_trainable import train_experiment

    data, storage = absolute_uri(data), absolute_uri(storage)
    results = ResultStore(storage, study)
    files = results.listing()
    done = {i for i, names in files.items() if "DONE" in names}
    failed = {i for i, names in files.items() if "FAILED.json" in names} - done
    todo = [s for s in specs if s.id not in done and (retry_failed or s.id not in failed)]
    outcome = Outcome(skipped=sum(s.id in done for s in specs),
                          skipped_failed=[] if retry_failed else [s.id for s in specs if s.id in failed])
    retried = [s.id for s in todo if s.id in failed]
    resumable = sum(results.CHECKPOINT in files.get(s.id, {}) for s in todo)
    print(f"{len(specs)} experiments: {outcome.skipped} already finished in {results.uri}, "
          + (f"{len(outcome.skipped_failed)} failed before (skipped; --retry-failed reruns them), "
             if outcome.skipped_failed else "")
          + (f"{len(retried)} failed before (retried), " if retried else "")
          + f"{len(todo)} to run" + (f", {resumable} of them from their checkpoints" if resumable else ""))
    # A driver stopped between a trial's DONE and its cleanup leaves the resume state behind.
    for experiment_id in sorted(done):
        if results.CHECKPOINT in files[experiment_id] or results.PROGRESS in files[experiment_id]:
            results.clear_resume_state(experiment_id)
    if not todo:
        return outcome

    results.check_writable()
    with session(storage, study, address=address, fake_gpus=fake_gpus, dashboard=dashboard,
                 force=force) as use_gpus:

        def trial_name(trial) -> str:
            return trial.config["experiment_id"]

        specs_by_id = {s.id: s.to_dict() for s in todo}
        placements = place_trials([{**spec, "id": i} for i, spec in specs_by_id.items()], cluster_file,
                                  cpus=cpus_per_trial, gpus=gpus_per_trial, use_gpus=use_gpus)
        for experiment_id in retried:  # placed: a retry that fails again writes its own FAILED.json
            results.clear_failure(experiment_id)
        trainable = tune.with_parameters(train_experiment, specs=specs_by_id, data=data, storage=storage,
                                         study=study, threads=max(1, math.floor(cpus_per_trial)),
                                         checkpoint_interval_s=checkpoint_interval_s)
        grid = fit(trainable, trial_resources(placements), storage_path=results.uri, name="tune",
                   param_space={"experiment_id": tune.grid_search(list(specs_by_id))},
                   # Reusing a finished trial's process for the next one saves its start-up (imports,
                   # a warm decoded cache): on short trials that is the difference between 1.4x and
                   # 1.2x the ideal makespan (bench grid).
                   tune_config=tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                                               reuse_actors=True),
                   # A retried trial resumes from the checkpoint the trial keeps in results storage.
                   max_failures=max_failures, verbose=verbose)
        errors = {r.config["experiment_id"]: repr(r.error) for r in grid if r.error is not None}
        # Recorded before the session ends: a relaunch sees this run's FAILED.json.
        results.record_outcome(outcome, ((s.id, s.to_dict(), errors.get(s.id)) for s in todo))
    return outcome
