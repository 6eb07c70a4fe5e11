"""The study's figures (orchestrator/figures.py) drawn from a small synthetic study written as the project writes
one: records through the result store (experiments, zero-shot, ablations), Tune launch folders as Tune leaves them
(progress.csv, result.json lines), an hpo selection built by orchestrator.hpo's own record and rule, and mask
examples through figures.write_mask_examples. No Ray. Each figure is a real PNG of a reasonable size, not blank,
and a study without the figure's input gives None."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pandas as pd
import pytest

from orchestrator import figures
from orchestrator.evaluation import EvaluationSpec, evaluation_result
from orchestrator.hpo import select_setting, trial_record
from orchestrator.results import load
from orchestrator.selection import SEARCH_FILE, SELECTION_FILE, write_json
from search_spaces.experiment import ExperimentSpec
from search_spaces.hpo import BATCH_SIZES, LR_RANGE, OPTIMIZERS, SCHEDULERS
from trainables.results import ResultStore

STUDY = "figs"
SETS = ("synth_polyp", "synth_pairs")
PROMPTS = ("p0", "p1", "p6")
IMAGES = [f"img{i:02d}" for i in range(16)]
PERTURBATIONS = (None, "random_word:location", "opposite:location", "opposite:size", "class_only")
PNG = b"\x89PNG\r\n\x1a\n"


def dice_of(rng: np.random.Generator, level: float) -> dict[str, float]:
    return {i: float(np.clip(rng.normal(level, 0.1), 0, 1)) for i in IMAGES}


def finish_experiment(store: ResultStore, spec: ExperimentSpec, dice: dict) -> None:
    """What trainables.tune_trainable writes for a finished experiment."""
    full = {**spec.to_dict(), "id": spec.id}
    result = {"experiment_id": spec.id, "spec": full, "best_val_dice": 0.8, "epochs": 3,
              "eval": {name: {"dice_mean": statistics.fmean(s.values()), "n_images": len(s)}
                       for name, s in dice.items()},
              "run": {"started_at": 1000.0, "finished_at": 1100.0, "resources": {"CPU": 1.0}}}
    store.write_result(full, result, dice)


def finish_ablation(store: ResultStore, source: ExperimentSpec, perturbation: str | None, dice: dict) -> str:
    """What orchestrator.evaluation's trial writes for a finished ablation."""
    spec = EvaluationSpec("ablate", source.id, source.train_set, source.prompt_type, perturbation)
    run = {"started_at": 2000.0, "finished_at": 2010.0, "resources": {"CPU": 1.0}}
    result = evaluation_result(spec, {**source.to_dict(), "id": source.id}, dice, {i: f"a polyp {i}" for i in dice},
                               run)
    store.write_result(spec.to_dict(), result, {spec.eval_set: dice}, record_id=spec.id)
    return spec.id


def write_launch(storage, name: str, trials: dict[str, list[dict]], as_json: bool = False) -> None:
    """A launch's Tune folder as Tune leaves it: its experiment state, and per trial (named by its experiment id)
    progress.csv, or only result.json lines, with Tune's own columns beside the trial's reports."""
    folder = storage / STUDY / "tune" / name
    folder.mkdir(parents=True)
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    for trial, reports in trials.items():
        (folder / trial).mkdir()
        rows = [{**r, "training_iteration": n, "trial_id": f"abc_{n:05d}", "done": False} for n, r in
                enumerate(reports, 1)]
        if as_json:
            (folder / trial / "result.json").write_text(
                "".join(json.dumps({**r, "config": {"trial": trial}}) + "\n" for r in rows))
        else:
            pd.DataFrame(rows).to_csv(folder / trial / "progress.csv", index=False)


def epochs(n: int, start: int = 1, level: float = 0.5) -> list[dict]:
    return [{"epoch": e, "timesteps_total": e, "train_loss": 1 / e, "val_loss": 1.2 / e,
             "val_dice": level + 0.3 * (1 - 1 / e), "best_val_dice": level, "lr": 2e-3} for e in range(start, n + 1)]


def write_hpo(storage, model: str = "clipseg", n: int = 12, selection: bool = True) -> None:
    """An hpo search's folder: each trial's Tune logs (<model>-<trial id>/), search.json and, unless the
    search stopped early, selection.json with the records and rule of orchestrator.hpo."""
    rng = np.random.default_rng(1)
    where = storage / STUDY / "hpo" / model
    trials = []
    for n_ in range(n):
        trial_id = f"f00d_{n_:05d}"
        config = {"optimizer": OPTIMIZERS[n_ % 2], "lr": float(10 ** rng.uniform(-5, -2)),
                  "scheduler": SCHEDULERS[n_ % 3], "batch_size": BATCH_SIZES[n_ % 4]}
        steps = 2 + n_ % 3
        reports = []
        for step in range(1, steps + 1):
            latest = {d: float(rng.uniform(0.3, 0.9)) for d in SETS}
            reports.append({"val_dice": statistics.fmean(latest.values()), "epoch": step, "training_iteration": step,
                            "trial_id": trial_id, "val_dice_by_dataset": latest, "best_val_dice_by_dataset": latest,
                            "config": config})
        folder = where / "tune" / f"{model}-{trial_id}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in reports))
        trials.append(trial_record(trial_id, config, reports[-1]))
    write_json(str(where / SEARCH_FILE), {"datasets": list(SETS)})
    if selection:
        record = {"model": model, "mode": "frozen", "size": "small", "datasets": list(SETS),
                  "search": {"space": {"optimizer": list(OPTIMIZERS), "lr": {"loguniform": list(LR_RANGE)},
                                       "scheduler": list(SCHEDULERS), "batch_size": list(BATCH_SIZES)}},
                  **select_setting(trials, list(SETS)), "trials": trials, "errors": {}}
        write_json(str(where / SELECTION_FILE), record)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A small study: two models (frozen CLIPSeg and its zero-shot; finetuned CRIS) on two sets and three prompt
    types, a second seed of one spec, a pooled CRIS, CLIPSeg's P6 ablated, two launches of training curves, an
    hpo search, and mask examples of one ablation."""
    storage = tmp_path_factory.mktemp("figures") / "runs"
    rng = np.random.default_rng(0)
    experiments = ResultStore(str(storage), STUDY)
    level = {"clipseg": 0.7, "cris": 0.8}
    for train_set in SETS:
        for prompt in PROMPTS:
            for model, mode in (("clipseg", "frozen"), ("clipseg", "zeroshot"), ("cris", "finetune")):
                spec = ExperimentSpec(model, mode, train_set, prompt, size="small")
                shift = -0.4 if mode == "zeroshot" else 0.02 * int(prompt[1:])
                finish_experiment(experiments, spec, {train_set: dice_of(rng, level[model] + shift)})
    finish_experiment(experiments, ExperimentSpec("clipseg", "frozen", SETS[0], "p6", size="small", seed=7),
                      {SETS[0]: dice_of(rng, 0.75)})
    pooled = ExperimentSpec("cris", "finetune", "pooled_polyp", "random", eval_sets=SETS, size="small")
    finish_experiment(experiments, pooled, {s: dice_of(rng, 0.85) for s in SETS})

    evaluations = ResultStore(str(storage), STUDY, "evaluations")
    source = ExperimentSpec("clipseg", "frozen", SETS[0], "p6", size="small")
    ablations = {p: finish_ablation(evaluations, source, p, dice_of(rng, 0.75 - (0.2 if p else 0.0)))
                 for p in PERTURBATIONS}

    write_launch(storage, "20260101T000000Z-experiments-aaaaaa",
                 {source.id: epochs(4), pooled.id: epochs(3, level=0.6)})
    # a relaunch resumed the first after epoch 3: epoch 4 again (the latest kept), then 5 and 6; its last
    # report repeats epoch 6 with the test dice, as a finished trial's does
    write_launch(storage, "20260102T000000Z-experiments-bbbbbb",
                 {source.id: [*epochs(6, start=4, level=0.55), {**epochs(6, level=0.55)[-1], "test_dice": 0.7}]},
                 as_json=True)
    write_launch(storage, "20260103T000000Z-evaluations-cccccc", {f"ablate-{source.id}": [{"finished": 1}]})
    (storage / STUDY / "tune" / "20260104T000000Z-experiments-dddddd").mkdir()  # no experiment state: not a launch

    write_hpo(storage)
    write_hpo(storage, model="cris", selection=False)

    examples = []
    for n in range(3):
        yy, xx = np.mgrid[:320, :400]
        truth = (yy - 160) ** 2 + (xx - 200 + 30 * n) ** 2 < 70 ** 2
        image = np.stack([(yy % 256), (xx % 256), np.full_like(yy, 90 * n)], axis=-1).astype(np.uint8)
        examples.append({"sample_id": IMAGES[n], "dice_clean": 0.9 - 0.05 * n, "dice_perturbed": 0.2 + 0.1 * n,
                         "prompt_clean": "a small round polyp at the left of the image",
                         "prompt_perturbed": "a large round polyp at the right of the image",
                         "image": image, "truth": truth, "clean": np.roll(truth, 5, axis=1),
                         "perturbed": np.roll(truth, 90, axis=0)})
    figures.write_mask_examples(str(storage), STUDY, ablations["opposite:location"],
                                {"reference_id": ablations[None], "source": source.id, "model": "clipseg",
                                 "mode": "frozen", "eval_set": SETS[0], "prompt_type": "p6",
                                 "perturbation": "opposite:location"}, examples)
    return storage


def assert_png(path) -> None:
    import matplotlib.image

    assert path is not None and path.exists(), path
    assert path.read_bytes()[:8] == PNG
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert width > 300 and height > 300, pixels.shape
    assert np.ptp(pixels[..., :3]) > 0, "a single colour"


def test_figure2_shows_dice_by_prompt_type_with_bootstrap_cis(study, tmp_path):
    images = load(str(study), STUDY)
    summary = figures.prompt_type_summary(images)
    # 2 sets x 3 prompts x (CLIPSeg frozen, zero-shot; CRIS finetuned); the pool and the ablations left out
    assert len(summary) == 18 and set(summary["mode"]) == {"frozen", "zeroshot", "finetune"}
    assert (summary["ci_low"] <= summary["dice"]).all() and (summary["dice"] <= summary["ci_high"]).all()
    # two seeds of CLIPSeg P6 on the first set: each image's dice is their mean
    two = images[(images["model"] == "clipseg") & (images["mode"] == "frozen") & (images["prompt_type"] == "p6")
                 & (images["eval_set"] == SETS[0]) & (images["kind"] == "train")]
    row = summary[(summary["model"] == "clipseg") & (summary["mode"] == "frozen") & (summary["prompt_type"] == "p6")
                  & (summary["train_set"] == SETS[0])].iloc[0]
    assert row["n"] == len(IMAGES) and row["dice"] == pytest.approx(100 * two["dice"].mean())
    assert_png(figures.figure2(images, tmp_path / "fig2.png"))
    assert figures.figure2(images[images["kind"] == "ablate"], tmp_path / "none.png") is None


def test_figure3_shows_the_relative_change_of_each_perturbation(study, tmp_path):
    images = load(str(study), STUDY)
    summary = figures.ablation_summary(images)
    assert sorted(summary["perturbation"]) == sorted(p for p in PERTURBATIONS if p)
    assert (summary["rel_change"] < 0).all() and (summary["n"] == len(IMAGES)).all()
    row = summary.iloc[0]
    assert row["rel_change"] == pytest.approx(100 * (row["perturbed"] - row["clean"]) / row["clean"])
    assert ((summary["ci_low"] <= summary["rel_change"]) & (summary["rel_change"] <= summary["ci_high"])).all()
    assert_png(figures.figure3(images, tmp_path / "fig3.png"))
    assert figures.figure3(images[images["kind"] != "ablate"], tmp_path / "none.png") is None
    # perturbed prompts without their unperturbed reference: nothing to compare against
    assert figures.figure3(images[images["perturbation"].notna()], tmp_path / "none.png") is None


def test_table2_heatmap_from_either_level(study, tmp_path):
    images = load(str(study), STUDY)
    wide = figures.table2_summary(images)
    assert list(wide.columns) == sorted(SETS, key=figures._dataset_key)
    assert ("pooled_polyp", "cris", "finetune") in wide.index and ("individual", "clipseg", "frozen") in wide.index
    assert not any(mode == "zeroshot" for _, _, mode in wide.index)
    best = images[(images["kind"] == "train") & (images["model"] == "cris") & (images["train_set"] == SETS[1])
                  & (images["eval_set"] == SETS[1])].groupby("prompt_type")["dice"].mean().max()
    assert wide.loc[("individual", "cris", "finetune"), SETS[1]] == pytest.approx(100 * best)
    assert_png(figures.table2_heatmap(images, tmp_path / "table2.png"))
    experiments = load(str(study), STUDY, "experiments")
    assert_png(figures.table2_heatmap(experiments, tmp_path / "table2-experiments.png", prompt="mean"))
    assert figures.table2_heatmap(images[images["kind"] == "ablate"], tmp_path / "none.png") is None


def test_training_curves_from_the_trials_logs_across_launches(study, tmp_path):
    curves = figures.trial_curves(str(study), STUDY)
    source = ExperimentSpec("clipseg", "frozen", SETS[0], "p6", size="small").id
    mine = curves[curves["experiment_id"] == source]
    assert list(mine["epoch"]) == [1, 2, 3, 4, 5, 6]  # one row an epoch; the repeated ones once
    assert mine.set_index("epoch").loc[4, "launch"].endswith("bbbbbb")  # the latest report of an epoch kept
    assert not curves["experiment_id"].str.startswith("ablate-").any()  # evaluations log no epochs
    assert_png(figures.training_curves(str(study), STUDY, tmp_path / "curves.png"))
    assert_png(figures.training_curves(str(study), STUDY, tmp_path / "one.png", ids=["clipseg-*"], max_panels=1))
    assert figures.training_curves(str(study), STUDY, tmp_path / "none.png", ids=["nothing"]) is None
    assert figures.training_curves(str(study), "no-such-study", tmp_path / "none.png") is None


def test_hpo_figures_from_the_stored_trial_records(study, tmp_path):
    search = figures.hpo_study(str(study), STUDY, "clipseg")
    selection = json.loads((study / STUDY / "hpo" / "clipseg" / SELECTION_FILE).read_text())
    assert len(search.trials) == len(selection["trials"]) == 12
    assert search.best_value == pytest.approx(max(t["mean_best_val_dice"] for t in selection["trials"]))
    assert all(t.intermediate_values for t in search.trials)
    import matplotlib

    style = dict(matplotlib.rcParams)
    paths = figures.hpo_figures(str(study), STUDY, "clipseg", tmp_path / "hpo")
    assert dict(matplotlib.rcParams) == style  # Optuna's ggplot style sheet does not outlive its plots
    assert matplotlib.get_backend().lower() == "agg"
    assert [p.name for p in paths] == ["hpo-clipseg-history.png", "hpo-clipseg-importances.png",
                                       "hpo-clipseg-intermediate.png"]
    for path in paths:
        assert_png(path)
    # a search stopped before its selection: rebuilt from Tune's trial folders
    assert len(figures.hpo_study(str(study), STUDY, "cris").trials) == 12
    assert figures.hpo_figures(str(study), STUDY, "cris", tmp_path / "hpo")
    assert figures.hpo_figures(str(study), STUDY, "unet", tmp_path / "hpo") == []


def test_figure4_shows_the_worst_drops_from_the_stored_masks(study, tmp_path):
    examples = figures.mask_examples(str(study), STUDY)
    assert [e["sample_id"] for e in examples] == IMAGES[:3]  # worst drop first
    assert examples[0]["drop"] == pytest.approx(0.7) and examples[0]["perturbation"] == "opposite:location"
    assert_png(figures.figure4(str(study), STUDY, tmp_path / "fig4.png"))
    assert_png(figures.figure4(str(study), STUDY, tmp_path / "fig4-one.png", k=1, perturbations=["opposite:*"]))
    assert figures.figure4(str(study), STUDY, tmp_path / "none.png", perturbations=["random_word:*"]) is None
    assert figures.figure4(str(study), "no-such-study", tmp_path / "none.png") is None


def test_curves_and_mask_examples_are_read_from_s3(s3_bucket, tmp_path):
    """The same readers on object storage: a launch folder's progress.csv and an ablation's mask examples."""
    import pyarrow.fs as pafs

    from datasets.storage import filesystem_for

    storage = f"{s3_bucket}/runs"
    fs, root = filesystem_for(f"{storage}/{STUDY}/tune/20260101T000000Z-experiments-eeeeee")
    source = ExperimentSpec("clipseg", "frozen", SETS[0], "p6", size="small")
    for name, data in {"experiment_state-x.json": b"{}",
                       f"{source.id}/progress.csv": pd.DataFrame(epochs(3)).to_csv(index=False).encode()}.items():
        fs.create_dir(f"{root}/{name}".rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(f"{root}/{name}") as out:
            out.write(data)
    assert isinstance(fs, pafs.S3FileSystem)
    assert list(figures.trial_curves(storage, STUDY)["epoch"]) == [1, 2, 3]
    assert_png(figures.training_curves(storage, STUDY, tmp_path / "curves.png"))

    ablation = finish_ablation(ResultStore(storage, STUDY, "evaluations"), source, "opposite:size",
                               dice_of(np.random.default_rng(2), 0.5))
    truth = np.zeros((320, 320), bool)
    truth[100:200, 80:240] = True
    image = np.random.default_rng(3).integers(0, 255, (320, 320, 3), dtype=np.uint8)
    figures.write_mask_examples(storage, STUDY, ablation, {"model": "clipseg", "eval_set": SETS[0],
                                                           "perturbation": "opposite:size"},
                                [{"sample_id": "a", "dice_clean": 0.8, "dice_perturbed": 0.1, "image": image,
                                  "truth": truth, "clean": truth, "perturbed": ~truth}])
    assert_png(figures.figure4(storage, STUDY, tmp_path / "fig4.png"))
