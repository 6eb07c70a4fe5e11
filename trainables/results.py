"""Where finished experiments live: ``<storage>/<study>/experiments/<id>/``.

Each finished experiment holds ``spec.json``, ``per_image.parquet``, ``result.json`` and, written
last, a ``DONE`` marker; an experiment without ``DONE`` is not finished, whatever else is there.
A bad-input failure leaves ``FAILED.json`` with the error instead. A trained experiment also keeps
its best validation weights, ``best_model.pt``, which evaluation runs (``ablate``, ``ood``) reload;
their results live in ``<storage>/<study>/evaluations/<id>/`` in the same layout.
"""

from __future__ import annotations

import io
import json
import posixpath
import time
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from datasets.shards import filesystem_for, write_atomically

WEIGHTS_FILE = "best_model.pt"


class StorageError(Exception):
    """Results cannot be read or written where --storage points."""


class ResultStore:
    # folder="evaluations" keeps evaluation runs (ablate, ood) beside the experiments, same layout.
    def __init__(self, storage: str, study: str, folder: str = "experiments"):
        self.uri = f"{storage.rstrip('/')}/{study}"
        self.fs, self.path = filesystem_for(self.uri)
        self.folder = folder

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

    def _ids_with(self, marker: str) -> set[str]:
        selector = pafs.FileSelector(posixpath.join(self.path, self.folder), recursive=True, allow_not_found=True)
        return {posixpath.basename(posixpath.dirname(i.path)) for i in self.fs.get_file_info(selector)
                if i.type == pafs.FileType.File and i.base_name == marker}

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
        return self._ids_with("DONE")

    def failed_ids(self) -> set[str]:
        return self._ids_with("FAILED.json") - self.finished_ids()

    def write_result(self, spec: dict, result: dict, per_image: dict[str, dict[str, float]],
                     record_id: str | None = None) -> None:
        """Record a finished experiment, or an evaluation under ``record_id``.

        ``per_image`` maps eval set -> sample id -> dice.
        """
        experiment_id = record_id or result["experiment_id"]
        self._write_json(experiment_id, "spec.json", spec)
        table = pa.table({
            "eval_set": [s for s, scores in per_image.items() for _ in scores],
            "sample_id": [i for scores in per_image.values() for i in scores],
            "dice": [d for scores in per_image.values() for d in scores.values()],
        })
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        write_atomically(self.fs, posixpath.join(self._dir(experiment_id), "per_image.parquet"),
                         buf.getvalue().to_pybytes())
        self._write_json(experiment_id, "result.json", result)
        self._write_json(experiment_id, "DONE", {"finished_at": time.time()})
        self._delete(experiment_id, "FAILED.json")

    def write_failure(self, experiment_id: str, spec: dict, error: str) -> None:
        self._write_json(experiment_id, "FAILED.json", {"spec": spec, "error": error, "failed_at": time.time()})

    def record_outcome(self, outcome, runs) -> None:
        """Sort a launch's runs, ``(id, spec, crash or None)``, into ``outcome``'s finished, failed and
        unfinished. A crash the trial could not record itself (after Ray's retries) gets its FAILED.json
        here; bad input the trial recorded is read back."""
        finished_now = self.finished_ids()
        for run_id, spec, crash in runs:
            if run_id in finished_now:
                outcome.finished.append(run_id)
            elif crash:
                self.write_failure(run_id, spec, crash)
                outcome.failed[run_id] = crash
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

    def result(self, experiment_id: str) -> dict | None:
        return self._read_json(experiment_id, "result.json")

    def listing(self) -> dict[str, dict[str, float]]:
        """Experiment id -> {path inside its folder: modification time}, from one recursive listing."""
        root = posixpath.join(self.path, self.folder)
        files: dict[str, dict[str, float]] = {}
        for info in self.fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
            if info.type == pafs.FileType.File:
                experiment_id, _, name = info.path[len(root) + 1:].partition("/")
                files.setdefault(experiment_id, {})[name] = info.mtime.timestamp() if info.mtime else 0.0
        return files
