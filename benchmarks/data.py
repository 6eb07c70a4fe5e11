"""The study's data loader against the decoded cache, in samples per second per core.

Per core means per CPU-second (of this process and of a DataLoader worker it starts), so other work
on the machine does not count; the parallel first build is also given in wall-clock time.

The study's loader decodes the original JPEG and PNG mask every epoch, resizes to a fixed square,
and converts (ToTensor, Normalize) in a DataLoader worker: one worker process is one core, measured
here in one process with one thread. The decoded cache decodes once (the first epoch includes that
build), then serves uint8 arrays from a memory map; normalisation happens on the accelerator.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time

import numpy as np

# `python -m benchmarks --help` imports this module, so what loads PyTorch (torch, torchvision, the decoded
# splits), pyarrow (datasets.*) or PIL.Image (~15 ms of its ~0.2 s) is imported in the functions that use it.

HELP = "the study's loader vs the decoded cache: samples/s per core, first epoch and steady state"


def kvasir_like(rng: np.random.Generator) -> tuple[bytes, bytes, int, int]:
    """A JPEG of Kvasir-SEG's size range (480-1070 x 530-1350) and its 0/255 PNG mask."""
    from PIL import Image

    height, width = int(rng.integers(480, 1071)), int(rng.integers(530, 1351))
    y, x = np.arange(height, dtype=np.float32)[:, None], np.arange(width, dtype=np.float32)[None, :]
    phase = rng.uniform(0, 6, 3)
    image = np.stack([150 + 50 * np.sin(x / 90 + p) + 35 * np.cos(y / 70 - p) for p in phase], -1)
    cy, cx, r = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width, rng.uniform(0.1, 0.3) * height
    lump = (y - cy) ** 2 + (x - cx) ** 2 < r**2
    image[lump] = image[lump] * 0.6 + np.array([240, 200, 180], np.float32) * 0.4
    image += rng.standard_normal(image.shape, np.float32) * 5  # texture, so the JPEG is not trivially smooth
    image_buf, mask_buf = io.BytesIO(), io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(image_buf, "JPEG", quality=90)
    Image.fromarray(lump.astype(np.uint8) * 255).save(mask_buf, "PNG")
    return image_buf.getvalue(), mask_buf.getvalue(), height, width


def make_data(folder: str, n: int, seed: int = 0) -> str:
    """The same images as files (the study's layout) and as shards; returns the shard root."""
    from datasets.shards import ShardStore

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "images"))
    os.makedirs(os.path.join(folder, "masks"))
    rows = []
    for i in range(n):
        image, mask, height, width = kvasir_like(rng)
        with open(os.path.join(folder, "images", f"{i:04d}.jpg"), "wb") as f:
            f.write(image)
        with open(os.path.join(folder, "masks", f"{i:04d}.png"), "wb") as f:
            f.write(mask)
        rows.append({"sample_id": f"{i:04d}", "dataset": "kvasir_like", "split": "train", "image": image,
                     "mask": mask, "height": height, "width": width, "class_name": "polyp",
                     "p0": [""], "p1": ["polyp"], "metadata": {}})
    root = os.path.join(folder, "shards")
    ShardStore(root, cache=False).write_dataset("kvasir_like", rows, ["p0", "p1"])
    return root


class StudyLoaderDataset:
    """What the study's loader does per sample, every epoch."""

    def __init__(self, folder: str, size: int):
        from torchvision import transforms

        self.images = sorted(os.listdir(os.path.join(folder, "images")))
        self.folder = folder
        self.image_transform = transforms.Compose([
            transforms.Resize((size, size)), transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ])
        self.mask_transform = transforms.Compose([
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.NEAREST_EXACT),
            transforms.ToTensor(),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        from prompts.images import open_image  # the project's image limits, as every reader has them

        name = self.images[i]
        image_path = os.path.join(self.folder, "images", name)
        mask_path = os.path.join(self.folder, "masks", name.replace(".jpg", ".png"))
        image = open_image(image_path, image_path).convert("RGB")
        mask = open_image(mask_path, mask_path)
        return {"image": self.image_transform(image), "mask": self.mask_transform(mask)[:1]}


def collate(samples: list[dict]) -> dict:
    import torch

    batch = {"image": torch.stack([s["image"] for s in samples]), "mask": torch.stack([s["mask"] for s in samples])}
    if "full_mask" in samples[0]:  # what the Trainer takes from the cached split besides the batch
        batch["full_masks"] = [s["full_mask"] for s in samples]
        batch["texts"] = [s["text"] for s in samples]
    return batch


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (a DataLoader's worker, once joined)."""
    children = os.times()  # whole clock ticks: fine for a worker's epoch of seconds
    return time.process_time() + children.children_user + children.children_system


def epoch_seconds(dataset, batch_size: int, normalise=None, workers: int = 0) -> float:
    """CPU-seconds for one shuffled epoch of batches."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    began = cpu_seconds()
    for batch in loader:
        if normalise is not None:
            normalise(batch["image"])
    del loader  # joins the worker, so its CPU time is counted
    return cpu_seconds() - began


def cached_split(root: str, cache_dir: str, size: int):
    from datasets.cache import NodeCache
    from datasets.segmentation import SegmentationSplit
    from datasets.shards import ShardStore

    return SegmentationSplit(ShardStore(root, cache=NodeCache(cache_dir)), "kvasir_like", "train", "p1", size,
                             train=True)


def add_arguments(parser) -> None:
    parser.add_argument("--images", type=int, default=200, help="generated Kvasir-sized JPEGs")
    parser.add_argument("--size", type=int, default=352, help="input size (352: CLIPSeg's)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each measure; medians are printed")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of the loaders")


def run(args) -> int:
    import torch

    torch.set_num_threads(1)  # one core, as one DataLoader worker of the study
    cores = len(os.sched_getaffinity(0))
    n = args.images
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1) * 255
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1) * 255

    def normalise_on_cpu(images: torch.Tensor) -> torch.Tensor:
        return (images.float() - mean) / std

    with tempfile.TemporaryDirectory(prefix="vlsm-bench-data-") as tmp:
        began = time.perf_counter()
        root = make_data(tmp, n)
        print(f"{n} Kvasir-sized JPEGs (480-1070 x 530-1350) and PNG masks generated in "
              f"{time.perf_counter() - began:.0f} s; input {args.size}x{args.size}, batch {args.batch_size}, "
              f"{args.repeats} repeats, medians; this machine has {cores} cores")
        study = StudyLoaderDataset(tmp, args.size)
        epoch_seconds(study, args.batch_size)  # warm up: imports, first allocations
        keys = ("study", "study_worker", "first", "first_parallel", "steady", "steady_cpu")
        rates: dict[str, list[float]] = {k: [] for k in keys}
        for repeat in range(args.repeats):
            rates["study"].append(n / epoch_seconds(study, args.batch_size))
            rates["study_worker"].append(n / epoch_seconds(study, args.batch_size, workers=1))
            # First epoch: build the cache with one decoding thread (one core), then read it once.
            os.environ["VLSM_DECODE_THREADS"] = "1"
            start = cpu_seconds()
            split = cached_split(root, os.path.join(tmp, f"cache-{repeat}"), args.size)
            epoch_seconds(split, args.batch_size)
            rates["first"].append(n / (cpu_seconds() - start))
            # The same with every core decoding (wall-clock rate, not per core).
            os.environ["VLSM_DECODE_THREADS"] = str(cores)
            start = time.perf_counter()
            epoch_seconds(cached_split(root, os.path.join(tmp, f"cache-parallel-{repeat}"), args.size),
                          args.batch_size)
            rates["first_parallel"].append(n / (time.perf_counter() - start))
            # Steady state: a later trial or epoch opens the built cache and reads it.
            split = cached_split(root, os.path.join(tmp, f"cache-{repeat}"), args.size)
            assert not split.decoded.built
            rates["steady"].append(n / epoch_seconds(split, args.batch_size))
            rates["steady_cpu"].append(n / epoch_seconds(split, args.batch_size, normalise_on_cpu))
        os.environ.pop("VLSM_DECODE_THREADS", None)

    median = {k: statistics.median(v) for k, v in rates.items()}
    base = median["study"]
    rows = [
        ("study's loader: PIL decode + resize + ToTensor + Normalize (+ mask), every epoch", "study", "study"),
        ("  the same in one DataLoader worker process, as the study ran it", "study_worker", "study_worker"),
        ("decoded cache, uint8 batches (normalised on the accelerator)", "first", "steady"),
        ("decoded cache, normalised on this CPU core", "first", "steady_cpu"),
    ]
    print(f"\n{'samples/s per core (per CPU-second)':<84}{'first epoch':>12}{'steady':>9}"
          f"{'first vs study':>16}{'steady vs study':>17}")
    for label, first, steady in rows:
        print(f"{label:<84}{median[first]:>12,.0f}{median[steady]:>9,.0f}"
              f"{median[first] / base:>15.2f}x{median[steady] / base:>16.1f}x")
    worker = median["study_worker"]
    print(f"against the worker-process loader: first epoch {median['first'] / worker:.2f}x, "
          f"steady {median['steady'] / worker:.1f}x")
    print(f"\nfirst epoch with {cores} decoding threads (wall clock, all cores): {median['first_parallel']:,.0f} "
          f"samples/s, {median['first_parallel'] / base:.1f}x the study's loader on one core\nevery repeat:")
    for key, values in rates.items():
        print(f"  {key:<15}" + ", ".join(f"{r:,.0f}" for r in values))
    return 0
