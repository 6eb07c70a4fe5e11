"""What every reader of an original public download shares: finding folders, pairing images with
masks, loading masks as the distributions store them, and the study's seeded splits.

Loaders are closures over file paths: nothing is decoded while a folder is scanned, so a scan of a
few thousand files is quick and a broken file costs its own row only (it raises RowError when the
shard writer loads it).
"""

from __future__ import annotations

import fnmatch
import io
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.ingest.records import Record, RowError, RowProblem
from prompts.images import ImageLimitError, read_image_file
from prompts.images import open_image as open_limited

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
SPLITS = ("train", "val", "test")
# How deep below the download folder a reader looks for the folders it knows: archives often
# unpack into one or two extra levels (Kvasir-SEG/Kvasir-SEG/images).
SEARCH_DEPTH = 4
# A grey mask saved as RGB (or as JPEG) has channels within a few levels of each other; a
# colour-coded one has many pixels far apart.
COLOUR_SPREAD = 48
COLOUR_FRACTION = 0.01

RawItem = Record | RowProblem


class LayoutError(OSError):
    """The download folder does not hold the layout a reader accepts; says what it looked for.

    An OSError, like a missing file: the whole dataset stops, where a RowProblem stops one row."""


@dataclass(frozen=True)
class RawDataset:
    """One original distribution: its shard name, prompt family and class, and its reader.

    ``records(folder, seed)`` yields a Record per (image, target structure) and a RowProblem per
    entry it could not form; ``seed`` fixes the seeded splits. ``layout`` says which folder layout
    the reader accepts (shown by the command line).
    """

    name: str
    family: str  # a prompts.templates family
    class_name: str  # CAMUS and CheXlocalize: their classes joined by " | "; each record carries its own
    records: Callable[[Path, int], Iterator[RawItem]]
    layout: str = ""


# --- folders -------------------------------------------------------------------------------------


def matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name.lower(), pattern.lower()) for pattern in patterns)


def subfolders(folder: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Every folder below `folder` (itself included) down to `depth` levels, shallowest first."""
    found, level = [folder], [folder]
    for _ in range(depth):
        level = [child for parent in level for child in sorted(parent.iterdir()) if child.is_dir()]
        found += level
    return found


def require_folder(folder: Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise LayoutError(f"{folder}: not a folder (give the folder the download unpacked into)")
    return folder


def content_folder(folder: Path) -> Path:
    """Descend through folders that hold nothing but one sub-folder (train/train/*.jpeg)."""
    while True:
        entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir():
            folder = entries[0]
        else:
            return folder


def find_sibling_folders(folder: Path, image_patterns: Sequence[str],
                         mask_patterns: Sequence[str]) -> tuple[Path, Path]:
    """The shallowest image folder whose parent also holds a mask folder (names match the glob
    patterns, case-insensitively); raises LayoutError naming both when there is none."""
    folder = require_folder(folder)
    for candidate in subfolders(folder):
        if candidate == folder or not matches(candidate.name, image_patterns):
            continue
        siblings = [s for s in sorted(candidate.parent.iterdir())
                    if s.is_dir() and s != candidate and matches(s.name, mask_patterns)]
        if siblings:
            return content_folder(candidate), content_folder(siblings[0])
    raise LayoutError(
        f"{folder}: found no image folder ({' | '.join(image_patterns)}) next to a mask folder"
        f" ({' | '.join(mask_patterns)}) within {SEARCH_DEPTH} levels"
    )


def image_files(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                  and not p.name.startswith("."))


# --- pairing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    sample_id: str
    image: Path
    masks: tuple[Path, ...]


def pair_by_name(images: Iterable[Path], masks: Iterable[Path],
                 mask_stems: Callable[[str], Sequence[str]] = lambda stem: (stem,)) -> Iterator[Pair | RowProblem]:
    """Each image with the mask whose file stem is one of ``mask_stems(image stem)``.

    An image without a mask and a mask that no image claims each become a RowProblem."""
    by_stem: dict[str, Path] = {}
    for mask in sorted(masks):
        by_stem.setdefault(mask.stem, mask)
    claimed: set[Path] = set()
    seen: dict[str, Path] = {}
    for image in sorted(images):
        if image.stem in seen:  # 12.png and 12.tif would make one sample id twice
            yield RowProblem(str(image), f"another image has the same name: {seen[image.stem].name}",
                             sample_id=image.stem)
            continue
        seen[image.stem] = image
        wanted = list(mask_stems(image.stem))
        found = next((by_stem[s] for s in wanted if s in by_stem), None)
        if found is None:
            yield RowProblem(str(image), f"no mask for this image (looked for {' or '.join(wanted)}"
                             f" with any image suffix)", sample_id=image.stem)
            continue
        claimed.add(found)
        yield Pair(image.stem, image, (found,))
    for mask in sorted(set(by_stem.values()) - claimed):
        yield RowProblem(str(mask), "mask without an image")


# --- loading -------------------------------------------------------------------------------------


def file_bytes(path: Path) -> Callable[[], bytes]:
    """A loader of a file's bytes as they are (images keep their original encoding); a file over the
    size limit of ``prompts.images`` is refused (a RowError) before it is read."""

    def load() -> bytes:
        try:
            return read_image_file(path)
        except ImageLimitError as error:
            raise RowError(str(error)) from None
        except OSError as error:
            raise RowError(f"cannot read {path}: {error.strerror or error}") from None

    return load


def open_image(path: Path) -> np.ndarray:
    """A mask or image file's pixels; RowError naming the file if it does not decode or is over the
    limits of ``prompts.images`` (pixels, file size)."""
    try:
        with open_limited(path, str(path)) as image:
            image.load()
            if image.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "1"):
                image = image.convert("RGB" if image.mode != "1" else "L")
            return np.asarray(image)
    except ImageLimitError as error:
        raise RowError(str(error)) from None
    except (OSError, ValueError, SyntaxError) as error:  # PIL raises all three on bad files
        raise RowError(f"cannot decode {path}: {error}") from None


def threshold(values: np.ndarray) -> np.ndarray:
    """Foreground of a single-channel mask: 0/1 masks above 0, 8-bit masks above 127 (JPEG noise
    stays below), wider integer masks above half their range."""
    if values.dtype == bool:
        return values
    top = values.max(initial=0)
    if top <= 1:
        return values > 0
    if values.dtype == np.uint8:
        return values > 127
    if np.issubdtype(values.dtype, np.integer):
        return values > np.iinfo(values.dtype).max // 2
    return values > 0.5 * top


def binary_mask(path: Path) -> np.ndarray:
    """A grey mask (0/255, 0/1, or lossy JPEG of those) as booleans; a colour mask is an error."""
    values = open_image(path)
    if values.ndim == 3:
        rgb = values[..., :3].astype(np.int16)
        spread = rgb.max(axis=-1) - rgb.min(axis=-1)
        coloured = float((spread > COLOUR_SPREAD).mean())
        if coloured > COLOUR_FRACTION:
            raise RowError(f"{path} is a colour mask ({coloured:.0%} of pixels coloured); a binary"
                           " black/white mask was expected")
        values = rgb.mean(axis=-1).round().astype(np.uint8)
    return threshold(values)


def red_or_green_mask(path: Path) -> np.ndarray:
    """A colour-coded mask (BKAI: red neoplastic, green non-neoplastic) as booleans: R>127 or G>127."""
    values = open_image(path)
    if values.ndim != 3:
        raise RowError(f"{path} is a single-channel mask; a colour-coded (red/green) mask was expected")
    return (values[..., 0] > 127) | (values[..., 1] > 127)


def mask_loader(paths: Sequence[Path], read: Callable[[Path], np.ndarray] = binary_mask) -> Callable[[], np.ndarray]:
    """A loader of the union of one or more masks (BUSI has several per image); sizes must agree."""

    def load() -> np.ndarray:
        union = None
        for path in paths:
            mask = read(path)
            if union is None:
                union = mask.copy()
            elif mask.shape != union.shape:
                raise RowError(f"{path} is {mask.shape[1]}x{mask.shape[0]} but {paths[0].name} is"
                               f" {union.shape[1]}x{union.shape[0]}; masks of one image must agree")
            else:
                union |= mask
        return union

    return load


def png_bytes(pixels: np.ndarray) -> bytes:
    """An image that arrives as an array (CAMUS volumes), encoded as PNG; non-8-bit values scaled."""
    if pixels.dtype != np.uint8:
        pixels = pixels.astype(np.float64)
        low, high = float(pixels.min(initial=0)), float(pixels.max(initial=0))
        if low >= 0 and high <= 255:
            pixels = pixels.round()
        else:
            pixels = (pixels - low) * (255.0 / max(high - low, 1e-12))
        pixels = pixels.clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# --- splits --------------------------------------------------------------------------------------


def seeded_split(keys: Iterable[str], seed: int, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Split keys (images, or patients where the study split by patient) into train/val/test.

    The keys are sorted, then shuffled by ``random.Random(seed)``: the same keys and seed give the
    same split on any machine. Sizes are ``round(n * fraction)``, so 1000 keys at 0.1/0.1 give
    800/100/100 and 612 give 490/61/61, the study's counts; a split with a fraction above 0 gets at
    least one key once there are three, so small collections still have every split.
    """
    ordered = sorted(set(keys))
    random.Random(seed).shuffle(ordered)

    def size(fraction: float) -> int:
        return max(1, round(len(ordered) * fraction)) if fraction > 0 and len(ordered) >= 3 else round(
            len(ordered) * fraction)

    n_test, n_val = size(test_fraction), size(val_fraction)
    split = {key: "test" for key in ordered[:n_test]}
    split.update({key: "val" for key in ordered[n_test:n_test + n_val]})
    split.update({key: "train" for key in ordered[n_test + n_val:]})
    return split


def paired_records(pairs: Iterable[Pair | RowProblem], split_of: Callable[[str], str], class_name: str,
                   read_mask: Callable[[Path], np.ndarray] = binary_mask,
                   metadata: Callable[[Pair], dict[str, str]] = lambda pair: {}) -> Iterator[RawItem]:
    """Records of image/mask pairs (one row each), problems passed through."""
    for item in pairs:
        if isinstance(item, RowProblem):
            yield item
            continue
        yield Record(
            sample_id=item.sample_id,
            split=split_of(item.sample_id),
            source=" + ".join(str(p) for p in (item.image, *item.masks)),
            load_image=file_bytes(item.image),
            load_mask=mask_loader(item.masks, read_mask),
            class_name=class_name,
            metadata=metadata(item),
        )


def split_pairs(pairs: list[Pair | RowProblem], seed: int, val_fraction: float = 0.1,
                test_fraction: float = 0.1) -> Callable[[str], str]:
    """The split of each pair's sample id, seeded over the pairs that formed (problems excluded)."""
    split = seeded_split((p.sample_id for p in pairs if isinstance(p, Pair)), seed, val_fraction, test_fraction)
    return split.__getitem__
