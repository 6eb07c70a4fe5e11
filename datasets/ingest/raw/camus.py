"""CAMUS (echocardiography, two- and four-chamber views): one row per (frame, structure).

Accepted layout: the files of either public release anywhere below the folder given, one folder per
patient (the folder names do not matter):

    patient0001/patient0001_2CH_ED.mhd + .raw      (2019 release: MetaImage)
    patient0001/patient0001_2CH_ED_gt.mhd + .raw
    patient0001/Info_2CH.cfg, Info_4CH.cfg
or
    patient0001/patient0001_2CH_ED.nii.gz           (2023 release: NIfTI)
    patient0001/patient0001_2CH_ED_gt.nii.gz

Frames are ``<patient>_<2CH|4CH>_<ED|ES>``; sequences (``_sequence``, ``_half_sequence``) are not
read. A ``_gt`` label map holds 1 LV cavity, 2 myocardium, 3 left atrium (0 background): each frame
gives three rows, one binary mask per label. ``Info_<view>.cfg`` (``Key: Value`` lines) gives Sex,
Age and ImageQuality. Images arrive as arrays and are stored as PNG.

Metadata (the codes prompts.metadata.camus_attributes reads): label (1, 2, 3), view (2CH, 4CH),
phase (ED, ES), sex (F, M), age, image_quality (Good, Medium, Poor), and patient.
Splits: by patient, seeded 80/10/10 (500 patients: 400/50/50, i.e. 4800/600/600 rows), as the
study split CAMUS at the patient level.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np

from datasets.ingest.raw.common import LayoutError, RawDataset, RawItem, png_bytes, require_folder, seeded_split
from datasets.ingest.raw.volumes import read_frame
from datasets.ingest.records import Record, RowError, RowProblem
from prompts.metadata import CAMUS_STRUCTURES

FRAME_NAME = re.compile(r"^(?P<patient>patient\d+)_(?P<view>[24]CH)_(?P<phase>E[DS])(?P<gt>_gt)?"
                        r"\.(?:mhd|nii|nii\.gz)$", re.IGNORECASE)
CFG_KEYS = {"sex": "Sex", "age": "Age", "image_quality": "ImageQuality"}


def read_info(path: Path) -> dict[str, str]:
    """The patient's sex, age and image quality from an ``Info_<view>.cfg``; RowError if absent."""
    try:
        lines = path.read_text(encoding="latin-1").splitlines()
    except OSError as error:
        raise RowError(f"cannot read {path}: {error.strerror or error}") from None
    values = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    missing = [key for key in CFG_KEYS.values() if not values.get(key)]
    if missing:
        raise RowError(f"{path} has no {', '.join(missing)} (needed for the prompts)")
    return {name: values[key] for name, key in CFG_KEYS.items()}


@lru_cache(maxsize=4)  # three rows read the same label map one after another
def label_map(path: Path) -> np.ndarray:
    labels = read_frame(path)
    unknown = sorted(set(np.unique(labels).tolist()) - {0, *map(int, CAMUS_STRUCTURES)})
    if unknown:
        raise RowError(f"{path}: label map holds values {unknown[:5]}; 0-3 were expected")
    return labels


def _structure_mask(path: Path, label: int):
    return lambda: label_map(path) == label


def _frame_png(path: Path):
    return lambda: png_bytes(read_frame(path))


def camus_records(folder: Path, seed: int) -> Iterator[RawItem]:
    folder = require_folder(folder)
    images: dict[str, Path] = {}
    label_maps: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        match = FRAME_NAME.match(path.name)
        if not match or not path.is_file():
            continue
        stem = f"{match['patient'].lower()}_{match['view'].upper()}_{match['phase'].upper()}"
        found = label_maps if match["gt"] else images
        if stem in found:  # the same frame twice (both formats, or two copies of a patient)
            yield RowProblem(str(path), f"frame {stem} also in {found[stem]}; only the first is read",
                             sample_id=stem)
            continue
        found[stem] = path
    if not images and not label_maps:
        raise LayoutError(f"{folder}: no CAMUS frames (patientNNNN_2CH_ED.mhd or .nii.gz) below it")
    for stem in sorted(set(label_maps) - set(images)):
        yield RowProblem(str(label_maps[stem]), "label map without its image")

    frames = []
    for stem, image in sorted(images.items()):
        if stem not in label_maps:
            yield RowProblem(str(image), f"no label map {stem}_gt next to this image", sample_id=stem)
            continue
        patient, view, phase = stem.split("_")
        info = image.parent / f"Info_{view}.cfg"
        try:
            metadata = {"view": view, "phase": phase, **read_info(info), "patient": patient}
        except RowError as error:
            yield RowProblem(str(info), str(error).removeprefix(f"{info} "), sample_id=stem)
            continue
        frames.append((stem, image, label_maps[stem], metadata))

    split = seeded_split((metadata["patient"] for *_, metadata in frames), seed, 0.1, 0.1)
    for stem, image, labels, metadata in frames:
        for label, structure in CAMUS_STRUCTURES.items():
            yield Record(
                sample_id=f"{stem}_{label}",
                split=split[metadata["patient"]],
                source=f"{image} + {labels} (label {label})",
                load_image=_frame_png(image),
                load_mask=_structure_mask(labels, int(label)),
                class_name=structure,
                metadata={**metadata, "label": label},
            )


CAMUS = RawDataset("camus", "camus", "Left ventricular cavity | Myocardium | Left atrium cavity", camus_records,
                   "CAMUS: patientNNNN/patientNNNN_{2CH,4CH}_{ED,ES}[_gt].{mhd+raw,nii.gz} + Info_{2CH,4CH}.cfg")
