"""Experiment ids are stable across runs and machines, and change with anything that defines the run."""

import dataclasses

import pytest

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


def test_seeds_keep_todays_ids_and_give_each_later_seed_its_own():
    """--seeds N: the first seed is the spec's own (today's id), each later one a field off its default, so
    hashed into an id of its own with the same readable slug. --only selects after the seeds."""
    from orchestrator.common import build_specs
    from orchestrator.run import parser

    def specs(*flags: str):
        return build_specs(parser().parse_args(["grid", "--profile", "study", *flags]))

    one, three = specs(), specs("--seeds", "3")
    n = len(one)
    assert len(three) == 3 * n and len({s.id for s in three}) == 3 * n
    assert three[:n] == one  # seed by seed: the first N are today's grid, today's ids
    for r in (1, 2):
        assert three[r * n:(r + 1) * n] == [dataclasses.replace(s, seed=42 + r) for s in one]
    kvasir = ExperimentSpec(model="clipseg", mode="frozen", train_set="kvasir_polyp", prompt_type="p6")
    later = dataclasses.replace(kvasir, seed=43)
    assert kvasir.id == PINNED["kvasir"] and later.id != kvasir.id
    assert later.id.rsplit("-", 1)[0] == kvasir.id.rsplit("-", 1)[0]  # same slug, its own hash
    # --only after --seeds: today's id's slug keeps every seed of it, a whole id that one seed.
    slug = one[0].id.rsplit("-", 1)[0]
    assert sorted(s.seed for s in specs("--seeds", "3", "--only", f"{slug}-*")) == [42, 43, 44]
    assert specs("--seeds", "3", "--only", three[n].id) == [three[n]] and three[n].seed == 43
    assert specs("--seeds", "3", "--only", one[0].id) == [one[0]]
    # With --set seed=S the seeds start at S; with --model, --block and --max-epochs each spec gets its seeds.
    assert {s.seed for s in specs("--seeds", "2", "--set", "seed=7")} == {7, 8}
    cris = specs("--seeds", "2", "--model", "cris", "--block", "mimic", "--max-epochs", "3")
    assert len(cris) == 4 and {(s.seed, s.max_epochs) for s in cris} == {(42, 3), (43, 3)}
    # Zero-shot experiments train nothing: one seed, whatever --seeds says.
    zeroshot = build_specs(parser().parse_args(["grid", "--profile", "study", "--block", "zeroshot"]))
    assert build_specs(parser().parse_args(["grid", "--profile", "study", "--block", "zeroshot",
                                            "--seeds", "3"])) == zeroshot
    for wrong in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            parser().parse_args(["grid", "--seeds", wrong])
