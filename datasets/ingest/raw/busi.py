"""BUSI (Breast Ultrasound Images): benign and malignant tumours, and normal images.

Accepted layout (the Dataset_BUSI_with_GT archive), class folders up to four levels below the folder
given, names matched without regard to case:

    benign/benign (1).png      benign/benign (1)_mask.png      benign/benign (1)_mask_1.png
    malignant/malignant (1).png                                   malignant/malignant (1)_mask.png
    normal/normal (1).png      normal/normal (1)_mask.png (empty)

One row per image; its mask is the union of all its ``_mask*.png`` files (some tumours are drawn
in two or three). A normal image's mask is empty, and a normal image without a mask file gets an
empty one; a tumour image without one is a problem. Metadata ``tumor_type``: the class folder.
Splits: seeded 80/10/10 over the 780 images (624/78/78).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from datasets.ingest.raw.common import (
    LayoutError,
    RawDataset,
    RawItem,
    file_bytes,
    mask_loader,
    open_image,
    require_folder,
    seeded_split,
    subfolders,
)
from datasets.ingest.records import Record, RowProblem
from prompts.metadata import BUSI_CLASS_NAME, BUSI_TUMOR_TYPES

MASK_NAME = re.compile(r"^(?P<image>.+)_mask(?:_\d+)?$", re.IGNORECASE)


def _class_folders(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for candidate in subfolders(folder):
        name = candidate.name.lower()
        if candidate != folder and name in BUSI_TUMOR_TYPES and name not in found:
            found[name] = candidate
    if not found:
        raise LayoutError(f"{folder}: no folder named {', '.join(BUSI_TUMOR_TYPES)} (the BUSI archive's class"
                          " folders)")
    return found


def _empty_like(image: Path):
    def load() -> np.ndarray:
        return np.zeros(open_image(image).shape[:2], dtype=bool)

    return load


def busi_records(folder: Path, seed: int) -> Iterator[RawItem]:
    folder = require_folder(folder)
    entries: list[tuple[str, Path, list[Path]]] = []
    for tumor_type, class_folder in sorted(_class_folders(folder).items()):
        files = sorted(p for p in class_folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
        images = {p.stem: p for p in files if not MASK_NAME.match(p.stem)}
        masks: dict[str, list[Path]] = {}
        for path in files:
            match = MASK_NAME.match(path.stem)
            if match:
                masks.setdefault(match["image"], []).append(path)
        for stem in sorted(set(masks) - set(images)):
            for path in masks[stem]:
                yield RowProblem(str(path), f"mask without an image (no {stem}.png in {class_folder})")
        for stem, image in sorted(images.items()):
            if stem not in masks and tumor_type != "normal":
                yield RowProblem(str(image), f"no mask for this {tumor_type} image (looked for {stem}_mask*.png)",
                                 sample_id=stem)
                continue
            entries.append((tumor_type, image, masks.get(stem, [])))
    split = seeded_split((image.stem for _, image, _ in entries), seed, 0.1, 0.1)
    for tumor_type, image, masks in entries:
        yield Record(
            sample_id=image.stem,
            split=split[image.stem],
            source=" + ".join(str(p) for p in (image, *masks)),
            load_image=file_bytes(image),
            load_mask=mask_loader(masks) if masks else _empty_like(image),
            class_name=BUSI_CLASS_NAME,
            metadata={"tumor_type": tumor_type},
        )


BUSI = RawDataset("busi", "busi", BUSI_CLASS_NAME, busi_records,
                  "BUSI: benign/, malignant/, normal/ with '<name>.png' and '<name>_mask*.png'")
