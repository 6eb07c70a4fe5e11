"""Reader of the study's released layout: ``data/<name>/{anns/<split>.json, images/, masks/}``.

Each ``anns/<split>.json`` is a list of entries with ``img_name``, ``mask_name`` and ``prompts``
(``p0..pN``, each a string or a list of strings); ``bbox``, ``segment_id``, ``cat``, ``sentences``
and any other key may or may not be there. Prompts are kept verbatim (a string becomes a list of
one). Every ``anns/*.json`` is a split named after the file; ``test_only`` puts them all in "test"
(the study evaluated CVC-300, ColonDB and ETIS on every released image).

Files are looked up in ``images/<split>/`` when that folder exists (CAMUS keeps its training and
test patients apart: ``images/train``, ``images/test``, with the same file names), with val falling
back to ``images/train/`` (CAMUS's val patients are training patients), else in ``images/``; the
same for ``masks/``, whose names may hold sub-folders (CAMUS: ``mask_1/patient0001_2CH_ED_gt.png``).
A name is refused, per entry, when it is absolute, holds ``..``, or resolves (symlinks followed)
outside the folder it is looked up in; a symlinked ``images/`` folder itself is the user's choice.

Duplicates: an entry whose image and mask files repeat an earlier entry of the same split is kept,
as released (the study trained and scored on every released row: BKAI train has 800, ISIC train
810), under its own sample id: the first entry's id with ``#<n>`` for its n-th occurrence
(``cju2r11x7sdgx0988o8ule0wl#2``, ``#3``; the next free n should a released name already end so).
Each such record names the id it repeats (``Record.duplicate_of``), and ingest lists them per split
in the manifest's ``duplicates`` and warns. ``drop_duplicates`` (--drop-duplicates) drops them
instead, into the quarantine report. An image file used in two splits (a test image also in train
leaks) is written in both, as released, and listed in the report's notes; --strict fails on it.
Sample ids are the mask's path under ``masks/`` without its extension (``cju2r11x7sdgx0988o8ule0wl``,
``test/mask_1/patient0001_2CH_ED_gt``); a mask file used by two splits gets ``@<split>`` on the later
one (then ``#<n>`` after it for repeats: ``t2@test#2``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from datasets.catalogue import DATASETS
from datasets.ingest.records import Record, RowDropped, RowError, RowNote, RowProblem
from prompts.images import ImageLimitError, open_image, read_image_file
from prompts.metadata import BUSI_CLASS_NAME, CAMUS_STRUCTURES

SPLIT_ORDER = ("train", "val", "test")
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
CAMUS_MASK_FOLDER = re.compile(r"mask_(\d)")
# Grey masks are thresholded at 127 (lossy JPEG masks ring near edges); a "mask" with more than
# this share of mid-grey pixels is an image, not a mask.
MID_GREY = (32, 223)
MAX_MID_GREY_SHARE = 0.05

# Folder names of the released layout (naamiinepal/medvlsm data/<name>) and their prompt families,
# from the study's one dataset table; the study's pooled configs also spell ColonDB as below.
COLONDB_ALIAS = "cvc_colondb_polyp"
FAMILIES = {**{name: d.prompt_family for name, d in DATASETS.items()}, COLONDB_ALIAS: "non_radiology"}
TEST_ONLY = (*(name for name, d in DATASETS.items() if d.test_only), COLONDB_ALIAS)


class LayoutError(Exception):
    """The folder is not a released-layout dataset at all (no anns/ or no annotation file)."""


def annotation_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise LayoutError(f"dataset folder {folder} does not exist")
    anns = folder / "anns"
    files = sorted(anns.glob("*.json")) if anns.is_dir() else []
    if not files:
        raise LayoutError(f"{folder} is not a released-layout dataset: expected {anns}/{{train,val,test}}.json "
                          "(data/<name>/{anns,images,masks})")
    known = {s: i for i, s in enumerate(SPLIT_ORDER)}
    return sorted(files, key=lambda f: (known.get(f.stem, len(known)), f.stem))


def lookup_folder(folder: Path, kind: str, split: str) -> Path:
    """``images/<split>/``, for val ``images/train/``, else ``images/`` (the same for masks)."""
    candidates = [folder / kind / split] + ([folder / kind / "train"] if split == "val" else [])
    return next((c for c in candidates if c.is_dir()), folder / kind)


def safe_path(base: Path, name: str) -> Path:
    """``base/name``, refusing names that are absolute, climb with ``..`` or resolve outside ``base``."""
    if not isinstance(name, str) or not name.strip():
        raise RowError(f"file name {name!r} is not a non-empty string")
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or re.match(r"[A-Za-z]:", name):
        raise RowError(f"file name {name!r} is an absolute path; names must be relative to {base}")
    if ".." in pure.parts:
        raise RowError(f"file name {name!r} escapes the dataset folder ('..')")
    path = base.joinpath(*pure.parts)
    if not path.resolve().is_relative_to(base.resolve()):
        raise RowError(f"file name {name!r} resolves to {path.resolve()}, outside {base} (a symlink out)")
    if not path.is_file():
        raise RowError(f"file {path} not found")
    return path


def load_binary_mask(path: Path) -> np.ndarray:
    """A mask file as a boolean array: 0/255 or 0/1 PNGs as they are, grey JPEGs thresholded at 127."""
    try:
        with open_image(path, f"mask {path}") as image:
            image.load()
            mode, array = image.mode, np.asarray(image)
    except ImageLimitError as e:
        raise RowError(str(e)) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise RowError(f"mask {path} does not decode ({type(e).__name__}: {e})") from None
    if mode == "1":
        return array.astype(bool)
    if mode == "P":
        raise RowError(f"mask {path} is a palette image; expected a single-channel 0/255 mask")
    if array.ndim == 3:
        channels = array[..., :3] if array.shape[2] >= 3 else array[..., :1]
        if not (channels == channels[..., :1]).all():
            raise RowError(f"mask {path} is a colour image (channels differ); expected a binary 0/255 mask")
        array = channels[..., 0]
    values = np.unique(array)
    if np.isin(values, (0, 255)).all() or np.isin(values, (0, 1)).all():
        return array > 0
    lossy = path.suffix.lower() in (".jpg", ".jpeg")
    mid = ((array >= MID_GREY[0]) & (array <= MID_GREY[1])).mean()
    if not lossy or mid > MAX_MID_GREY_SHARE:
        shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
        raise RowError(f"mask {path} is not binary: values {shown}"
                       + (f" ({mid:.0%} mid-grey pixels)" if lossy else "") + "; expected 0/255")
    return array > 127


def verbatim_prompts(prompts: object) -> dict[str, list[str]]:
    if not isinstance(prompts, dict) or not prompts:
        raise RowError(f"'prompts' is {type(prompts).__name__}; expected an object of p0..pN")
    kept = {}
    for key, value in prompts.items():
        if isinstance(value, str):
            kept[key] = [value]
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            kept[key] = list(value)
        else:
            raise RowError(f"'prompts.{key}' is {value!r}; expected a string or a non-empty list of strings")
    return kept


def class_name_of(family: str | None, prompts: dict[str, list[str]], mask_name: str, dataset: str) -> str:
    """CAMUS: the structure its mask folder names; BUSI: tumor; else P1 when it is the bare class."""
    if family == "camus":
        for part in PurePosixPath(mask_name).parts:
            match = CAMUS_MASK_FOLDER.fullmatch(part)
            if match and match.group(1) in CAMUS_STRUCTURES:
                return CAMUS_STRUCTURES[match.group(1)]
    if family == "busi":
        return BUSI_CLASS_NAME
    p1 = prompts.get("p1", [])
    if len(p1) == 1 and p1[0].strip():
        return p1[0].removesuffix(" in a chest Xray.")
    return dataset


def entry_metadata(entry: dict) -> dict[str, str]:
    metadata = {"img_name": entry["img_name"], "mask_name": entry["mask_name"]}
    if isinstance(entry.get("bbox"), list):
        metadata["bbox"] = ",".join(str(v) for v in entry["bbox"])
    if "segment_id" in entry:
        metadata["segment_id"] = str(entry["segment_id"])
    return metadata


def _image_loader(path: Path):
    def load() -> bytes:  # over the size limit of prompts.images: refused before it is read
        try:
            return read_image_file(path)
        except ImageLimitError as e:
            raise RowError(f"image {e}") from None
        except OSError as e:
            raise RowError(f"image {path} cannot be read ({e.strerror or e})") from None
    return load


@dataclass
class _FirstUse:
    """The first entry of a split using an (image, mask) pair, and how often the pair came so far."""

    source: str
    sample_id: str
    occurrences: int = 1


def repeat_id(first_id: str, occurrence: int, used: set[str]) -> str:
    """``<first_id>#<occurrence>``, or the next free number should that id be taken already."""
    while f"{first_id}#{occurrence}" in used:
        occurrence += 1
    return f"{first_id}#{occurrence}"


def medvlsm_records(folder: Path, dataset: str, family: str | None = None, class_name: str | None = None,
                    test_only: bool = False, drop_duplicates: bool = False) -> Iterator[Record | RowProblem]:
    """Records of every annotation file of a released-layout dataset folder, in split order."""
    folder = Path(folder)
    image_splits: dict[Path, tuple[str, str]] = {}  # image file -> (split, source) of its first use
    mask_ids: dict[Path, str] = {}
    used_ids: set[str] = set()
    masks_root = folder / "masks"
    seen: dict[str, dict[tuple[Path, Path], _FirstUse]] = {}  # split -> (image, mask) -> its first use
    for anns in annotation_files(folder):
        split = "test" if test_only else anns.stem
        file_label = f"anns/{anns.name}"
        if not SPLIT_NAME.fullmatch(anns.stem):
            yield RowProblem(file_label, f"split name {anns.stem!r} is not a plain name (letters, digits, _ -)")
            continue
        try:
            entries = json.loads(anns.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            yield RowProblem(file_label, f"not valid JSON ({e}); none of its entries were read", split)
            continue
        if not isinstance(entries, list):
            yield RowProblem(file_label, f"top level is {type(entries).__name__}; expected a list of entries", split)
            continue
        images_dir = lookup_folder(folder, "images", anns.stem)
        masks_dir = lookup_folder(folder, "masks", anns.stem)
        seen_here = seen.setdefault(split, {})  # per split: --test-only pools several files into one
        for i, entry in enumerate(entries):
            source = f"{file_label} entry {i}"
            if not isinstance(entry, dict):
                yield RowProblem(source, f"entry is {type(entry).__name__}; expected an object", split)
                continue
            missing = [k for k in ("img_name", "mask_name", "prompts") if k not in entry]
            if missing:
                yield RowProblem(source, f"missing field(s) {', '.join(missing)}", split)
                continue
            source = f"{source} ({entry['img_name']!r})"
            try:
                image = safe_path(images_dir, entry["img_name"])
                mask = safe_path(masks_dir, entry["mask_name"])
                prompts = verbatim_prompts(entry["prompts"])
            except RowError as e:
                yield RowProblem(source, str(e), split)
                continue
            first = seen_here.get((image, mask))
            if first is not None and drop_duplicates:
                yield RowDropped(source, f"duplicate of {first.source} ({first.sample_id}): same image and mask "
                                         f"in split {split!r}, dropped (--drop-duplicates)", split)
                continue
            if first is None:
                sample_id = _first_id(mask, masks_root, mask_ids, used_ids, split)
                seen_here[(image, mask)] = _FirstUse(source, sample_id)
            else:
                first.occurrences += 1
                sample_id = repeat_id(first.sample_id, first.occurrences, used_ids)
            used_ids.add(sample_id)
            if image in image_splits and image_splits[image][0] != split:
                yield RowNote(source, f"image {image.relative_to(folder)} is also in split "
                                      f"{image_splits[image][0]!r} ({image_splits[image][1]}): kept in both",
                              split, sample_id)
            image_splits.setdefault(image, (split, source))
            yield Record(
                sample_id=sample_id, split=split, source=f"{source}: {image} + {mask}",
                load_image=_image_loader(image), load_mask=lambda mask=mask: load_binary_mask(mask),
                class_name=class_name or class_name_of(family, prompts, entry["mask_name"], dataset),
                metadata={**entry_metadata(entry), "anns": anns.name}, prompts=prompts,
                duplicate_of=first.sample_id if first else None,
            )


def _first_id(mask: Path, masks_root: Path, mask_ids: dict[Path, str], used_ids: set[str], split: str) -> str:
    """The mask's path under masks/ without extension; ``@<split>`` when an earlier split used it."""
    sample_id = mask_ids.get(mask)
    if sample_id is None:
        relative = mask.relative_to(masks_root) if mask.is_relative_to(masks_root) else Path(mask.name)
        sample_id = relative.with_suffix("").as_posix()
        mask_ids[mask] = sample_id
    return f"{sample_id}@{split}" if sample_id in used_ids else sample_id
