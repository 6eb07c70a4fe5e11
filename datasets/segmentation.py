"""A torch Dataset over one split of shards, for one prompt type and one model input size."""

from __future__ import annotations

import io
import random
import zlib

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.shards import RANDOM_PROMPT, ShardError, ShardStore
from prompts.metadata import stored_attributes
from prompts.perturb import Perturbation, PerturbationError, perturb


def decode_mask(data: bytes, where: str) -> np.ndarray:
    """A 0/255 PNG mask as a boolean array; any other value is an error naming the row."""
    try:
        mask = np.asarray(Image.open(io.BytesIO(data)))
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ShardError(f"{where}, field 'mask': not a decodable image ({e})") from None
    if mask.ndim != 2:
        raise ShardError(f"{where}, field 'mask': expected a single-channel 0/255 PNG, got shape {mask.shape}")
    values = np.unique(mask)
    if not np.isin(values, (0, 255)).all():
        shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
        raise ShardError(f"{where}, field 'mask': expected binary values 0/255, found {shown}. "
                         "Re-ingest with the mask binarised (foreground 255).")
    return mask == 255


def decode_image(data: bytes, where: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 image resized to size x size (aspect not kept, as in the study), and its original (h, w)."""
    try:
        image = Image.open(io.BytesIO(data)).convert("RGB")
    except (OSError, ValueError) as e:
        raise ShardError(f"{where}, field 'image': not a decodable image ({e})") from None
    resized = image.resize((size, size), Image.BILINEAR)
    return np.asarray(resized).transpose(2, 0, 1), (image.height, image.width)


class SegmentationSplit(Dataset):
    """Decoded samples of one split; images travel as uint8 and are normalised by the Trainer.

    Every image and mask is decoded and checked once, at construction, so bad rows fail before
    training starts and epochs do not re-decode. ``prompt_type`` "random" draws among p1..pN per
    sample; a ``perturbation`` (evaluation only) re-renders each prompt with one attribute changed.
    """

    def __init__(self, store: ShardStore, dataset: str, split: str, prompt_type: str, input_size: int,
                 train: bool, seed: int = 0, perturbation: Perturbation | None = None):
        manifest = store.check_split(dataset, split, prompt_type)
        if prompt_type == RANDOM_PROMPT:
            prompt_columns = [p for p in manifest.prompt_types if p != "p0"]
        else:
            prompt_columns = [prompt_type]
        columns = ["sample_id", "image", "mask", "height", "width", *prompt_columns]
        table = store.read_split(dataset, split, columns + (["metadata"] if perturbation else []))
        self.dataset, self.split, self.prompt_type = dataset, split, prompt_type
        self.train, self.seed, self.epoch = train, seed, 0
        n = table.num_rows
        self.sample_ids: list[str] = table["sample_id"].to_pylist()
        # Per sample: the candidate strings of each prompt type it may draw from.
        self.prompts: list[list[list[str]]] = [list(c) for c in zip(*(table[p].to_pylist() for p in prompt_columns))]
        if perturbation:
            self.prompts = self._perturbed(manifest.prompt_family, table["metadata"].to_pylist(), perturbation)
        self.images = np.empty((n, 3, input_size, input_size), np.uint8)
        self.masks = np.empty((n, 1, input_size, input_size), np.uint8)
        self.full_masks: list[np.ndarray] = []
        for i, (sid, image, mask, h, w) in enumerate(zip(
            self.sample_ids, table["image"].to_pylist(), table["mask"].to_pylist(),
            table["height"].to_pylist(), table["width"].to_pylist(),
        )):
            where = f"dataset {dataset!r} split {split!r} row {i} (sample_id {sid!r})"
            full = decode_mask(mask, where)
            self.images[i], image_hw = decode_image(image, where, input_size)
            if full.shape != (h, w) or image_hw != (h, w):
                raise ShardError(f"{where}: image is {image_hw}, mask is {full.shape}, "
                                 f"row says height {h} width {w}; they must agree")
            if not all(self.prompts[i]):
                raise ShardError(f"{where}, field {prompt_type!r}: no prompt string")
            self.full_masks.append(full)
            small = Image.fromarray(full.astype(np.uint8) * 255).resize((input_size, input_size), Image.NEAREST)
            self.masks[i, 0] = np.asarray(small) > 127

    def _perturbed(self, family: str | None, metadata: list, perturbation: Perturbation) -> list[list[list[str]]]:
        if self.train or self.prompt_type == RANDOM_PROMPT:
            raise PerturbationError("perturbations apply at evaluation, to one prompt type")
        if family is None:
            raise PerturbationError(f"dataset {self.dataset!r} has no prompt_family in its manifest; "
                                    "regenerate its prompts with `python -m prompts generate`")
        perturbed = []
        for sample_id, entries in zip(self.sample_ids, metadata):
            try:
                perturbed.append([perturb(family, self.prompt_type, stored_attributes(dict(entries or [])),
                                          perturbation, sample_id)])
            except (PerturbationError, KeyError) as e:
                raise PerturbationError(f"dataset {self.dataset!r} sample {sample_id!r}: {e}") from None
        return perturbed

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def prompt(self, i: int) -> str:
        """Training draws one of the sample's strings per epoch; evaluation always takes the same one."""
        key = f"{self.seed}:{self.epoch}:{self.sample_ids[i]}" if self.train else self.sample_ids[i]
        rng = random.Random(zlib.crc32(key.encode()))
        choices = rng.choice(self.prompts[i])  # a prompt type, when there are several
        return choices[rng.randrange(len(choices))]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": torch.from_numpy(self.images[i]),
            "mask": torch.from_numpy(self.masks[i]).float(),
            "full_mask": torch.from_numpy(self.full_masks[i]),
            "text": self.prompt(i),
            "sample_id": self.sample_ids[i],
        }
