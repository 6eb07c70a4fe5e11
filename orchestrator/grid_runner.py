"""Run a list of experiments as Ray Tune trials: check their inputs, then launch them.

The launch (orchestrator.launch) skips experiments with DONE and, unless ``retry_failed``, those with
FAILED.json (bad input fails the same way again); the others start, from their stored checkpoint where
one exists (trainables.tune_trainable), so stopping the driver and rerunning the same command repeats
no work.
"""

from __future__ import annotations

from datasets.pooled import member_splits
from datasets.shards import ShardError, ShardStore, absolute_uri
from orchestrator.launch import Job, Outcome, launch
from search_spaces.experiment import ExperimentSpec
from trainables.models import MODES, model_inputs
from trainables.results import ResultStore

# The trainable (PyTorch, every model) is imported inside run_grid: --dry-run and status import this
# module's input checks and never train.


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


def run_grid(specs: list[ExperimentSpec], *, data: str, storage: str, study: str,
             address: str | None = None, fake_gpus: int | None = None, gpus_per_trial: float | None = None,
             cpus_per_trial: float = 1.0, dashboard: bool = True, max_failures: int = 1,
             checkpoint_interval_s: float | None = None, retry_failed: bool = False,
             verbose: int = 1, force: bool = False, cluster_file: str | None = None,
             workers: dict[str, int] | None = None, callbacks: list | None = None) -> Outcome:
    """One trial per experiment, named by its id, through ``orchestrator.launch``, submitted in the order
    of ``specs``. ``workers[spec.id]`` (default 1): the trial's Ray Train workers; above 1 it runs as DDP
    (trainables/distributed.py), retried by Tune up to ``max_failures`` times as any trial. ``callbacks``:
    Tune callbacks beside the console (experiment trackers: orchestrator/trackers.py)."""
    from trainables.tune_trainable import train_experiment

    data, storage = absolute_uri(data), absolute_uri(storage)
    workers = workers or {}
    jobs = {s.id: Job(s.id, {s.id: s.to_dict()}, placed_as=s.to_dict(), workers=workers.get(s.id, 1)) for s in specs}
    return launch(list(jobs.values()), ResultStore(storage, study), train_experiment, what="experiments",
                  storage=storage, lease=study, address=address, fake_gpus=fake_gpus,
                  gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial, dashboard=dashboard,
                  # A retried trial resumes from the checkpoint the trial keeps in results storage.
                  max_failures=max_failures, retry_failed=retry_failed, verbose=verbose, force=force,
                  cluster_file=cluster_file, callbacks=callbacks,
                  # Reusing a finished trial's process for the next one saves its start-up (imports, a
                  # warm decoded cache): on short trials that is the difference between 1.4x and 1.2x
                  # the ideal makespan (bench grid).
                  reuse_actors=True,
                  bound={"data": data, "storage": storage, "study": study,
                         "checkpoint_interval_s": checkpoint_interval_s,
                         # A DDP trial's retries are Tune's, as any trial's (Ray Train's own on top would
                         # multiply them).
                         "worker_restarts": 0})
