"""Nothing from storage is unpickled (issue 16, case 1): whoever can write the bucket must not run code on
the head node. ``hpo`` used to continue a search with ``Tuner.restore``, which unpickles ``tuner.pkl`` and
Tune's searcher state from --storage; it now continues from its own JSON trial records, and loads a trial's
checkpoint only as weights (``torch.load(weights_only=True)``) and JSON."""

from __future__ import annotations

import itertools
import json
import os
import pickle

import pytest
import torch

from datasets.shards import ShardStore
from datasets.synthetic import synthetic_rows
from orchestrator.hpo import base_spec
from orchestrator.hpo_state import TRIALS_FOLDER, search_settings, setting_key
from orchestrator.selection import SEARCH_FILE, SELECTION_FILE
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES
from tests.cli import run_cli


class Planted:
    """Unpickling it creates the marker folder: the proof that code from storage ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


@pytest.mark.slow
def test_a_planted_pickle_in_the_search_folder_never_runs(tmp_path):
    marker = str(tmp_path / "PWNED")
    shards, storage = tmp_path / "shards", tmp_path / "runs"
    rows = itertools.chain(*(synthetic_rows("tiny", split, n, 0.0, seed=0)
                             for split, n in (("train", 16), ("val", 8), ("test", 2))))
    ShardStore(str(shards)).write_dataset("tiny", rows, NON_RADIOLOGY_PROMPT_TYPES, prompt_family="non_radiology")

    # A search folder as an attacker leaves it: the settings of the search the command below continues, and
    # every pickle Tune would load to restore it (the tuner, its searcher's state, a trial's checkpoint).
    where = storage / "demo" / "hpo" / "clipseg"
    (where / "tune" / "clipseg-planted" / "checkpoint_000001").mkdir(parents=True)
    base = base_spec("clipseg", "frozen", "small", "random", 1, None)
    settings = search_settings(base, ["tiny"], num_samples=3, max_epochs=1, grace_period=1, reduction_factor=2,
                               seed=0)
    (where / SEARCH_FILE).write_text(json.dumps(settings))
    (where / "tune" / "tuner.pkl").write_bytes(pickle.dumps(Planted(marker)))
    (where / "tune" / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(pickle.dumps(Planted(marker)))
    (where / "tune" / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": []}))
    checkpoint = where / "tune" / "clipseg-planted" / "checkpoint_000001"
    torch.save({"model": Planted(marker)}, checkpoint / "tiny.pt")
    (checkpoint / "latest.json").write_text(json.dumps({"tiny": 0.5}))

    # The project's own records (JSON): one trial finished, one interrupted whose checkpoint is the planted one.
    done = {"optimizer": "adamw", "lr": 1e-3, "scheduler": "constant", "batch_size": 16}
    interrupted = {"optimizer": "adam", "lr": 2e-3, "scheduler": "cosine", "batch_size": 32}
    (where / TRIALS_FOLDER).mkdir()
    for setting, record in ((done, {"trial_id": "earlier1", "done": True, "history": [[1, 0.4]], "checkpoint": None,
                                    "checkpoint_epoch": None,
                                    "metrics": {"val_dice": 0.4, "epoch": 1, "best_val_dice_by_dataset": {"tiny": 0.4},
                                                "resumed_from_epoch": None}}),
                            (interrupted, {"trial_id": "earlier2", "done": False, "history": [[1, 0.5]],
                                           "checkpoint": "tune/clipseg-planted/checkpoint_000001",
                                           "checkpoint_epoch": 1, "metrics": {}})):
        (where / TRIALS_FOLDER / f"{setting_key(setting)}.json").write_text(json.dumps({**record, "setting": setting}))

    result = run_cli("hpo", "--model", "clipseg", "--datasets", "tiny", "--num-samples", "3", "--max-epochs", "1",
                     "--grace-period", "1", "--data", str(shards), "--storage", str(storage), "--seed", "0",
                     "--cpus-per-trial", "1", "--verbose", "0", timeout=600)
    assert not os.path.exists(marker), "a pickle from storage was loaded"
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    assert "continuing the search" in result.stdout
    # The earlier launches' run-level state is gone: Ray cannot fall back on it either.
    assert not (where / "tune" / "searcher-state-2026-01-01_00-00-00.pkl").exists()
    assert not (where / "tune" / "experiment_state-2026-01-01_00-00-00.json").exists()

    selection = json.loads((where / SELECTION_FILE).read_text())
    # The finished trial is kept (not rerun); the interrupted one refused its planted checkpoint; one new setting
    # was sampled and ran.
    trials = {t["trial_id"]: t for t in selection["trials"]}
    assert len(trials) == 2 and trials["earlier1"]["setting"] == done, trials
    [error] = selection["errors"].values()
    assert "tiny.pt" in error and "weights-only" in error, error


def test_a_continued_search_reads_only_sound_records_and_replays_asha_rungs(tmp_path):
    from ray.tune.schedulers import ASHAScheduler

    from orchestrator.hpo_state import METRIC, read_trial_records, replay_rungs
    from search_spaces.hpo import SEARCHED

    ok = {"optimizer": "adam", "lr": 1e-3, "scheduler": "cosine", "batch_size": 16}
    escaping = {**ok, "lr": 2e-3}
    folder = tmp_path / TRIALS_FOLDER
    folder.mkdir()
    for setting, checkpoint, history in ((ok, "tune/t1/checkpoint_000002", [[1, 0.9], [2, 0.9], [3, 0.95]]),
                                         (escaping, "tune/../../../etc", [[1, 0.8]])):
        (folder / f"{setting_key(setting)}.json").write_text(json.dumps(
            {"trial_id": f"t{len(checkpoint)}", "setting": setting, "done": False, "history": history,
             "checkpoint": checkpoint, "checkpoint_epoch": 2, "metrics": {}}))
    (folder / "not-a-record.json").write_text("{")
    (folder / f"{setting_key({**ok, 'lr': 3e-3})}.json").write_text(json.dumps({"setting": ok}))  # name != setting
    records = read_trial_records(str(tmp_path), SEARCHED)
    assert {r["checkpoint"] for r in records.values()} == {"tune/t1/checkpoint_000002", None}
    # An interrupted trial goes on from its checkpoint: what it reported after it is run again.
    assert records[setting_key(ok)]["history"] == [[1, 0.9], [2, 0.9]]

    # A new ASHA scheduler knows the earlier trials' rung results: a weak new trial is cut at the first rung.
    scheduler = ASHAScheduler(metric=METRIC, mode="max", time_attr="epoch", max_t=4, grace_period=1,
                              reduction_factor=2)
    replay_rungs(scheduler, records)
    new = type("Trial", (), {"trial_id": "new"})()
    scheduler.on_trial_add(None, new)
    assert scheduler.on_trial_result(None, new, {"epoch": 1, METRIC: 0.1}) == "STOP"
