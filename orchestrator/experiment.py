"""Experiment identity: a frozen spec and a stable id (readable slug + short hash of the spec)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ExperimentSpec:
    model: str  # a name in trainables.models
    mode: str  # frozen | finetune
    train_set: str  # dataset trained on (its train split) and validated on (its val split)
    prompt_type: str  # p0..pN
    eval_sets: tuple[str, ...] = ()  # datasets whose test split is scored; () means the train set's
    size: str = "full"  # full | small (same architecture, narrow, for tests and the demo)
    weights: str | None = None  # hub id or local folder of pretrained weights; None = random init
    lr: float = 2e-3
    weight_decay: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 50  # epochs without a better validation dice before early stopping
    lr_patience: int = 5  # epochs without a lower validation loss before LR x 0.1
    optimizer: str = "adamw"  # adamw | adam
    scheduler: str = "plateau"  # plateau | cosine | constant
    bce_weight: float = 0.2  # loss = dice + bce_weight * BCE
    encoder_lr_scale: float = 1.0  # encoders' LR relative to the decoder's, when they train
    seed: int = 42

    def __post_init__(self) -> None:
        if not self.eval_sets:
            object.__setattr__(self, "eval_sets", (self.train_set,))
        object.__setattr__(self, "eval_sets", tuple(self.eval_sets))

    @property
    def id(self) -> str:
        """``clipseg-frozen-kvasir-p6-1a2b3c4d``: the same spec gives the same id on every machine.

        Only fields that differ from their defaults are hashed, so adding a field with a default
        later keeps every existing id (and its stored results) valid.
        """
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        chosen = {k: v for k, v in self.to_dict().items() if v != defaults[k] and k != "eval_sets"}
        if self.eval_sets != (self.train_set,):
            chosen["eval_sets"] = list(self.eval_sets)
        canonical = json.dumps(chosen, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
        return f"{self.model}-{self.mode}-{self.train_set}-{self.prompt_type}-{digest}"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "eval_sets": list(self.eval_sets)}

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "eval_sets" else v) for k, v in d.items() if k in fields})
