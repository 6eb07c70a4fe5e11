"""The Ray Tune function trainable: a thin adapter from a trial config to the Trainer and back.

Config keys: ``experiment`` (spec dict with its ``id``), ``data`` (shard root), ``storage`` and
``study`` (where results go), ``threads`` (torch CPU threads for this trial's CPU share).
"""

from __future__ import annotations

import os
import tempfile

import torch
from ray import tune

from datasets.shards import ShardError
from orchestrator.results import ResultStore
from trainables.experiment import prepare, summarize

STATE_FILE = "trainer.pt"


def train_experiment(config: dict) -> None:
    spec, experiment_id = config["experiment"], config["experiment"]["id"]
    results = ResultStore(config["storage"], config["study"])
    torch.set_num_threads(config.get("threads", 1))
    try:
        trainer, test_sets = prepare(spec, config["data"])
    except (ShardError, ValueError) as e:
        # Bad input will fail the same way on every retry: record it and end the trial cleanly.
        results.write_failure(experiment_id, spec, str(e))
        tune.report({"failed": True, "error": str(e)[:500]})
        return

    checkpoint = tune.get_checkpoint()
    if checkpoint:  # a retry after a lost worker continues where the last epoch ended
        with checkpoint.as_directory() as d:
            trainer.load_state_dict(torch.load(os.path.join(d, STATE_FILE), weights_only=True))

    def report(epoch) -> None:
        with tempfile.TemporaryDirectory() as d:
            torch.save(trainer.state_dict(), os.path.join(d, STATE_FILE))
            tune.report(
                {"epoch": epoch.epoch, "train_loss": epoch.train_loss, "val_loss": epoch.val_loss,
                 "val_dice": epoch.val_dice, "best_val_dice": trainer.best_dice, "lr": epoch.lr},
                checkpoint=tune.Checkpoint.from_directory(d),
            )

    trainer.fit(on_epoch=report)
    per_image = {name: trainer.test(dataset) for name, dataset in test_sets.items()}
    results.write_result(spec, summarize(spec, trainer, per_image), per_image)
