"""Experiment ids are stable across runs and machines, and change with anything that defines the run."""

import dataclasses

from search_spaces.experiment import ExperimentSpec
from search_spaces.grid import demo

PINNED = {
    "kvasir": "clipseg-frozen-kvasir_polyp-p6-f544ee23",
    "demo": ["clipseg-frozen-synth_polyp-p0-b4399f8c", "clipseg-frozen-synth_polyp-p1-76f8ba3c"],
}


def test_ids_are_pinned():
    # Pinned literals: if one changes, every stored result of that experiment is orphaned.
    spec = ExperimentSpec(model="clipseg", mode="frozen", train_set="kvasir_polyp", prompt_type="p6")
    assert spec.id == PINNED["kvasir"]
    assert [s.id for s in demo()][:2] == PINNED["demo"]


def test_defaults_are_pinned():
    # Ids hash only the fields that differ from these defaults (so that adding a field keeps old
    # ids); changing a default would silently give old ids to different experiments.
    defaults = {f.name: f.default for f in dataclasses.fields(ExperimentSpec) if f.default is not dataclasses.MISSING}
    assert defaults == {"eval_sets": (), "size": "full", "weights": None, "lr": 2e-3, "weight_decay": 1e-3,
                        "batch_size": 128, "max_epochs": 200, "patience": 50, "lr_patience": 5, "optimizer": "adamw",
                        "scheduler": "plateau", "bce_weight": 0.2, "encoder_lr_scale": 1.0, "seed": 42,
                        "hparams": "paper", "schedule_epochs": None, "grad_accum": 1, "decoder_dropout": None,
                        "mask_padding": True, "upsample": "bilinear", "resize": "torch"}


def test_id_changes_with_every_field_and_round_trips():
    spec = ExperimentSpec(model="clipseg", mode="frozen", train_set="synth_polyp", prompt_type="p1", size="small")
    changed = {"model": "cris", "mode": "finetune", "train_set": "x", "prompt_type": "p2", "eval_sets": ("a",),
               "size": "full", "weights": "CIDAS/clipseg-rd64-refined", "lr": 1e-4, "weight_decay": 0.0,
               "batch_size": 4, "max_epochs": 3, "patience": 2, "lr_patience": 1, "optimizer": "adam",
               "scheduler": "cosine", "bce_weight": 0.0, "encoder_lr_scale": 0.1, "seed": 7,
               "hparams": "released", "schedule_epochs": 90, "grad_accum": 2, "decoder_dropout": 0.2,
               "mask_padding": False, "upsample": "bicubic", "resize": "pil"}
    assert set(changed) == {f.name for f in dataclasses.fields(ExperimentSpec)}
    ids = {dataclasses.replace(spec, **{k: v}).id for k, v in changed.items()}
    assert len(ids) == len(changed) and spec.id not in ids
    assert ExperimentSpec.from_dict(spec.to_dict()) == spec
    assert spec.id.startswith("clipseg-frozen-synth_polyp-p1-")
    # Evaluating on the train set explicitly is the same experiment as the default.
    assert dataclasses.replace(spec, eval_sets=("synth_polyp",)).id == spec.id
