"""The Ray Tune function trainable of a grid: a thin adapter from a trial to the Trainer and back.

A trial's config holds its name, the experiment id, and its spec (``config["spec"]``, for Ray's tables
and result API); its job, the shard root and the result storage are bound once by ``orchestrator.launch``.
Its last result holds the test dice (``test_dice/<eval set>`` and their mean ``test_dice``, as in its
``result.json``) beside the last epoch's metrics.

Resume: at most every ``checkpoint_interval_s`` (and after the last epoch) the trial replaces
``experiments/<id>/checkpoint/trainer.pt`` in the result storage, whole, and writes a small
``progress.json`` beside it. Any later trial of the same id, a Ray retry after a lost worker or a
rerun of the grid after the driver was stopped, starts from that file: it is keyed by the
experiment id alone, so it does not depend on Tune's experiment state or on which other
experiments a launch holds. Tune itself gets no checkpoint, so the state is stored once.

A trial of N > 1 workers runs the same ``run_experiment`` on each of N Ray Train workers
(trainables/distributed.py): rank 0 writes what a single-process trial writes, every rank resumes.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import ray
import torch
from ray import tune

from datasets.shards import ShardError
from trainables.experiment import prepare, summarize
from trainables.results import EXTRA_METRICS, ResultStore, split_scores
from trainables.trainer import Trainer

# Checkpoint at most this often (and always after the last epoch): small models finish epochs in
# about a second, and a checkpoint per epoch would flood storage and Tune's experiment snapshots.
CHECKPOINT_INTERVAL_S = 30.0
# A full-size finetuning checkpoint (weights, best weights, Adam state) is gigabytes: written to
# storage every 30 s it would cost more than the epochs it protects.
FULL_SIZE_CHECKPOINT_INTERVAL_S = 300.0


def claim_resources(threads: int) -> dict:
    """Set up this trial's process for what Ray gave it, and return that: ``threads`` torch threads, and
    where it holds a fraction of a GPU, that fraction of the GPU's memory at most (Ray does not enforce
    fractions: trials that share a GPU must each keep to theirs)."""
    resources = tune.get_context().get_trial_resources().required_resources
    torch.set_num_threads(threads)
    if torch.cuda.is_available() and 0 < resources.get("GPU", 0) < 1:
        torch.cuda.set_per_process_memory_fraction(resources["GPU"])
    return resources


def train_experiment(config: dict, jobs: dict[str, dict], data: str, storage: str, study: str,
                     threads: int = 1, checkpoint_interval_s: float | None = None, worker_restarts: int = 1) -> None:
    """Train and test one experiment, ``jobs[config["trial"]]``'s one record, resuming from its stored
    checkpoint; write its result (or, on bad input, its failure) to the result store. A job with
    ``workers`` N > 1 runs as a Ray Train TorchTrainer of N workers (trainables/distributed.py), each
    asking for the job's ``worker_resources``, its worker group restarted up to ``worker_restarts`` times.

    Bad input (``ShardError`` as the data is prepared) is recorded as FAILED and the trial ends cleanly.
    Anything else is raised: a fault of storage, network, node or memory (each S3 request already
    retried with backoff) is retried by Ray Tune (``FailureConfig.max_failures``; the retry resumes from
    the stored checkpoint) and, if it still fails, left unfinished for the next launch; other errors are
    recorded FAILED by the launch (``ResultStore.record_outcome``)."""
    job = jobs[config["trial"]]
    [(experiment_id, spec)] = job["records"].items()
    spec = {**spec, "id": experiment_id}
    if checkpoint_interval_s is None:
        checkpoint_interval_s = FULL_SIZE_CHECKPOINT_INTERVAL_S if spec["size"] == "full" else CHECKPOINT_INTERVAL_S
    if job.get("workers", 1) > 1:
        from trainables.distributed import train_data_parallel

        train_data_parallel(run_experiment, spec, data=data, storage=storage, study=study,
                            checkpoint_interval_s=checkpoint_interval_s, workers=job["workers"],
                            worker_resources=job["worker_resources"], threads=threads, restarts=worker_restarts)
        return
    run_experiment(spec, data, ResultStore(storage, study), checkpoint_interval_s, tune.report,
                   claim_resources(threads))


def run_experiment(spec: dict, data: str, results: ResultStore, checkpoint_interval_s: float,
                   report: Callable[[dict], None], resources: dict, *, rank: int = 0,
                   make_parallel: Callable[[Trainer], None] | None = None) -> None:
    """``train_experiment``'s work on one process: a single-process trial's, or (``make_parallel``) one rank
    of a data-parallel one, which every rank runs alike. Every rank loads the stored checkpoint and calls
    ``report`` (``tune.report``, or Ray Train's, a barrier of the ranks) as often as the others; rank 0
    alone writes the checkpoint, progress, weights, result and any failure."""
    experiment_id = spec["id"]
    writer = rank == 0
    if (done := results.finished_result(experiment_id)) is not None:
        # A retry of a trial whose first try finished (its node lost after DONE): nothing to train again.
        report(final_metrics(done, {}))
        return
    started = time.time()
    try:
        trainer, test_sets = prepare(spec, data)
    except ShardError as e:
        # Bad input fails the same way on every retry: record it and end the trial cleanly.
        if writer:
            results.write_failure(experiment_id, spec, str(e))
        report({"failed": True, "error": str(e)[:500]})
        return

    # Said in the trial's reports too: at the default verbosity the driver shows no trial's output.
    resumed_from = None
    state, note = read_stored_state(results, experiment_id, trainer.device)
    if state is not None:
        try:
            trainer.load_state_dict(state)
            resumed_from = trainer.epoch
            print(f"{experiment_id}: resuming after epoch {resumed_from} from {results.checkpoint_uri(experiment_id)}")
        except (ValueError, RuntimeError, KeyError, TypeError) as e:  # the model changed since it was written
            note = f"the checkpoint does not fit ({str(e)[:200]}); starting from epoch 0"
            print(f"{experiment_id}: {note}")
            trainer, test_sets = prepare(spec, data)  # the failed load may have changed some weights
    if make_parallel is not None:
        make_parallel(trainer)
    if writer:
        write_progress(results, experiment_id, trainer)
    last_checkpoint = time.monotonic()
    last_metrics: dict = {}

    def on_epoch(epoch) -> None:
        nonlocal last_checkpoint, last_metrics
        # timesteps_total is TensorBoard's x axis (Tune's TBX logger): the epoch, also across resumes.
        metrics = {"epoch": epoch.epoch, "timesteps_total": epoch.epoch, "train_loss": epoch.train_loss,
                   "val_loss": epoch.val_loss, "val_dice": epoch.val_dice, "best_val_dice": trainer.best_dice,
                   "lr": epoch.lr, "resumed_from_epoch": resumed_from, **({"resume_note": note} if note else {})}
        if writer and (trainer.finished or time.monotonic() - last_checkpoint >= checkpoint_interval_s):
            save_checkpoint(results, experiment_id, trainer)
            write_progress(results, experiment_id, trainer)
            last_checkpoint = time.monotonic()
        last_metrics = metrics
        report(metrics)

    trainer.fit(on_epoch=on_epoch)
    if not writer:  # the result is rank 0's to test and write; this rank's last report waits for it
        report(last_metrics)
        return
    tested = {name: split_scores(trainer.test_scores(dataset)) for name, dataset in test_sets.items()}
    per_image = {name: dice for name, (dice, _) in tested.items()}
    boundary = {m: {name: values[m] for name, (_, values) in tested.items()} for m in EXTRA_METRICS}
    result = summarize(spec, trainer, per_image, boundary)
    result["run"] = {
        "started_at": started, "finished_at": time.time(), "resumed_from_epoch": resumed_from,
        "resources": resources, "workers": trainer.parallel.world,
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "node_ip": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),
    }
    if trainer.best_state is not None:  # before DONE: what evaluation runs (ablate, ood) reload
        results.write_weights(experiment_id, trainer.best_state)
    results.write_result(spec, result, per_image, metrics=boundary)
    results.clear_resume_state(experiment_id)  # after DONE: the checkpoint can be large
    print(f"{experiment_id}: result written by rank {rank} of {trainer.parallel.world}")
    # Last, once the result is stored: what Tune keeps as the trial's last result.
    report(final_metrics(result, last_metrics))


def final_metrics(result: dict, last_metrics: dict) -> dict:
    """A finished experiment's last report: its last epoch's metrics (what the console says of it) and its
    test dice, per test set and their mean, as its ``result.json`` has them. A trial that reported no
    epoch (resumed after its last one) gives its epochs and best validation dice instead; a zero-shot
    one, its test dice alone."""
    metrics = dict(last_metrics) if last_metrics else (
        {"epoch": result["epochs"], "timesteps_total": result["epochs"], "best_val_dice": result["best_val_dice"]}
        if result["epochs"] else {})
    dice = {name: scores["dice_mean"] for name, scores in result["eval"].items()}
    metrics.update({f"test_dice/{name}": value for name, value in dice.items()})
    if dice:
        metrics["test_dice"] = sum(dice.values()) / len(dice)
    return metrics


def save_checkpoint(results: ResultStore, experiment_id: str, trainer: Trainer) -> None:
    buf = io.BytesIO()
    torch.save({"experiment_id": experiment_id, "trainer": trainer.state_dict()}, buf)
    results.save_checkpoint(experiment_id, buf.getvalue())


def write_progress(results: ResultStore, experiment_id: str, trainer: Trainer) -> None:
    """What ``status`` shows of a running experiment; written with each checkpoint."""
    best = trainer.best_dice if trainer.best_state is not None else None
    results.write_progress(experiment_id, {"epoch": trainer.epoch, "max_epochs": trainer.config.max_epochs,
                                           "best_val_dice": best})


def stored_state(results: ResultStore, experiment_id: str, device: torch.device) -> dict | None:
    """The trainer state stored for ``experiment_id``, or None if there is none or it cannot be read
    (the trial then starts from epoch 0, and its next checkpoint replaces the file)."""
    return read_stored_state(results, experiment_id, device)[0]


def read_stored_state(results: ResultStore, experiment_id: str, device: torch.device) -> tuple[dict | None, str | None]:
    """``stored_state``, and why a stored checkpoint was not usable (None where it was, or there was none)."""
    data = results.load_checkpoint(experiment_id)
    if data is None:
        return None, None
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location=device)
        if not isinstance(state, dict) or state.get("experiment_id") != experiment_id:
            raise ValueError("it is not a checkpoint of this experiment")
        return state["trainer"], None
    except Exception as e:  # truncated or foreign bytes: any unpickling error means "unusable"
        note = (f"cannot read {results.checkpoint_uri(experiment_id)} ({type(e).__name__}: "
                f"{str(e).split('. ')[0][:200]}); starting from epoch 0")
        print(f"{experiment_id}: {note}")
        return None, note
