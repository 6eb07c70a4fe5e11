"""The shared Trainer: a plain loop over epochs, with early stopping on validation dice.

It knows nothing of Ray, storage or experiment grids: give it a model, data and a config, call
``fit``, then ``test``. ``state_dict`` / ``load_state_dict`` make a run resumable mid-way. A split it
cannot use (too few rows, a sample id on more than one row) is refused as bad input (ShardError):
the train and validation splits when it is built, before any epoch, a test split when it is scored.

Its steps run in one process (``OneProcess``); ``trainables.distributed.DataParallel`` replaces that
object to run the same steps on N data-parallel ranks (DDP): the loop below is the same for both.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from datasets.segmentation import SegmentationSplit
from datasets.shards import ShardError
from trainables.losses import dice_bce_loss
from trainables.metrics import dice_per_image, predicted_masks, scores_per_image
from trainables.models import ModelInputs
from trainables.tokenizers import tokenize


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 2e-3
    weight_decay: float = 1e-3
    batch_size: int = 8
    max_epochs: int = 100
    patience: int = 20  # epochs without a better validation dice before stopping
    lr_patience: int = 5  # epochs without a lower validation loss before LR x 0.1 ("plateau")
    optimizer: str = "adamw"  # adamw | adam
    scheduler: str = "plateau"  # plateau (on validation loss) | cosine (over max_epochs) | constant
    bce_weight: float = 0.2  # loss = dice + bce_weight * BCE; the CNN baselines used Dice alone
    # Learning rate of pretrained encoders relative to the rest, when they train (CRIS used 0.1).
    encoder_lr_scale: float = 1.0
    encoder_prefixes: tuple[str, ...] = ()  # parameter-name prefixes of the encoders
    grad_clip: float = 0.5
    seed: int = 42
    schedule_epochs: int | None = None  # the cosine schedule's horizon (T_max); None: max_epochs
    grad_accum: int = 1  # micro-batches per optimizer step: the same batch, a fraction of the activations


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_dice: float
    lr: float


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    optimizers = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
    if config.optimizer not in optimizers:
        raise ValueError(f"unknown optimizer {config.optimizer!r}: expected one of {', '.join(optimizers)}")
    encoder, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (encoder if name.startswith(config.encoder_prefixes) else rest).append(p)
    groups = [{"params": rest, "lr": config.lr}]
    if encoder:
        groups.append({"params": encoder, "lr": config.lr * config.encoder_lr_scale})
    return optimizers[config.optimizer](groups, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer):
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                          patience=config.lr_patience)
    if config.scheduler == "cosine":
        # Cosine decay to 0 over the horizon, then held there: PyTorch's CosineAnnealingLR is periodic
        # and would climb back up in a run that outlasts its horizon (an early-stopped grid run often does).
        horizon = max(1, config.schedule_epochs or config.max_epochs)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: 0.5 * (1 + math.cos(math.pi * min(epoch, horizon) / horizon)))
    if config.scheduler == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    raise ValueError(f"unknown scheduler {config.scheduler!r}: expected plateau, cosine or constant")


def micro_batches(batch: dict, parts: int) -> list[dict]:
    """``batch`` cut into up to ``parts`` consecutive slices of near-equal size (tensors, lists and
    nested dicts alike), none of a single sample: BatchNorm cannot train on one (CRIS, the CNNs).
    A short last batch of an epoch is then cut into fewer slices."""
    n = len(batch["sample_ids"])
    parts = min(parts, n // 2)
    if parts <= 1:
        return [batch]
    bounds = [n * i // parts for i in range(parts + 1)]

    def cut(value, lo: int, hi: int):
        return {k: cut(v, lo, hi) for k, v in value.items()} if isinstance(value, dict) else value[lo:hi]

    return [cut(batch, lo, hi) for lo, hi in zip(bounds, bounds[1:])]


class OneProcess:
    """How the Trainer's steps are spread over processes: here, not at all. ``trainables.distributed.
    DataParallel`` gives each of N ranks its slice of every batch and averages their gradients (DDP)."""

    rank, world = 0, 1

    def batches(self, loader: DataLoader) -> Iterator[tuple[dict, float]]:
        """Each optimizer step's batch for this process, with the weight of one sample's loss in the
        step's gradient: 1 / the global batch's size, so the step's gradient is the batch's mean."""
        for batch in loader:
            yield batch, 1 / len(batch["sample_ids"])

    def run(self, model: torch.nn.Module, *args, decode: bool = False) -> torch.Tensor:
        """``model(*args)``, or ``model.decode(*args)`` (the decoder alone, on cached encoder outputs)."""
        return model.decode(*args) if decode else model(*args)

    def syncing(self, last: bool) -> contextlib.AbstractContextManager:
        """Around each micro-batch's backward; ``last``: the step's last one (where ranks sync gradients)."""
        return contextlib.nullcontext()

    def sum(self, *values: float) -> list[float]:
        """``values`` summed over the ranks."""
        return list(values)

    def agree(self, *values: float) -> list[float]:
        """Rank 0's ``values`` on every rank: decisions (LR schedule, early stopping) are the same everywhere."""
        return list(values)


# Rows a split needs. Training: a batch of one sample cannot train BatchNorm (CRIS, the CNNs), so the
# loader drops a last batch of one, and a one-row split would train on nothing. Validation and testing
# average over their rows.
MIN_ROWS = {"training": 2, "validation": 1, "testing": 1}


def describe_split(dataset) -> str:
    """The split's name in messages: dataset 'x' split 'y', or a pool's members."""
    if hasattr(dataset, "parts"):  # datasets.pooled.PooledSplit
        return "the pool of " + ", ".join(describe_split(part) for part in dataset.parts)
    return f"dataset {dataset.dataset!r} split {dataset.split!r}"


def check_split_rows(dataset: SegmentationSplit, purpose: str) -> None:
    """Refuse, as bad input (ShardError), a split that cannot serve ``purpose`` ("training", "validation"
    or "testing"): fewer rows than ``MIN_ROWS``, or a sample id held by more than one row (per-image
    scores are keyed by id: one row's score would overwrite another's)."""
    rows, minimum = len(dataset), MIN_ROWS[purpose]
    if rows < minimum:
        why = " (a batch of one sample cannot train BatchNorm, so it is dropped)" if purpose == "training" else ""
        raise ShardError(f"{describe_split(dataset)} has {rows} row(s): {purpose} needs at least {minimum}{why}. "
                         "Add rows to the split and re-ingest it, or choose another dataset.")
    repeated = [sid for sid, count in Counter(dataset.sample_ids).items() if count > 1]
    if repeated:
        shown = ", ".join(repr(sid) for sid in repeated[:10]) + (" ..." if len(repeated) > 10 else "")
        raise ShardError(f"{describe_split(dataset)}: {len(repeated)} sample id(s) held by more than one row: "
                         f"{shown}. Each image's score is stored under its id, so these rows would overwrite "
                         "each other's scores; re-ingest the dataset (ingest gives repeated rows ids of their "
                         "own), and `python -m datasets.validate` finds such ids in shards already written.")


class Trainer:
    def __init__(self, model: torch.nn.Module, tokenizer, inputs: ModelInputs, config: TrainConfig,
                 train_set: SegmentationSplit | None, val_set: SegmentationSplit | None,
                 device: torch.device | None = None,
                 feature_cache=None):
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device)
        self.tokenizer, self.inputs, self.config = tokenizer, inputs, config
        # Bad splits fail here, before any epoch runs (a test split is checked when it is scored).
        for dataset, purpose in ((train_set, "training"), (val_set, "validation")):
            if dataset is not None:
                check_split_rows(dataset, purpose)
        self.train_set, self.val_set = train_set, val_set
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(config, model)
        self.scheduler = make_scheduler(config, self.optimizer)
        self.mean = torch.tensor(inputs.mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(inputs.std, device=self.device).view(1, 3, 1, 1) * 255
        # bf16 autocast where the accelerator has it; plain fp32 on CPU.
        self.bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        # Frozen encoders: a trainables.feature_cache.FeatureCache serves their outputs, and only the
        # decoder runs here.
        self.feature_cache = feature_cache
        self.epoch = 0  # epochs completed
        self.best_dice = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epochs_since_best = 0
        self.parallel = OneProcess()  # trainables.distributed.attach makes it data-parallel

    # -- data ----------------------------------------------------------------------------------
    def _collate(self, samples: list[dict]) -> dict:
        batch = {
            "mask": torch.stack([s["mask"] for s in samples]),
            "full_masks": [s["full_mask"] for s in samples],
            "sample_ids": [s["sample_id"] for s in samples],
        }
        if "features" in samples[0]:  # the encoders' outputs, from the feature cache
            batch["features"] = {part: {k: torch.stack([s["features"][part][k] for s in samples])
                                        for k in samples[0]["features"][part]} for part in ("image", "text")}
            return batch
        return {**batch, "image": torch.stack([s["image"] for s in samples]),
                **tokenize(self.tokenizer, [s["text"] for s in samples], self.inputs.context_length)}

    def _loader(self, dataset: SegmentationSplit, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.seed + self.epoch)
        # A training batch of one breaks BatchNorm (CRIS's sentence projection, the CNNs): drop it.
        drop_last = shuffle and len(dataset) % self.config.batch_size == 1
        if self.feature_cache is not None:
            dataset = self.feature_cache.wrap(dataset, self.device, self.bf16)
        return DataLoader(dataset, batch_size=self.config.batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=self._collate, drop_last=drop_last)

    def _forward(self, batch: dict) -> torch.Tensor:
        if "features" in batch:  # run the decoder only, on the cached encoder outputs
            image, text = ({k: v.to(self.device).float() if v.is_floating_point() else v.to(self.device)
                            for k, v in batch["features"][part].items()} for part in ("image", "text"))
            with self.autocast:
                logits = self.parallel.run(self.model, image, text, (self.inputs.input_size, self.inputs.input_size),
                                           decode=True)
            return logits.float()
        pixels = (batch["image"].to(self.device, non_blocking=True).float() - self.mean) / self.std
        with self.autocast:
            logits = self.parallel.run(self.model, pixels, batch["input_ids"].to(self.device),
                                       batch["attention_mask"].to(self.device))
        return logits.float()

    # -- the loop ------------------------------------------------------------------------------
    def train_epoch(self) -> float:
        self.model.train()
        self.train_set.set_epoch(self.epoch)
        total, count = 0.0, 0
        for batch, weight in self.parallel.batches(self._loader(self.train_set, shuffle=True)):
            self.optimizer.zero_grad(set_to_none=True)
            parts = micro_batches(batch, self.config.grad_accum)
            for i, part in enumerate(parts):
                # The loss is a mean over samples: weighting each micro-batch by its share of the
                # batch gives the gradient of the whole batch.
                with self.parallel.syncing(last=i == len(parts) - 1):
                    loss = dice_bce_loss(self._forward(part), part["mask"].to(self.device), self.config.bce_weight)
                    (loss * len(part["sample_ids"]) * weight).backward()
                if weight:  # a weight of 0: a data-parallel rank's stand-in sample, not part of the batch
                    total += loss.item() * len(part["sample_ids"])
                    count += len(part["sample_ids"])
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
            self.optimizer.step()
        total, count = self.parallel.sum(total, count)
        return total / count

    @torch.no_grad()
    def evaluate(self, dataset: SegmentationSplit) -> tuple[float, dict[str, float]]:
        """Mean loss at the model's input size and dice per image at the original size."""
        self.model.eval()
        total, dice = 0.0, {}
        for batch in self._loader(dataset, shuffle=False):
            logits = self._forward(batch)
            loss = dice_bce_loss(logits, batch["mask"].to(self.device), self.config.bce_weight)
            total += loss.item() * len(batch["sample_ids"])
            scores = dice_per_image(logits, batch["full_masks"], self.inputs.threshold)
            dice.update(zip(batch["sample_ids"], scores))
        return total / len(dataset), dice

    @torch.no_grad()
    def score(self, dataset: SegmentationSplit) -> dict[str, dict[str, float]]:
        """Dice, NSD and HD95 per image at the original size (trainables.metrics.scores_per_image):
        the test's metrics, too costly for every validation epoch."""
        check_split_rows(dataset, "testing")
        self.model.eval()
        scores = {}
        for batch in self._loader(dataset, shuffle=False):
            per_image = scores_per_image(self._forward(batch), batch["full_masks"], self.inputs.threshold)
            scores.update(zip(batch["sample_ids"], per_image))
        return scores

    def step(self) -> EpochResult:
        """Train one epoch, validate, step the LR schedule and the early-stopping counter."""
        train_loss = self.train_epoch()
        val_loss, dice = self.evaluate(self.val_set)
        val_loss, val_dice = self.parallel.agree(val_loss, sum(dice.values()) / len(dice))
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_loss)
        else:
            self.scheduler.step()
        self.epoch += 1
        if val_dice > self.best_dice:
            self.best_dice, self.epochs_since_best = val_dice, 0
            self.best_state = {k: v.detach().clone() for k, v in self._trainable_state().items()}
        else:
            self.epochs_since_best += 1
        return EpochResult(self.epoch, train_loss, val_loss, val_dice, self.optimizer.param_groups[0]["lr"])

    @property
    def finished(self) -> bool:
        return self.epoch >= self.config.max_epochs or self.epochs_since_best >= self.config.patience

    def fit(self, on_epoch: Callable[[EpochResult], None] | None = None) -> float:
        """Train until the epoch budget or early stopping; returns the best validation dice."""
        while not self.finished:
            result = self.step()
            if on_epoch:
                on_epoch(result)
        return self.best_dice

    @torch.no_grad()
    def predict(self, dataset: SegmentationSplit, indices: list[int]) -> dict[str, np.ndarray]:
        """The predicted masks (boolean, at the original size, as scored) of the images at ``indices``
        (an evaluation's Trainer: no feature cache)."""
        self.model.eval()
        masks = {}
        for batch in self._loader(Subset(dataset, indices), shuffle=False):
            preds = predicted_masks(self._forward(batch), [m.shape for m in batch["full_masks"]],
                                    self.inputs.threshold)
            masks.update((i, p.cpu().numpy()) for i, p in zip(batch["sample_ids"], preds))
        return masks

    def test(self, dataset: SegmentationSplit) -> dict[str, float]:
        """Per-image dice of the best validation weights on ``dataset``."""
        return {sample: scores["dice"] for sample, scores in self.test_scores(dataset).items()}

    def test_scores(self, dataset: SegmentationSplit) -> dict[str, dict[str, float]]:
        """Per-image dice, NSD and HD95 of the best validation weights on ``dataset``."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state, strict=False)
        return self.score(dataset)

    # -- checkpoints ---------------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        # Frozen weights are rebuilt from the same seed or pretrained files, so they are not saved;
        # buffers (e.g. BatchNorm statistics) change in training and are.
        names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        names |= {n for n, _ in self.model.named_buffers()}
        return {k: v for k, v in self.model.state_dict().items() if k in names}

    def state_dict(self) -> dict:
        return {
            "model": self._trainable_state(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "best_dice": self.best_dice,
            "best_state": self.best_state, "epochs_since_best": self.epochs_since_best,
        }

    def load_state_dict(self, state: dict) -> None:
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        trainable = set(self._trainable_state())
        if unexpected or trainable & set(missing):
            raise ValueError(f"checkpoint does not fit this model: missing {sorted(trainable & set(missing))[:5]}, "
                             f"unexpected {unexpected[:5]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best_dice = state["epoch"], state["best_dice"]
        self.best_state, self.epochs_since_best = state["best_state"], state["epochs_since_best"]
