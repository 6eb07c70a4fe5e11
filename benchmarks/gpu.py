"""Step time per model at the study's batch sizes, and frozen CLIPSeg trials sharing one device.

    python -m benchmarks gpu [--models ...] [--steps N] [--shares 1 2 4] [--save]

Part 1, per model, each in a fresh process (so its peak memory is its own): the median training
step (forward, backward, AdamW) at the study's batch and input size, in the mode the study trained
it (VLSMs frozen, CNNs end to end; ``--mode`` changes the VLSMs'), through ``benchmarks.models``.
For a frozen model that can run from the feature cache it also times what a grid trial runs: the
decoder alone on encoder outputs kept as fp16 on the host (moved to the device every step, as the
Trainer does), the encoders once per image (what building the cache costs), and an evaluation
batch. ``--save`` writes these under the device type into this user's step-time file
(``$VLSM_CACHE/step_times.json``, which the planner reads over the shipped table), never into the
source tree; to ship them, copy the device's entries into ``search_spaces/step_times.json`` in a commit.

Part 2: 1, 2 and 4 processes, each training frozen CLIPSeg through the real Trainer (by default on
the feature cache, as the grid runs it; ``--features live`` runs the encoders every step) while
sharing one GPU, each capped with ``torch.cuda.set_per_process_memory_fraction(1/N)`` as a trial
is. They build or read the cache, warm up, then start together at a barrier. On the CPU the
machine's threads are split between them instead.

On a CUDA GPU the defaults are the study's sizes; on the CPU they are small models and a small batch,
printed as such, so the same code runs (and is tested) here.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue as queues
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator

from benchmarks.frozen import write_split_data
from search_spaces.defaults import training_defaults
from trainables.models import build_model, build_tokenizer, card, encoder_prefixes, model_inputs, model_names

# `python -m benchmarks --help` imports this module, so what loads PyTorch (the models, the Trainer, the feature
# cache) or pyarrow (datasets.*, search_spaces.estimates, orchestrator.plan) is imported in the functions that use it.

HELP = "step time per model at the study's batch sizes, and 1/2/4 frozen CLIPSeg trials sharing one GPU"
SHARED_MODEL = "clipseg"
CPU_BATCH = 2  # the CPU stand-in for the study's batches
BARRIER_TIMEOUT_S = 1800  # building the feature cache of the first process happens before the barrier


def add_arguments(parser) -> None:
    parser.add_argument("--models", nargs="*", choices=model_names(), default=model_names(study_only=True),
                        help="models for the step times (--models alone skips part 1)")
    parser.add_argument("--mode", choices=("frozen", "finetune"),
                        help="what the VLSMs train (none: frozen, as the study); CNNs always end to end")
    parser.add_argument("--size", choices=("full", "small"),
                        help="architecture size (none: full on CUDA, small on the CPU)")
    parser.add_argument("--batch-size", dest="batch", type=int,
                        help=f"batch size for every model (none: the study's on CUDA, {CPU_BATCH} on the CPU)")
    parser.add_argument("--steps", type=int,
                        help="timed steps per model, and steps per epoch of a sharing trial "
                             "(none: 10 on CUDA, 3 on the CPU)")
    parser.add_argument("--shares", nargs="*", type=int, default=[1, 2, 4],
                        help="numbers of frozen CLIPSeg trials sharing the device (--shares alone skips part 2)")
    parser.add_argument("--features", choices=("cached", "live"), default="cached",
                        help="sharing trials train on the feature cache (cached, as the grid) or run the "
                             "encoders every step (live)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per sharing trial")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="where to run (none: cuda when available, else cpu)")
    parser.add_argument("--save", action="store_true",
                        help="store the step times in the planner's table under --gpu-type")
    parser.add_argument("--gpu-type", help="device type to store under (none: from the GPU's name, or cpu)")
    parser.add_argument("--step-times", metavar="JSON",
                        help="step-time table --save writes to; without it, this user's "
                             "($VLSM_CACHE/step_times.json), which the planner reads over the shipped table")


# -- part 1: one model, one fresh process -------------------------------------------------------

def measure_model(name: str, mode: str, size: str, batch: int, steps: int, device: str) -> dict:
    """benchmarks.models's step (encoders every step) plus, in frozen mode, the feature-cache path."""
    from benchmarks.models import measure

    row = measure(name, mode, size, batch, steps, device)
    row.update(batch=batch, size=size)
    row.update(_measure_cached_and_eval(name, mode, size, batch, steps, device))
    return row


def _measure_cached_and_eval(name: str, mode: str, size: str, batch: int, steps: int, device: str) -> dict:
    import torch

    from trainables.feature_cache import supports_feature_cache
    from trainables.losses import dice_bce_loss

    def timed(fn, repeats: int) -> float:
        times = []
        for i in range(repeats + 1):  # the first call warms up
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    torch.manual_seed(0)
    model = build_model(name, mode, size).to(device)
    inputs = model_inputs(name, size)
    pixels = torch.randn(batch, 3, inputs.input_size, inputs.input_size, device=device)
    ids = torch.randint(1, 1000, (batch, inputs.context_length), device=device)
    mask = torch.ones_like(ids)
    target = (torch.rand(batch, 1, inputs.input_size, inputs.input_size, device=device) > 0.5).float()
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()

    def autocast():
        return torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)

    out: dict = {"cached_s": None, "encode_ms_per_row": None, "cached_peak_gib": None}
    if mode != "frozen" or not supports_feature_cache(model):
        model.eval()

        def forward() -> None:
            with torch.no_grad(), autocast():
                model(pixels, ids, mask)

        out["eval_s"] = timed(forward, steps)
        return out

    model.eval()
    features: dict = {}

    def encode() -> None:
        with torch.no_grad(), autocast():
            features["image"] = model.encode_image(pixels)
            features["text"] = model.encode_text(ids, mask)

    out["encode_ms_per_row"] = timed(encode, max(1, steps // 2)) / batch * 1000
    # Stored as the cache keeps them: fp16 floats on the host; the Trainer moves them every step.
    host = {part: {k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype)
                   for k, v in feats.items()} for part, feats in features.items()}
    features.clear()  # free the device copies
    size_hw = (inputs.input_size, inputs.input_size)

    def on_device() -> tuple[dict, dict]:
        return tuple({k: v.to(device).float() if v.is_floating_point() else v.to(device)
                      for k, v in host[part].items()} for part in ("image", "text"))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def train_step() -> None:
        image, text = on_device()
        with autocast():
            logits = model.decode(image, text, size_hw)
        loss = dice_bce_loss(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    out["cached_s"] = timed(train_step, steps)
    if device == "cuda":
        out["cached_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    model.eval()

    def eval_step() -> None:
        image, text = on_device()
        with torch.no_grad(), autocast():
            model.decode(image, text, size_hw)

    out["eval_s"] = timed(eval_step, steps)
    return out


def _model_child(queue, *args) -> None:
    try:
        queue.put(measure_model(*args))
    except Exception as e:  # report it and go on with the next model
        queue.put({"model": args[0], "error": f"{type(e).__name__}: {e}"})


def study_batch(model: str) -> int:
    return training_defaults(model)["batch_size"]


def collect(queue, children: list) -> list[dict]:
    """One result per child; a child that died without one (killed for memory, a crash in CUDA) gives
    an error row, and the others, which would wait for it at the barrier, are stopped."""
    rows: list[dict] = []
    while len(rows) < len(children):
        try:
            rows.append(queue.get(timeout=5))
        except queues.Empty:
            dead = [c for c in children if c.exitcode not in (None, 0)]
            if dead:
                for child in children:
                    if child.is_alive():
                        child.terminate()
                rows.append({"error": f"a process exited with code {dead[0].exitcode} without a result"})
                break
    for child in children:
        child.join()
    return rows


# -- part 2: N frozen CLIPSeg trials sharing the device --------------------------------------------

def _share_child(queue, barrier, shares: int, threads: int, size: str, batch: int, epochs: int, features: str,
                 device: str, data: str, cache_root: str) -> None:
    try:
        queue.put(_share_trial(barrier, shares, threads, size, batch, epochs, features, device, data, cache_root))
    except Exception as e:
        barrier.abort()  # the others would wait for this one forever
        queue.put({"error": f"{type(e).__name__}: {e}"})


def _share_trial(barrier, shares: int, threads: int, size: str, batch: int, epochs: int, features: str,
                 device: str, data: str, cache_root: str) -> dict:
    import torch

    from datasets.segmentation import SegmentationSplit
    from datasets.shards import ShardStore
    from trainables.feature_cache import FeatureCache
    from trainables.trainer import TrainConfig, Trainer

    torch.set_num_threads(threads)
    if device == "cuda" and shares > 1:  # as a trial with a fractional GPU caps itself
        torch.cuda.set_per_process_memory_fraction(1 / shares)
    inputs = model_inputs(SHARED_MODEL, size)
    train = SegmentationSplit(ShardStore(data), "bench", "train", "p6", inputs.input_size, True, 42)
    torch.manual_seed(0)
    model = build_model(SHARED_MODEL, "frozen", size)
    tokenizer = build_tokenizer(SHARED_MODEL)
    config = TrainConfig(lr=training_defaults(SHARED_MODEL)["lr"], batch_size=batch, max_epochs=10**6)
    cache = (FeatureCache(model, tokenizer, inputs, SHARED_MODEL, encoder_prefixes(SHARED_MODEL), root=cache_root)
             if features == "cached" else None)
    trainer = Trainer(model, tokenizer, inputs, config, train, None, device=torch.device(device), feature_cache=cache)
    trainer.train_epoch()  # builds or reads the feature cache and warms up, before the others start
    barrier.wait(timeout=BARRIER_TIMEOUT_S)
    began, start = time.time(), time.perf_counter()  # wall clock: compared across processes
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        trainer.train_epoch()  # its loss.item() per step waits for the device
        times.append(time.perf_counter() - t0)
        trainer.epoch += 1
    return {"samples_s": len(train) / statistics.median(times), "wall_s": time.perf_counter() - start,
            "start": began}


def run_shares(shares: int, threads: int, args, data: str, cache_root: str) -> dict:
    context = multiprocessing.get_context("spawn")
    queue, barrier = context.Queue(), context.Barrier(shares)
    child_args = (queue, barrier, shares, threads, args.size, args.batch_shared, args.epochs, args.features,
                  args.device, data, cache_root)
    children = [context.Process(target=_share_child, args=child_args) for _ in range(shares)]
    for child in children:
        child.start()
    rows = collect(queue, children)
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        return {"shares": shares, "error": errors[0]}
    per = [r["samples_s"] for r in rows]
    starts = [r["start"] for r in rows]
    return {"shares": shares, "threads": threads, "total": sum(per), "per_process": statistics.median(per),
            "start_spread_s": max(starts) - min(starts), "wall_s": max(r["wall_s"] for r in rows)}


# -- storing -------------------------------------------------------------------------------------

def device_type(name: str) -> str:
    """The planner's device type from a GPU's name: 'NVIDIA H100 80GB HBM3' -> 'h100'."""
    from orchestrator.plan import PRICES

    lowered = name.lower()
    for known in sorted(PRICES, key=len, reverse=True):
        if known != "cpu" and re.search(rf"\b{known}\b", lowered):
            return known
    return re.sub(r"[^a-z0-9]+", "-", lowered.replace("nvidia", "")).strip("-")


def save(rows: list[dict], device: str, device_name: str, path: str | None) -> str:
    """Store the rows' step times under ``device`` in ``path``, or with None in this user's step-time
    file (``search_spaces.estimates.user_step_times``; never the shipped table). Returns the file."""
    from search_spaces.estimates import load_step_times, save_step_times

    known = load_step_times(path)["devices"].get(device, {})
    entries = {}
    for row in rows:
        key = f"{row['model']}/{row['mode']}/{row['size']}"
        cached = row["cached_s"] is not None
        entry = {k: v for k, v in known.get(key, {}).items() if k in ("setup_s", "start_s")}  # batch-free
        entry.update(batch=row["batch"], step_ms=round((row["cached_s"] if cached else row["step_s"]) * 1000, 2),
                     eval_step_ms=round(row["eval_s"] * 1000, 2), peak_gib=round(row["peak_gib"], 2))
        if cached:
            entry["cache_build_ms_per_row"] = round(row["encode_ms_per_row"], 3)
        elif row["mode"] == "frozen":  # plan scales a frozen step timed with the encoders to the cached path
            entry["features"] = "live"
        entry["source"] = (f"benchmarks gpu on {device_name}, input {row['input']}, "
                           + ("decoder on cached fp16 features (encoders every step: "
                              f"{row['step_s'] * 1000:.1f} ms)" if cached else "encoders every step")
                           + f", random init, {time.strftime('%Y-%m-%d')}")
        entries[key] = entry
    return save_step_times({"devices": {device: entries}}, path)


# -- the command ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _node_cache(path: str) -> Iterator[None]:
    """A private node cache (decoded images, features) for the sharing trials, not the user's."""
    from datasets.cache import CACHE_ENV

    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = path  # the spawned trials inherit it
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = previous


def _fmt(value, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def run(args) -> int:
    import torch

    from search_spaces.estimates import load_step_times, ship_hint

    if args.save:
        try:
            load_step_times(args.step_times)  # a table that cannot be read stops here, before the measuring
        except ValueError as e:
            print(e, file=sys.stderr)
            return 2
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = args.device == "cuda"
    args.size = args.size or ("full" if on_cuda else "small")
    args.steps = args.steps or (10 if on_cuda else 3)
    name = torch.cuda.get_device_name() if on_cuda else f"CPU, {os.cpu_count()} cores"
    print(f"on {name}: {args.size} models, random init, medians")
    differs = ([] if args.size == "full" else ["small models"]) + (
        [f"batch {args.batch} for every model"] if args.batch else [] if on_cuda else [f"batch {CPU_BATCH} (CPU)"])
    if differs:
        print(f"note: not the study's sizes ({', '.join(differs)}); the study's: full models at batch 128 "
              "(CLIPSeg, BiomedCLIPSeg), 32 (CRIS), 16 (CNNs), the defaults on a CUDA GPU")

    rows = []
    if args.models:
        print(f"\nstep time per model, median of {args.steps} steps, each model in a fresh process")
        print(f"{'model':<16} {'mode':<9} {'input':>5} {'batch':>5} {'step (s)':>9} {'cached (s)':>10} "
              f"{'eval (s)':>9} {'encode ms/img':>13} {'peak GiB':>9} {'cached GiB':>10}")
        context = multiprocessing.get_context("spawn")
        for model in args.models:
            mode = "finetune" if card(model).family == "cnn" else (args.mode or "frozen")
            batch = args.batch or (study_batch(model) if on_cuda else CPU_BATCH)
            queue = context.Queue()
            child = context.Process(target=_model_child,
                                    args=(queue, model, mode, args.size, batch, args.steps, args.device))
            child.start()
            row = collect(queue, [child])[0]
            row.setdefault("model", model)
            if "error" in row:
                print(f"{model:<16} failed: {row['error']}", flush=True)
                continue
            rows.append(row)
            print(f"{model:<16} {mode:<9} {row['input']:>5} {batch:>5} {row['step_s']:>9.3f} "
                  f"{_fmt(row['cached_s'], '.3f', 10)} {row['eval_s']:>9.3f} "
                  f"{_fmt(row['encode_ms_per_row'], '.2f', 13)} {row['peak_gib']:>9.2f} "
                  f"{_fmt(row['cached_peak_gib'], '.2f', 10)}", flush=True)
        print("step: forward + backward + AdamW with the encoders every step; cached: the decoder alone on fp16 "
              "encoder outputs from the host (a frozen grid trial's step); encode: the frozen encoders once per "
              "image (building the cache); peak: " + ("CUDA allocated" if on_cuda else "the process's resident set"))

    if args.shares:
        args.batch_shared = args.batch or (study_batch(SHARED_MODEL) if on_cuda else CPU_BATCH)
        rows_per_epoch = args.batch_shared * args.steps
        input_size = model_inputs(SHARED_MODEL, args.size).input_size
        cpus = os.cpu_count() or 1
        print(f"\n{SHARED_MODEL} frozen, {args.size} (input {input_size}), trials sharing one "
              + ("GPU, each capped at 1/N of its memory" if on_cuda else "CPU, its threads split between them")
              + f": batch {args.batch_shared}, {args.steps} steps per epoch, median of {args.epochs} epochs, "
              + ("decoder on the feature cache" if args.features == "cached" else "encoders every step"))
        print(f"{'trials':>6} {'threads':>7} {'total samples/s':>15} {'per trial':>10} {'speed-up':>9} "
              f"{'slowdown':>9} {'start spread (s)':>16}")
        base = None
        with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp, _node_cache(f"{tmp}/cache"):
            write_split_data(f"{tmp}/shards", rows_per_epoch, 1)
            for shares in args.shares:
                threads = max(1, cpus // shares)
                row = run_shares(shares, threads, args, f"{tmp}/shards", f"{tmp}/features")
                if "error" in row:
                    print(f"{shares:>6} failed: {row['error']}", flush=True)
                    continue
                if shares == 1:
                    base = row["total"]
                speed_up = f"{row['total'] / base:>8.2f}x" if base else f"{'-':>9}"
                slowdown = f"{base / row['per_process']:>8.2f}x" if base else f"{'-':>9}"
                print(f"{shares:>6} {threads:>7} {row['total']:>15.1f} {row['per_process']:>10.1f} "
                      f"{speed_up} {slowdown} {row['start_spread_s']:>16.2f}", flush=True)
        print("total: the trials' samples/s added up; speed-up: total over one trial alone; slowdown: one trial's "
              "epoch against running alone (the planner's --share-slowdown); start spread: how far apart the "
              "trials began after the barrier")

    if args.save and rows:
        device = args.gpu_type or (device_type(name) if on_cuda else "cpu")
        print(f"\nstored {len(rows)} entries under {device!r} in {save(rows, device, name, args.step_times)}")
        if not args.step_times:
            print(ship_hint(device))
    return 0

