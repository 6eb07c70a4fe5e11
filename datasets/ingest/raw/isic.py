"""ISIC 2016 (challenge part 1, lesion segmentation): the official training and test sets.

Accepted layout: the four folders of the challenge's archives anywhere up to four levels below the
folder given, names matched without regard to case:

    ISBI2016_ISIC_Part1_Training_Data/ISIC_0000000.jpg
    ISBI2016_ISIC_Part1_Training_GroundTruth/ISIC_0000000_Segmentation.png
    ISBI2016_ISIC_Part1_Test_Data/ISIC_0000003.jpg
    ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png

JPEG images (up to ~3800 px wide) and 0/255 PNG masks. Splits as the study made them: the official
test set (379) is the test split; the validation split is carved from the official training set
(900), seeded, one in ten (810/90).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from datasets.ingest.raw.common import (
    LayoutError,
    RawDataset,
    RawItem,
    content_folder,
    image_files,
    matches,
    pair_by_name,
    paired_records,
    require_folder,
    split_pairs,
    subfolders,
)

CLASS_NAME = "skin melanoma"  # the study's class word for ISIC (paper, Table 5)
FOLDERS = {
    ("train", "images"): ("*training_data", "*training_input"),
    ("train", "masks"): ("*training_groundtruth",),
    ("test", "images"): ("*test_data", "*test_input"),
    ("test", "masks"): ("*test_groundtruth",),
}


def _find(folder: Path, patterns: Sequence[str]) -> Path:
    for candidate in subfolders(folder):
        if candidate != folder and matches(candidate.name, patterns):
            return content_folder(candidate)
    raise LayoutError(f"{folder}: no folder named like {' or '.join(patterns)} (ISIC 2016 part 1 archives)")


def isic_records(folder: Path, seed: int) -> Iterator[RawItem]:
    folder = require_folder(folder)
    found = {key: _find(folder, patterns) for key, patterns in FOLDERS.items()}
    for part in ("train", "test"):
        pairs = list(pair_by_name(image_files(found[part, "images"], (".jpg", ".jpeg")),
                                  image_files(found[part, "masks"], (".png",)),
                                  lambda stem: (f"{stem}_Segmentation",)))
        split_of = split_pairs(pairs, seed, val_fraction=0.1, test_fraction=0.0) if part == "train" else (
            lambda sample_id: "test")
        yield from paired_records(pairs, split_of, CLASS_NAME)


ISIC = RawDataset("isic", "non_radiology", CLASS_NAME, isic_records,
                  "ISIC 2016 part 1: *_Training_Data/ + *_Training_GroundTruth/ + *_Test_Data/ + *_Test_GroundTruth/")
