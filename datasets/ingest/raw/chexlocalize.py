"""CheXlocalize (chest X-rays, CheXpert validation and test images): one row per (image, positive finding).

Accepted layout (the Stanford AIMI release), anywhere below the folder given:

    gt_segmentations_val.json, gt_segmentations_test.json   COCO RLE masks, per image and finding
    gt_annotations_val.json,   gt_annotations_test.json     radiologists' polygons, per image and finding
    CheXpert/val/patient64541/study1/view1_frontal.jpg       the images (any folders above
    CheXpert/test/patient64741/study1/view1_frontal.jpg       <patient>/<study>/<view>.jpg)
    CheXpert/val_labels.csv, CheXpert/test_labels.csv        optional: CheXpert labels (Path + 14 columns)

Per release part (val, test) the RLE masks are used when their file is there, else the polygons are
rasterised. Image ids are ``<patient>_<study>_<view>``; the view (frontal, lateral) is the id's
last word. A finding is positive for an image when its mask is not empty; each positive finding
gives one row, named by its finding ("Airspace Opacity", ...). Metadata: finding, view,
positive_findings (the image's CheXpert labels that are 1 in the labels CSV, or, without one, its
findings with a non-empty mask, "Airspace Opacity" written as CheXpert's "Lung Opacity"), patient.

Splits: the study pooled the released images and split them by patient, seeded, 60/20/20 (its
script's default ratios; 1279/446/452 rows) rather than keeping the release's val and test.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from datasets.ingest.raw.common import LayoutError, RawDataset, RawItem, file_bytes, require_folder, seeded_split
from datasets.ingest.records import Record, RowError, RowProblem
from prompts.images import ImageLimitError, check_pixels
from prompts.metadata import CHEXLOCALIZE_FINDINGS, CHEXLOCALIZE_VIEWS, CHEXPERT_OBSERVATIONS

PARTS = ("val", "test")
# CheXlocalize names CheXpert's "Lung Opacity" label "Airspace Opacity"; the rest agree.
CHEXPERT_NAME = {"Airspace Opacity": "Lung Opacity"}


# --- COCO RLE and polygons -----------------------------------------------------------------------


def rle_counts(counts: str) -> list[int]:
    """Run lengths from COCO's compressed RLE string: 5-bit groups (offset by 48), bit 0x20 means
    "more groups follow", 0x10 in the last group the sign; from the fourth run on each value is a
    difference from the run two before (pycocotools' rleFrString)."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("RLE string ends inside a run length")
            group = ord(counts[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"RLE string holds {counts[position]!r}, outside COCO's alphabet")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def decode_rle(rle: Mapping) -> np.ndarray:
    """A COCO RLE ``{"size": [h, w], "counts": str | list}`` as a boolean (h, w) mask.

    Runs alternate background and foreground, starting with background, over the pixels in
    column-major order. A size over the pixel limit of ``prompts.images`` is an ImageLimitError,
    before the mask is allocated."""
    height, width = (int(v) for v in rle["size"])
    check_pixels(width, height, f"RLE size {height}x{width}")
    counts = rle["counts"]
    runs = rle_counts(counts) if isinstance(counts, str) else [int(v) for v in counts]
    if any(run < 0 for run in runs) or sum(runs) != height * width:
        raise ValueError(f"RLE runs sum to {sum(runs)} with negatives {any(r < 0 for r in runs)}; a {height}x{width}"
                         f" mask needs {height * width}")
    values = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    return values.reshape(width, height).T


def rle_is_empty(rle: Mapping) -> bool:
    counts = rle.get("counts", "")
    runs = rle_counts(counts) if isinstance(counts, str) else list(counts)
    return not any(runs[1::2])


def rasterise_polygons(polygons: list, height: int, width: int) -> np.ndarray:
    """Polygons ``[[[x, y], ...], ...]`` (pixel coordinates) filled, edges included. A size over the
    pixel limit of ``prompts.images`` is an ImageLimitError, before the canvas is allocated."""
    check_pixels(width, height, f"img_size {height}x{width}")
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        points = [(float(x), float(y)) for x, y in polygon]
        if len(points) >= 3:
            draw.polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _polygons_empty(polygons) -> bool:
    return not any(len(polygon) >= 3 for polygon in polygons or [])


# --- the release ---------------------------------------------------------------------------------


def _find_file(folder: Path, name: str) -> Path | None:
    return next(iter(sorted(folder.rglob(name), key=lambda p: (len(p.parts), p))), None)


def _image_id(path: Path) -> str:
    return "_".join((path.parent.parent.name, path.parent.name, path.stem))


def _labels(folder: Path) -> dict[str, str]:
    """Image id -> its positive CheXpert labels (comma-joined), from every labels CSV found."""
    positives: dict[str, str] = {}
    for path in sorted(folder.rglob("*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "Path" not in reader.fieldnames:
                continue
            for row in reader:
                image_id = _image_id(Path(row["Path"]))
                positives[image_id] = ", ".join(
                    name for name in CHEXPERT_OBSERVATIONS if (row.get(name) or "").strip() in ("1", "1.0"))
    return positives


def _load_json(path: Path) -> dict:
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        raise LayoutError(f"{path}: cannot read it as JSON ({error})") from None
    if not isinstance(data, dict):
        raise LayoutError(f"{path}: a JSON object keyed by image id was expected")
    return data


def _rle_loader(path: Path, image_id: str, finding: str, rle: Mapping):
    def load() -> np.ndarray:
        try:
            return decode_rle(rle)
        except ImageLimitError as error:
            raise RowError(f"{path} entry {image_id}/{finding}: {error}") from None
        except (KeyError, TypeError, ValueError) as error:
            raise RowError(f"{path} entry {image_id}/{finding}: bad RLE ({error})") from None

    return load


def _polygon_loader(path: Path, image_id: str, finding: str, polygons: list, size):
    def load() -> np.ndarray:
        try:
            height, width = (int(v) for v in size)
            return rasterise_polygons(polygons, height, width)
        except ImageLimitError as error:
            raise RowError(f"{path} entry {image_id}/{finding}: {error}") from None
        except (TypeError, ValueError) as error:
            raise RowError(f"{path} entry {image_id}/{finding}: bad polygons or img_size ({error})") from None

    return load


def _positive_rows(part: str, folder: Path) -> Iterator[tuple[str, str, Path, object] | RowProblem]:
    """(image id, finding, annotation file, mask loader) per positive finding of one release part."""
    segmentations = _find_file(folder, f"gt_segmentations_{part}.json")
    annotations = _find_file(folder, f"gt_annotations_{part}.json")
    path = segmentations or annotations
    if path is None:
        return
    for image_id, entry in sorted(_load_json(path).items()):
        if not isinstance(entry, dict):
            yield RowProblem(f"{path} entry {image_id}", "expected an object of findings")
            continue
        for finding, value in sorted(entry.items()):
            if finding == "img_size":
                continue
            where = f"{path} entry {image_id}/{finding}"
            if finding not in CHEXLOCALIZE_FINDINGS:
                yield RowProblem(where, f"unknown finding (known: {', '.join(CHEXLOCALIZE_FINDINGS)})")
                continue
            try:
                if segmentations:
                    if rle_is_empty(value):
                        continue
                    loader = _rle_loader(path, image_id, finding, value)
                else:
                    if _polygons_empty(value):
                        continue
                    loader = _polygon_loader(path, image_id, finding, value, entry.get("img_size"))
            except (AttributeError, TypeError, ValueError) as error:
                yield RowProblem(where, f"unreadable annotation ({error})")
                continue
            yield image_id, finding, path, loader


def chexlocalize_records(folder: Path, seed: int) -> Iterator[RawItem]:
    folder = require_folder(folder)
    rows = []
    for part in PARTS:
        for item in _positive_rows(part, folder):
            if isinstance(item, RowProblem):
                yield item
            else:
                rows.append(item)
    if not rows and not any(_find_file(folder, f"gt_*_{part}.json") for part in PARTS):
        raise LayoutError(f"{folder}: no gt_segmentations_{{val,test}}.json or gt_annotations_{{val,test}}.json")
    images = {_image_id(p): p for p in sorted(folder.rglob("*.jpg")) if p.stem.startswith("view")}
    labels = _labels(folder)
    masked: dict[str, list[str]] = {}
    for image_id, finding, _, _ in rows:
        masked.setdefault(image_id, []).append(CHEXPERT_NAME.get(finding, finding))

    usable, seen = [], set()
    for image_id, finding, path, loader in rows:
        view = image_id.rsplit("_", 1)[-1]
        sample_id = f"{image_id}_{finding.lower().replace(' ', '_')}"
        if sample_id in seen:
            yield RowProblem(f"{path} entry {image_id}/{finding}", "image and finding already annotated in the"
                             " other release part; only the first is read", sample_id=sample_id)
        elif image_id not in images:
            yield RowProblem(f"{path} entry {image_id}", f"no image {'/'.join(image_id.split('_', 2))}.jpg"
                             f" below {folder}", sample_id=sample_id)
        elif view not in CHEXLOCALIZE_VIEWS:
            yield RowProblem(f"{path} entry {image_id}", f"view {view!r} is not one of {CHEXLOCALIZE_VIEWS}",
                             sample_id=sample_id)
        else:
            seen.add(sample_id)
            usable.append((image_id, finding, path, loader, view, sample_id))

    split = seeded_split((image_id.split("_")[0] for image_id, *_ in usable), seed, 0.2, 0.2)
    for image_id, finding, path, loader, view, sample_id in usable:
        patient = image_id.split("_")[0]
        positives = labels.get(image_id)
        if positives is None:
            positives = ", ".join(n for n in CHEXPERT_OBSERVATIONS if n in masked[image_id])
        yield Record(
            sample_id=sample_id,
            split=split[patient],
            source=f"{images[image_id]} + {path} ({finding})",
            load_image=file_bytes(images[image_id]),
            load_mask=loader,
            class_name=finding,
            metadata={"finding": finding, "view": view, "positive_findings": positives, "patient": patient},
        )


CHEXLOCALIZE = RawDataset(
    "chexlocalize", "chexlocalize", " | ".join(CHEXLOCALIZE_FINDINGS), chexlocalize_records,
    "CheXlocalize: gt_segmentations_{val,test}.json (RLE) or gt_annotations_{val,test}.json (polygons)"
    " + <patient>/<study>/view<N>_<frontal|lateral>.jpg [+ *_labels.csv]",
)
