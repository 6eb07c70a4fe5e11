"""An hpo search's own state, which a rerun of the same command continues from: its settings
(``search.json``), a JSON record per trial (``trials/<setting key>.json``: the setting, the validation dice
by epoch, the folder of its last checkpoint, whether it ended) and trial checkpoints of tensors and JSON.
Nothing here unpickles: Tune's own state in --storage (``tuner.pkl``, the searcher's state, experiment
snapshots) is never read back, since whoever can write the bucket could make it run code on the driver.
"""

from __future__ import annotations

import hashlib
import json
import pickle  # only for the error torch.load(weights_only=True) raises on a pickle
import posixpath
import types

import pyarrow.fs as pafs

from datasets.storage import filesystem_for
from orchestrator.selection import write_json
from search_spaces.hpo import (
    BATCH_SIZES,
    ENCODER_LR_SCALE_RANGE,
    LR_RANGE,
    OPTIMIZERS,
    SCHEDULERS,
    SEARCHED,
)

METRIC, MODE = "val_dice", "max"


def setting_key(setting: dict) -> str:
    """A trial's name in the search's own records (``trials/<key>.json``): a hash of its sampled setting,
    so a continued search finds an interrupted trial's record and checkpoint by the setting it enqueues."""
    return hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:16]


def sampled(config: dict) -> dict:
    """The sampled fields of a trial's config (Table 4's, and the encoders' LR scale where searched)."""
    return {k: config[k] for k in SEARCHED + ("encoder_lr_scale",) if k in config}


class CheckpointRefused(Exception):
    """A trial checkpoint in storage that is not plain weights and JSON: never unpickled."""


def load_trial_state(trainers: dict, uri: str) -> dict[str, float]:
    """Load an interrupted trial's state from its checkpoint folder ``uri`` (one ``<dataset>.pt`` of tensors
    per trainer, ``latest.json``): weights only (``torch.load(weights_only=True)``) and JSON, never a pickle.
    Returns each dataset's latest validation dice."""
    import io

    import torch

    fs, path = filesystem_for(uri)
    for name, trainer in trainers.items():
        with fs.open_input_stream(f"{path}/{name}.pt") as f:
            data = f.read()
        try:
            state = torch.load(io.BytesIO(data), weights_only=True, map_location=trainer.device)
        except pickle.UnpicklingError as e:
            raise CheckpointRefused(
                f"{uri}/{name}.pt is not a weights-only checkpoint, so it was not loaded (a planted or damaged "
                f"file?): {str(e).splitlines()[0]}. Delete {uri} and its record in trials/ to rerun the trial "
                "from its start") from None
        trainer.load_state_dict(state)
    with fs.open_input_stream(f"{path}/latest.json") as f:
        return {k: float(v) for k, v in json.loads(f.read()).items()}


TRIALS_FOLDER = "trials"  # <search>/trials/<setting key>.json: the search's own record of each trial (JSON)
# The last metrics of a trial its record keeps: what the selection and a continued search read.
RECORDED_METRICS = (METRIC, "best_val_dice", "epoch", "resumed_from_epoch", "val_dice_by_dataset",
                    "best_val_dice_by_dataset")


def search_settings(base: dict, datasets: list[str], *, num_samples: int, max_epochs: int, grace_period: int,
                    reduction_factor: float, seed: int) -> dict:
    """What a search folder's ``search.json`` records: a continued search must have the same."""
    return {"base_spec": base, "datasets": list(datasets), "num_samples": num_samples, "max_t": max_epochs,
            "grace_period": grace_period, "reduction_factor": reduction_factor, "seed": seed}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def in_space(setting: dict) -> bool:
    """Whether a setting read from storage is a point of Table 4's space (search_spaces/hpo.py)."""
    ranges = {"lr": LR_RANGE, "encoder_lr_scale": ENCODER_LR_SCALE_RANGE}
    choices = {"optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "batch_size": BATCH_SIZES}
    return all(value in choices[field] and type(value) is type(choices[field][0]) if field in choices
               else _number(value) and ranges[field][0] <= value <= ranges[field][1]
               for field, value in setting.items())


def sound_record(record, searched_fields: tuple[str, ...]) -> bool:
    """Whether a trial record read from storage has the shape ``trial_recorder`` writes: a setting of this
    search's fields within Table 4's space, a trial id, a history of [epoch, dice] pairs."""
    if not isinstance(record, dict) or not isinstance(record.get("trial_id"), str):
        return False
    setting, history = record.get("setting"), record.get("history", [])
    return (isinstance(setting, dict) and set(setting) == set(searched_fields) and in_space(setting)
            and isinstance(history, list)
            and all(isinstance(h, list) and len(h) == 2 and all(map(_number, h)) for h in history)
            and isinstance(record.get("metrics", {}), dict))


def read_trial_records(where: str, searched_fields: tuple[str, ...]) -> dict[str, dict]:
    """The search's trial records (``trials/<setting key>.json``), by key. Only JSON is read; a record whose
    setting is not one of this search or whose checkpoint is not a folder of this search's Tune run is
    skipped (its trial runs again) or loses its checkpoint (it starts over), with a warning."""
    fs, root = filesystem_for(f"{where}/{TRIALS_FOLDER}")
    records = {}
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if not info.base_name.endswith(".json"):
            continue
        with fs.open_input_stream(info.path) as f:
            try:
                record = json.loads(f.read())
                usable = (sound_record(record, searched_fields)
                          and f"{setting_key(record['setting'])}.json" == info.base_name)
            except (ValueError, KeyError, TypeError):
                usable = False
        if not usable:
            print(f"warning: {where}/{TRIALS_FOLDER}/{info.base_name} is not a trial record of this search: skipped")
            continue
        checkpoint = record.get("checkpoint")
        if checkpoint is not None and not (isinstance(checkpoint, str) and checkpoint.startswith("tune/")
                                           and posixpath.normpath(checkpoint) == checkpoint):
            print(f"warning: {where}/{TRIALS_FOLDER}/{info.base_name} names a checkpoint outside {where}/tune/ "
                  f"({checkpoint!r}): its trial starts over")
            record["checkpoint"] = record["checkpoint_epoch"] = None
        if record.get("done") and not isinstance((record.get("metrics") or {}).get(METRIC), (int, float)):
            record["done"] = False  # a finished trial without its metric: run it again
        if not record.get("done"):  # what came after its checkpoint is done again
            upto = record.get("checkpoint_epoch") or 0
            record["history"] = [h for h in record.get("history", []) if h[0] <= upto]
        records[info.base_name[:-len(".json")]] = record
    return records


def trial_recorder(where: str, records: dict[str, dict]):
    """A Tune callback (on the driver) that keeps ``records`` and ``<where>/trials/<key>.json`` up to date:
    a trial's setting when it starts, its history of validation dice, its last checkpoint's folder (relative
    to ``where``) and whether it ended (ran out or stopped by ASHA: ``done``)."""
    from ray.tune import Callback

    root = filesystem_for(where)[1]

    class TrialRecorder(Callback):
        def __init__(self):
            self.key_of: dict[str, str] = {}  # Tune's trial id -> setting key

        def save(self, key: str) -> None:
            write_json(f"{where}/{TRIALS_FOLDER}/{key}.json", records[key])

        def on_trial_start(self, iteration, trials, trial, **info):
            key = self.key_of[trial.trial_id] = setting_key(sampled(trial.config))
            if key not in records:  # a continued trial keeps its record, and its first trial id
                records[key] = {"trial_id": trial.trial_id, "setting": sampled(trial.config), "done": False,
                                "history": [], "checkpoint": None, "checkpoint_epoch": None, "metrics": {}}
                self.save(key)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            record = records[self.key_of[trial.trial_id]]
            record["history"].append([result["epoch"], result[METRIC]])
            record["metrics"] = {k: result.get(k) for k in RECORDED_METRICS}

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            key = self.key_of[trial.trial_id]
            records[key]["checkpoint"] = posixpath.relpath(checkpoint.path, root)
            records[key]["checkpoint_epoch"] = trial.last_result.get("epoch")
            self.save(key)

        def on_trial_complete(self, iteration, trials, trial, **info):
            key = self.key_of[trial.trial_id]
            # Ran out, or stopped by ASHA; a trial stopped with the driver (Ctrl-C) is not done.
            if trial.last_result.get("done"):
                records[key].update(done=True, error=None)
                self.save(key)

        def on_trial_error(self, iteration, trials, trial, **info):
            key = self.key_of[trial.trial_id]
            records[key]["error"] = True  # not done: the same command runs it again
            self.save(key)

    return TrialRecorder()


def clear_tune_state(where: str) -> None:
    """Delete the run-level files earlier launches left in ``<where>/tune/`` (Tune's pickled tuner and searcher
    state, its experiment snapshots): a search never reads them, and Ray would unpickle the newest snapshot
    there if this launch stopped before its first trial. The trials' own folders stay (the figures and the
    checkpoints the records name)."""
    fs, root = filesystem_for(f"{where}/tune")
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            fs.delete_file(info.path)


def replay_rungs(scheduler, records: dict[str, dict]) -> None:
    """Give a new ASHA scheduler the rung results of the trials of earlier launches, through its own
    trial interface, so a continued search cuts trials against every trial so far, not only the new ones."""
    for record in records.values():
        earlier = types.SimpleNamespace(trial_id=f"earlier-{record['trial_id']}")
        scheduler.on_trial_add(None, earlier)
        for epoch, value in record["history"]:
            scheduler.on_trial_result(None, earlier, {"epoch": epoch, METRIC: value})
        scheduler.on_trial_remove(None, earlier)
