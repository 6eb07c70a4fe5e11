"""Shard format v1: Parquet files of (image, target structure) rows plus a manifest per dataset.

Layout under a root (a local folder or ``s3://bucket/prefix``)::

    <root>/<dataset>/<split>-00000.parquet ...
    <root>/<dataset>/content.json         # per-row content hashes (datasets.overlap), if recorded
    <root>/<dataset>/manifest.json        # written last: a dataset without it does not exist

Every file is written under a temporary name and renamed into place, so a reader never sees a
half-written shard or manifest. A dataset is rewritten (re-ingest, ``prompts generate``) new-then-swap:
the new version's files take names the current manifest does not list (``<split>-00000-<version>.parquet``),
every row is checked (valid UTF-8 strings, unique sample ids, a split name that is a plain file name)
as it is written, the new manifest then replaces the old in one write (the commit point: readers follow
the manifest, and on S3 it is a single object), and only then are the old version's files removed. A
kill or an error at any moment leaves the old version or the new one, whole; what a killed write had
staged is listed by no manifest.
One writer per dataset at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import posixpath
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NoReturn

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from datasets.cache import NodeCache
from datasets.cli import name_problem
from datasets.storage import (  # noqa: F401 (re-exported)
    ShardError,
    StorageUnavailable,
    absolute_uri,
    filesystem_for,
    is_remote,
    write_atomically,
)

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
MANIFEST_NAME = "manifest.json"

log = logging.getLogger(__name__)


def shard_schema(prompt_types: Iterable[str]) -> pa.Schema:
    prompt_fields = [pa.field(p, pa.list_(pa.string()), nullable=False) for p in prompt_types]
    return pa.schema(BASE_FIELDS + prompt_fields + [METADATA_FIELD], metadata={"vlsm_format": str(FORMAT_VERSION)})


class ShardFile:
    """One shard file on its way to storage, under a temporary name until ``finish`` renames it:
    row groups are written as they fill and hashed on the way out, so the file is never held whole."""

    def __init__(self, fs: pafs.FileSystem, folder: str, name: str, schema: pa.Schema):
        self.fs, self.name, self.schema = fs, name, schema
        self.path = posixpath.join(folder, name)
        self.tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
        self.sink = _HashingSink(fs.open_output_stream(self.tmp))
        self.writer = pq.ParquetWriter(self.sink, schema)
        self.rows, self.pending = 0, []

    def add(self, row: dict) -> None:
        """Queue one row (its strings already checked: Parquet stores UTF-8 only)."""
        self.pending.append({**row, "metadata": list(row.get("metadata", {}).items())})
        self.rows += 1
        if len(self.pending) == ROWS_PER_GROUP:
            self._write_group()

    def _write_group(self) -> None:
        self.writer.write_table(pa.Table.from_pylist(self.pending, schema=self.schema))
        self.pending = []

    def finish(self) -> dict:
        """Close and rename the file; its manifest entry, under the name it was given."""
        if self.pending:
            self._write_group()
        self.writer.close()
        self.sink.stream.close()
        self.fs.move(self.tmp, self.path)
        return {"path": self.name, "rows": self.rows, "sha256": self.sink.sha256.hexdigest()}

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


def utf8_problem(row: dict) -> str | None:
    """The first string of a row that is not valid UTF-8 text (a lone surrogate, as a JSON escape
    ``"\\ud800"`` or a file name with undecodable bytes gives), as "field 'X': what"; None if all are.
    Parquet stores UTF-8 only: checked before anything is written, such a row would fail mid-write."""
    for name, value in row.items():
        if isinstance(value, str):
            strings = [(repr(name), value)]
        elif isinstance(value, (list, tuple)):
            strings = [(f"{name!r} item {i}", v) for i, v in enumerate(value) if isinstance(v, str)]
        elif isinstance(value, dict):
            strings = [(repr(f"{name}.{k}"), text) for k, v in value.items() for text in (str(k), v)
                       if isinstance(text, str)]
        else:
            continue
        for field, text in strings:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                return (f"field {field}: {text!r} is not valid UTF-8 text (lone surrogate "
                        f"{text[e.start]!r} at position {e.start}); fix the text at its source")
    return None


def check_name(dataset: str) -> None:
    """A dataset name becomes a folder under the root: refuse one that would write elsewhere."""
    problem = name_problem(dataset)
    if problem:
        raise ShardError(f"dataset name {problem}")


def split_problem(split: object) -> str | None:
    """Why ``split`` cannot be a split name, or None if it can: a split names its shard files
    (``<split>-00000.parquet``), so it must be a plain name, like a dataset's (``name_problem``)."""
    if name_problem(split) is None:
        return None
    return (f"split name {split!r} is not usable: it names the split's shard files, so use 1-128 letters, "
            "digits, '_', '-' or '.', starting with a letter or digit")


def _plain_file_name(value: object) -> bool:
    return (isinstance(value, str) and value not in ("", ".", "..") and "/" not in value
            and "\\" not in value)


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

    def files(self) -> list[str]:
        """Every file of the dataset's folder this manifest names: shards, and content hashes if recorded."""
        shards = [f["path"] for entry in self.splits.values() for f in entry["files"]]
        return shards + ([self.content["path"]] if self.content else [])

    def to_json(self) -> str:
        optional = {name: getattr(self, name) for name in OPTIONAL_FIELDS if getattr(self, name) is not None}
        return json.dumps(
            {"format_version": FORMAT_VERSION, "dataset": self.dataset, "prompt_family": self.prompt_family,
             "prompt_types": list(self.prompt_types), "splits": self.splits, **optional},
            indent=2,
        )


OPTIONAL_FIELDS = ("duplicates", "content")


def manifest_from_json(raw: dict, uri: str, dataset: str) -> Manifest:
    """A Manifest of parsed JSON, every field checked: a ShardError names the file, the field and what
    was expected (a manifest written by hand or by another tool may lack one). File paths must be plain
    names in the dataset's folder, since readers open them and a rewrite removes them."""

    def bad(field: str, expected: str, value: object = KeyError) -> ShardError:
        found = "is missing" if value is KeyError else f"is {value!r}"
        return ShardError(f"{uri}: field {field!r} {found}; expected {expected}. Re-ingest {dataset!r}.")

    def get(mapping: dict, key: str, field: str, kind: type | tuple[type, ...], expected: str) -> object:
        if key not in mapping:
            raise bad(field, expected)
        value = mapping[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise bad(field, expected, value)
        return value

    def file_entry(entry: object, field: str) -> dict:
        if not isinstance(entry, dict):
            raise bad(field, "an object with path, rows and sha256", entry)
        path = get(entry, "path", f"{field}.path", str, "a file name in the dataset's folder")
        if not _plain_file_name(path) or path == MANIFEST_NAME:
            raise bad(f"{field}.path", "a file name in the dataset's folder, other than the manifest's", path)
        get(entry, "rows", f"{field}.rows", int, "a row count")
        get(entry, "sha256", f"{field}.sha256", str, "the file's sha256 in hex")
        return entry

    name = get(raw, "dataset", "dataset", str, "the dataset's name")
    prompt_types = get(raw, "prompt_types", "prompt_types", list, "a list of prompt types (p0..pN)")
    if not all(isinstance(p, str) for p in prompt_types):
        raise bad("prompt_types", "a list of prompt types (p0..pN)", prompt_types)
    splits = get(raw, "splits", "splits", dict, "an object of split -> {rows, files}")
    for split, entry in splits.items():
        if split_problem(split):
            raise ShardError(f"{uri}: {split_problem(split)}. Re-ingest {dataset!r}.")
        if not isinstance(entry, dict):
            raise bad(f"splits.{split}", "an object with rows and files", entry)
        get(entry, "rows", f"splits.{split}.rows", int, "a row count")
        files = get(entry, "files", f"splits.{split}.files", list, "a list of shard files")
        for i, file in enumerate(files):
            file_entry(file, f"splits.{split}.files[{i}]")
    family = raw.get("prompt_family")
    if family is not None and not isinstance(family, str):
        raise bad("prompt_family", "a prompt family name or null", family)
    content = raw.get("content")
    if content is not None:
        file_entry(content, "content")
    duplicates = raw.get("duplicates")
    if duplicates is not None and not isinstance(duplicates, dict):
        raise bad("duplicates", "an object of split -> {sample_id: the sample_id it repeats}", duplicates)
    return Manifest(name, tuple(prompt_types), splits, family, duplicates=duplicates, content=content)


class ShardStore:
    """Reads and writes datasets of shards under one root (local folder or s3://)."""

    def __init__(self, root: str, cache: NodeCache | bool = True):
        """``cache``: the node cache that remote shards are read through (True: the default one,
        ``$VLSM_CACHE``; False: none, every read goes to storage and splits decode in memory)."""
        self.root = root.rstrip("/")
        self.fs, self.path = filesystem_for(self.root)
        self.cache: NodeCache | None = NodeCache() if cache is True else (cache or None)
        self.remote = is_remote(self.root)

    def _dataset_dir(self, dataset: str) -> str:
        return posixpath.join(self.path, dataset)

    def _uri(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # -- writing -------------------------------------------------------------------------------
    def write_dataset(self, dataset: str, rows: Iterable[dict], prompt_types: Iterable[str],
                      prompt_family: str | None = None,
                      finish: Callable[[str], dict] | None = None) -> Manifest:
        """Write rows (dicts with the schema's fields) into shards, then the manifest, last: a new
        version of the dataset replaces the old one whole, or not at all (see the module's docstring).

        Rows go to storage a row group at a time, so memory holds at most ``ROWS_PER_GROUP`` rows
        per split, however large the images. A row with a string that is not valid UTF-8, or a
        sample_id an earlier row has, is a ShardError naming the split, row and field. If ``rows``
        raises, or such an error stops the write, no file of the new version is left and the old
        version stays as it was; so it does when a split name is not a plain name (it names files:
        ``split_problem``) or when ``rows`` yields no row at all. ``finish(version)`` runs once every
        row is written, before the manifest: it may write side files of the dataset (what the rows
        taught it), named with ``version`` before their extension (``content<version>.json``) so
        that they replace no file of the old version, and returns the manifest's optional fields.

        The old version's files are removed right after the switch: a reader that read the old
        manifest and then opens one of them gets StorageUnavailable (``read_file``), an
        infrastructure fault, so rewriting a dataset while a study reads it restarts the trials
        reading it (at the study's next launch), and never records them as failed.
        """
        check_name(dataset)
        prompt_types = tuple(prompt_types)
        schema = shard_schema(prompt_types)
        folder = self._dataset_dir(dataset)
        old_files = self._listed_files(dataset)  # None: no manifest, nothing to replace
        # A fresh suffix whenever there is a version to keep: its files are never written over.
        version = "" if old_files is None else f"-{uuid.uuid4().hex[:8]}"
        self.fs.create_dir(folder, recursive=True)
        splits: dict[str, dict] = {}
        open_files: dict[str, ShardFile] = {}  # the file each split is filling
        seen: dict[str, tuple[str, int]] = {}  # sample_id -> (split, row), since ids are unique in a dataset
        try:
            for row in rows:
                split = row["split"]
                if split not in splits and split_problem(split):  # checked before it names any file
                    raise ShardError(f"dataset {dataset!r} row {row['sample_id']!r}: {split_problem(split)}; "
                                     f"nothing of {dataset!r} was replaced")
                entry = splits.setdefault(split, {"rows": 0, "files": []})
                index = entry["rows"] + (open_files[split].rows if split in open_files else 0)
                where = f"dataset {dataset!r} split {split!r} row {index}"
                if row["dataset"] != dataset:
                    raise ShardError(f"{where}: row {row['sample_id']!r} belongs to dataset {row['dataset']!r}, "
                                     f"not {dataset!r}")
                problem = utf8_problem(row)
                if problem:
                    raise ShardError(f"{where} (sample_id {row['sample_id']!r}), {problem}; "
                                     f"nothing of {dataset!r} was replaced")
                if row["sample_id"] in seen:
                    other_split, other = seen[row["sample_id"]]
                    used = f"row {other}" if other_split == split else f"split {other_split!r} row {other}"
                    raise ShardError(f"{where}: sample_id {row['sample_id']!r} is already used by {used}; "
                                     f"sample ids must be unique within a dataset. Nothing of {dataset!r} "
                                     "was replaced")
                seen[row["sample_id"]] = (split, index)
                if split not in open_files:
                    name = f"{split}-{len(entry['files']):05d}{version}.parquet"
                    open_files[split] = ShardFile(self.fs, folder, name, schema)
                open_files[split].add(row)
                if open_files[split].rows == ROWS_PER_FILE:
                    _add_file(entry, open_files[split].finish())
                    del open_files[split]
            for split in list(open_files):
                _add_file(splits[split], open_files[split].finish())
                del open_files[split]
            if not splits:  # an empty dataset would replace the old version with nothing
                raise ShardError(f"no rows: nothing of {dataset!r} was replaced (a dataset needs at least one row)")
            optional = finish(version) if finish else {}
        except BaseException:
            for shard in open_files.values():
                shard.abort()
            written = [f["path"] for entry in splits.values() for f in entry["files"]]
            self._remove(dataset, written, "of the failed write")
            raise
        manifest = Manifest(dataset, prompt_types, splits, prompt_family, **optional)
        write_atomically(self.fs, posixpath.join(folder, MANIFEST_NAME), manifest.to_json().encode())
        # The new version is in place: the old one's files can go.
        self._remove(dataset, sorted(set(old_files or ()) - set(manifest.files())), "of the old version")
        return manifest

    def _listed_files(self, dataset: str) -> list[str] | None:
        """The files the dataset's current manifest lists; None when it has no manifest; [] when its
        manifest cannot be read (its files are unknown, so none is removed, and none is written over)."""
        if self.fs.get_file_info(posixpath.join(self._dataset_dir(dataset), MANIFEST_NAME)).type != pafs.FileType.File:
            return None
        try:
            return self.manifest(dataset).files()
        except ShardError:
            return []

    def _remove(self, dataset: str, names: list[str], what: str) -> None:
        """Delete files of the dataset's folder; each on its own, since a failure only leaves a file
        that no manifest lists."""
        for name in names:
            try:
                self.fs.delete_file(posixpath.join(self._dataset_dir(dataset), name))
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("could not remove %s %s (%s); no manifest lists it", self._uri(dataset, name), what, e)

    # -- reading -------------------------------------------------------------------------------
    def datasets(self) -> list[str]:
        """Names of the datasets under the root that have a manifest."""
        info = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        names = [i.base_name for i in info if i.type == pafs.FileType.Directory]
        manifests = self.fs.get_file_info([posixpath.join(self.path, n, "manifest.json") for n in names])
        return sorted(n for n, m in zip(names, manifests) if m.type == pafs.FileType.File)

    def manifest(self, dataset: str) -> Manifest:
        path = posixpath.join(self._dataset_dir(dataset), MANIFEST_NAME)
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
        uri = self._uri(dataset, MANIFEST_NAME)
        if not isinstance(raw, dict):
            raise ShardError(f"{uri} holds {type(raw).__name__}; expected a JSON object. Re-ingest {dataset!r}.")
        if raw.get("format_version") != FORMAT_VERSION:
            raise ShardError(f"{uri} has format_version "
                             f"{raw.get('format_version')!r}; this vlsm-tune reads version {FORMAT_VERSION}")
        return manifest_from_json(raw, uri, dataset)

    def check_split(self, dataset: str, split: str, prompt_type: str | None = None) -> Manifest:
        """Fail early, with a clear message, if a split or prompt type does not exist, or the split is empty."""
        manifest = self.manifest(dataset)
        if split not in manifest.splits:
            raise ShardError(f"dataset {dataset!r} has no {split!r} split (it has: {', '.join(manifest.splits)})")
        self._check_not_empty(manifest, split)
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
        self._check_not_empty(manifest, split)
        tables = [self.read_file(dataset, entry, columns) for entry in manifest.splits[split]["files"]]
        return pa.concat_tables(tables)

    def _check_not_empty(self, manifest: Manifest, split: str) -> None:
        if not manifest.splits[split]["files"] or not manifest.rows(split):
            raise ShardError(f"dataset {manifest.dataset!r} split {split!r} is empty "
                             f"({manifest.rows(split)} rows in {self._uri(manifest.dataset, MANIFEST_NAME)}); "
                             f"expected at least one row: re-ingest {manifest.dataset!r} with rows in {split!r}, "
                             "or use another split")

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
            self._raise_missing(dataset, entry, uri)
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

    def _raise_missing(self, dataset: str, entry: dict, uri: str) -> NoReturn:
        """A shard file storage lacks: bad data (ShardError) if the current manifest still lists it;
        if not, the dataset was rewritten after the reader read its manifest (the old version's files
        go right after the switch), which is no fault of the data: StorageUnavailable, so the
        experiment is left for the next launch, which reads the new version."""
        try:
            listed = {(f["path"], f["sha256"]) for s in self.manifest(dataset).splits.values() for f in s["files"]}
        except ShardError:  # no readable manifest now: the file is missing all the same
            listed = {(entry["path"], entry["sha256"])}
        if (entry["path"], entry["sha256"]) not in listed:
            raise StorageUnavailable(
                f"shard {uri} is gone: dataset {dataset!r} was rewritten while it was read (its manifest no "
                "longer lists the file). Not a fault of the data: the experiment runs again on the next "
                "launch, with the new version.") from None
        raise ShardError(f"missing shard {uri}: the manifest lists it but storage does not have it. "
                         f"Re-ingest {dataset!r} or restore the file.") from None

    def iter_rows(self, dataset: str, split: str, columns: list[str] | None = None) -> Iterator[dict]:
        for row in self.read_split(dataset, split, columns).to_pylist():
            if "metadata" in row and row["metadata"] is not None:
                row["metadata"] = dict(row["metadata"])
            yield row
