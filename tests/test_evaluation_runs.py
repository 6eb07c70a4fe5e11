"""Evaluation runs end to end on synthetic data, with results on a real S3 server on loopback: two grid
launches train two small CLIPSegs for real, then ``zeroshot``, ``ablate`` and ``ood`` run as Ray Tune
trials and write their results next to the grid's; a rerun skips what finished, and a broken evaluation
is recorded without stopping the others. Ray's result API, over each launch's own Tune folder, shows
every trial with its spec and test dice."""

import csv
import io
import statistics
import types
import uuid

import boto3
import pytest
from ray.tune import ExperimentAnalysis

from datasets.shards import ShardStore
from datasets.synthetic import write_synthetic
from orchestrator.evaluation import MASK_EXAMPLES, EvaluationSpec, ood_specs, run_evaluations
from orchestrator.figures import figure4, mask_examples
from orchestrator.launch import launch_folders
from prompts.perturb import UNCOMMON_WORDS
from tests.cli import run_cli
from trainables.results import ResultStore

SETS = ("synth_polyp", "synth_pairs")
RAY = ["--cpus-per-trial", "1", "--no-dashboard", "--verbose", "0"]


def mean(scores) -> float:
    return statistics.fmean(scores.values())


@pytest.fixture(scope="module")
def trained(s3_endpoint, tmp_path_factory):
    """Both synthetic sets in a local folder; two frozen CLIPSegs (P6), one per set, trained for one
    epoch by the real grid command with results on S3: two launches of the study, one experiment each."""
    data = str(tmp_path_factory.mktemp("shards"))
    for name in SETS:
        write_synthetic(ShardStore(data), name)
    bucket = f"vlsm-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    storage = f"s3://{bucket}/runs"
    for name in SETS:
        grid = run_cli("grid", "--only", f"{name}-p6", "--max-epochs", "1", "--data", data, "--storage", storage, *RAY)
        assert grid.returncode == 0, grid.stdout[-3000:] + grid.stderr[-5000:]
    experiments = ResultStore(storage, "demo")
    results = {r["spec"]["train_set"]: r for r in experiments.results()}
    assert sorted(results) == sorted(SETS)
    assert all(experiments.has_weights(r["experiment_id"]) for r in results.values())
    return types.SimpleNamespace(data=data, storage=storage, results=results, launches=launch_folders(storage, "demo"),
                                 evaluations=ResultStore(storage, "demo", "evaluations"))


def test_rays_result_api_sees_every_launch_with_its_spec_and_test_dice(trained):
    """Each launch has its own Tune folder; Ray's ExperimentAnalysis, on each in turn, shows every
    launch's trials with their spec (config) and test dice (last result), as the result store has them."""
    assert len(trained.launches) == 2 and all("/demo/tune/" in f and "-experiments-" in f for f in trained.launches)
    seen = {}
    for folder in trained.launches:  # the loop docs/commands.md shows
        frame = ExperimentAnalysis(folder).dataframe()
        assert len(frame) == 1, frame
        for row in frame.to_dict("records"):
            seen[row["config/trial"]] = (folder, row)
    assert sorted(seen) == sorted(r["experiment_id"] for r in trained.results.values())
    assert len({folder for folder, _ in seen.values()}) == 2  # one launch each, neither written over
    for result in trained.results.values():
        _, row = seen[result["experiment_id"]]
        spec = result["spec"]
        assert row["config/spec/id"] == result["experiment_id"]
        for key in ("model", "mode", "train_set", "prompt_type", "lr", "batch_size", "max_epochs", "seed"):
            assert row[f"config/spec/{key}"] == spec[key], key
        [test_set] = result["eval"]
        dice = result["eval"][test_set]["dice_mean"]
        assert row[f"test_dice/{test_set}"] == pytest.approx(dice) and row["test_dice"] == pytest.approx(dice)
        assert row["epoch"] == result["epochs"] == 1 and row["best_val_dice"] == pytest.approx(result["best_val_dice"])


def test_ablate_scores_every_perturbation_of_the_prompt_and_a_rerun_runs_nothing(trained, tmp_path):
    source = trained.results["synth_pairs"]
    args = ["ablate", "--only", "synth_pairs-p6", "--data", trained.data, "--storage", trained.storage, *RAY]
    before = launch_folders(trained.storage, "demo")
    first = run_cli(*args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    # P6 shows number, size, colour, shape, class name and location: 5 uncommon words, 5 opposites,
    # the class name alone, and the unperturbed reference.
    assert "12 evaluations: 0 already finished" in first.stdout and "12 finished, 0 failed" in first.stdout
    results = {r["spec"]["perturbation"]: r for r in trained.evaluations.results()
               if r["kind"] == "ablate" and r["spec"]["eval_set"] == "synth_pairs"}
    assert len(results) == 12 and all(r["source"] == source["experiment_id"] for r in results.values())
    assert all(r["eval"]["synth_pairs"]["n_images"] == 40 for r in results.values())

    # The stored best weights, rebuilt over the same seed, give the grid's test score again.
    reference = results[None]
    assert reference["eval"]["synth_pairs"]["dice_mean"] == pytest.approx(
        source["eval"]["synth_pairs"]["dice_mean"], abs=1e-3)
    prompts = reference["prompts"]
    assert len(prompts) == 40 and all(", located in " in p for p in prompts.values())
    flipped = results["opposite:location"]["prompts"]
    assert all(flipped[i] != prompts[i] for i in prompts)
    swap = {"left": "right", "right": "left"}
    for sample, prompt in prompts.items():  # only the location words changed
        where = prompt.rsplit(" in ", 1)[1].split(" of ")[0]
        if where in swap:
            assert flipped[sample] == prompt.replace(f"in {where} of", f"in {swap[where]} of")
    assert all(any(w in p for w in UNCOMMON_WORDS) for p in results["random_word:size"]["prompts"].values())
    assert set(results["class_only"]["prompts"].values()) == {"polyp"}
    # The launch's own Tune folder: its one trial's config has the source spec and the evaluations it ran,
    # its last result each one's dice.
    [launched] = [f for f in launch_folders(trained.storage, "demo") if f not in before]
    [trial] = ExperimentAnalysis(launched).trials
    assert "-evaluations-" in launched and trial.config["trial"] == f"ablate-{source['experiment_id']}"
    assert trial.config["spec"]["id"] == source["experiment_id"] and trial.config["spec"]["model"] == "clipseg"
    assert {e["id"] for e in trial.config["evaluations"]} == {r["evaluation_id"] for r in results.values()}
    assert all(trial.last_result[f"test_dice/{r['evaluation_id']}"] == pytest.approx(
        r["eval"]["synth_pairs"]["dice_mean"]) for r in results.values())

    # Figure 4's inputs: for a perturbation that lowered some images' dice, those images (at most
    # MASK_EXAMPLES), worst first, with the ground truth and both predictions as scored.
    examples = [e for e in mask_examples(trained.storage, "demo") if e["evaluation_id"].startswith("ablate-")]
    assert examples and all(e["dice_perturbed"] < e["dice_clean"] for e in examples)
    for perturbation in {e["perturbation"] for e in examples}:
        mine = [e for e in examples if e["perturbation"] == perturbation]
        scored = results[perturbation]
        assert len(mine) <= MASK_EXAMPLES and [e["drop"] for e in mine] == sorted((e["drop"] for e in mine),
                                                                                   reverse=True)
        assert all(e["prompt_perturbed"] == scored["prompts"][e["sample_id"]] for e in mine)
    assert figure4(trained.storage, "demo", tmp_path / "figure4.png") is not None
    assert (tmp_path / "figure4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    bucket, prefix = trained.storage.removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3")
    report = s3.get_object(Bucket=bucket, Key=f"{prefix}/demo/evaluations.csv")["Body"].read().decode()
    rows = [r for r in csv.DictReader(io.StringIO(report)) if r["kind"] == "ablate" and r["eval_set"] == "synth_pairs"]
    assert len(rows) == 12 and sum(r["change_%"] != "" for r in rows) == 11
    stored = trained.evaluations.finished_ids()
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "12 evaluations: 12 already finished" in again.stdout and "0 to run" in again.stdout
    assert "Ray" not in again.stdout + again.stderr and trained.evaluations.finished_ids() == stored
    shown = run_cli("status", "--storage", trained.storage)  # the demo study, as grid names it
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "evaluations (ablate, ood): 12 done, 0 failed, 0 unfinished" in shown.stdout, shown.stdout


def test_ood_scores_each_model_on_every_polyp_set(trained):
    run = run_cli("ood", "--only", "clipseg-frozen", "--test-sets", *SETS, "--data", trained.data,
                  "--storage", trained.storage, *RAY)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "4 evaluations: 0 already finished" in run.stdout and "4 finished, 0 failed" in run.stdout
    results = [r for r in trained.evaluations.results() if r["kind"] == "ood"]
    scored = {(r["source_spec"]["train_set"], r["spec"]["eval_set"]) for r in results}
    assert scored == {(trained_on, tested_on) for trained_on in SETS for tested_on in SETS}
    for r in results:
        assert r["source"] == trained.results[r["source_spec"]["train_set"]]["experiment_id"]
        assert r["eval"][r["spec"]["eval_set"]]["n_images"] == 40
        if r["spec"]["eval_set"] == r["source_spec"]["train_set"]:  # in distribution: the grid's own score
            assert r["eval"][r["spec"]["eval_set"]]["dice_mean"] == pytest.approx(
                trained.results[r["spec"]["eval_set"]]["eval"][r["spec"]["eval_set"]]["dice_mean"], abs=1e-3)


def test_a_broken_evaluation_is_recorded_and_the_others_go_on(trained):
    source = trained.results["synth_pairs"]
    sources = {r["experiment_id"]: {**r["spec"], "id": r["experiment_id"]} for r in trained.results.values()}
    # P6 has no description to replace: that evaluation breaks when its test set is built.
    broken = EvaluationSpec("ablate", source["experiment_id"], "synth_polyp", "p6", "opposite:description")
    fine = EvaluationSpec("ablate", source["experiment_id"], "synth_polyp", "p6", "class_only")
    specs = [broken, fine, *ood_specs(list(sources.values()), SETS)]
    options = {"data": trained.data, "storage": trained.storage, "study": "demo", "dashboard": False, "verbose": 0}
    first = run_evaluations(specs, sources, **options)
    assert first.finished == [fine.id] and list(first.failed) == [broken.id]
    assert "no 'description' to perturb" in first.failed[broken.id]
    assert trained.evaluations.failure(broken.id)["spec"] == broken.to_dict()
    # Finished evaluations are skipped, failed ones too unless asked for; nothing is left to run.
    again = run_evaluations(specs, sources, **options)
    assert again.skipped == len(specs) - 1 and again.skipped_failed == [broken.id]
    assert not again.finished and not again.failed


def test_zeroshot_scores_pretrained_weights_on_every_dataset_and_prompt(trained, tmp_path):
    from trainables.evaluate import Evaluator
    from trainables.models import build_model, build_tokenizer

    weights = tmp_path / "clipseg-pretrained"  # a small CLIPSeg saved as a hub snapshot is saved
    build_model("clipseg", "frozen", "small").net.save_pretrained(weights)
    build_tokenizer("clipseg").save_pretrained(weights)
    args = ["zeroshot", "--weights", f"clipseg={weights}", "--size", "small", "--data", trained.data,
            "--storage", trained.storage, "--study", "zeroshot", *RAY]
    listed = run_cli(*args, "--dry-run")
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "total: 20 experiments (0 done" in listed.stdout  # two datasets x P0-P9
    run = run_cli(*args, "--prompts", "p6")  # one prompt type of the 10 keeps the test short
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "2 experiments: 0 already finished" in run.stdout and "2 finished, 0 failed" in run.stdout
    experiments = ResultStore(trained.storage, "zeroshot")
    results = experiments.results()
    assert sorted((r["spec"]["train_set"], r["spec"]["prompt_type"]) for r in results) == [
        (s, "p6") for s in sorted(SETS)]
    for r in results:
        assert r["spec"]["mode"] == "zeroshot" and r["spec"]["weights"] == str(weights) and r["epochs"] == 0
        assert r["eval"][r["spec"]["train_set"]]["n_images"] == 40 and r["best_val_dice"] is None
        assert not experiments.has_weights(r["experiment_id"])  # nothing was trained
    # The score is the saved weights' own: evaluated here, outside Ray, they give the same dice.
    one = results[0]
    scores, _ = Evaluator(one["spec"], None, trained.data).evaluate(one["spec"]["train_set"], "p6")
    stored = one["eval"][one["spec"]["train_set"]]
    assert mean({i: s["dice"] for i, s in scores.items()}) == pytest.approx(stored["dice_mean"], abs=1e-9)
    assert set(stored) >= {"nsd_mean", "hd95_mean"}  # the boundary metrics' means beside dice


def test_zeroshot_builds_the_grids_zero_shot_experiments():
    from datasets.catalogue import DATASETS, INDIVIDUAL
    from orchestrator.evaluation import DEFAULT_ZEROSHOT_WEIGHTS, zeroshot_specs
    from search_spaces.grid import zeroshot

    # Same ids: `zeroshot` and `grid --block zeroshot` skip each other's finished experiments.
    specs = zeroshot_specs(DEFAULT_ZEROSHOT_WEIGHTS, {d: DATASETS[d].prompt_types for d in INDIVIDUAL})
    assert sorted(s.id for s in specs) == sorted(s.id for s in zeroshot())


def test_each_prompt_type_gets_the_perturbations_it_can_take():
    from orchestrator.evaluation import ablation_perturbations

    camus = ablation_perturbations("camus", "p7")  # class, shape, view, cycle, age, sex, quality
    assert camus[0] is None and "class_only" in camus
    assert {"opposite:view", "opposite:cycle", "opposite:sex", "opposite:quality", "random_word:age"} <= set(camus)
    assert "opposite:age" not in camus and not any(p and p.endswith("class_name") for p in camus)
    assert ablation_perturbations("non_radiology", "p1") == [None]  # the class name alone is P1 itself
    assert ablation_perturbations("non_radiology", "p6", ["opposite:location", "opposite:description"]) == [
        None, "opposite:location"]
