"""Frozen encoders computed once: their outputs kept on the node's disk, so a frozen trial runs only its decoder.

In ``frozen`` mode the image and text encoders never change, yet the plain loop runs them on every
sample of every epoch. Here their outputs are computed once per (encoder weights, dataset, split,
input size) for images and once per set of prompt strings for text, stored as fp16 ``.npy`` files
(memory-mapped when read) under the node cache's ``features/`` (``$VLSM_CACHE``, default
``~/.cache/vlsm-tune``; see datasets/cache.py), and shared by every trial on the node: every
prompt type of a dataset reuses its image features.

A cache entry is a folder written under a temporary name and renamed, while holding an exclusive
``fcntl.flock`` on a lock file beside it, so trials that start together build it once and never
read half of one; its size is checked against the disk's free space and its files are allocated
before they are filled, so a full disk is an error naming the folder, never a SIGBUS
(``datasets/disk.py``). Keys are content hashes, not names: the encoders' weights (the bytes of every
tensor under the model's encoder prefixes, so two random inits from one seed agree and anything
else differs), the images' bytes with their sample ids, and the prompt strings with the tokenizer's
ids for them.

Models opt in with ``encode_image(pixels) -> dict``, ``encode_text(ids, mask) -> dict`` and
``decode(image, text, size) -> logits``; their ``forward`` is ``decode(encode_image, encode_text)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from datasets.cache import build_once, cache_root, open_built
from datasets.disk import allocated_npy, check_free
from datasets.progress import Meter
from trainables.models import ModelInputs
from trainables.tokenizers import tokenize

ENCODE_BATCH = 16  # samples per encoder forward while building
# Part of every entry's key: raise it when what encode_image / encode_text return changes (layers
# taken, normalisation, dtype), so that no trial ever reads features an older version computed.
FEATURES_VERSION = 1


def features_root() -> str:
    return os.path.join(cache_root(), "features")


def supports_feature_cache(model: nn.Module) -> bool:
    return all(callable(getattr(model, name, None)) for name in ("encode_image", "encode_text", "decode"))


def weights_digest(model: nn.Module, prefixes: tuple[str, ...]) -> str:
    """Hash of every tensor (name, dtype, shape, bytes) under the encoder prefixes."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(prefixes):
            t = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    # Floating features are kept in fp16 (half the disk and page cache); masks and ids as they are.
    return t.detach().to("cpu", torch.float16 if t.is_floating_point() else t.dtype).numpy()


def write_entry(folder: str, build) -> None:
    """Create ``folder`` once on this node: ``build(tmp_folder)`` writes it under a temporary name."""
    build_once(folder, build)


def read_entry(folder: str) -> tuple[dict, dict[str, np.ndarray]]:
    """An entry's meta.json and memory-mapped arrays."""
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    return meta, {k: np.load(os.path.join(folder, f"{k}.npy"), mmap_mode="r") for k in meta["keys"]}


class FeatureCache:
    """One model's frozen-encoder outputs on this node; ``wrap(split)`` gives a Dataset of them."""

    def __init__(self, model: nn.Module, tokenizer, inputs: ModelInputs, model_name: str,
                 encoder_prefixes: tuple[str, ...], root: str | None = None):
        if not supports_feature_cache(model):
            raise ValueError(f"{type(model).__name__} has no encode_image/encode_text/decode: "
                             "it cannot run from cached features")
        self.model, self.tokenizer, self.inputs, self.model_name = model, tokenizer, inputs, model_name
        self.root = root or features_root()
        self.identity = (f"{model_name}-v{FEATURES_VERSION}-{weights_digest(model, encoder_prefixes)}"
                         f"-{hashlib.blake2b(repr((inputs.mean, inputs.std)).encode(), digest_size=4).hexdigest()}")
        self.wrapped: dict[int, FeatureSplit] = {}
        self.built = {"image": 0, "text": 0}  # entries this process computed (the rest were on disk)

    def wrap(self, split, device: torch.device, bf16: bool = False) -> FeatureSplit:
        """``split`` with its encoder outputs, built on ``device`` (under bf16 autocast if the Trainer uses it)."""
        if id(split) not in self.wrapped:
            image = self.image_features(split, device, bf16)
            text = self.text_features(self.split_strings(split), device, bf16)
            self.wrapped[id(split)] = FeatureSplit(split, image, text)
        return self.wrapped[id(split)]

    # -- images --------------------------------------------------------------------------------
    def image_features(self, split, device: torch.device, bf16: bool = False) -> dict[str, np.ndarray]:
        # Hashed and encoded a batch at a time, written straight into memory-mapped files: a
        # large split (CAMUS: 4,800 images, ~10 GB of CLIPSeg features) never sits in RAM whole.
        content = hashlib.blake2b(digest_size=8)
        if getattr(split.decoded, "folder", None):
            # The node's decoded split is named by its shards' checksums, decoder version and size:
            # the same key as its pixels, without reading gigabytes at every trial start.
            content.update(os.path.basename(split.decoded.folder).encode())
        else:  # decoded in memory (no node cache)
            for i, sample_id in enumerate(split.sample_ids):
                content.update(sample_id.encode() + b"\0" + np.ascontiguousarray(split.images[i]).tobytes())
        precision = "bf16" if bf16 else "fp32"
        folder = os.path.join(self.root, self.identity, "images", split.dataset,
                              f"{split.split}-{self.inputs.input_size}-{precision}-{content.hexdigest()}")
        what = f"the {self.model_name} image features of {split.dataset!r}/{split.split!r}"

        def build(tmp: str) -> None:
            mean = torch.tensor(self.inputs.mean, device=device).view(1, 3, 1, 1) * 255
            std = torch.tensor(self.inputs.std, device=device).view(1, 3, 1, 1) * 255
            files: dict[str, np.ndarray] = {}
            meter = Meter(f"encoding {split.dataset}/{split.split} images once for the feature cache", len(split))
            for start in range(0, len(split), ENCODE_BATCH):
                batch = torch.from_numpy(np.asarray(split.images[start:start + ENCODE_BATCH])).to(device)
                with self._encoding(device, bf16):
                    out = self.model.encode_image((batch.float() - mean) / std)
                out = {k: _to_numpy(v) for k, v in out.items()}
                if not files:  # the first batch gives the size of every sample's features
                    check_free(folder, len(split) * sum(v[0].nbytes for v in out.values()), what)
                    # Allocated before they are mapped: a full disk is an OSError, not a SIGBUS mid-write.
                    files = {k: allocated_npy(os.path.join(tmp, f"{k}.npy"), v.dtype, (len(split), *v.shape[1:]))
                             for k, v in out.items()}
                for k, v in out.items():
                    files[k][start:start + len(v)] = v
                meter.update(len(batch))
            meter.finish()
            for array in files.values():
                array.flush()
            self._save(tmp, {}, {"dataset": split.dataset, "split": split.split,
                                 "sample_ids": list(split.sample_ids), "keys": sorted(files)})
            self.built["image"] += 1

        meta, arrays = open_built(folder, build, lambda f, _built: read_entry(f), what)
        if meta["sample_ids"] != list(split.sample_ids):
            raise ValueError(f"feature cache {folder}: its sample ids do not match split {split.split!r} "
                             f"of {split.dataset!r}; delete the folder to rebuild it")
        return arrays

    # -- text ----------------------------------------------------------------------------------
    @staticmethod
    def split_strings(split) -> list[str]:
        """Every prompt string the split can draw, in a fixed order."""
        return sorted({s for per_sample in split.prompts for strings in per_sample for s in strings})

    def text_features(self, strings: list[str], device: torch.device,
                      bf16: bool = False) -> dict[str, dict[str, torch.Tensor]]:
        tokens = tokenize(self.tokenizer, strings, self.inputs.context_length)
        content = hashlib.blake2b(digest_size=8)
        for s in strings:
            content.update(s.encode() + b"\0")
        content.update(tokens["input_ids"].numpy().tobytes())
        precision = "bf16" if bf16 else "fp32"
        folder = os.path.join(self.root, self.identity, "text",
                              f"{self.inputs.context_length}-{precision}-{content.hexdigest()}")

        def build(tmp: str) -> None:
            parts: dict[str, list[np.ndarray]] = {}
            for start in range(0, len(strings), ENCODE_BATCH):
                ids = tokens["input_ids"][start:start + ENCODE_BATCH].to(device)
                mask = tokens["attention_mask"][start:start + ENCODE_BATCH].to(device)
                with self._encoding(device, bf16):
                    out = self.model.encode_text(ids, mask)
                for k, v in out.items():
                    parts.setdefault(k, []).append(_to_numpy(v))
            self._save(tmp, {k: np.concatenate(v) for k, v in parts.items()}, {"strings": strings})
            self.built["text"] += 1

        _, arrays = open_built(folder, build, lambda f, _built: read_entry(f), "the text features of a prompt set")
        # Text features are small: kept in memory as tensors, one row per string.
        loaded = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
        return {s: {k: v[i] for k, v in loaded.items()} for i, s in enumerate(strings)}

    # -- helpers -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _encoding(self, device: torch.device, bf16: bool) -> Iterator[None]:
        # Encoders as they run in a frozen trial: no gradients, eval mode (no dropout, fixed BatchNorm),
        # and the Trainer's autocast.
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                yield
        finally:
            self.model.train(was_training)

    @staticmethod
    def _save(tmp: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
        for k, v in arrays.items():
            np.save(os.path.join(tmp, f"{k}.npy"), v)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"keys": sorted(arrays), **meta}, f)


class FeatureSplit(Dataset):
    """A split whose samples carry the encoders' outputs instead of the image and token ids.

    Prompts are still drawn by the wrapped split (per sample, per epoch), then looked up by string.
    """

    def __init__(self, split, image: dict[str, np.ndarray], text: dict[str, dict[str, torch.Tensor]]):
        self.split, self.image, self.text = split, image, text

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        sample = self.split[i]
        sample.pop("image")
        return {**sample, "features": {"image": {k: torch.from_numpy(np.array(v[i])) for k, v in self.image.items()},
                                       "text": self.text[sample["text"]]}}
