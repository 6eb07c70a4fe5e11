"""Table 4's search: OptunaSearch with ASHA on real trials, then the study's selection rule."""

import itertools
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from cli import run_cli

from datasets.shards import ShardStore
from datasets.synthetic import synthetic_rows
from orchestrator.hpo import check_same_search, grid_epochs, select_setting
from orchestrator.selection import SEARCH_FILE, apply_selections, search_name
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES
from search_spaces.hpo import BATCH_SIZES, LR_RANGE, OPTIMIZERS, SCHEDULERS

MAX_EPOCHS = 4
DATASETS = ("tiny_single", "tiny_pairs")


def write_tiny(root: Path) -> None:
    """Two small synthetic sets (one object per image; two, only one in the mask) for fast trials."""
    store = ShardStore(str(root))
    for name, two_objects in zip(DATASETS, (0.0, 1.0)):
        rows = itertools.chain(*(synthetic_rows(name, split, n, two_objects, seed=0)
                                 for split, n in (("train", 24), ("val", 12), ("test", 4))))
        store.write_dataset(name, rows, NON_RADIOLOGY_PROMPT_TYPES, prompt_family="non_radiology")


def last_results(tune_dir: Path) -> dict[str, dict]:
    """Tune's own record of each trial: the last line of its result.json."""
    results = {}
    for path in tune_dir.glob("*/result.json"):
        last = json.loads(path.read_text().strip().splitlines()[-1])
        results[last["trial_id"]] = last
    return results


def test_search_stops_weak_trials_selects_by_the_rule_and_feeds_the_grid(tmp_path):
    write_tiny(tmp_path / "shards")
    storage = tmp_path / "runs"
    result = run_cli("hpo", "--model", "clipseg", "--datasets", *DATASETS, "--num-samples", "8",
                     "--max-epochs", str(MAX_EPOCHS), "--grace-period", "1", "--data", str(tmp_path / "shards"),
                     "--storage", str(storage), "--seed", "0", "--cpus-per-trial", "1", "--verbose", "0", timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    where = storage / "demo" / "hpo" / "clipseg"
    selection = json.loads((where / "selection.json").read_text())
    trials = last_results(where / "tune")
    assert len(trials) == 8 and not selection["errors"]

    # Optuna sampled Table 4's space; ASHA (grace 1, reduction 2) stopped some before the last epoch.
    for trial in trials.values():
        config = trial["config"]
        assert config["optimizer"] in OPTIMIZERS and config["scheduler"] in SCHEDULERS
        assert config["batch_size"] in BATCH_SIZES and LR_RANGE[0] <= config["lr"] <= LR_RANGE[1]
    epochs = [t["training_iteration"] for t in trials.values()]
    assert min(epochs) < MAX_EPOCHS and max(epochs) == MAX_EPOCHS, epochs
    assert len({json.dumps(t["config"], sort_keys=True) for t in trials.values()}) == 8

    # The rule, recomputed from Tune's records: each dataset's best trial, then the most wins.
    best = {i: t["best_val_dice_by_dataset"] for i, t in trials.items()}
    for name in DATASETS:
        winner = max(sorted(best), key=lambda i: best[i][name])
        evidence = selection["per_dataset"][name]
        assert evidence["trial_id"] == winner and math.isclose(evidence["best_val_dice"], best[winner][name])
        assert evidence["setting"] == {k: trials[winner]["config"][k] for k in evidence["setting"]}
    wins = Counter(selection["per_dataset"][name]["trial_id"] for name in DATASETS)
    top = max(wins.values())
    tied = [i for i in sorted(best) if wins[i] == top]
    expected = max(tied, key=lambda i: sum(best[i].values()))
    assert selection["selected"]["trial_id"] == expected and selection["selected"]["wins"] == top
    chosen = selection["selected"]["setting"]
    assert chosen == {k: trials[expected]["config"][k] for k in chosen}
    assert "selected for clipseg" in result.stdout and str(where / "selection.json") in result.stdout

    # Every trial's cosine schedule spans the epochs a grid run of the model is expected to take (the
    # small demo model: twice its patience of 15), not ASHA's max_t.
    horizon = grid_epochs("clipseg", "frozen", "small")[0]
    assert horizon == 30 and selection["schedule_epochs"]["epochs"] == horizon
    assert selection["search"]["base_spec"]["schedule_epochs"] == horizon and selection["regime"] == "as_run"

    # The grid takes the selection: each spec holds the chosen setting, the horizon and their source.
    grid = run_cli("grid", "--profile", "demo", "--hparams-from-hpo", "demo",
                   "--only", "clipseg-frozen-synth_polyp-p0-*", "--max-epochs", "1",
                   "--data", str(tmp_path / "shards"), "--storage", str(storage),
                   "--no-dashboard", "--verbose", "0", timeout=600)
    assert grid.returncode == 0, grid.stdout[-3000:] + grid.stderr[-3000:]
    [spec_file] = (storage / "demo" / "experiments").glob("clipseg-frozen-synth_polyp-p0-*/spec.json")
    spec = json.loads(spec_file.read_text())
    assert spec["hparams"] == "hpo:demo/hpo/clipseg/selection.json"
    assert spec["schedule_epochs"] == (horizon if chosen["scheduler"] == "cosine" else None)
    assert {k: spec[k] for k in chosen} == chosen


def record(trial_id: str, lr: float, scores: dict[str, float]) -> dict:
    return {"trial_id": trial_id, "setting": {"optimizer": "adamw", "lr": lr, "scheduler": "cosine", "batch_size": 32},
            "epochs": 4, "best_val_dice": scores, "mean_best_val_dice": sum(scores.values()) / len(scores)}


def test_rule_counts_wins_before_means():
    # b is best on two of three datasets; c has the highest mean (one big win) but wins only once.
    trials = [record("a", 1e-3, {"x": 0.50, "y": 0.50, "z": 0.50}),
              record("b", 2e-3, {"x": 0.71, "y": 0.72, "z": 0.10}),
              record("c", 3e-3, {"x": 0.70, "y": 0.70, "z": 0.99}),
              record("d", 4e-3, {"x": 0.90})]  # not scored on every dataset: left out
    chosen = select_setting(trials, ["x", "y", "z"])
    assert chosen["selected"]["trial_id"] == "b" and chosen["selected"]["datasets_won"] == ["x", "y"]
    assert chosen["per_dataset"]["z"] == {"trial_id": "c", "setting": trials[2]["setting"], "best_val_dice": 0.99}
    # A tie in wins goes to the higher mean.
    tie = select_setting(trials[1:3], ["y", "z"])
    assert tie["selected"]["trial_id"] == "c" and tie["selected"]["wins"] == 1


def test_a_stopped_search_continues_its_trials_from_their_checkpoints(tmp_path):
    """Ctrl-C the hpo driver mid-trial: it stops without a selection (the running trials end TERMINATED
    but unfinished). The same command again continues the interrupted trials from their last
    checkpoint (Tuner.restore), not from epoch 0, and writes the selection."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from cli import REPO, kill_session

    write_tiny(tmp_path / "shards")
    storage = tmp_path / "runs"
    epochs = 8
    args = ["hpo", "--model", "clipseg", "--datasets", *DATASETS, "--num-samples", "2", "--max-epochs", str(epochs),
            "--grace-period", str(epochs), "--max-concurrent", "2", "--data", str(tmp_path / "shards"),
            "--storage", str(storage), "--seed", "0", "--cpus-per-trial", "1", "--checkpoint-interval", "0",
            "--verbose", "0"]
    tune_dir = storage / "demo" / "hpo" / "clipseg" / "tune"
    log_path = tmp_path / "driver.log"
    with open(log_path, "wb") as out:
        driver = subprocess.Popen([sys.executable, "-m", "orchestrator.run", *args], cwd=REPO, env=os.environ.copy(),
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # Kill once Tune's experiment state knows of a trial checkpoint after epoch 2 and before the last.
        while not any(f"checkpoint_{i:06d}" in p.read_text(errors="replace")
                      for p in tune_dir.glob("experiment_state-*.json") for i in range(2, epochs - 1)):
            assert driver.poll() is None, f"the search ended before the kill:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no checkpoint in time:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.3)
        driver.send_signal(signal.SIGINT)  # Ctrl-C
        driver.wait(timeout=180)
    finally:
        kill_session(driver)  # and whatever of Ray it leaves
    log = log_path.read_text(errors="replace")
    assert driver.returncode == 1 and "the search stopped after" in log, log[-3000:]
    assert not (tune_dir.parent / "selection.json").exists()

    rerun = run_cli(*args, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-4000:]
    assert "continuing the search" in rerun.stdout
    selection = json.loads((tune_dir.parent / "selection.json").read_text())
    trials = selection["trials"]
    assert len(trials) == 2 and all(set(t["best_val_dice"]) == set(DATASETS) for t in trials)
    resumed = [t["resumed_from_epoch"] for t in trials if t["resumed_from_epoch"] is not None]
    # The kill waited for one trial's checkpoint after epoch 2; the other may have stopped earlier.
    assert resumed and all(1 <= r < epochs for r in resumed) and max(resumed) >= 2, trials


def test_each_regime_searches_in_its_own_folder_and_a_folder_holds_one_search(tmp_path):
    assert search_name("clipseg", "frozen") == "clipseg" and search_name("clipseg", "finetune") == "clipseg-finetune"
    assert search_name("cris", "finetune") == "cris"
    settings = {"base_spec": {"mode": "frozen"}, "num_samples": 32, "max_t": 40}
    with pytest.raises(ValueError, match="earlier version"):
        check_same_search(str(tmp_path), settings)
    (tmp_path / SEARCH_FILE).write_text(json.dumps(settings))
    check_same_search(str(tmp_path), settings)
    with pytest.raises(ValueError, match="num_samples: 32 there, 8 now"):
        check_same_search(str(tmp_path), {**settings, "num_samples": 8})


def test_hparams_from_hpo_without_a_fitting_selection_is_an_error(tmp_path):
    from search_spaces.grid import demo

    with pytest.raises(ValueError, match="no hpo selection"):
        apply_selections(demo(), str(tmp_path), "demo")
