"""Shard format v1: Parquet files of (image, target structure) rows plus a manifest per dataset.

Layout under a root (a local folder or ``s3://bucket/prefix``)::

    <root>/<dataset>/<split>-00000.parquet ...
    <root>/<dataset>/content.json         # per-row content hashes (datasets.overlap), if recorded
    <root>/<dataset>/manifest.json        # written last: a dataset without it does not exist

Every file is written under a temporary name and renamed into place, so a reader never sees a
half-written shard or manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from datasets.cache import NodeCache
from datasets.storage import ShardError, absolute_uri, filesystem_for, write_atomically  # noqa: F401 (re-exported)

FORMAT_VERSION = 1
ROWS_PER_FILE = 1000
# Small row groups let a reader fetch a handful of samples without reading a whole file.
ROWS_PER_GROUP = 100
# Pooled training draws a prompt type per sample among p1..pN ("all" in the study).
RANDOM_PROMPT = "random"

BASE_FIELDS = [
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),  # original encoding (JPEG, PNG, ...)
    pa.field("mask", pa.binary(), nullable=False),  # PNG, 0/255
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("class_name", pa.string(), nullable=False),
]
METADATA_FIELD = pa.field("metadata", pa.map_(pa.string(), pa.string()))


def shard_schema(prompt_types: Iterable[str]) -> pa.Schema:
    prompt_fields = [pa.field(p, pa.list_(pa.string()), nullable=False) for p in prompt_types]
    return pa.schema(BASE_FIELDS + prompt_fields + [METADATA_FIELD], metadata={"vlsm_format": str(FORMAT_VERSION)})


class ShardFile:
    """One shard file on its way to storage, under a temporary name until ``finish`` renames it:
    row groups are written as they fill and hashed on the way out, so the file is never held whole."""

    def __init__(self, fs: pafs.FileSystem, path: str, schema: pa.Schema):
        self.fs, self.path, self.schema = fs, path, schema
        self.tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        self.sink = _HashingSink(fs.open_output_stream(self.tmp))
        self.writer = pq.ParquetWriter(self.sink, schema)
        self.rows, self.pending = 0, []

    def add(self, row: dict) -> None:
        self.pending.append({**row, "metadata": list(row.get("metadata", {}).items())})
        self.rows += 1
        if len(self.pending) == ROWS_PER_GROUP:
            self._write_group()

    def _write_group(self) -> None:
        self.writer.write_table(pa.Table.from_pylist(self.pending, schema=self.schema))
        self.pending = []

    def finish(self) -> dict:
        """Close and rename the file; its manifest entry."""
        if self.pending:
            self._write_group()
        self.writer.close()
        self.sink.stream.close()
        self.fs.move(self.tmp, self.path)
        return {"path": posixpath.basename(self.path), "rows": self.rows, "sha256": self.sink.sha256.hexdigest()}

    def abort(self) -> None:
        """Remove the temporary file. Each step on its own, since storage that failed may fail again;
        what stays is never listed by a manifest. The writer goes first: left open, it would write
        its footer at exit."""
        for step in (self.writer.close, self.sink.stream.close, lambda: self.fs.delete_file(self.tmp)):
            with contextlib.suppress(OSError, ValueError):
                step()


class _HashingSink:
    """The file object pyarrow writes a shard to: bytes go to storage and into the sha256."""

    closed = False

    def __init__(self, stream: pa.NativeFile):
        self.stream, self.sha256, self.size = stream, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.stream.write(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass


def _add_file(split_entry: dict, file_entry: dict) -> None:
    split_entry["files"].append(file_entry)
    split_entry["rows"] += file_entry["rows"]


@dataclass(frozen=True)
class Manifest:
    dataset: str
    prompt_types: tuple[str, ...]
    splits: dict  # split -> {"rows": int, "files": [{"path": str, "rows": int, "sha256": str}]}
    prompt_family: str | None = None  # the template family of prompts.templates, when known
    # Optional fields (None: not recorded, as in manifests written before them; readers that do not
    # know them ignore them). duplicates: split -> {sample_id: the sample_id it repeats}, rows kept
    # as released although their image and mask repeat an earlier row. content: {"path", "rows",
    # "sha256"} of the dataset's per-row content hashes (datasets.overlap).
    duplicates: dict[str, dict[str, str]] | None = None
    content: dict | None = None

    def rows(self, split: str) -> int:
        return self.splits[split]["rows"]

    def to_json(self) -> str:
        optional = {name: getattr(self, name) for name in OPTIONAL_FIELDS if getattr(self, name) is not None}
        return json.dumps(
            {"format_version": FORMAT_VERSION, "dataset": self.dataset, "prompt_family": self.prompt_family,
             "prompt_types": list(self.prompt_types), "splits": self.splits, **optional},
            indent=2,
        )


OPTIONAL_FIELDS = ("duplicates", "content")


class ShardStore:
    """Reads and writes datasets of shards under one root (local folder or s3://)."""

    def __init__(self, root: str, cache: NodeCache | bool = True):
        """``cache``: the node cache that remote shards are read through (True: the default one,
        ``$VLSM_CACHE``; False: none, every read goes to storage and splits decode in memory)."""
        self.root = root.rstrip("/")
        self.fs, self.path = filesystem_for(self.root)
        self.cache: NodeCache | None = NodeCache() if cache is True else (cache or None)
        self.remote = "://" in self.root

    def _dataset_dir(self, dataset: str) -> str:
        return posixpath.join(self.path, dataset)

    def _uri(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # -- writing -------------------------------------------------------------------------------
    def write_dataset(self, dataset: str, rows: Iterable[dict], prompt_types: Iterable[str],
                      prompt_family: str | None = None,
                      finish: Callable[[], dict] | None = None) -> Manifest:
        """Write rows (dicts with the schema's fields) into shards, then the manifest, last.

        Rows go to storage a row group at a time, so memory holds at most ``ROWS_PER_GROUP`` rows
        per split, however large the images. If ``rows`` raises, no half-written file is left.
        ``finish`` runs once every row is written, before the manifest: it may write side files of
        the dataset (what the rows taught it) and returns the manifest's optional fields.
        """
        prompt_types = tuple(prompt_types)
        schema = shard_schema(prompt_types)
        folder = self._dataset_dir(dataset)
        self.fs.create_dir(folder, recursive=True)
        splits: dict[str, dict] = {}
        open_files: dict[str, ShardFile] = {}  # the file each split is filling
        try:
            for row in rows:
                if row["dataset"] != dataset:
                    raise ShardError(f"row {row['sample_id']!r} belongs to dataset {row['dataset']!r}, not {dataset!r}")
                split = row["split"]
                entry = splits.setdefault(split, {"rows": 0, "files": []})
                if split not in open_files:
                    name = f"{split}-{len(entry['files']):05d}.parquet"
                    open_files[split] = ShardFile(self.fs, posixpath.join(folder, name), schema)
                open_files[split].add(row)
                if open_files[split].rows == ROWS_PER_FILE:
                    _add_file(entry, open_files[split].finish())
                    del open_files[split]
            for split in list(open_files):
                _add_file(splits[split], open_files[split].finish())
                del open_files[split]
        except BaseException:
            for shard in open_files.values():
                shard.abort()
            raise
        optional = finish() if finish else {}
        manifest = Manifest(dataset, prompt_types, splits, prompt_family, **optional)
        write_atomically(self.fs, posixpath.join(folder, "manifest.json"), manifest.to_json().encode())
        return manifest

    # -- reading -------------------------------------------------------------------------------
    def datasets(self) -> list[str]:
        """Names of the datasets under the root that have a manifest."""
        info = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        names = [i.base_name for i in info if i.type == pafs.FileType.Directory]
        manifests = self.fs.get_file_info([posixpath.join(self.path, n, "manifest.json") for n in names])
        return sorted(n for n, m in zip(names, manifests) if m.type == pafs.FileType.File)

    def manifest(self, dataset: str) -> Manifest:
        path = posixpath.join(self._dataset_dir(dataset), "manifest.json")
        try:
            with self.fs.open_input_stream(path) as f:
                raw = json.loads(f.read())
        except FileNotFoundError:
            known = ", ".join(self.datasets()) or "none"
            raise ShardError(
                f"unknown dataset {dataset!r}: no manifest at {self._uri(dataset, 'manifest.json')} "
                f"(datasets there: {known}). Ingest it first, or check --data."
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(f"manifest {self._uri(dataset, 'manifest.json')} is not valid JSON ({e}); "
                             f"re-ingest {dataset!r}") from None
        if raw.get("format_version") != FORMAT_VERSION:
            raise ShardError(f"{self._uri(dataset, 'manifest.json')} has format_version "
                             f"{raw.get('format_version')!r}; this vlsm-tune reads version {FORMAT_VERSION}")
        return Manifest(raw["dataset"], tuple(raw["prompt_types"]), raw["splits"], raw.get("prompt_family"),
                        **{name: raw.get(name) for name in OPTIONAL_FIELDS})

    def check_split(self, dataset: str, split: str, prompt_type: str | None = None) -> Manifest:
        """Fail early, with a clear message, if a split or prompt type does not exist."""
        manifest = self.manifest(dataset)
        if split not in manifest.splits:
            raise ShardError(f"dataset {dataset!r} has no {split!r} split (it has: {', '.join(manifest.splits)})")
        if prompt_type is not None and prompt_type not in (*manifest.prompt_types, RANDOM_PROMPT):
            raise ShardError(f"dataset {dataset!r} has no prompt type {prompt_type!r} "
                             f"(it has: {', '.join(manifest.prompt_types)})")
        return manifest

    def missing_files(self, dataset: str, split: str) -> list[str]:
        """Shard files the manifest lists but storage lacks."""
        manifest = self.manifest(dataset)
        missing = []
        for entry in manifest.splits.get(split, {"files": []})["files"]:
            path = posixpath.join(self._dataset_dir(dataset), entry["path"])
            if self.fs.get_file_info(path).type != pafs.FileType.File:
                missing.append(self._uri(dataset, entry["path"]))
        return missing

    def read_split(self, dataset: str, split: str, columns: list[str] | None = None,
                   manifest: Manifest | None = None) -> pa.Table:
        """All rows of a split, every file checked against the manifest's sha256 and row count.

        Pass the ``manifest`` of an earlier ``check_split`` to avoid reading it again.
        """
        manifest = manifest or self.check_split(dataset, split)
        tables = [self.read_file(dataset, entry, columns) for entry in manifest.splits[split]["files"]]
        return pa.concat_tables(tables)

    def read_file(self, dataset: str, entry: dict, columns: list[str] | None = None) -> pa.Table:
        """One shard file of the manifest, checked against its sha256 and row count.

        With a node cache, the file is a verified local copy (or the local folder's file, hashed once
        per node) read memory-mapped, so only the ``columns`` asked for leave the disk.
        """
        uri = self._uri(dataset, entry["path"])
        path = posixpath.join(self._dataset_dir(dataset), entry["path"])
        try:
            if self.cache is None:  # every read goes to storage and is hashed
                with self.fs.open_input_stream(path) as f:
                    data = f.read()
                source, digest = pa.BufferReader(data), hashlib.sha256(data).hexdigest()
            elif self.remote:
                source = self.cache.open_copy(self.fs, path, uri, self.root, dataset, entry)
                digest = entry["sha256"]  # open_copy checked it; a bad download raises
            else:
                digest = self.cache.verified_digest(path, entry["sha256"])
                source = pa.memory_map(path)
        except FileNotFoundError:
            raise ShardError(f"missing shard {uri}: the manifest lists it but storage does not have it. "
                             f"Re-ingest {dataset!r} or restore the file.") from None
        if digest != entry["sha256"]:
            raise ShardError(f"corrupt shard {uri}: sha256 {digest[:12]}... does not match the manifest's "
                             f"{entry['sha256'][:12]}...; re-ingest {dataset!r}.")
        try:
            # One thread: faster here, and trials share the node's cores.
            table = pq.read_table(source, columns=columns, use_threads=False)
        except (pa.ArrowInvalid, OSError) as e:  # its bytes match the manifest: the stored file is bad too
            raise ShardError(f"corrupt shard {uri}: not a readable Parquet file ({e}); "
                             f"re-ingest {dataset!r}.") from None
        if table.num_rows != entry["rows"]:
            raise ShardError(f"shard {uri} holds {table.num_rows} rows, the manifest says {entry['rows']}")
        return table

    def iter_rows(self, dataset: str, split: str, columns: list[str] | None = None) -> Iterator[dict]:
        for row in self.read_split(dataset, split, columns).to_pylist():
            if "metadata" in row and row["metadata"] is not None:
                row["metadata"] = dict(row["metadata"])
            yield row
