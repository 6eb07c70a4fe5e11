"""``python -m datasets.validate <root> [--datasets NAME ...] [--strict-overlap]``: check every row of every shard.

Per dataset: the manifest parses; every file it lists exists, matches its sha256 and row count, and
the split counts add up; every row has the dataset's name and split, a unique sample_id, an image
and a mask that decode, a binary 0/255 single-channel mask the size of the image and of the row's
height/width, and for every prompt type of the manifest a non-empty list of strings (non-empty
strings, but p0 may be [""]); the content hashes ingest recorded, if any, match the rows. Prints OK
per dataset or each problem with file, row and field.

Then, across datasets: images or masks that two datasets share (datasets.overlap), hashed from the
rows decoded here, so datasets ingested before hashes were recorded are covered too (datasets not
checked in this run, with --datasets, by their recorded hashes). Each pair is printed as an OVERLAP
line naming both, the counts and a few sample ids. It is a finding, not a fault of the shards (the
study's own CVC-300 annotations copy ColonDB's): it does not fail validation unless
--strict-overlap. A run over the whole root records it in ``<root>/overlap.json`` for other tools.

Exits 1 if any problem was found (or, with --strict-overlap, any overlap), 2 if the root cannot be read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import posixpath
import sys
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from datasets.cli import DefaultsHelpFormatter, name_type
from datasets.decoded import decode_mask
from datasets.overlap import OVERLAP_NAME, ContentIndex, Overlap, overlaps, read_index, recorded_index
from datasets.shards import BASE_FIELDS, Manifest, ShardError, ShardStore, write_atomically
from prompts.images import open_image

BATCH_ROWS = 100  # one row group at a time keeps memory small for large shards


@dataclass
class DatasetCheck:
    dataset: str
    rows: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # Hashes of the rows that decoded; the content this dataset shares with others (not a problem).
    content: ContentIndex | None = None
    overlaps: list[Overlap] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def image_hw(data: bytes) -> tuple[int, int]:
    """(height, width), decoding every pixel; over the limits of ``prompts.images``, an ImageLimitError
    (a ValueError) before any is decoded."""
    with open_image(data, "image") as image:
        image.load()
        return image.height, image.width


def check_row(row: dict, where: str, dataset: str, split: str, prompt_types: tuple[str, ...],
              content: ContentIndex | None = None) -> list[str]:
    """Problems of one row, each naming the row and the field; its hashes go to ``content`` when
    its image and mask decode."""
    problems = []
    for name, expected in (("dataset", dataset), ("split", split)):
        if row.get(name) != expected:
            problems.append(f"{where}, field {name!r}: {row.get(name)!r}, expected {expected!r}")
    if not row.get("class_name"):
        problems.append(f"{where}, field 'class_name': empty")
    try:
        h, w = image_hw(row["image"])
    except (OSError, ValueError, TypeError, SyntaxError) as e:  # ImageLimitError is a ValueError
        problems.append(f"{where}, field 'image': does not decode ({type(e).__name__}: {e})")
        h = w = None
    try:
        mask = decode_mask(row["mask"], where)
    except (ShardError, TypeError) as e:
        problems.append(str(e))
        mask = None
    if (h, w) != (row["height"], row["width"]) and h is not None:
        problems.append(f"{where}, field 'height'/'width': row says {row['height']}x{row['width']}, "
                        f"image is {h}x{w} (HxW)")
    if mask is not None and mask.shape != (row["height"], row["width"]):
        problems.append(f"{where}, field 'mask': {mask.shape[0]}x{mask.shape[1]} (HxW), "
                        f"row says {row['height']}x{row['width']}")
    for prompt_type in prompt_types:
        texts = row.get(prompt_type)
        if not texts or not all(isinstance(t, str) for t in texts):
            problems.append(f"{where}, field {prompt_type!r}: {texts!r}; expected a non-empty list of strings")
        elif prompt_type != "p0" and not all(t.strip() for t in texts):
            problems.append(f"{where}, field {prompt_type!r}: holds an empty string; only p0 may be empty")
    if content is not None and h is not None and mask is not None:
        content.add(split, row.get("sample_id"), row["image"], mask)
    return problems


def validate_dataset(store: ShardStore, dataset: str) -> DatasetCheck:
    check = DatasetCheck(dataset)
    try:
        manifest = store.manifest(dataset)
    except ShardError as e:
        check.problems.append(f"{dataset}/manifest.json: {e}")
        return check
    expected_columns = {f.name for f in BASE_FIELDS} | set(manifest.prompt_types) | {"metadata"}
    check.content = ContentIndex(dataset)
    sample_ids: dict[str, str] = {}
    for split, entry in manifest.splits.items():
        listed = sum(f["rows"] for f in entry["files"])
        if listed != entry["rows"]:
            check.problems.append(f"{dataset}/manifest.json, split {split!r}: says {entry['rows']} rows, "
                                  f"its files say {listed}")
        check.rows[split] = 0
        if not entry["files"] or not entry["rows"]:
            check.problems.append(f"{dataset}/manifest.json: split {split!r} is empty; expected at least one row")
        for file in entry["files"]:
            label = f"{dataset}/{file['path']}"
            try:
                with store.fs.open_input_stream(posixpath.join(store.path, dataset, file["path"])) as f:
                    data = f.read()
            except FileNotFoundError:
                check.problems.append(f"{label}: listed in the manifest but missing")
                continue
            if hashlib.sha256(data).hexdigest() != file["sha256"]:
                check.problems.append(f"{label}: sha256 does not match the manifest")
            try:
                parquet = pq.ParquetFile(pa.BufferReader(data))
            except (pa.ArrowInvalid, OSError) as e:
                check.problems.append(f"{label}: not a readable Parquet file ({e})")
                continue
            missing = expected_columns - set(parquet.schema_arrow.names)
            if missing:
                check.problems.append(f"{label}: missing column(s) {', '.join(sorted(missing))}")
                continue
            if parquet.metadata.num_rows != file["rows"]:
                check.problems.append(f"{label}: holds {parquet.metadata.num_rows} rows, the manifest says "
                                      f"{file['rows']}")
            index = 0
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                for row in batch.to_pylist():
                    where = f"{label} row {index} (sample_id {row.get('sample_id')!r})"
                    check.problems += check_row(row, where, dataset, split, manifest.prompt_types, check.content)
                    sid = row.get("sample_id")
                    if sid in sample_ids:
                        check.problems.append(f"{where}, field 'sample_id': duplicate sample_id {sid!r}, also "
                                              f"used at {sample_ids[sid]}; ids must be unique in a dataset "
                                              "(per-image results are keyed by them): re-ingest it")
                    else:
                        sample_ids[sid] = f"{label} row {index}"
                    index += 1
            check.rows[split] += index
    if manifest.content is not None:
        check.problems += recorded_content_problems(store, manifest, check.content, sum(check.rows.values()))
    return check


def recorded_content_problems(store: ShardStore, manifest: Manifest, computed: ContentIndex,
                              rows: int) -> list[str]:
    """The content hashes ingest recorded against those of the rows that decoded here."""
    label = f"{manifest.dataset}/{manifest.content.get('path')}"
    try:
        recorded = read_index(store, manifest.dataset, manifest)
    except ShardError as e:
        return [str(e)]
    problems = []
    if len(recorded.rows) != rows:
        problems.append(f"{label}: records {len(recorded.rows)} rows, the shards hold {rows}")
    by_id = {(split, sample_id): tuple(hashes) for split, sample_id, *hashes in recorded.rows}
    differ = [sid for split, sid, *hashes in computed.rows if by_id.get((split, sid)) != tuple(hashes)]
    if differ:
        problems.append(f"{label}: recorded hashes differ from the rows' for {len(differ)} row(s), e.g. "
                        f"{', '.join(map(repr, differ[:5]))}; re-ingest {manifest.dataset!r}")
    return problems


def validate(root: str, datasets: list[str] | None = None, out=sys.stdout) -> list[DatasetCheck]:
    store = ShardStore(root)
    names = datasets or store.datasets()
    if not names:
        print(f"no datasets (no */manifest.json) under {store.root}", file=out)
    checks = []
    for name in names:
        check = validate_dataset(store, name)
        checks.append(check)
        counts = ", ".join(f"{s} {n}" for s, n in check.rows.items())
        if check.ok:
            print(f"OK {name}: {sum(check.rows.values())} rows ({counts})", file=out)
        else:
            print(f"FAILED {name}: {len(check.problems)} problem(s)", file=out)
            for problem in check.problems:
                print(f"  {problem}", file=out)
    report_overlaps(store, checks, whole=not datasets, out=out)
    return checks


def report_overlaps(store: ShardStore, checks: list[DatasetCheck], whole: bool, out) -> list[Overlap]:
    """Print (and add to each check) the content its dataset shares with another of the root; record
    the finding in <root>/overlap.json when ``whole`` (every dataset of the root was checked)."""
    indexes = {c.dataset: c.content for c in checks if c.content is not None}
    unhashed = []
    for name in [] if whole else [d for d in store.datasets() if d not in indexes]:
        index = recorded_index(store, name)  # not checked in this run: what its ingest recorded
        if index is None:
            unhashed.append(name)
        else:
            indexes[name] = index
    found = overlaps(indexes.values(), involving=None if whole else [c.dataset for c in checks])
    for overlap in found:
        print(f"OVERLAP {overlap.describe()}", file=out)
        for check in checks:
            if check.dataset in (overlap.dataset_a, overlap.dataset_b):
                check.overlaps.append(overlap)
    if not found and len(indexes) > 1:
        print(f"no image or mask shared across datasets ({len(indexes)} compared)", file=out)
    if unhashed:
        print(f"note: not compared, no content hashes recorded: {', '.join(unhashed)} (validate them too)",
              file=out)
    if whole and len(indexes) > 1:
        record_overlaps(store, sorted(indexes), found, out)
    return found


def record_overlaps(store: ShardStore, compared: list[str], found: list[Overlap], out) -> None:
    """<root>/overlap.json, for tools that read what validate found; a read-only root only loses it."""
    data = json.dumps({"compared": compared, "overlaps": [o.to_dict() for o in found]}, indent=2).encode()
    try:
        write_atomically(store.fs, posixpath.join(store.path, OVERLAP_NAME), data)
    except OSError as e:
        print(f"note: could not record the overlap finding in {store.root}/{OVERLAP_NAME} ({e})", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets.validate", formatter_class=DefaultsHelpFormatter,
                                     description="Check every row of the shards under a root (folder or s3://).")
    parser.add_argument("root", help="shard root: a folder or s3://bucket/prefix")
    parser.add_argument("--datasets", dest="dataset", nargs="+", metavar="NAME", type=name_type,
                        help="only these datasets (none: every one under the root)")
    parser.add_argument("--strict-overlap", action="store_true",
                        help="exit 1 when two datasets share an image or a mask (without it: print each such "
                             "OVERLAP, record it in <root>/overlap.json, exit 0)")
    args = parser.parse_args(argv)
    try:
        checks = validate(args.root, args.dataset)
    except (ShardError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shared = args.strict_overlap and any(c.overlaps for c in checks)
    return 0 if checks and all(c.ok for c in checks) and not shared else 1


if __name__ == "__main__":
    sys.exit(main())
