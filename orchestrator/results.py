"""A study's results as one tidy data set: read it in one line, or through ``load``.

Layout, under ``<storage>/<study>/tidy/`` (a folder or ``s3://``), one Parquet file per finished record
(an experiment of ``experiments/``, an evaluation of ``evaluations/``), written by the result store
(``trainables/results.py``) right after the record's ``DONE``:

- ``images/<record id>.parquet``: one row per (evaluation set, image) -- the record, the spec, the
  set, the image and its scores (``IMAGES_SCHEMA``);
- ``experiments/<record id>.parquet``: one row per evaluation set -- the same columns up to the set,
  then n_images, dice_mean, dice_std, best_val_dice, epochs, wall_time_s, gpu_share, ...
  (``EXPERIMENTS_SCHEMA``); a per-record quantity (best_val_dice, epochs, wall time, GPU share)
  repeats on each of the record's sets.

Every file has the same fixed schema: ``record_id``, ``experiment_id`` (an evaluation's source
experiment), ``kind`` (train, zeroshot, ablate, ood), every ``ExperimentSpec`` field (``eval_sets``
joined with ","; ``hparams`` says where the hyperparameters come from), ``regime``, ``perturbation``
(ablations; null otherwise), ``eval_set``; then ``sample_id``, ``prompt`` (evaluations record it),
``dice`` in [0, 1], and ``nsd`` (normalized surface distance at 2 px, in [0, 1]) and ``hd95`` (pixels),
as MONAI computes them (trainables/metrics.py), null where undefined (no boundary to measure). So one
line reads a study::

    pandas.read_parquet("s3://bucket/runs/study/tidy/images")        # or pyarrow.dataset.dataset(...)

and ``load(storage, study)`` does the same with the checks: only finished records (``DONE``), the
current schema (a file written before a column existed reads as null there), nullable integers.
``backfill(storage, study)`` writes the files of records finished before this layout existed, from
their ``spec.json``, ``result.json`` and ``per_image.parquet``; ``report`` runs it first. When a column
is added (a new spec field: ``trainables.results.SPEC_COLUMNS``), ``backfill(..., rewrite=True)`` writes
every file again, so that the one line, which takes the schema of the first file it finds, sees it too.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pyarrow as pa

from search_spaces.experiment import ExperimentSpec
from trainables.results import TIDY, TIDY_SCHEMAS, ResultStore

if TYPE_CHECKING:
    import pandas as pd

FOLDERS = ("experiments", "evaluations")  # the record folders of a study
LEVELS = tuple(TIDY_SCHEMAS)  # "images", "experiments"


def tidy_uri(storage: str, study: str, level: str = "images") -> str:
    """Where a level of the study's tidy set lives: what ``pandas.read_parquet`` takes."""
    return f"{storage.rstrip('/')}/{study}/{TIDY}/{level}"


def load(storage: str, study: str, level: str = "images", folders: Iterable[str] = FOLDERS) -> pd.DataFrame:
    """The study's tidy results: ``level`` "images" (one row per record, evaluation set and image) or
    "experiments" (one row per record and evaluation set), of the finished records in ``folders``
    ("experiments": trained and zero-shot experiments; "evaluations": ablate and ood). Reads Parquet only;
    records finished before the tidy layout appear once ``backfill`` (or ``report``) has run."""
    import pandas as pd  # ~1 s together: only the commands that read results need them
    import pyarrow.dataset as ds

    if level not in TIDY_SCHEMAS:
        raise ValueError(f"level {level!r}: expected one of {', '.join(LEVELS)}")
    schema = TIDY_SCHEMAS[level]
    store = ResultStore(storage, study)
    finished = set().union(*(ResultStore(storage, study, folder).finished_ids() for folder in folders))
    chosen = sorted(store.tidy_ids(level) & finished)
    paths = [posixpath.join(store.tidy_dir(level), f"{record_id}.parquet") for record_id in chosen]
    table = ds.dataset(paths, schema=schema, format="parquet", filesystem=store.fs).to_table() if paths \
        else schema.empty_table()
    frame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)
    keys = ["record_id", "eval_set"] + (["sample_id"] if level == "images" else [])
    return frame.sort_values(keys, kind="stable", ignore_index=True)


def _full_spec(spec: dict) -> dict:
    """A stored experiment spec with every field, those added since it ran at their defaults, and its regime."""
    try:
        return {**spec, **ExperimentSpec.from_dict(spec).to_dict()}
    except (TypeError, ValueError):  # not an experiment spec (a hand-made record): as stored
        return spec


def backfill(storage: str, study: str, folders: Iterable[str] = FOLDERS, rewrite: bool = False) -> list[str]:
    """Write the tidy files of finished records that lack them (``rewrite``: of every finished record,
    e.g. after a column was added to the schema); returns the record ids written. A record whose files
    cannot be read is left out with a note."""
    written = []
    for folder in folders:
        store = ResultStore(storage, study, folder)
        finished = store.finished_ids()
        have = set.intersection(*(store.tidy_ids(level) for level in LEVELS))
        for record_id in sorted(finished if rewrite else finished - have):
            try:
                spec, result = store.spec(record_id), store.result(record_id)
                per_image, metrics = store.per_image(record_id)
            except (OSError, pa.ArrowInvalid) as e:
                print(f"note: {folder}/{record_id} left out of the tidy results ({e})")
                continue
            if spec is None or result is None:
                print(f"note: {folder}/{record_id} left out of the tidy results (no spec.json or result.json)")
                continue
            if "source_spec" in result:  # an evaluation: its source experiment's spec
                result = {**result, "source_spec": _full_spec(result["source_spec"])}
            else:
                spec = _full_spec(spec)
            store.write_tidy(record_id, spec, result, per_image, metrics)
            written.append(record_id)
    return written
