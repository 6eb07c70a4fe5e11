"""The study's tidy results set: as the result store writes each record (experiments and evaluations,
on a local folder and on a real S3 server on loopback), one fixed schema in every file, whatever a
spec's optional fields hold, so one line reads the study; ``load`` reads it back; ``backfill`` writes
the files of records finished before the layout existed. No Ray: records are written as trials write them."""

from __future__ import annotations

import dataclasses
import statistics
import typing

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from orchestrator.evaluation import EvaluationSpec, evaluation_result
from orchestrator.results import backfill, load, tidy_uri
from search_spaces.experiment import ExperimentSpec
from trainables.results import EXPERIMENTS_SCHEMA, IMAGES_SCHEMA, SPEC_COLUMNS, ResultStore

CLIPSEG = ExperimentSpec("clipseg", "frozen", "synth_polyp", "p6", eval_sets=("synth_polyp", "synth_pairs"),
                         weights="CIDAS/clipseg-rd64-refined", scheduler="cosine", schedule_epochs=40)
UNET = ExperimentSpec("unet", "finetune", "synth_polyp", "p0", max_epochs=3)  # weights and schedule_epochs None
DICE = {"synth_polyp": {"a": 0.9, "b": 0.7, "c": 0.2}, "synth_pairs": {"x": 0.5, "y": 0.25}}


def arrow_type(annotation) -> pa.DataType:
    """A spec field's column type from its annotation: X | None is X's, a tuple is a joined string."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is tuple:
        return pa.string()
    if args and typing.get_origin(annotation) is not tuple:
        return arrow_type(args[0])
    return {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}[annotation]


def finish_experiment(store: ResultStore, spec: ExperimentSpec, dice: dict, gpu: float | None = 0.5,
                      seconds: float = 120.0) -> str:
    """What trainables.tune_trainable writes for a finished experiment."""
    full = {**spec.to_dict(), "id": spec.id}
    result = {"experiment_id": spec.id, "spec": full, "best_val_dice": 0.8, "epochs": 3,
              "eval": {name: {"dice_mean": statistics.fmean(s.values()), "dice_std": statistics.pstdev(s.values()),
                              "n_images": len(s)} for name, s in dice.items()},
              "run": {"started_at": 1000.0, "finished_at": 1000.0 + seconds, "resumed_from_epoch": None,
                      "resources": {"CPU": 1.0, **({"GPU": gpu} if gpu else {})}}}
    store.write_result(full, result, dice)
    return spec.id


def finish_evaluation(store: ResultStore, source: ExperimentSpec, perturbation: str | None,
                      dice: dict[str, float]) -> str:
    """What orchestrator.evaluation's trial writes for a finished evaluation."""
    spec = EvaluationSpec("ablate", source.id, source.train_set, source.prompt_type, perturbation)
    run = {"started_at": 2000.0, "finished_at": 2010.0, "resources": {"CPU": 1.0, "GPU": 0.25}}
    prompts = {sample: f"prompt of {sample}" for sample in dice}
    result = evaluation_result(spec, {**source.to_dict(), "id": source.id}, dice, prompts, run)
    store.write_result(spec.to_dict(), result, {spec.eval_set: dice}, record_id=spec.id)
    return spec.id


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> str:
    return str(tmp_path / "runs") if request.param == "local" else f"{request.getfixturevalue('s3_bucket')}/runs"


def test_the_spec_columns_are_the_experiment_specs_fields():
    hints = typing.get_type_hints(ExperimentSpec)
    assert SPEC_COLUMNS == {f.name: arrow_type(hints[f.name]) for f in dataclasses.fields(ExperimentSpec)}


def test_each_record_gets_tidy_files_in_one_schema_and_one_line_reads_them(storage):
    experiments, evaluations = ResultStore(storage, "study"), ResultStore(storage, "study", "evaluations")
    clipseg = finish_experiment(experiments, CLIPSEG, DICE)
    unet = finish_experiment(experiments, UNET, {"synth_polyp": DICE["synth_polyp"]}, gpu=None, seconds=30.0)
    reference = finish_evaluation(evaluations, CLIPSEG, None, {"a": 0.9, "b": 0.6})
    flipped = finish_evaluation(evaluations, CLIPSEG, "opposite:location", {"a": 0.45, "b": 0.3})
    experiments.write_failure("unet-finetune-synth_polyp-p1-00000000", {}, "boom")  # no tidy rows

    records = {clipseg, unet, reference, flipped}
    for level, schema in (("images", IMAGES_SCHEMA), ("experiments", EXPERIMENTS_SCHEMA)):
        assert experiments.tidy_ids(level) == records
        listed = experiments.fs.get_file_info(pafs.FileSelector(experiments.tidy_dir(level)))
        assert sorted(i.base_name for i in listed) == sorted(f"{r}.parquet" for r in records)  # no temporary files
        for info in listed:  # one schema in every file, whether weights or schedule_epochs is None or not
            with experiments.fs.open_input_file(info.path) as f:
                assert pq.read_schema(f).remove_metadata() == schema

    # The one line, through pyarrow's S3 or local filesystem alike.
    images = pd.read_parquet(tidy_uri(storage, "study"))
    assert len(images) == 5 + 3 + 2 + 2
    assert set(images.columns) == set(IMAGES_SCHEMA.names)
    assert ds.dataset(tidy_uri(storage, "study", "experiments")).count_rows() == 2 + 1 + 1 + 1

    loaded = load(storage, "study")
    assert len(loaded) == 12 and list(loaded.columns) == IMAGES_SCHEMA.names
    assert not loaded.duplicated(["record_id", "eval_set", "sample_id"]).any()
    row = loaded[(loaded.record_id == clipseg) & (loaded.sample_id == "y")].iloc[0].to_dict()
    assert {k: row[k] for k in ("experiment_id", "kind", "model", "mode", "regime", "eval_set", "dice")} == {
        "experiment_id": clipseg, "kind": "train", "model": "clipseg", "mode": "frozen", "regime": "as_run",
        "eval_set": "synth_pairs", "dice": 0.25}
    assert {k: row[k] for k in ("weights", "eval_sets", "schedule_epochs", "seed", "hparams", "lr")} == {
        "weights": "CIDAS/clipseg-rd64-refined", "eval_sets": "synth_polyp,synth_pairs", "schedule_epochs": 40,
        "seed": 42, "hparams": "paper", "lr": CLIPSEG.lr}
    assert all(pd.isna(row[k]) for k in ("perturbation", "prompt", "nsd", "hd95"))
    cnn = loaded[loaded.record_id == unet]
    assert cnn.weights.isna().all() and cnn.schedule_epochs.isna().all() and (cnn.max_epochs == 3).all()
    ablated = loaded[loaded.record_id == flipped]
    assert set(ablated.kind) == {"ablate"} and set(ablated.experiment_id) == {clipseg}
    assert set(ablated.perturbation) == {"opposite:location"} and set(ablated.prompt_type) == {"p6"}
    assert set(ablated.model) == {"clipseg"} and set(ablated.prompt) == {"prompt of a", "prompt of b"}
    assert set(load(storage, "study", folders=("experiments",)).record_id) == {clipseg, unet}

    summary = load(storage, "study", "experiments").set_index(["record_id", "eval_set"])
    assert len(summary) == 5 and list(summary.index.names) == ["record_id", "eval_set"]
    pairs = summary.loc[(clipseg, "synth_pairs")]
    assert (pairs.n_images, pairs.dice_mean, pairs.dice_std) == (2, 0.375, 0.125)
    assert (pairs.best_val_dice, pairs.epochs, pairs.wall_time_s, pairs.gpu_share) == (0.8, 3, 120.0, 0.5)
    assert summary.loc[(unet, "synth_polyp")].gpu_share == 0.0  # trained on CPU
    ablation = summary.loc[(flipped, "synth_polyp")]
    assert pd.isna(ablation.best_val_dice) and ablation.wall_time_s == 10.0 and ablation.gpu_share == 0.25
    assert ablation.dice_mean == pytest.approx(0.375)


def test_extra_per_image_metrics_are_stored_beside_dice(tmp_path):
    store = ResultStore(str(tmp_path), "study")
    spec = {**UNET.to_dict(), "id": UNET.id}
    result = {"experiment_id": UNET.id, "spec": spec, "best_val_dice": 0.5, "epochs": 3, "eval": {}}
    store.write_result(spec, result, {"synth_polyp": {"a": 0.5, "b": 1.0}},
                       metrics={"nsd": {"synth_polyp": {"a": 0.25, "b": 0.75}}})
    images = load(str(tmp_path), "study")
    assert list(images.nsd) == [0.25, 0.75] and images.hd95.isna().all()
    assert load(str(tmp_path), "study", "experiments").nsd_mean.tolist() == [0.5]
    assert store.per_image(UNET.id)[1] == {"nsd": {"synth_polyp": {"a": 0.25, "b": 0.75}}}
    with pytest.raises(ValueError, match="unknown per-image metrics"):
        store.write_result(spec, result, {}, metrics={"iou": {}})


def test_backfill_writes_the_tidy_files_of_records_finished_before_them(tmp_path):
    storage = str(tmp_path)
    experiments, evaluations = ResultStore(storage, "study"), ResultStore(storage, "study", "evaluations")
    finish_experiment(experiments, CLIPSEG, DICE)
    flipped = finish_evaluation(evaluations, CLIPSEG, "class_only", {"a": 0.5})
    # An old record: its spec from before `resize` and `regime` existed, and no tidy files.
    old = {k: v for k, v in CLIPSEG.to_dict().items() if k not in ("resize", "regime")}
    result = experiments.result(CLIPSEG.id)
    experiments.write_result({**old, "id": CLIPSEG.id}, {**result, "spec": old}, DICE)
    for level in ("images", "experiments"):
        experiments.fs.delete_dir(experiments.tidy_dir(level))
    assert load(storage, "study").empty and list(load(storage, "study").columns) == IMAGES_SCHEMA.names

    assert sorted(backfill(storage, "study")) == sorted([CLIPSEG.id, flipped])
    images = load(storage, "study")
    assert len(images) == 5 + 1
    assert set(images.resize) == {"torch"} and set(images.regime) == {"as_run"}  # the defaults, derived
    assert set(images[images.record_id == flipped].prompt) == {"prompt of a"}
    assert backfill(storage, "study") == []  # nothing left to write
    assert sorted(backfill(storage, "study", rewrite=True)) == sorted([CLIPSEG.id, flipped])


def test_a_record_that_is_not_finished_is_not_loaded(tmp_path):
    store = ResultStore(str(tmp_path), "study")
    finish_experiment(store, UNET, {"synth_polyp": {"a": 1.0}})
    store.fs.delete_file(f"{store.path}/experiments/{UNET.id}/DONE")  # e.g. deleted to run it again
    assert load(str(tmp_path), "study").empty
    assert str(load(str(tmp_path), "study", "experiments").dtypes["epochs"]) == "Int64"  # nullable integers
