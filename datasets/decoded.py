"""Decoded splits: images and masks decoded and resized once per node, then memory-mapped by every trial.

A split at one input size becomes, under ``<node cache>/decoded/<dataset>/<split>-<size>px-<key>/``::

    images.npy       (n, 3, size, size) uint8, RGB, resized bilinear (aspect not kept, as in the study)
    masks.npy        (n, 1, size, size) uint8 0/1, resized nearest
    full_masks.bin   every mask at its original size, bit-packed (dice is scored at the original size)
    full_index.npy   (n, 3) int64: byte offset into full_masks.bin, height, width
    meta.json        sample ids and what the key was made from

The key hashes the decoder version, dataset, split, size and the manifest's sha256 of every shard
file, so a changed shard makes a new entry. The folder is built under the node's lock in a temporary
folder and renamed into place: it is never visible half-written. A build first checks that the
disk holds the entry and allocates its arrays before filling them, so a full disk is an error that
names the folder and the prune command (``datasets/disk.py``), never a SIGBUS.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from datasets.cache import NodeCache, open_built, safe_name
from datasets.disk import allocated_npy, check_free
from datasets.progress import Meter
from datasets.shards import Manifest, ShardError, ShardStore
from prompts.images import ImageLimitError, open_image

# Bump when decoding changes (resize filter, draft): every cached split is then rebuilt.
DECODER_VERSION = 2
DECODE_COLUMNS = ["sample_id", "image", "mask", "height", "width"]
# Image resize filters: "torch" (ours: decoded at a reduced DCT scale where the JPEG allows, then
# torch's antialiased bilinear) and "pil" (the study's: torchvision's Resize on the PIL image, i.e.
# PIL's bilinear of the full decode); they differ by ~0.3 grey levels on average (docs/fidelity.md).
RESIZE_FILTERS = ("torch", "pil")


def decode_mask(data: bytes, where: str) -> np.ndarray:
    """A 0/255 PNG mask as a boolean array; any other value, or a mask over the limits of
    ``prompts.images``, is an error naming the row."""
    try:
        with open_image(data, f"{where}, field 'mask'") as image:
            mask = np.asarray(image)
    except ImageLimitError as e:
        raise ShardError(str(e)) from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ShardError(f"{where}, field 'mask': not a decodable image ({e})") from None
    if mask.ndim != 2:
        raise ShardError(f"{where}, field 'mask': expected a single-channel 0/255 PNG, got shape {mask.shape}")
    full = mask == 255
    # Binary when every nonzero pixel is 255: two counts, much faster than np.unique on a megapixel mask.
    if mask.dtype == bool or np.count_nonzero(mask) != np.count_nonzero(full):
        values = np.unique(mask)
        shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
        raise ShardError(f"{where}, field 'mask': expected binary values 0/255, found {shown}. "
                         "Re-ingest with the mask binarised (foreground 255).")
    return full


def decode_image(data: bytes, where: str, size: int, resize: str = "torch") -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 (3, size, size) image resized bilinear (aspect not kept, as in the study), and its original (h, w).

    Faster than the study's PIL decode and resize, and close to it (0.3 grey levels on average on
    Kvasir-sized images at 352): JPEGs at least twice ``size`` on both sides are decoded at 1/2, 1/4
    or 1/8 scale in the DCT (``Image.draft``, never below ``size``), and the antialiased bilinear
    resize is torch's (SIMD on uint8, about three times PIL's speed). An image over the limits of
    ``prompts.images`` is a ShardError naming the row before any pixel is decoded.
    """
    try:
        image = open_image(data, f"{where}, field 'image'")
        original = (image.height, image.width)
        if resize == "torch":
            image.draft("RGB", (size, size))
        if image.mode != "RGB":
            image = image.convert("RGB")
        if resize == "pil" and image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        with warnings.catch_warnings():  # read-only pixels: nothing writes to them, copying costs time
            warnings.simplefilter("ignore", UserWarning)
            pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)
    except ImageLimitError as e:
        raise ShardError(str(e)) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ShardError(f"{where}, field 'image': not a decodable image ({e})") from None
    if pixels.shape[1:] != (size, size):  # torch.Size equals a tuple
        pixels = F.interpolate(pixels[None], size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)[0]
    return pixels.numpy(), original


def decode_row(image: bytes, mask: bytes, height: int, width: int, where: str,
               size: int, resize: str = "torch") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row: the image and mask at ``size`` (uint8) and the mask at its original size (bool)."""
    full = decode_mask(mask, where)
    pixels, image_hw = decode_image(image, where, size, resize)
    if full.shape != (height, width) or image_hw != (height, width):
        raise ShardError(f"{where}: image is {image_hw}, mask is {full.shape}, "
                         f"row says height {height} width {width}; they must agree")
    small = Image.fromarray(full.view(np.uint8)).resize((size, size), Image.NEAREST)  # 0/1 stays 0/1
    return pixels, np.asarray(small), full


class DecodedSplit:
    """A split's images and masks at the model's input size, and its masks at their original size.

    The arrays are memory-mapped from the node cache (shared by every process through the page
    cache) or, without a cache, held in memory. ``built`` says whether this call decoded the split.
    """

    def __init__(self, sample_ids: list[str], images: np.ndarray, masks: np.ndarray, full_index: np.ndarray,
                 full_bits: np.ndarray, built: bool, folder: str | None = None):
        self.sample_ids, self.images, self.masks = sample_ids, images, masks
        self.full_index, self.full_bits, self.built, self.folder = full_index, full_bits, built, folder

    def __len__(self) -> int:
        return len(self.sample_ids)

    def full_mask(self, i: int) -> np.ndarray:
        """Row ``i``'s mask at its original size, boolean."""
        offset, height, width = (int(v) for v in self.full_index[i])
        packed = self.full_bits[offset:offset + (height * width + 7) // 8]
        return np.unpackbits(packed, count=height * width).reshape(height, width).view(bool)


def default_workers() -> int:
    """Decoding threads for a first build: ``$VLSM_DECODE_THREADS``, else every core this process may use."""
    return int(os.environ.get("VLSM_DECODE_THREADS") or len(os.sched_getaffinity(0)))


def _decode_into(store: ShardStore, dataset: str, split: str, size: int, manifest: Manifest,
                 images: np.ndarray, masks: np.ndarray, write_bits: Callable[[bytes], object],
                 workers: int, resize: str = "torch") -> tuple[list[str], np.ndarray]:
    """Decode every row into ``images``/``masks`` (threads: PIL and torch release the GIL as they work),
    and the packed original-size masks through ``write_bits``, in row order. One shard file is in
    memory at a time. Returns the sample ids and the full-mask index."""
    sample_ids: list[str] = []
    index = np.zeros((manifest.rows(split), 3), np.int64)
    offset, start = 0, 0
    meter = Meter(f"decoding {dataset}/{split} at {size}px", manifest.rows(split))
    # One worker decodes in this thread: nothing to gain from a pool.
    with ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        for entry in manifest.splits[split]["files"]:
            table = store.read_file(dataset, entry, DECODE_COLUMNS)
            ids = table["sample_id"].to_pylist()
            rows = zip(ids, table["image"].to_pylist(), table["mask"].to_pylist(),
                       table["height"].to_pylist(), table["width"].to_pylist())

            def decode(item: tuple[int, tuple]) -> tuple[bytes, tuple[int, int]]:
                i, (sid, image, mask, height, width) = item
                where = f"dataset {dataset!r} split {split!r} row {i} (sample_id {sid!r})"
                images[i], masks[i, 0], full = decode_row(image, mask, height, width, where, size, resize)
                return np.packbits(full).tobytes(), full.shape

            results = (pool.map if pool else map)(decode, enumerate(rows, start))
            try:
                for i, (bits, shape) in enumerate(results, start):
                    index[i] = (offset, *shape)
                    write_bits(bits)
                    offset += len(bits)
                    meter.update()
            except BaseException:
                if pool:
                    pool.shutdown(wait=True, cancel_futures=True)
                raise
            sample_ids += ids
            start += len(ids)
    meter.finish()
    return sample_ids, index


def decode_split(store: ShardStore, dataset: str, split: str, size: int, manifest: Manifest | None = None,
                 workers: int | None = None, resize: str = "torch") -> DecodedSplit:
    """A split decoded into memory (no cache)."""
    manifest = manifest or store.check_split(dataset, split)
    n = manifest.rows(split)
    images = np.empty((n, 3, size, size), np.uint8)
    masks = np.empty((n, 1, size, size), np.uint8)
    bits = bytearray()
    sample_ids, index = _decode_into(store, dataset, split, size, manifest, images, masks, bits.extend,
                                     workers or default_workers(), resize)
    return DecodedSplit(sample_ids, images, masks, index, np.frombuffer(bytes(bits), np.uint8), built=True)


def cache_folder(cache: NodeCache, dataset: str, split: str, size: int, manifest: Manifest,
                 resize: str = "torch") -> str:
    files = [[f["path"], f["rows"], f["sha256"]] for f in manifest.splits[split]["files"]]
    key = {"version": DECODER_VERSION, "dataset": dataset, "split": split, "size": size, "files": files}
    if resize != "torch":  # the default filter keeps the keys of splits decoded before the choice existed
        key["resize"] = resize
    key = json.dumps(key)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(cache.decoded_dir, safe_name(dataset), f"{safe_name(split)}-{size}px-{digest}")


def open_decoded(store: ShardStore, cache: NodeCache, dataset: str, split: str, size: int,
                 manifest: Manifest | None = None, workers: int | None = None, resize: str = "torch") -> DecodedSplit:
    """The split decoded at ``size`` from the node cache; the first process on the node builds it."""
    manifest = manifest or store.check_split(dataset, split)
    folder = cache_folder(cache, dataset, split, size, manifest, resize)
    what = f"the decoded split {dataset!r}/{split!r} at {size}px"

    def build(tmp: str) -> None:
        check_free(folder, entry_bytes(store, dataset, split, size, manifest), what)
        _build(store, dataset, split, size, manifest, tmp, workers or default_workers(), resize)

    return open_built(folder, build, _load, what)


def entry_bytes(store: ShardStore, dataset: str, split: str, size: int, manifest: Manifest) -> int:
    """The disk a split's cache entry takes: images and masks at ``size``, and the masks at their original
    size, bit-packed (their sizes come from the rows' height and width columns, a few bytes a row)."""
    n = manifest.rows(split)
    full = 0
    for entry in manifest.splits[split]["files"]:
        table = store.read_file(dataset, entry, ["height", "width"])
        pixels = table["height"].to_numpy().astype(np.int64) * table["width"].to_numpy().astype(np.int64)
        full += int(((pixels + 7) // 8).sum())
    return n * 4 * size * size + full + n * 3 * 8  # + the full masks' index


def _build(store: ShardStore, dataset: str, split: str, size: int, manifest: Manifest, tmp: str,
           workers: int, resize: str = "torch") -> None:
    n = manifest.rows(split)
    # Allocated on disk before they are mapped: a full disk is an OSError here, not a SIGBUS mid-decode.
    images = allocated_npy(os.path.join(tmp, "images.npy"), np.uint8, (n, 3, size, size))
    masks = allocated_npy(os.path.join(tmp, "masks.npy"), np.uint8, (n, 1, size, size))
    with open(os.path.join(tmp, "full_masks.bin"), "wb") as bits:
        sample_ids, index = _decode_into(store, dataset, split, size, manifest, images, masks, bits.write, workers,
                                         resize)
    images.flush()
    masks.flush()
    del images, masks
    np.save(os.path.join(tmp, "full_index.npy"), index)
    meta = {"version": DECODER_VERSION, "dataset": dataset, "split": split, "size": size, "resize": resize,
            "root": store.root, "files": manifest.splits[split]["files"], "sample_ids": sample_ids}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f)


def _load(folder: str, built: bool) -> DecodedSplit:
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    images = np.load(os.path.join(folder, "images.npy"), mmap_mode="r")
    masks = np.load(os.path.join(folder, "masks.npy"), mmap_mode="r")
    index = np.load(os.path.join(folder, "full_index.npy"))
    bits_path = os.path.join(folder, "full_masks.bin")
    bits = np.memmap(bits_path, np.uint8, "r") if os.path.getsize(bits_path) else np.zeros(0, np.uint8)
    return DecodedSplit(meta["sample_ids"], images, masks, index, bits, built, folder)
