"""The six endoscopy (polyp) distributions: one image folder next to one mask folder, one row per image.

Accepted layouts (folder names matched without regard to case, up to four levels below the folder
given; a folder holding nothing but one sub-folder is looked through, as in ``train/train``):

- Kvasir-SEG: ``images/*.jpg`` and ``masks/*.jpg`` with equal names. Masks are lossy JPEG: the
  foreground is grey > 127, so JPEG ringing around the edges is dropped.
- CVC-ClinicDB: ``Original/`` and ``Ground Truth/`` (or ``images/`` and ``masks/``), TIFF or PNG,
  equal names (``1.tif``). The Kaggle copy holds ``PNG/`` and ``TIF/`` versions; PNG is taken.
- BKAI-IGH NeoPolyp(-Small): ``train/`` and ``train_gt/`` (each possibly holding one more folder of
  the same name), JPEG images and JPEG colour-coded masks: red neoplastic, green non-neoplastic. The
  foreground is R > 127 or G > 127, never a grey threshold (pure red has grey 76 and would vanish).
  Only the training release has masks, so it is the whole dataset.
- CVC-300, CVC-ColonDB, ETIS-LaribPolypDB: ``images/`` and ``masks/`` as in the polyp benchmarks'
  test sets (``TestDataset/<name>/``), or the original folders (``Original/``, ``Ground Truth/``);
  ETIS's original masks are named ``p<N>.tif`` for image ``<N>.tif``. Test-only, as in the study.

Masks are 0/255 (or 0/1) grey; one coloured where binary is expected becomes a row error.
Splits: Kvasir, ClinicDB and BKAI seeded 80/10/10 over images (1000 -> 800/100/100, 612 ->
490/61/61); the other three are all test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from datasets.ingest.raw.common import (
    RawDataset,
    RawItem,
    binary_mask,
    find_sibling_folders,
    image_files,
    pair_by_name,
    paired_records,
    red_or_green_mask,
    split_pairs,
)

CLASS_NAME = "polyp"
MASK_FOLDERS = ("masks", "mask", "ground truth", "groundtruth", "gt")


def _reader(image_patterns: Sequence[str], mask_patterns: Sequence[str], test_only: bool,
            read_mask: Callable[[Path], np.ndarray] = binary_mask,
            mask_stems: Callable[[str], Sequence[str]] = lambda stem: (stem,)):
    def records(folder: Path, seed: int) -> Iterator[RawItem]:
        images, masks = find_sibling_folders(folder, image_patterns, mask_patterns)
        pairs = list(pair_by_name(image_files(images), image_files(masks), mask_stems))
        split_of = (lambda sample_id: "test") if test_only else split_pairs(pairs, seed)
        yield from paired_records(pairs, split_of, CLASS_NAME, read_mask)

    return records


def _dataset(name: str, layout: str, image_patterns: Sequence[str], mask_patterns: Sequence[str] = MASK_FOLDERS,
             test_only: bool = False, **options) -> RawDataset:
    return RawDataset(name, "non_radiology", CLASS_NAME,
                      _reader(image_patterns, mask_patterns, test_only, **options), layout)


POLYP_DATASETS = (
    _dataset("kvasir_polyp", "Kvasir-SEG: images/*.jpg + masks/*.jpg", ("images",), ("masks",)),
    _dataset("clinicdb_polyp", "CVC-ClinicDB: Original/ + Ground Truth/ (or images/ + masks/)",
             ("original", "images")),
    _dataset("bkai_polyp", "BKAI-IGH NeoPolyp: train/ + train_gt/ (red/green masks)", ("train",), ("train_gt",),
             read_mask=red_or_green_mask),
    _dataset("cvc300_polyp", "CVC-300: images/ + masks/ (test only)", ("images", "original"), test_only=True),
    _dataset("colondb_polyp", "CVC-ColonDB: images/ + masks/ (test only)", ("images", "original"), test_only=True),
    _dataset("etis_polyp", "ETIS-LaribPolypDB: images/ + masks/, or ETIS-LaribPolypDB/ + Ground Truth/p<N>.tif"
             " (test only)", ("images", "original", "etis-laribpolypdb"), test_only=True,
             mask_stems=lambda stem: (stem, f"p{stem}")),
)
