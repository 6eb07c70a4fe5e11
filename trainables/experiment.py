"""From an experiment spec to a ready Trainer and its test sets, and from a finished Trainer to results.

Plain Python, no Ray: the Tune adapter, tests and notebooks all go through here.
"""

from __future__ import annotations

import os

import torch

from datasets.pooled import PooledSplit, open_split
from datasets.segmentation import SegmentationSplit
from datasets.shards import ShardStore
from trainables.feature_cache import FeatureCache, supports_feature_cache
from trainables.models import build_model, build_tokenizer, encoder_prefixes, model_inputs, model_options
from trainables.results import eval_summary
from trainables.trainer import TrainConfig, Trainer, check_split_rows


def prepare(spec: dict, data: str, feature_cache: bool = True) -> tuple[Trainer, dict[str, SegmentationSplit]]:
    """Build the model, data and Trainer of an experiment; returns the Trainer and the test splits.

    In ``frozen`` mode the encoders' outputs come from the node's feature cache (computed once per
    node) unless ``feature_cache`` is False or the environment sets ``VLSM_FEATURE_CACHE=0``.
    """
    store = ShardStore(data)
    inputs = model_inputs(spec["model"], spec["size"])

    def split(dataset: str, name: str, train: bool) -> SegmentationSplit | PooledSplit:
        # A pooled train set (pooled_polyp, pooled_all) reads its members' splits one after another.
        return open_split(store, dataset, name, spec["prompt_type"], inputs.input_size, train, spec["seed"],
                          spec.get("resize", "torch"))

    if spec["mode"] == "zeroshot":  # evaluated as built: nothing to train or validate on
        train_set = val_set = None
    else:
        train_set, val_set = split(spec["train_set"], "train", True), split(spec["train_set"], "val", False)
    test_sets = {name: split(name, "test", False) for name in spec["eval_sets"]}
    for test_set in test_sets.values():  # refused now, not after hours of training
        check_split_rows(test_set, "testing")
    torch.manual_seed(spec["seed"])  # random-init weights are part of the experiment
    model = build_model(spec["model"], spec["mode"], spec["size"], spec["weights"], **model_options(spec))
    # Zero-shot experiments evaluate the weights as built: no epoch of training.
    epochs = 0 if spec["mode"] == "zeroshot" else spec["max_epochs"]
    config = TrainConfig(lr=spec["lr"], weight_decay=spec["weight_decay"], batch_size=spec["batch_size"],
                         max_epochs=epochs, patience=spec["patience"], lr_patience=spec["lr_patience"],
                         optimizer=spec["optimizer"], scheduler=spec["scheduler"],
                         bce_weight=spec["bce_weight"], encoder_lr_scale=spec["encoder_lr_scale"],
                         encoder_prefixes=encoder_prefixes(spec["model"]), seed=spec["seed"],
                         schedule_epochs=spec.get("schedule_epochs"), grad_accum=spec.get("grad_accum", 1))
    tokenizer = build_tokenizer(spec["model"], spec["weights"])
    features = None
    if (spec["mode"] == "frozen" and feature_cache and os.environ.get("VLSM_FEATURE_CACHE", "1") != "0"
            and supports_feature_cache(model) and not isinstance(train_set, PooledSplit)):
        features = FeatureCache(model, tokenizer, inputs, spec["model"], encoder_prefixes(spec["model"]))
    return Trainer(model, tokenizer, inputs, config, train_set, val_set, feature_cache=features), test_sets


def summarize(spec: dict, trainer: Trainer, per_image: dict[str, dict[str, float]],
              boundary: dict[str, dict[str, dict[str, float | None]]] | None = None) -> dict:
    """The result.json of a finished experiment: mean and spread of dice per evaluation set, and the
    mean of each boundary metric (``boundary``: metric -> eval set -> image -> value) over the images
    where it is defined."""
    return {
        "experiment_id": spec["id"],
        "spec": spec,
        "best_val_dice": trainer.best_dice if trainer.best_state is not None else None,
        "epochs": trainer.epoch,
        "eval": {name: eval_summary(scores, {m: v.get(name, {}) for m, v in (boundary or {}).items()})
                 for name, scores in per_image.items()},
    }
