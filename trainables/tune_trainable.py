"""The Ray Tune function trainable: a thin adapter from a trial to the Trainer and back.

A trial's config holds only its ``experiment_id`` (so Tune's tables show ids, not dicts); the
specs, shard root and result storage are bound once with ``tune.with_parameters``.
"""

from __future__ import annotations

import os
import tempfile
import time

import ray
import torch
from ray import tune

from datasets.shards import ShardError
from orchestrator.results import ResultStore
from trainables.experiment import prepare, summarize

STATE_FILE = "trainer.pt"
# Checkpoint at most this often (and always after the last epoch): small models finish epochs in
# about a second, and a checkpoint per epoch would flood storage and Tune's experiment snapshots.
CHECKPOINT_INTERVAL_S = 30.0


def train_experiment(config: dict, specs: dict[str, dict], data: str, storage: str, study: str,
                     threads: int = 1, checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
    experiment_id = config["experiment_id"]
    spec = {**specs[experiment_id], "id": experiment_id}
    results = ResultStore(storage, study)
    torch.set_num_threads(threads)
    started = time.time()
    gpu_share = tune.get_context().get_trial_resources().required_resources.get("GPU", 0)
    if torch.cuda.is_available() and 0 < gpu_share < 1:
        # Ray does not enforce fractions: cap this process so that trials sharing a GPU fit.
        torch.cuda.set_per_process_memory_fraction(gpu_share)
    try:
        trainer, test_sets = prepare(spec, data)
    except ShardError as e:
        # Bad input fails the same way on every retry: record it and end the trial cleanly.
        results.write_failure(experiment_id, spec, str(e))
        tune.report({"failed": True, "error": str(e)[:500]})
        return

    resumed_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint:  # a retry after a lost worker continues where the last checkpoint ended
        with checkpoint.as_directory() as d:
            trainer.load_state_dict(torch.load(os.path.join(d, STATE_FILE), weights_only=True,
                                               map_location=trainer.device))
        resumed_from = trainer.epoch

    last_checkpoint = time.monotonic()

    def report(epoch) -> None:
        nonlocal last_checkpoint
        metrics = {"epoch": epoch.epoch, "train_loss": epoch.train_loss, "val_loss": epoch.val_loss,
                   "val_dice": epoch.val_dice, "best_val_dice": trainer.best_dice, "lr": epoch.lr}
        if not trainer.finished and time.monotonic() - last_checkpoint < checkpoint_interval_s:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(trainer.state_dict(), os.path.join(d, STATE_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        last_checkpoint = time.monotonic()

    trainer.fit(on_epoch=report)
    per_image = {name: trainer.test(dataset) for name, dataset in test_sets.items()}
    result = summarize(spec, trainer, per_image)
    result["run"] = {
        "started_at": started, "finished_at": time.time(), "resumed_from_epoch": resumed_from,
        "resources": tune.get_context().get_trial_resources().required_resources,
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "node_ip": ray.util.get_node_ip_address(),
    }
    results.write_result(spec, result, per_image)
