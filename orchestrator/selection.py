"""Where an hpo search keeps its files, and how the grid takes its selection (``--hparams-from-hpo``).

A search of a model in its as-run mode lives in ``<storage>/<study>/hpo/<model>/``, of another mode
in ``.../hpo/<model>-<mode>/``: ``tune/`` (Tune's trials), ``search.json`` (the settings it started
with), ``trials/`` (the search's own JSON record of each trial, what a rerun continues from:
orchestrator/hpo_state.py) and ``selection.json`` (the study's rule applied to its trials, written by
orchestrator.hpo).
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import statistics

from datasets.storage import absolute_uri, filesystem_for, read_if_exists, write_atomically
from search_spaces.experiment import ExperimentSpec
from search_spaces.hpo import SEARCHED
from trainables.models import card

SELECTION_FILE = "selection.json"
SEARCH_FILE = "search.json"  # what the search in a folder was started with


def search_name(model: str, mode: str | None = None) -> str:
    """A search's folder under ``<study>/hpo/``: the model for its as-run mode (``clipseg``), else
    model and mode (``clipseg-finetune``), so searches of two regimes never share a folder."""
    return model if mode in (None, card(model).as_run_mode) else f"{model}-{mode}"


def hpo_uri(storage: str, study: str, model: str, mode: str | None = None) -> str:
    """Where a model's search keeps Tune's trials (``tune/``), its settings and the selection."""
    return f"{storage.rstrip('/')}/{study}/hpo/{search_name(model, mode)}"


def read_json(uri: str) -> dict | None:
    data = read_if_exists(*filesystem_for(uri))
    return None if data is None else json.loads(data)


def write_json(uri: str, obj: dict) -> str:
    fs, path = filesystem_for(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    write_atomically(fs, path, json.dumps(obj, indent=2, sort_keys=True).encode())
    return uri


def apply_selections(specs: list[ExperimentSpec], storage: str, study: str) -> list[ExperimentSpec]:
    """``specs`` with the hpo selection of their model and mode (``<storage>/<study>/hpo/<search>/
    selection.json``) where it searched their size; the others keep their hyperparameters. The spec's
    ``hparams`` names the selection it took, relative to ``storage``; a batch the search ran in
    micro-batches keeps them (the same training as searched)."""
    selections = {}
    for model, mode in dict.fromkeys((s.model, s.mode) for s in specs):
        relative = f"{study}/hpo/{search_name(model, mode)}/{SELECTION_FILE}"
        record = read_json(f"{absolute_uri(storage).rstrip('/')}/{relative}")
        if record is not None and record["mode"] == mode:
            selections[(model, mode)] = (relative, record)
    out, taken = [], 0
    for spec in specs:
        relative, record = selections.get((spec.model, spec.mode), (None, None))
        if record is None or record["size"] != spec.size:
            out.append(spec)
            continue
        setting = record["selected"]["setting"]
        # The horizon the search's cosine schedules spanned; other schedules have none.
        horizon = record["search"]["base_spec"].get("schedule_epochs") if setting["scheduler"] == "cosine" else None
        accumulate = (record.get("grad_accum") or {}).get(str(setting["batch_size"]), 1)
        out.append(dataclasses.replace(spec, **setting, schedule_epochs=horizon, grad_accum=accumulate,
                                       hparams=f"hpo:{relative}"))
        taken += 1
    if not taken:
        raise ValueError(f"--hparams-from-hpo {study}: no hpo selection under {storage.rstrip('/')}/{study}/hpo/ "
                         "fits these experiments (model, mode and size); run hpo for them first")
    print(f"--hparams-from-hpo {study}: {taken} of {len(specs)} experiments take an hpo selection "
          f"({', '.join(f'{m} {mode}' for m, mode in selections)}); the others keep their own")
    return out


def trial_record(trial_id: str, config: dict, metrics: dict) -> dict:
    """One hpo trial as the selection rule and the search's figures read it: its setting, epochs and each
    dataset's best validation dice, from the trial's config and last metrics."""
    best = metrics.get("best_val_dice_by_dataset") or {}
    return {"trial_id": trial_id, "setting": {k: config[k] for k in config if k in SEARCHED + ("encoder_lr_scale",)},
            "epochs": metrics.get("training_iteration", 0), "best_val_dice": dict(best),
            "resumed_from_epoch": metrics.get("resumed_from_epoch"),
            "mean_best_val_dice": statistics.fmean(best.values()) if best else None}
