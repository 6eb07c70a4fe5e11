"""A torch Dataset over one split of shards, for one prompt type and one model input size."""

from __future__ import annotations

import random
import zlib

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.decoded import decode_split, open_decoded
from datasets.shards import RANDOM_PROMPT, ShardError, ShardStore
from prompts.metadata import stored_attributes
from prompts.perturb import Perturbation, PerturbationError, perturb


class SegmentationSplit(Dataset):
    """Decoded samples of one split; images travel as uint8 and are normalised by the Trainer.

    Images and masks come decoded and resized from the node cache (``datasets/decoded.py``): the
    first trial on a node decodes and checks every row once, later trials and epochs map the arrays
    from disk. Without a cache (``ShardStore(..., cache=False)``) the split is decoded into memory.
    Bad rows fail at construction either way. ``prompt_type`` "random" draws among p1..pN per
    sample; a ``perturbation`` (evaluation only) re-renders each prompt with one attribute changed.
    """

    def __init__(self, store: ShardStore, dataset: str, split: str, prompt_type: str, input_size: int,
                 train: bool, seed: int = 0, perturbation: Perturbation | None = None, resize: str = "torch"):
        manifest = store.check_split(dataset, split, prompt_type)
        if prompt_type == RANDOM_PROMPT:
            prompt_columns = [p for p in manifest.prompt_types if p != "p0"]
        else:
            prompt_columns = [prompt_type]
        columns = ["sample_id", *prompt_columns] + (["metadata"] if perturbation else [])
        table = store.read_split(dataset, split, columns, manifest)
        self.dataset, self.split, self.prompt_type = dataset, split, prompt_type
        self.train, self.seed, self.epoch = train, seed, 0
        self.sample_ids: list[str] = table["sample_id"].to_pylist()
        # Per sample: the candidate strings of each prompt type it may draw from.
        self.prompts: list[list[list[str]]] = [list(c) for c in zip(*(table[p].to_pylist() for p in prompt_columns))]
        if perturbation:
            self.prompts = self._perturbed(manifest.prompt_family, table["metadata"].to_pylist(), perturbation)
        for i, (sid, prompts) in enumerate(zip(self.sample_ids, self.prompts)):
            if not all(prompts):
                raise ShardError(f"dataset {dataset!r} split {split!r} row {i} (sample_id {sid!r}), "
                                 f"field {prompt_type!r}: no prompt string")
        if store.cache is not None:
            self.decoded = open_decoded(store, store.cache, dataset, split, input_size, manifest, resize=resize)
        else:
            self.decoded = decode_split(store, dataset, split, input_size, manifest, resize=resize)
        if self.decoded.sample_ids != self.sample_ids:
            raise ShardError(f"decoded cache {self.decoded.folder} does not match the shards of {dataset!r} "
                             f"split {split!r}; delete that folder and run again")
        self.images, self.masks = self.decoded.images, self.decoded.masks

    def _perturbed(self, family: str | None, metadata: list, perturbation: Perturbation) -> list[list[list[str]]]:
        if self.train or self.prompt_type == RANDOM_PROMPT:
            raise PerturbationError("perturbations apply at evaluation, to one prompt type")
        if family is None:
            raise PerturbationError(f"dataset {self.dataset!r} has no prompt_family in its manifest; "
                                    "regenerate its prompts with `python -m datasets.prompts generate`")
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
        # Copies: the cached arrays are read-only maps shared with other trials.
        return {
            "image": torch.from_numpy(self.images[i].copy()),
            "mask": torch.from_numpy(self.masks[i].astype(np.float32)),
            "full_mask": torch.from_numpy(self.decoded.full_mask(i)),
            "text": self.prompt(i),
            "sample_id": self.sample_ids[i],
        }
