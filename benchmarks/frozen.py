"""Epoch time of a frozen-mode trial with and without the frozen-feature cache, at the models' real sizes.

Each model is built at size ``full`` with random weights (the architecture, not the pretrained
numbers, sets the cost) and trains its decoder on a small synthetic split through the shared
Trainer, first running its encoders on every batch (the plain path), then from the feature cache
(computed in the first cached epoch, which is reported on its own). An epoch is a training pass
plus validation, as in a trial. Medians over ``--epochs`` epochs.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time

from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES
from search_spaces.defaults import training_defaults
from trainables.models import build_model, build_tokenizer, encoder_prefixes, model_inputs

# `python -m benchmarks --help` imports this module, so what loads PyTorch (the Trainer, the feature cache, the
# decoded splits), pyarrow (datasets.shards) or scipy (datasets.synthetic) is imported in the functions that use it.

HELP = "epoch time of frozen CLIPSeg and BiomedCLIPSeg with and without the frozen-feature cache"
MODELS = ("clipseg", "biomedclipseg")


def add_arguments(parser) -> None:
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=("clipseg", "cris", "biomedclipseg"),
                        help="models to measure")
    parser.add_argument("--size", choices=("full", "small"), default="full", help="architecture size")
    parser.add_argument("--train-images", type=int, default=16, help="training images")
    parser.add_argument("--val-images", type=int, default=4, help="validation images")
    parser.add_argument("--batch-size", type=int, default=4, help="batch size")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per path")
    parser.add_argument("--threads", type=int, help="torch threads (none: torch's choice)")


def write_split_data(root: str, train: int, val: int) -> None:
    from datasets.shards import ShardStore
    from datasets.synthetic import synthetic_rows

    sizes = (("train", train), ("val", val), ("test", 1))
    rows = itertools.chain.from_iterable(synthetic_rows("bench", s, n, 0.5, seed=7) for s, n in sizes)
    ShardStore(root).write_dataset("bench", rows, NON_RADIOLOGY_PROMPT_TYPES, "non_radiology")


def measure(model_name: str, args, data: str, cache_root: str) -> dict:
    import torch

    from datasets.segmentation import SegmentationSplit
    from datasets.shards import ShardStore
    from trainables.feature_cache import FeatureCache
    from trainables.trainer import TrainConfig, Trainer

    inputs = model_inputs(model_name, args.size)
    store = ShardStore(data)
    train = SegmentationSplit(store, "bench", "train", "p6", inputs.input_size, True, 42)
    val = SegmentationSplit(store, "bench", "val", "p6", inputs.input_size, False, 42)
    torch.manual_seed(0)
    model = build_model(model_name, "frozen", args.size)
    tokenizer = build_tokenizer(model_name)
    defaults = training_defaults(model_name)
    config = TrainConfig(lr=defaults["lr"], batch_size=args.batch_size, max_epochs=10**6, patience=10**6)

    def epochs(trainer: Trainer, n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            trainer.step()
            times.append(time.perf_counter() - start)
        return times

    plain = epochs(Trainer(model, tokenizer, inputs, config, train, val), args.epochs)
    cache = FeatureCache(model, tokenizer, inputs, model_name, encoder_prefixes(model_name), root=cache_root)
    cached = epochs(Trainer(model, tokenizer, inputs, config, train, val, feature_cache=cache), args.epochs + 1)
    return {"model": model_name, "input": inputs.input_size, "plain": statistics.median(plain),
            "first": cached[0], "cached": statistics.median(cached[1:]),
            "params": sum(p.numel() for p in model.parameters())}


def run(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"frozen-mode epoch (train {args.train_images} + validate {args.val_images} images, batch "
          f"{args.batch_size}), {args.size} models, random init, median of {args.epochs} epochs, on {device}")
    print(f"{'model':<15} {'input':>5} {'params':>12} {'plain (s)':>10} {'cache build (s)':>16} "
          f"{'cached (s)':>11} {'speed-up':>9}")
    with tempfile.TemporaryDirectory(prefix="bench_frozen_") as tmp:
        write_split_data(f"{tmp}/shards", args.train_images, args.val_images)
        for name in args.models:
            row = measure(name, args, f"{tmp}/shards", f"{tmp}/features")
            print(f"{row['model']:<15} {row['input']:>5} {row['params']:>12,} {row['plain']:>10.2f} "
                  f"{row['first']:>16.2f} {row['cached']:>11.3f} {row['plain'] / row['cached']:>8.1f}x", flush=True)
    print("cache build: the first cached epoch, which runs the encoders once and writes the features; "
          "later trials on the node skip it")
    return 0
