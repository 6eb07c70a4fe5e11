"""Experiment identity: a frozen spec and a stable id (readable slug + short hash of the spec)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from trainables.models import cards

# Fields with a closed set of values, checked when a spec is made (a typo in --set fails at once).
CHOICES = {"optimizer": ("adamw", "adam"), "scheduler": ("plateau", "cosine", "constant"),
           "upsample": ("bilinear", "bicubic"), "resize": ("torch", "pil"), "mask_padding": (True, False)}
# Fields some models' builders take (their cards' ``options`` say which); the others ignore them.
MODEL_OPTION_FIELDS = ("decoder_dropout", "mask_padding", "upsample")
# Fields that set how a model learns: overriding one with --set makes the spec's hparams "set".
HYPERPARAMETERS = ("lr", "weight_decay", "batch_size", "optimizer", "scheduler", "encoder_lr_scale",
                   "schedule_epochs", "lr_patience")


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
    # Where lr, batch size, optimizer and scheduler come from: "paper" (the paper's text, App. C),
    # "released" (the study's released configs) or "hpo:<selection.json uri>" (an hpo search).
    hparams: str = "paper"
    schedule_epochs: int | None = None  # the cosine schedule's horizon; None: max_epochs
    grad_accum: int = 1  # micro-batches per optimizer step (same effective batch_size, less memory)
    # The released code's behaviour where it differs from ours (docs/fidelity.md; --as-released):
    decoder_dropout: float | None = None  # CRIS decoder dropout; None: the model's own default (0.1)
    mask_padding: bool = True  # CRIS attends only to real tokens (the released code masked nothing)
    upsample: str = "bilinear"  # CRIS logits back to the input size (the released code: bicubic)
    resize: str = "torch"  # image resize filter: torch (ours) | pil (the study's torchvision-on-PIL)

    def __post_init__(self) -> None:
        if not self.eval_sets:
            object.__setattr__(self, "eval_sets", (self.train_set,))
        object.__setattr__(self, "eval_sets", tuple(self.eval_sets))
        if self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(f"grad_accum {self.grad_accum} must be >= 1 and divide batch_size {self.batch_size}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r}: expected one of {', '.join(map(str, allowed))}")

    @property
    def regime(self) -> str:
        """``end_to_end`` when pretrained encoders train with the decoder where the study trained the
        decoder alone (the CLIPSeg family in mode finetune), else ``as_run``: trained as the study's
        code trained it. Derived from model and mode, so it is part of every id through the mode."""
        decoder_only = any(c.name == self.model and c.as_run_mode == "frozen" for c in cards())
        return "end_to_end" if self.mode == "finetune" and decoder_only else "as_run"

    @property
    def id(self) -> str:
        """``clipseg-frozen-kvasir-p6-1a2b3c4d``: the same spec gives the same id on every machine.

        Only fields that differ from their defaults are hashed, so adding a field with a default
        later keeps every existing id (and its stored results) valid.
        """
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        chosen = {k: v for k, v in dataclasses.asdict(self).items() if v != defaults[k] and k != "eval_sets"}
        if self.eval_sets != (self.train_set,):
            chosen["eval_sets"] = list(self.eval_sets)
        canonical = json.dumps(chosen, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
        return f"{self.model}-{self.mode}-{self.train_set}-{self.prompt_type}-{digest}"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "eval_sets": list(self.eval_sets), "regime": self.regime}

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "eval_sets" else v) for k, v in d.items() if k in fields})
