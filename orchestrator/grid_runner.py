"""Run a list of experiments as Ray Tune trials: check inputs, skip finished ids, fit, summarise.

A launch skips experiments with DONE and, unless ``retry_failed``, those with FAILED.json (bad input
fails the same way again); the others start, from their stored checkpoint where one exists
(trainables.tune_trainable), so stopping the driver and rerunning the same command repeats no work.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from datasets.pooled import member_splits
from datasets.shards import ShardError, ShardStore, absolute_uri
from orchestrator.lease import study_lease
from orchestrator.placement import Placement, cluster_node_types, place_all
from search_spaces.experiment import ExperimentSpec
from trainables.models import MODES, model_inputs
from trainables.results import ResultStore, StorageError


@dataclass
class GridOutcome:
    skipped: int  # already finished before this launch
    skipped_failed: list[str] = field(default_factory=list)  # failed before this launch, not retried
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # id -> error
    unfinished: list[str] = field(default_factory=list)  # stopped before the end, e.g. by Ctrl-C


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


def check_shared_storage(storage: str, nodes: int) -> None:
    """On several nodes, results and checkpoints must go where every node can write: object storage."""
    if nodes > 1 and "://" not in storage:
        raise StorageError(
            f"--storage {storage} is a local folder, but this Ray cluster has {nodes} nodes: trials on other "
            "nodes would write their results and checkpoints to their own disks, and a lost node would take "
            "them along. Use shared storage, e.g. --storage s3://BUCKET/runs.")


def start_ray(address: str | None, fake_gpus: int | None, dashboard: bool) -> bool:
    """Join a cluster, or start a local Ray; returns whether trials should ask for GPUs."""
    import ray

    from trainables.models import WEIGHTS_ROOT_ENV

    # Trials resolve relative weights paths against the folder this command runs in.
    runtime_env = {"env_vars": {WEIGHTS_ROOT_ENV: os.environ.get(WEIGHTS_ROOT_ENV, os.getcwd())}}
    if address:
        ray.init(address=address, runtime_env=runtime_env)
        # An autoscaling cluster may have no GPU node yet: asking for GPUs is what starts one.
        return True
    # address="local" starts a new Ray even where `ray start` left one running; N logical GPUs
    # make fractional-GPU scheduling work (and testable) on machines without any.
    ray.init(address="local", num_gpus=fake_gpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
             runtime_env=runtime_env)
    if ray.cluster_resources().get("GPU", 0):
        return True
    print("no GPUs on this machine: trials run on CPU (use --fake-gpus N to test fractional scheduling)")
    return False


def trial_resources(placements: dict[str, Placement]):
    """Resources as a function of the trial's config: what its placement asks of Ray."""

    def resources(config: dict) -> dict:
        return dict(placements[config["experiment_id"]].resources)

    return resources


def place_trials(specs: list[dict], cluster_file: str | None, *, cpus: float | None, gpus: float | None,
                 use_gpus: bool, replicas: int = 1, auto_accumulate: bool = False) -> dict[str, Placement]:
    """Every trial's resources on the running Ray's node types (and the cluster file's); raises
    Unplaceable, before any trial starts, for trials that no node type can hold."""
    node_types, source = cluster_node_types(cluster_file, running=True)
    return place_all(specs, node_types, source, cpus=cpus, gpus_per_trial=gpus, use_gpus=use_gpus,
                     replicas=replicas, auto_accumulate=auto_accumulate)


def run_grid(specs: list[ExperimentSpec], *, data: str, storage: str, study: str,
             address: str | None = None, fake_gpus: int | None = None, gpus_per_trial: float | None = None,
             cpus_per_trial: float = 1.0, dashboard: bool = True, max_failures: int = 1,
             checkpoint_interval_s: float | None = None, retry_failed: bool = False,
             verbose: int = 1, force: bool = False, cluster_file: str | None = None) -> GridOutcome:
    import ray
    from ray import tune

    from trainables.tune_trainable import train_experiment

    data, storage = absolute_uri(data), absolute_uri(storage)
    results = ResultStore(storage, study)
    files = results.listing()
    done = {i for i, names in files.items() if "DONE" in names}
    failed = {i for i, names in files.items() if "FAILED.json" in names} - done
    todo = [s for s in specs if s.id not in done and (retry_failed or s.id not in failed)]
    outcome = GridOutcome(skipped=sum(s.id in done for s in specs),
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
    lease = study_lease(storage, study, force=force)  # another live driver on this study stops us here
    try:
        use_gpus = start_ray(address, fake_gpus, dashboard)
        nodes = sum(node["Alive"] for node in ray.nodes())
        check_shared_storage(storage, nodes)
        if address and nodes == 1 and "://" not in storage:
            print(f"warning: --storage {storage} is local; if this cluster adds nodes, use s3:// storage")

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
        tuner = tune.Tuner(
            tune.with_resources(trainable, trial_resources(placements)),
            param_space={"experiment_id": tune.grid_search(list(specs_by_id))},
            # Reusing a finished trial's process for the next one saves its start-up (imports, a
            # warm decoded cache): on short trials that is the difference between 1.4x and 1.2x
            # the ideal makespan (bench grid).
            tune_config=tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name="tune", storage_path=results.uri, verbose=verbose,
                # A retried trial resumes from the checkpoint the trial keeps in results storage.
                failure_config=tune.FailureConfig(max_failures=max_failures),
            ),
        )
        grid = tuner.fit()
        errors = {r.config["experiment_id"]: repr(r.error) for r in grid if r.error is not None}

        results.record_outcome(outcome, ((s.id, s.to_dict(), errors.get(s.id)) for s in todo))
    finally:  # the lease goes only once the outcome is recorded: a relaunch sees this run's FAILED.json
        ray.shutdown()
        lease.release()
    return outcome
