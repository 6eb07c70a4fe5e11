"""MIMIC-CXR lung masks (Chen et al., 2022) with the free-text reports of MIMIC-CXR: one row per image.

Neither source fixes a layout that joins the two, so this reader accepts one simple layout, which
a researcher builds from the downloads with a few lines of their own:

    images/<dicom_id>.jpg   (or .png)   the frontal chest X-ray (MIMIC-CXR-JPG)
    masks/<dicom_id>.png                the lung mask, 0/255 (both lungs in one mask)
    reports.csv                         columns dicom_id, report; optional subject_id, study_id

The report is kept verbatim in the metadata key ``report`` (the study's only prompt, P1); the
class is "lungs". An image without a mask or a report, an empty report and a mask without an
image are problems. Splits: seeded 80/10/10 by patient (subject_id) when the CSV gives it, by
image otherwise (1141 images: about 913/114/114).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from datasets.ingest.raw.common import (
    LayoutError,
    Pair,
    RawDataset,
    RawItem,
    find_sibling_folders,
    image_files,
    pair_by_name,
    paired_records,
    require_folder,
    seeded_split,
)
from datasets.ingest.records import RowProblem

CLASS_NAME = "lungs"
REPORTS = "reports.csv"


def _reports(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"dicom_id", "report"} - set(reader.fieldnames or [])
        if missing:
            raise LayoutError(f"{path}: no column {', '.join(sorted(missing))} (columns: dicom_id, report,"
                              " optional subject_id, study_id)")
        return {row["dicom_id"].strip(): row for row in reader}


def mimic_records(folder: Path, seed: int) -> Iterator[RawItem]:
    folder = require_folder(folder)
    reports_path = folder / REPORTS
    if not reports_path.is_file():
        raise LayoutError(f"{folder}: no {REPORTS} (columns dicom_id, report) beside images/ and masks/")
    reports = _reports(reports_path)
    images, masks = find_sibling_folders(folder, ("images",), ("masks",))
    pairs = []
    for item in pair_by_name(image_files(images, (".jpg", ".jpeg", ".png")), image_files(masks, (".png",))):
        if isinstance(item, Pair):
            report = reports.get(item.sample_id, {}).get("report") or ""
            if not report.strip():
                reason = "report is empty" if item.sample_id in reports else "no report for this dicom_id"
                item = RowProblem(f"{reports_path} ({item.sample_id})", reason, sample_id=item.sample_id)
        pairs.append(item)
    formed = [p for p in pairs if isinstance(p, Pair)]

    def patient(sample_id: str) -> str:
        return (reports[sample_id].get("subject_id") or "").strip() or sample_id

    split = seeded_split((patient(p.sample_id) for p in formed), seed, 0.1, 0.1)

    def metadata(pair: Pair) -> dict[str, str]:
        row = reports[pair.sample_id]
        extra = {key: row[key].strip() for key in ("subject_id", "study_id") if (row.get(key) or "").strip()}
        return {"report": row["report"], **extra}

    yield from paired_records(pairs, lambda sample_id: split[patient(sample_id)], CLASS_NAME, metadata=metadata)


MIMIC = RawDataset("mimic_cxr_lungs", "mimic", CLASS_NAME, mimic_records,
                   "MIMIC-CXR lungs: images/<dicom_id>.jpg + masks/<dicom_id>.png + reports.csv (dicom_id, report)")
