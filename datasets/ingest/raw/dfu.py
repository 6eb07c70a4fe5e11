"""DFU 2022 (Diabetic Foot Ulcer Challenge 2022): the training release, the only one with masks.

Accepted layout, names matched without regard to case, up to four levels below the folder given:

    DFUC2022_train_release/DFUC2022_train_images/100001.jpg
    DFUC2022_train_release/DFUC2022_train_masks/100001.png

that is, a folder whose name ends in ``images`` next to one whose name ends in ``masks``; masks are
0/255 PNGs named as their images. Splits: seeded 80/10/10 over the 2000 images (1600/200/200), as
the study's counts show.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from datasets.ingest.raw.common import (
    RawDataset,
    RawItem,
    find_sibling_folders,
    image_files,
    pair_by_name,
    paired_records,
    split_pairs,
)

CLASS_NAME = "foot ulcer"


def dfu_records(folder: Path, seed: int) -> Iterator[RawItem]:
    images, masks = find_sibling_folders(folder, ("*images",), ("*masks",))
    pairs = list(pair_by_name(image_files(images), image_files(masks)))
    yield from paired_records(pairs, split_pairs(pairs, seed), CLASS_NAME)


DFU = RawDataset("dfu", "non_radiology", CLASS_NAME, dfu_records,
                 "DFU 2022: *_train_images/ + *_train_masks/ (any folders named *images and *masks)")
