"""A user's own dataset as a plain folder, into shards with prompts generated from its masks.

Layout (``python -m datasets.ingest folder NAME PATH --to ROOT``)::

    PATH/images/<id>.png|.jpg|.jpeg|.tif|.tiff|.bmp   one image per id, kept as encoded
    PATH/masks/<id>.png       the structure to segment: one channel, 0 and 255 (or 0 and 1), the image's size
    PATH/splits.csv           optional: columns id,split (train, val or test), a row for every id
    PATH/metadata.csv         optional: column id, a row for every id, and any of
                                prompt       the user's own prompt text: prompt type p10
                                class_name   the row's class (else --class-name)
                                description  "which is ..." text of the class, for p7-p9
                              every other column is kept as the row's metadata (strings)

Prompts come from ``prompts/``, as ``python -m datasets.prompts generate`` makes them, with the
non-radiology family: its attributes (number, size and location by the study's rules; shape and
colour from stand-ins for the study's VQA model) all come from the mask and the image, where the
radiology families need the study's own metadata (CAMUS views, BUSI tumour types, CheXpert findings).
So every dataset gets p0 (empty), p1 (class name) to p6 (number, size, colour, shape, class, location);
p7-p9 add a class description, so they come only when every row has one: the study's five for its
classes (polyp, skin melanoma, foot ulcer) or the ``description`` column. The ``prompt`` column is
prompt type p10, a number no template uses, so it never mixes with a generated type.

Without splits.csv the split is seeded, 80/10/10 (``seeded_split``: the study's split of the datasets
it split itself, e.g. DFU's 1600/200/200).

Any problem stops the ingest and nothing is written (a previous version of the dataset stays): every
problem of the folder's layout and CSV files is listed at once, naming file, line and field, then
every row that fails to load (an image that does not decode, a mask that is not binary or not the
image's size) is listed with its files.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from datasets.ingest.raw.common import IMAGE_SUFFIXES, file_bytes, open_image, seeded_split
from datasets.ingest.records import Record, RowError, RowProblem
from datasets.ingest.rows import IngestReport, encode_mask, image_size, shard_rows
from datasets.overlap import ContentIndex, write_index
from datasets.progress import Meter
from datasets.shards import Manifest, ShardStore, check_name
from prompts.generate import row_attributes
from prompts.metadata import ATTRIBUTE_PREFIX, store_attributes
from prompts.templates import CLASS_DESCRIPTIONS, PROMPT_TYPES, render

FAMILY = "non_radiology"
USER_PROMPT_TYPE = "p10"
DESCRIBED = ("p7", "p8", "p9")  # the types that show a class description
FROM_MASK = tuple(p for p in PROMPT_TYPES[FAMILY] if p not in DESCRIBED)
SPLITS = ("train", "val", "test")
SPLITS_FILE, METADATA_FILE = "splits.csv", "metadata.csv"
# The study split the datasets it split itself 80/10/10 (datasets.ingest.raw.common.seeded_split).
VAL_FRACTION = TEST_FRACTION = 0.1
SHOWN_PROBLEMS = 20


class FolderError(Exception):
    """The folder cannot be ingested as it is; the message lists every problem found, and nothing was written."""

    def __init__(self, folder: Path, problems: list[str]):
        shown = problems[:SHOWN_PROBLEMS]
        more = len(problems) - len(shown)
        super().__init__(f"{folder}: {len(problems)} problem(s); nothing was written. Fix them and run again:\n"
                         + "\n".join(f"  {p}" for p in shown) + (f"\n  ... and {more} more" if more else ""))


@dataclass(frozen=True)
class Sample:
    sample_id: str
    image: Path
    mask: Path
    split: str
    class_name: str
    description: str | None = None
    prompt: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


# -- the folder -----------------------------------------------------------------------------------
def _files(folder: Path, root: Path, problems: list[str], kind: str, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """The folder's files by stem; files of other types, links out of the dataset folder and two files
    of one stem are problems. Hidden files and subfolders are skipped."""
    if not folder.is_dir():
        problems.append(f"{folder}: no {kind} folder (expected {folder.name}/ beside the optional CSV files)")
        return {}
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix.lower() not in suffixes:
            problems.append(f"{path}: not a {kind} file ({kind}s are {', '.join(suffixes)})")
        elif not path.resolve().is_relative_to(root):
            problems.append(f"{path}: resolves to {path.resolve()}, outside {root} (a link out of the folder)")
        elif path.stem in by_stem:
            problems.append(f"{path}: another {kind} has the same id {path.stem!r}: {by_stem[path.stem].name}")
        else:
            by_stem[path.stem] = path
    return by_stem


def _csv_rows(path: Path, required: tuple[str, ...], ids: set[str], unpaired: set[str],
              problems: list[str]) -> dict[str, tuple[int, dict[str, str]]]:
    """A CSV file's rows by id, with their line numbers; a missing column, an unknown id and an id given
    twice are problems naming the line and field. Ids of an image or mask without its other half are
    skipped: that problem is listed once, by the folder."""
    rows: dict[str, tuple[int, dict[str, str]]] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in required if c not in columns]
            if missing:
                problems.append(f"{path} line 1: no column {', '.join(map(repr, missing))} (columns: "
                                f"{', '.join(map(repr, columns)) or 'none'}); expected a header line "
                                f"{','.join(required)}")
                return {}
            for row in reader:
                where = f"{path} line {reader.line_num}"
                if None in row or any(value is None for value in row.values()):
                    problems.append(f"{where}: {len(columns)} columns expected, as in the header")
                    continue
                sample_id = row["id"].strip()
                if sample_id in unpaired:
                    continue
                if sample_id not in ids:
                    problems.append(f"{where}, field 'id': {sample_id!r} names no image/mask pair (no "
                                    f"images/{sample_id}.* with masks/{sample_id}.png)")
                elif sample_id in rows:
                    problems.append(f"{where}, field 'id': {sample_id!r} again (first on line {rows[sample_id][0]})")
                else:
                    rows[sample_id] = (reader.line_num, row)
    except UnicodeDecodeError as e:
        problems.append(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8 CSV")
    except csv.Error as e:
        problems.append(f"{path}: not a readable CSV file ({e})")
    return rows


def scan_folder(folder: Path, class_name: str | None = None, seed: int = 0, val_fraction: float = VAL_FRACTION,
                test_fraction: float = TEST_FRACTION) -> tuple[list[Sample], tuple[str, ...]]:
    """The folder's samples and the dataset's prompt types, or FolderError listing every problem of its
    layout and CSV files (nothing is decoded here)."""
    if not folder.is_dir():
        raise FolderError(folder, [f"{folder}: not a folder (give the folder that holds images/ and masks/)"])
    root = folder.resolve()
    problems: list[str] = []
    images = _files(folder / "images", root, problems, "image", IMAGE_SUFFIXES)
    masks = _files(folder / "masks", root, problems, "mask", (".png",))
    for stem, image in images.items():
        if stem not in masks:
            problems.append(f"{image}: no mask for this image (expected {folder / 'masks' / stem}.png)")
    for stem, mask in masks.items():
        if stem not in images:
            problems.append(f"{mask}: no image for this mask (expected {folder / 'images' / stem}.<"
                            f"{'|'.join(s[1:] for s in IMAGE_SUFFIXES)}>)")
    ids = sorted(set(images) & set(masks))
    unpaired = set(images) ^ set(masks)
    if not ids and not problems:
        problems.append(f"{folder}: no image/mask pairs in images/ and masks/")
    if val_fraction + test_fraction >= 1:
        problems.append(f"--val-fraction {val_fraction} and --test-fraction {test_fraction} leave nothing to "
                        "train on; their sum must be below 1")

    split_of: dict[str, str] = {}
    if (folder / SPLITS_FILE).exists():
        rows = _csv_rows(folder / SPLITS_FILE, ("id", "split"), set(ids), unpaired, problems)
        for sample_id, (line, row) in rows.items():
            split = row["split"].strip()
            if split not in SPLITS:
                problems.append(f"{folder / SPLITS_FILE} line {line}, field 'split': {split!r}; expected "
                                f"{', '.join(SPLITS)}")
            split_of[sample_id] = split
        problems += [f"{images[i]}: no row in {folder / SPLITS_FILE} (every id needs its split)"
                     for i in ids if i not in split_of]
    else:
        split_of = seeded_split(ids, seed, val_fraction, test_fraction)

    metadata: dict[str, tuple[int, dict[str, str]]] = {}
    columns: list[str] = []
    if (folder / METADATA_FILE).exists():
        metadata = _csv_rows(folder / METADATA_FILE, ("id",), set(ids), unpaired, problems)
        columns = list(next(iter(metadata.values()))[1]) if metadata else []
        reserved = [c for c in columns if c.startswith(ATTRIBUTE_PREFIX)]
        if reserved:
            problems.append(f"{folder / METADATA_FILE} line 1: column(s) {', '.join(reserved)}: names starting "
                            f"with {ATTRIBUTE_PREFIX!r} are the prompt attributes' own; rename them")
        problems += [f"{images[i]}: no row in {folder / METADATA_FILE} (every id needs one)"
                     for i in ids if i not in metadata]

    samples = []
    for sample_id in ids:
        line, row = metadata.get(sample_id, (None, {}))
        where = f"{folder / METADATA_FILE} line {line}"
        own_class = (row.get("class_name") or "").strip() or class_name
        if not own_class:
            problems.append((f"{where}, field 'class_name': empty" if "class_name" in row else
                             f"{images[sample_id]}: no class name")
                            + "; give --class-name (what the masks outline, e.g. 'polyp'), or a class_name "
                              f"column in {METADATA_FILE}")
            continue
        description = (row.get("description") or "").strip() or None
        if "description" in row and description is None and own_class not in CLASS_DESCRIPTIONS:
            problems.append(f"{where}, field 'description': empty, and class {own_class!r} has none of the "
                            f"study's descriptions ({', '.join(CLASS_DESCRIPTIONS)}); p7-p9 need one on every "
                            "row: fill it in, or remove the column")
        prompt = row.get("prompt")
        if prompt is not None and not prompt.strip():
            problems.append(f"{where}, field 'prompt': empty; every row needs its own prompt text "
                            "(or remove the column)")
        samples.append(Sample(sample_id, images[sample_id], masks[sample_id], split_of.get(sample_id, ""),
                              own_class, description, prompt.strip() if prompt else None,
                              {k: v for k, v in row.items() if k not in ("id", "prompt", "class_name", "description")}))
    if problems:
        raise FolderError(folder, problems)
    return samples, prompt_types(samples, "prompt" in columns)


def prompt_types(samples: list[Sample], own_prompt: bool) -> tuple[str, ...]:
    """p0-p6 always; p7-p9 when every row has a class description; p10 for the user's own prompts."""
    described = all(s.description or s.class_name in CLASS_DESCRIPTIONS for s in samples)
    return FROM_MASK + (DESCRIBED if described else ()) + ((USER_PROMPT_TYPE,) if own_prompt else ())


# -- the rows -------------------------------------------------------------------------------------
def binary_mask(path: Path) -> np.ndarray:
    """A mask file as booleans; RowError unless it holds only 0 and 255 (or 0 and 1) in one channel
    (or in three equal ones)."""
    values = open_image(path)
    if values.ndim == 3:
        if not (values == values[..., :1]).all():
            raise RowError(f"{path} is a colour mask; expected one grey channel, 0 for background and 255 "
                           "(or 1) for the structure")
        values = values[..., 0]
    found = np.unique(values)
    if not (set(found.tolist()) <= {0, 255} or set(found.tolist()) <= {0, 1}):
        shown = ", ".join(map(str, found[:8].tolist())) + (", ..." if len(found) > 8 else "")
        raise RowError(f"{path} is not a binary mask: {len(found)} distinct values ({shown}); expected only 0 and "
                       "255 (or 0 and 1). Threshold it (e.g. above 127 -> 255) and save it as PNG")
    return values > 0


def sample_record(sample: Sample, types: tuple[str, ...]) -> Record:
    """The sample's record: image and mask loaded and checked, prompts rendered (RowError if any fails)."""
    image = file_bytes(sample.image)()
    try:
        height, width = image_size(image)
    except RowError as e:
        raise RowError(f"{sample.image}: {e}") from None
    mask = binary_mask(sample.mask)
    if mask.shape != (height, width):
        raise RowError(f"{sample.mask} is {mask.shape[1]}x{mask.shape[0]} (WxH) but {sample.image} is "
                       f"{width}x{height}; a mask must be the size of its image")
    try:
        attributes = row_attributes(FAMILY, {"mask": encode_mask(mask), "image": image,
                                             "class_name": sample.class_name, "metadata": {}})
        if sample.description:
            attributes["description"] = sample.description
        prompts = render(FAMILY, attributes, [t for t in types if t != USER_PROMPT_TYPE])
    except (KeyError, ValueError) as e:
        raise RowError(f"cannot generate prompts: {e.args[0] if e.args else e}") from None
    if sample.prompt is not None:
        prompts[USER_PROMPT_TYPE] = [sample.prompt]
    return Record(sample.sample_id, sample.split, f"{sample.image} + {sample.mask}", lambda: image, lambda: mask,
                  sample.class_name, {**sample.metadata, **store_attributes(attributes)}, prompts)


def folder_records(samples: list[Sample], types: tuple[str, ...]) -> Iterator[Record | RowProblem]:
    """One record per sample, loaded as the writer asks for it (one image in memory at a time)."""
    for sample in samples:
        try:
            yield sample_record(sample, types)
        except (RowError, OSError, ValueError) as e:
            yield RowProblem(f"{sample.image} + {sample.mask}", str(e), sample.split, sample.sample_id)


def _described(problem: RowProblem) -> str:
    """A row's problem once: its reason alone when that names the file, else with its files and sample."""
    return problem.reason if any(f in problem.reason for f in problem.source.split(" + ")) else str(problem)


def ingest_folder(folder: Path, store: ShardStore, name: str, class_name: str | None = None, seed: int = 0,
                  val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION,
                  progress: bool = True) -> tuple[Manifest, IngestReport]:
    """Write the folder's rows as dataset ``name`` (shards, content hashes, manifest last) with the
    writer every reader uses (``ShardStore.write_dataset``), or raise FolderError listing every
    problem: nothing is written then, and a previous version of the dataset stays as it was."""
    check_name(name)
    samples, types = scan_folder(folder, class_name, seed, val_fraction, test_fraction)
    report = IngestReport(name, str(folder))
    meter = Meter(f"ingesting {name}") if progress else None
    content = ContentIndex(name)
    # family None: the prompts are rendered here, not re-read from their text by rows.record_row.
    rows = shard_rows(folder_records(samples, types), name, None, report, strict=False, progress=meter,
                      content=content)

    def all_or_nothing() -> Iterator[dict]:
        yield from rows
        if report.quarantined:  # raised inside the write: the writer removes what it wrote
            raise FolderError(folder, [_described(p) for p in report.quarantined])

    def finish(version: str) -> dict:
        return {"content": write_index(store, content, version)}

    dataset_dir = f"{store.path}/{name}"
    existed = store.fs.get_file_info(dataset_dir).type != pafs.FileType.NotFound
    try:
        manifest = store.write_dataset(name, all_or_nothing(), types, prompt_family=FAMILY, finish=finish)
    except FolderError:
        if not existed:  # the writer removed its files; its folder goes too
            store.fs.delete_dir(dataset_dir)
        raise
    if meter:
        meter.print(final=True)
    return manifest, report
