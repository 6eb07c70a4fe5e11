"""Content shared across datasets: the same image, or the same mask, in two datasets' shards.

The study's public data holds such copies (CVC-300's released annotations are ColonDB's), and a
score on one of two overlapping test sets is then no independent evidence about the other. Ingest
records every row's content hashes in ``<root>/<dataset>/content.json``, which the manifest's
``content`` entry names with its sha256; `shared_content` compares those records, so a report can
flag overlapping datasets without reading a shard. Datasets ingested before hashes were recorded
have none and are left out here (`content_indexes` names them); ``python -m datasets.validate``
hashes the rows it decodes anyway and so covers them too.

Hashes, per row:
- image: sha256 of the image bytes as stored (the original file's): exact copies of a file match,
  a re-encoded copy does not.
- mask: sha256 of ``"<height>x<width>:"`` and the mask's pixels packed one bit each (numpy
  ``packbits``), so a mask matches however its PNG was compressed; none for an empty mask, since
  every empty mask of a size is the same and says nothing about the sample.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from datasets.shards import Manifest, ShardError, ShardStore, write_atomically

CONTENT_NAME = "content.json"
OVERLAP_NAME = "overlap.json"  # what validate found over a whole root (datasets/validate.py writes it)
CONTENT_FORMAT = 1
EXAMPLES = 5  # sample id pairs an overlap names


def image_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mask_digest(mask: np.ndarray) -> str | None:
    """The hash of a boolean (H, W) mask's pixels; None for an empty mask (nothing to match)."""
    if not mask.any():
        return None
    height, width = mask.shape
    return hashlib.sha256(f"{height}x{width}:".encode() + np.packbits(mask).tobytes()).hexdigest()


@dataclass
class ContentIndex:
    """One dataset's rows as (split, sample_id, image hash, mask hash or None)."""

    dataset: str
    rows: list[tuple[str, str, str, str | None]] = field(default_factory=list)

    def add(self, split: str, sample_id: str, image: bytes, mask: np.ndarray) -> None:
        self.rows.append((split, sample_id, image_digest(image), mask_digest(mask)))

    def first_ids(self, column: int) -> dict[str, str]:
        """Hash -> the first sample id holding it, for the image (2) or mask (3) column."""
        found: dict[str, str] = {}
        for row in self.rows:
            if row[column] is not None:
                found.setdefault(row[column], row[1])
        return found

    def to_json(self) -> bytes:
        return json.dumps({"format_version": CONTENT_FORMAT, "dataset": self.dataset,
                           "image": "sha256 of the image bytes as stored",
                           "mask": "sha256 of '<height>x<width>:' + the mask's pixels, numpy.packbits; "
                                   "null for an empty mask",
                           "rows": [list(row) for row in self.rows]}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ContentIndex:
        raw = json.loads(data)
        if raw.get("format_version") != CONTENT_FORMAT:
            raise ValueError(f"format_version {raw.get('format_version')!r}, expected {CONTENT_FORMAT}")
        return cls(raw["dataset"], [tuple(row) for row in raw["rows"]])


@dataclass(frozen=True)
class Overlap:
    """Two datasets (names in order) holding the same content."""

    dataset_a: str
    dataset_b: str
    count: int  # distinct images found in both
    masks: int  # distinct non-empty masks found in both
    examples: tuple[tuple[str, str], ...]  # a few (sample_id in a, sample_id in b) with the same content

    def describe(self) -> str:
        shown = ", ".join(f"{a} = {b}" for a, b in self.examples)
        return (f"{self.dataset_a} and {self.dataset_b} share {self.count} image(s) and {self.masks} mask(s) "
                f"by content, e.g. {shown}")

    def to_dict(self) -> dict:
        return {**asdict(self), "examples": [list(pair) for pair in self.examples]}


def compare(a: ContentIndex, b: ContentIndex, examples: int = EXAMPLES) -> Overlap | None:
    """What a and b share, or None; examples are shared images, else shared masks."""
    if a.dataset > b.dataset:
        a, b = b, a
    images_a, images_b = a.first_ids(2), b.first_ids(2)
    masks_a, masks_b = a.first_ids(3), b.first_ids(3)
    images, masks = images_a.keys() & images_b.keys(), masks_a.keys() & masks_b.keys()
    if not images and not masks:
        return None
    firsts_a, firsts_b = (images_a, images_b) if images else (masks_a, masks_b)
    pairs = sorted((firsts_a[h], firsts_b[h]) for h in (images or masks))
    return Overlap(a.dataset, b.dataset, len(images), len(masks), tuple(pairs[:examples]))


def overlaps(indexes: Iterable[ContentIndex], involving: Iterable[str] | None = None) -> list[Overlap]:
    """Every pair of datasets that shares content; only pairs with a dataset of ``involving`` if given."""
    indexes = sorted(indexes, key=lambda index: index.dataset)
    wanted = None if involving is None else set(involving)
    found = []
    for i, a in enumerate(indexes):
        for b in indexes[i + 1:]:
            if wanted is not None and not {a.dataset, b.dataset} & wanted:
                continue
            overlap = compare(a, b)
            if overlap:
                found.append(overlap)
    return found


# -- what ingest records -----------------------------------------------------------------------------
def write_index(store: ShardStore, index: ContentIndex, version: str = "") -> dict:
    """Write the dataset's content hashes (``content<version>.json``: a rewrite puts its version beside
    the old one until the manifest switches); the manifest's ``content`` entry for them."""
    stem, ext = posixpath.splitext(CONTENT_NAME)
    name, data = f"{stem}{version}{ext}", index.to_json()
    write_atomically(store.fs, posixpath.join(store.path, index.dataset, name), data)
    return {"path": name, "rows": len(index.rows), "sha256": hashlib.sha256(data).hexdigest()}


def read_index(store: ShardStore, dataset: str, manifest: Manifest) -> ContentIndex:
    """The content.json the manifest names, checked against its sha256; ShardError if it is not sound."""
    entry = manifest.content or {}
    label = f"{dataset}/{entry.get('path', CONTENT_NAME)}"
    try:
        with store.fs.open_input_stream(posixpath.join(store.path, dataset, entry["path"])) as f:
            data = f.read()
    except (KeyError, FileNotFoundError):
        raise ShardError(f"{label}: named by the manifest but missing") from None
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ShardError(f"{label}: sha256 does not match the manifest")
    try:
        return ContentIndex.from_json(data)
    except (ValueError, KeyError, TypeError) as e:
        raise ShardError(f"{label}: not a content index ({e})") from None


def recorded_index(store: ShardStore, dataset: str) -> ContentIndex | None:
    """The hashes ingest recorded for a dataset; None when there are none or they cannot be read."""
    try:
        manifest = store.manifest(dataset)
        return read_index(store, dataset, manifest) if manifest.content else None
    except (ShardError, OSError):
        return None


def content_indexes(store: ShardStore) -> tuple[dict[str, ContentIndex], list[str]]:
    """Recorded hashes per dataset of the root, and the datasets without (usable) ones."""
    indexes, unhashed = {}, []
    for dataset in store.datasets():
        index = recorded_index(store, dataset)
        if index is None:
            unhashed.append(dataset)
        else:
            indexes[dataset] = index
    return indexes, unhashed


def validated_overlaps(store: ShardStore) -> list[Overlap]:
    """What ``python -m datasets.validate`` last found over the whole root (``<root>/overlap.json``),
    which covers datasets ingested before hashes were recorded; [] when it never ran there."""
    try:
        with store.fs.open_input_stream(posixpath.join(store.path, OVERLAP_NAME)) as f:
            found = json.loads(f.read())["overlaps"]
        return [Overlap(o["dataset_a"], o["dataset_b"], o["count"], o["masks"],
                        tuple(tuple(pair) for pair in o["examples"])) for o in found]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError):  # unreadable: validate writes it again
        return []


def shared_content(store: ShardStore, involving: Iterable[str] | None = None) -> list[Overlap]:
    """Pairs of datasets under the root that share images or masks, from the hashes ingest recorded
    (no shard is read) and, for pairs those miss, from validate's ``overlap.json``. ``involving``:
    only pairs with one of these datasets."""
    indexes, _ = content_indexes(store)
    found = overlaps(indexes.values(), involving)
    pairs = {(o.dataset_a, o.dataset_b) for o in found}
    wanted = None if involving is None else set(involving)
    found += [o for o in validated_overlaps(store) if (o.dataset_a, o.dataset_b) not in pairs
              and (wanted is None or {o.dataset_a, o.dataset_b} & wanted)]
    return found
