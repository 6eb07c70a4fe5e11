"""Where finished experiments live: ``<storage>/<study>/experiments/<id>/``.

Each finished experiment holds ``spec.json``, ``per_image.parquet``, ``result.json`` and, written
last, a ``DONE`` marker; an experiment without ``DONE`` is not finished, whatever else is there, and
neither is one whose ``result.json`` is gone (``finished_in``). A bad-input failure, or a crash that
is not an infrastructure fault, leaves ``FAILED.json`` with the error instead; an infrastructure fault
(storage, network, node, memory) leaves neither, so the next launch runs it. A trained experiment also keeps
its best validation weights, ``best_model.pt``, which evaluation runs (``ablate``, ``ood``) reload;
their results live in ``<storage>/<study>/evaluations/<id>/`` in the same layout.

Beside them, the study's tidy results set (``orchestrator/results.py`` reads it): once ``DONE`` is
written, each record also gets ``<storage>/<study>/tidy/images/<id>.parquet`` (one row per evaluation
set and image) and ``tidy/experiments/<id>.parquet`` (one row per evaluation set), every file in one
fixed schema (``IMAGES_SCHEMA``, ``EXPERIMENTS_SCHEMA``) that carries every field of the spec, so
``pandas.read_parquet("<storage>/<study>/tidy/images")`` reads the whole study.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
import statistics
import sys
import time
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from datasets.shards import filesystem_for, write_atomically
from datasets.storage import error_text, is_infrastructure, write_if_unchanged

WEIGHTS_FILE = "best_model.pt"

# -- the tidy results set's schema ------------------------------------------------------------------
TIDY = "tidy"  # <storage>/<study>/tidy/{images,experiments}/<record id>.parquet
# Every field of search_spaces.experiment.ExperimentSpec (a floor above: this one cannot import it) and
# its Arrow type from its annotation: a tuple is one string joined with ","; every column takes nulls.
# tests/test_tidy_results.py keeps this equal to the dataclass: a new spec field needs its column here.
SPEC_COLUMNS: dict[str, pa.DataType] = {
    "model": pa.string(), "mode": pa.string(), "train_set": pa.string(), "prompt_type": pa.string(),
    "eval_sets": pa.string(), "size": pa.string(), "weights": pa.string(), "lr": pa.float64(),
    "weight_decay": pa.float64(), "batch_size": pa.int64(), "max_epochs": pa.int64(), "patience": pa.int64(),
    "lr_patience": pa.int64(), "optimizer": pa.string(), "scheduler": pa.string(), "bce_weight": pa.float64(),
    "encoder_lr_scale": pa.float64(), "seed": pa.int64(), "hparams": pa.string(), "schedule_epochs": pa.int64(),
    "grad_accum": pa.int64(), "decoder_dropout": pa.float64(), "mask_padding": pa.bool_(),
    "upsample": pa.string(), "resize": pa.string(),
}
# Who and what each row is: the record (an experiment's id, or an evaluation's), the experiment whose
# weights were scored (an evaluation's source; an experiment itself), what kind of record (train,
# zeroshot, ablate, ood), then the spec, its regime, the prompt perturbation (evaluations) and the set.
_HEAD = [("record_id", pa.string()), ("experiment_id", pa.string()), ("kind", pa.string()),
         *SPEC_COLUMNS.items(), ("regime", pa.string()), ("perturbation", pa.string()), ("eval_set", pa.string())]
# Per-image metrics beside dice; null until a scorer writes them (``write_result(..., metrics=...)``).
EXTRA_METRICS = ("nsd", "hd95")
IMAGES_SCHEMA = pa.schema([*_HEAD, ("sample_id", pa.string()), ("prompt", pa.string()), ("dice", pa.float64()),
                           *((m, pa.float64()) for m in EXTRA_METRICS)])
EXPERIMENTS_SCHEMA = pa.schema([
    *_HEAD, ("n_images", pa.int64()), ("dice_mean", pa.float64()), ("dice_std", pa.float64()),
    *((f"{m}_mean", pa.float64()) for m in EXTRA_METRICS),
    ("best_val_dice", pa.float64()), ("epochs", pa.int64()),
    # the run (result.json's "run"): seconds of its last trial (since its resume, if it resumed; run.wall_time_s
    # where the trial gives it), its GPU share (Ray's GPU resource; 0 on CPU), the epoch it resumed after,
    # and when it finished (Unix seconds)
    ("wall_time_s", pa.float64()), ("gpu_share", pa.float64()), ("resumed_from_epoch", pa.int64()),
    ("finished_at", pa.float64()),
])
TIDY_SCHEMAS = {"images": IMAGES_SCHEMA, "experiments": EXPERIMENTS_SCHEMA}


class StorageError(Exception):
    """Results cannot be read or written where --storage points."""


class ResultStore:
    # folder="evaluations" keeps evaluation runs (ablate, ood) beside the experiments, same layout.
    def __init__(self, storage: str, study: str, folder: str = "experiments"):
        self.uri = f"{storage.rstrip('/')}/{study}"
        self.fs, self.path = filesystem_for(self.uri)
        self.folder = folder
        self._said_broken: set[str] = set()  # DONE without result.json, named once (finished_ids)

    def _dir(self, experiment_id: str) -> str:
        return posixpath.join(self.path, self.folder, experiment_id)

    def _write_json(self, experiment_id: str, name: str, obj: dict) -> None:
        self.fs.create_dir(self._dir(experiment_id), recursive=True)
        write_atomically(self.fs, posixpath.join(self._dir(experiment_id), name),
                          json.dumps(obj, indent=2, sort_keys=True).encode())

    def _read_json(self, experiment_id: str, name: str) -> dict | None:
        try:
            with self.fs.open_input_stream(posixpath.join(self._dir(experiment_id), name)) as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

    def check_writable(self) -> None:
        """Fail now, not after hours of training, if results cannot be written here."""
        probe = posixpath.join(self.path, f".write-probe-{uuid.uuid4().hex[:8]}")
        try:
            self.fs.create_dir(self.path, recursive=True)
            with self.fs.open_output_stream(probe) as out:
                out.write(b"ok")
            self.fs.delete_file(probe)
        except OSError as e:
            raise StorageError(f"cannot write results to {self.uri} ({e}). Check --storage: the folder's "
                               "permissions, or that the bucket exists and your credentials can write to it.") from None

    def finished_ids(self) -> set[str]:
        """Records that are finished (``finished_in``). A DONE without its result.json is not, and is
        named once per store on stderr: the next launch runs it again."""
        files = self.listing()
        for record_id in sorted(i for i, names in files.items() if "DONE" in names and not finished_in(names)):
            if record_id not in self._said_broken:
                self._said_broken.add(record_id)
                print(f"note: {self.uri}/{self.folder}/{record_id} has a DONE marker but no result.json (a partial "
                      "copy or cleanup?): it is not counted as finished, and the next launch of it runs it again",
                      file=sys.stderr)
        return {i for i, names in files.items() if finished_in(names)}

    def failed_ids(self) -> set[str]:
        return {i for i, names in self.listing().items() if "FAILED.json" in names} - self.finished_ids()

    def write_result(self, spec: dict, result: dict, per_image: dict[str, dict[str, float]],
                     record_id: str | None = None, *,
                     metrics: dict[str, dict[str, dict[str, float]]] | None = None) -> None:
        """Record a finished experiment, or an evaluation under ``record_id``; then its tidy files.

        ``per_image`` maps eval set -> sample id -> dice; ``metrics``, optional, maps a metric of
        ``EXTRA_METRICS`` (e.g. "nsd") -> eval set -> sample id -> value, stored beside dice.
        An experiment's ``spec`` is its ``ExperimentSpec.to_dict()`` with its ``id``; an evaluation's is
        its own spec, and its ``result`` holds ``source``, ``kind`` and ``source_spec``. The wall time and
        GPU share come from ``result["run"]`` (started_at, finished_at, resources).
        """
        experiment_id = record_id or result["experiment_id"]
        metrics = metrics or {}
        if unknown := set(metrics) - set(EXTRA_METRICS):
            raise ValueError(f"unknown per-image metrics {sorted(unknown)}: expected some of {EXTRA_METRICS}")
        if self.finished_result(experiment_id) is not None:  # another run of it finished first: keep that one
            print(f"{experiment_id}: already finished by another run: its result is kept")
            return
        self._write_json(experiment_id, "spec.json", spec)
        rows = [(s, i) for s, scores in per_image.items() for i in scores]
        table = pa.table({
            "eval_set": [s for s, _ in rows], "sample_id": [i for _, i in rows],
            "dice": [per_image[s][i] for s, i in rows],
            **{m: pa.array([values.get(s, {}).get(i) for s, i in rows], pa.float64()) for m, values in metrics.items()},
        })
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        write_atomically(self.fs, posixpath.join(self._dir(experiment_id), "per_image.parquet"),
                         buf.getvalue().to_pybytes())
        self._write_json(experiment_id, "result.json", result)
        # DONE is created only where there is none (S3's If-None-Match): of two runs of the same experiment
        # that both got past the check above, one marks it done (their result files, each whole, are of the
        # same spec and id; the last written stay).
        done = json.dumps({"finished_at": time.time()}, indent=2, sort_keys=True).encode()
        if not write_if_unchanged(f"{self.uri}/{self.folder}/{experiment_id}/DONE", done):
            print(f"{experiment_id}: DONE already there (written by another run, or by a retried request of "
                  "this one): it is kept")
        self._delete(experiment_id, "FAILED.json")
        try:  # derived from what DONE now commits; `report` (orchestrator.results.backfill) writes any missed
            self.write_tidy(experiment_id, spec, result, per_image, metrics)
        except Exception as e:  # never lose a finished experiment to its derived tables
            print(f"{experiment_id}: tidy results not written ({type(e).__name__}: {e}); `report` writes them")

    # -- the tidy results set: <storage>/<study>/tidy/{images,experiments}/<record id>.parquet ----------
    def tidy_dir(self, level: str) -> str:
        return posixpath.join(self.path, TIDY, level)

    def write_tidy(self, record_id: str, spec: dict, result: dict, per_image: dict[str, dict[str, float]],
                   metrics: dict[str, dict[str, dict[str, float]]] | None = None) -> None:
        """The record's rows of the tidy set, each file replaced whole (under a hidden temporary name
        that readers of the folder skip)."""
        for level, table in tidy_tables(record_id, spec, result, per_image, metrics).items():
            buf = pa.BufferOutputStream()
            pq.write_table(table, buf)
            self.fs.create_dir(self.tidy_dir(level), recursive=True)
            write_atomically(self.fs, posixpath.join(self.tidy_dir(level), f"{record_id}.parquet"),
                             buf.getvalue().to_pybytes(), hidden=True)

    def tidy_ids(self, level: str) -> set[str]:
        """Records with a tidy file at ``level`` ("images" or "experiments")."""
        selector = pafs.FileSelector(self.tidy_dir(level), allow_not_found=True)
        return {i.base_name.removesuffix(".parquet") for i in self.fs.get_file_info(selector)
                if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                and not i.base_name.startswith((".", "_"))}

    def spec(self, experiment_id: str) -> dict | None:
        return self._read_json(experiment_id, "spec.json")

    def per_image(self, experiment_id: str) -> tuple[dict[str, dict[str, float]], dict[str, dict]]:
        """per_image.parquet read back: (eval set -> sample id -> dice, metric -> eval set -> sample id -> value)."""
        with self.fs.open_input_file(posixpath.join(self._dir(experiment_id), "per_image.parquet")) as f:
            rows = pq.read_table(f).to_pylist()
        dice: dict[str, dict[str, float]] = {}
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        for row in rows:
            dice.setdefault(row["eval_set"], {})[row["sample_id"]] = row["dice"]
            for m in EXTRA_METRICS:
                if m in row:
                    metrics.setdefault(m, {}).setdefault(row["eval_set"], {})[row["sample_id"]] = row[m]
        return dice, metrics

    def write_failure(self, experiment_id: str, spec: dict, error: str) -> None:
        self._write_json(experiment_id, "FAILED.json", {"spec": spec, "error": error, "failed_at": time.time()})

    def record_outcome(self, outcome, runs) -> None:
        """Sort a launch's runs, ``(id, spec, crash or None)``, into ``outcome``'s finished, failed and
        unfinished, a crash being the error (or Tune's text of it) that ended the trial after Ray's
        retries. An infrastructure fault (``datasets.storage.is_infrastructure``) leaves its records
        unfinished, neither DONE nor FAILED, with their cause in ``outcome.causes``: the next launch runs
        them. Any other crash gets its FAILED.json here, naming the cause; bad input the trial recorded
        itself is read back."""
        finished_now = self.finished_ids()
        for run_id, spec, crash in runs:
            if run_id in finished_now:
                outcome.finished.append(run_id)
            elif crash is not None and not isinstance(crash, str) and is_infrastructure(crash):
                outcome.unfinished.append(run_id)
                outcome.causes[run_id] = error_text(crash)
            elif crash is not None:
                self.write_failure(run_id, spec, error_text(crash))
                outcome.failed[run_id] = error_text(crash)
            elif failure := self.failure(run_id):
                outcome.failed[run_id] = failure["error"]
            else:
                outcome.unfinished.append(run_id)

    def _delete(self, experiment_id: str, name: str) -> None:
        try:
            self.fs.delete_file(posixpath.join(self._dir(experiment_id), name))
        except FileNotFoundError:
            pass

    def failure(self, experiment_id: str) -> dict | None:
        return self._read_json(experiment_id, "FAILED.json")

    def write_weights(self, experiment_id: str, state: dict) -> None:
        """The best validation weights (trainable parameters and buffers), for later evaluation runs."""
        import torch  # only the processes that train or evaluate need torch

        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
        self.fs.create_dir(self._dir(experiment_id), recursive=True)
        write_atomically(self.fs, posixpath.join(self._dir(experiment_id), WEIGHTS_FILE), buf.getvalue())

    def read_weights(self, experiment_id: str) -> dict | None:
        """What ``write_weights`` stored, on the CPU; None if the experiment has no weights file."""
        import torch  # costly (~2 s): as in write_weights

        try:
            with self.fs.open_input_stream(posixpath.join(self._dir(experiment_id), WEIGHTS_FILE)) as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def has_weights(self, experiment_id: str) -> bool:
        info = self.fs.get_file_info(posixpath.join(self._dir(experiment_id), WEIGHTS_FILE))
        return info.type == pafs.FileType.File

    def results(self) -> list[dict]:
        """result.json of every finished experiment, ordered by id."""
        return [self._read_json(i, "result.json") for i in sorted(self.finished_ids())]

    # -- an unfinished experiment: the trainer state it resumes from, and a progress note for status ----
    CHECKPOINT = "checkpoint/trainer.pt"
    PROGRESS = "progress.json"

    def checkpoint_uri(self, experiment_id: str) -> str:
        return f"{self.uri}/{self.folder}/{experiment_id}/{self.CHECKPOINT}"

    def save_checkpoint(self, experiment_id: str, data: bytes) -> None:
        """Replace the resume checkpoint whole: a reader, or a kill mid-write, sees the old file or the new."""
        path = posixpath.join(self._dir(experiment_id), self.CHECKPOINT)
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        write_atomically(self.fs, path, data)

    def load_checkpoint(self, experiment_id: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(posixpath.join(self._dir(experiment_id), self.CHECKPOINT)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_progress(self, experiment_id: str, progress: dict) -> None:
        self._write_json(experiment_id, self.PROGRESS, {**progress, "updated_at": time.time()})

    def progress(self, experiment_id: str) -> dict | None:
        return self._read_json(experiment_id, self.PROGRESS)

    def clear_resume_state(self, experiment_id: str) -> None:
        """Once DONE is written: the checkpoint folder (with any temporary file a kill left) and the progress note."""
        try:
            self.fs.delete_dir(posixpath.join(self._dir(experiment_id), posixpath.dirname(self.CHECKPOINT)))
        except FileNotFoundError:
            pass
        self._delete(experiment_id, self.PROGRESS)

    def clear_failure(self, experiment_id: str) -> None:
        self._delete(experiment_id, "FAILED.json")

    def clear_done(self, experiment_id: str) -> None:
        """Remove a DONE marker that commits nothing (no result.json: ``finished_in``), before a new run."""
        self._delete(experiment_id, "DONE")

    def result(self, experiment_id: str) -> dict | None:
        return self._read_json(experiment_id, "result.json")

    def finished_result(self, experiment_id: str) -> dict | None:
        """The result.json of a finished record (``finished_in``: its DONE written); None if unfinished."""
        names = {i.base_name for i in self.fs.get_file_info(
            pafs.FileSelector(self._dir(experiment_id), allow_not_found=True))}
        return self.result(experiment_id) if finished_in(names) else None

    def listing(self) -> dict[str, dict[str, float]]:
        """Experiment id -> {path inside its folder: modification time}, from one recursive listing."""
        root = posixpath.join(self.path, self.folder)
        files: dict[str, dict[str, float]] = {}
        for info in self.fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
            if info.type == pafs.FileType.File:
                experiment_id, _, name = info.path[len(root) + 1:].partition("/")
                files.setdefault(experiment_id, {})[name] = info.mtime.timestamp() if info.mtime else 0.0
        return files


def finished_in(names) -> bool:
    """Whether a record whose folder holds the files ``names`` is finished: its DONE marker, and the
    result.json that DONE commits (a DONE without it, left by a partial copy or cleanup, is not)."""
    return "DONE" in names and "result.json" in names


# -- a record's scores -----------------------------------------------------------------------------
def split_scores(scores: dict[str, dict[str, float]]) -> tuple[dict[str, float], dict[str, dict[str, float | None]]]:
    """Per-image scores (``Trainer.score``) as the result store takes them: dice per image, and per
    boundary metric its value per image, an undefined one (nan: no boundary to measure) as None."""
    dice = {sample: s["dice"] for sample, s in scores.items()}
    boundary = {m: {sample: (None if math.isnan(s[m]) else s[m]) for sample, s in scores.items()}
                for m in EXTRA_METRICS}
    return dice, boundary


def eval_summary(dice: dict[str, float], boundary: dict[str, dict[str, float | None]] | None = None) -> dict:
    """One evaluation set's entry of a result.json: dice mean, spread and count; boundary metrics' means."""
    summary = {"dice_mean": statistics.fmean(dice.values()), "dice_std": statistics.pstdev(dice.values()),
               "n_images": len(dice)}
    for metric, values in (boundary or {}).items():
        defined = [v for v in values.values() if v is not None]
        summary[f"{metric}_mean"] = statistics.fmean(defined) if defined else None
    return summary


# -- the tidy rows of one record -------------------------------------------------------------------
def _coerce(value, kind: pa.DataType):
    """A spec value as its column's type; a value that does not fit is null, not a lost result."""
    if value is None:
        return None
    try:
        if pa.types.is_string(kind):
            return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        if pa.types.is_boolean(kind):
            return bool(value)
        if pa.types.is_integer(kind):
            return int(value)
        return float(value)
    except (TypeError, ValueError):
        return None


def _statistics(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and population standard deviation, nulls skipped (as result.json's dice_mean, dice_std)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5


def tidy_tables(record_id: str, spec: dict, result: dict, per_image: dict[str, dict[str, float]],
                metrics: dict[str, dict[str, dict[str, float]]] | None = None) -> dict[str, pa.Table]:
    """A record's rows of the tidy set, by level: "images" (one per eval set and image) and
    "experiments" (one per eval set; one with a null eval set where it scored none)."""
    metrics = metrics or {}
    if "source_spec" in result:  # an evaluation: the source experiment's spec, this evaluation's prompt
        experiment = {**result["source_spec"], "prompt_type": spec.get("prompt_type",
                                                                      result["source_spec"].get("prompt_type"))}
        kind = spec.get("kind") or result.get("kind")
        experiment_id, perturbation = result.get("source") or spec.get("source"), spec.get("perturbation")
    else:
        experiment = spec
        kind = "zeroshot" if spec.get("mode") == "zeroshot" else "train"
        experiment_id, perturbation = record_id, None
    head = {"record_id": record_id, "experiment_id": experiment_id, "kind": kind,
            **{name: _coerce(experiment.get(name), kind_) for name, kind_ in SPEC_COLUMNS.items()},
            "regime": experiment.get("regime"), "perturbation": perturbation}
    prompts = result.get("prompts") or {}
    images = [{**head, "eval_set": eval_set, "sample_id": str(sample), "prompt": prompts.get(sample),
               "dice": _coerce(dice, pa.float64()),
               **{m: _coerce(metrics.get(m, {}).get(eval_set, {}).get(sample), pa.float64()) for m in EXTRA_METRICS}}
              for eval_set, scores in per_image.items() for sample, dice in scores.items()]
    run = result.get("run") or {}
    started, finished = run.get("started_at"), run.get("finished_at")
    resources = run.get("resources")
    summary = {
        "best_val_dice": _coerce(result.get("best_val_dice"), pa.float64()),
        "epochs": _coerce(result.get("epochs"), pa.int64()),
        "wall_time_s": _coerce(run.get("wall_time_s", finished - started if None not in (started, finished) else None),
                               pa.float64()),
        "gpu_share": _coerce(resources.get("GPU", 0.0), pa.float64()) if isinstance(resources, dict) else None,
        "resumed_from_epoch": _coerce(run.get("resumed_from_epoch"), pa.int64()),
        "finished_at": _coerce(finished, pa.float64()),
    }
    experiments = []
    for eval_set in [*per_image, *(s for s in result.get("eval", {}) if s not in per_image)] or [None]:
        scores = [r for r in images if r["eval_set"] == eval_set]
        stored = result.get("eval", {}).get(eval_set) or {}
        mean, std = _statistics([r["dice"] for r in scores])
        experiments.append({
            **head, "eval_set": eval_set, "n_images": stored.get("n_images", len(scores) if eval_set else None),
            "dice_mean": stored.get("dice_mean", mean), "dice_std": stored.get("dice_std", std),
            **{f"{m}_mean": _statistics([r[m] for r in scores])[0] for m in EXTRA_METRICS}, **summary,
        })
    return {"images": pa.Table.from_pylist(images, schema=IMAGES_SCHEMA),
            "experiments": pa.Table.from_pylist(experiments, schema=EXPERIMENTS_SCHEMA)}
