"""Price a grid before it runs: GPU-hours, makespan and cost on a cluster shape, against one GPU at a time.

    python -m orchestrator.run plan grid --gpus 8 --gpu-type a10g [--profile study] [--block B ...]
    python -m orchestrator.run plan hpo --model clipseg --datasets study --gpus 4 --gpu-type h200
    python -m orchestrator.run plan grid --gpu-type cpu --calibrate     # measure step times here first

A trial's time is ``start + setup + epochs x (train rows x train time per sample + val rows x eval
time per sample) + test rows x eval time per sample``, plus, in frozen mode, computing the feature
cache once per (model, dataset) on the node. Step times come from ``search_spaces/step_times.json``
with this user's measurements laid over it (``$VLSM_CACHE/step_times.json``, written by
``python -m benchmarks gpu --save`` or ``plan --calibrate``; ``search_spaces.estimates``), else
from the paper's minutes and epochs per experiment (Appendix C.1, on each model card). Epochs: the
paper's average where it gives one (CLIPSeg 90, CRIS 45, BiomedCLIPSeg 80, -D 50), else twice the
early-stopping patience, never more than the spec's ``max_epochs``. Trials are packed in grid order
onto the GPUs by their GPU share (``search_spaces.defaults.resources_for``), each at its solo speed
(``--share-slowdown`` models contention), as Ray Tune starts them.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from datasets.catalogue import POOLS
from datasets.shards import ShardStore
from datasets.synthetic import SYNTHETIC_DATASETS
from orchestrator.arguments import above_one, gpu_share, non_negative_float, positive_float, positive_int
from orchestrator.common import (
    DEFAULT_STORAGE,
    add_cluster_argument,
    add_spec_arguments,
    build_specs,
    ensure_synthetic,
)
from orchestrator.hpo import base_spec, trial_specs
from orchestrator.placement import REPO_CLUSTER_FILE, fit_summary, node_types_from_cluster_file
from search_spaces.defaults import resources_for
from search_spaces.estimates import (  # noqa: F401 (re-exported)
    STEP_TIMES,
    expected_epochs,
    load_step_times,
    save_step_times,
    ship_hint,
    user_step_times,
)
from search_spaces.experiment import ExperimentSpec
from search_spaces.grid import PROFILES, block_of
from search_spaces.hpo import BATCH_SIZES, GRACE_PERIOD, HPO_DATASETS, MAX_T, NUM_SAMPLES, REDUCTION_FACTOR
from trainables.models import card

# On-demand $ per GPU-hour: AWS EC2 list prices, us-east-1, Linux, as of 2025-06 (instance price / GPUs):
# g5.xlarge (A10G) $1.006, g6.xlarge (L4) $0.805, p4d.24xlarge (8 A100 40 GB) $32.77, p5.48xlarge
# (8 H100) $55.04 after the June 2025 cut, p5en.48xlarge (8 H200) about $63.30. Check current prices;
# --price overrides.
PRICES_DATE = "2025-06, AWS EC2 on-demand, us-east-1"
PRICES: dict[str, float] = {"a10g": 1.006, "l4": 0.805, "a100": 4.10, "h100": 6.88, "h200": 7.91, "cpu": 0.0}
# Rows per split (train, val, test): DATA-FACTS; used when the shards are not at --data.
DATASET_ROWS: dict[str, tuple[int, int, int]] = {
    "kvasir_polyp": (800, 100, 100), "clinicdb_polyp": (490, 61, 61), "bkai_polyp": (800, 100, 100),
    "isic": (810, 90, 379), "dfu": (1600, 200, 200), "busi": (624, 78, 78), "camus": (4800, 600, 600),
    "chexlocalize": (1279, 446, 452), "cvc300_polyp": (0, 0, 60), "colondb_polyp": (0, 0, 380),
    "etis_polyp": (0, 0, 196),
    # Appendix F.2: 1,141 images; the split is not given, so 80/10/10 is assumed.
    "mimic_cxr_lungs": (913, 114, 114),
}
EVAL_FRACTION = 1 / 3  # an evaluation batch (forward only) against a training step, when not measured


@dataclass
class TrialTime:
    name: str
    seconds: float
    share: float  # of a GPU (or CPUs, on --gpu-type cpu)
    epochs: int
    source: str


def split_rows(dataset: str, data: str | None) -> tuple[int, int, int]:
    """(train, val, test) rows: from the shards' manifest at ``data`` if there, else DATA-FACTS."""
    if dataset in POOLS:
        rows = [split_rows(m, data) for m in POOLS[dataset].members]
        return sum(r[0] for r in rows), sum(r[1] for r in rows), 0
    if data:
        try:
            manifest = ShardStore(data, cache=False).manifest(dataset)
            return tuple(manifest.splits.get(s, {}).get("rows", 0) for s in ("train", "val", "test"))
        except Exception:  # not there: fall back to the study's numbers
            pass
    if dataset in SYNTHETIC_DATASETS:
        sizes = SYNTHETIC_DATASETS[dataset]["split_sizes"]
        return sizes["train"], sizes["val"], sizes["test"]
    if dataset not in DATASET_ROWS:
        raise ValueError(f"no row counts for dataset {dataset!r}: not at --data and not in DATA-FACTS")
    return DATASET_ROWS[dataset]


def per_sample_seconds(spec: dict, table: dict, device: str) -> tuple[float, float, dict, str]:
    """(train s per sample, eval s per sample, the device entry, its source) for a spec."""
    entry = table["devices"].get(device, {}).get(f"{spec['model']}/{spec['mode']}/{spec['size']}")
    if entry:
        train = entry["step_ms"] / 1000 / entry["batch"]
        evaluate = entry.get("eval_step_ms", entry["step_ms"] * EVAL_FRACTION) / 1000 / entry["batch"]
        return train, evaluate, entry, f"{device} measured"
    model = spec["model"] if card(spec["model"]).paper_time else "clipseg"
    minutes, epochs = card(model).paper_time
    # The paper's minutes cover train and validation epochs over its eight datasets' mean rows.
    rows = statistics.fmean(sum(DATASET_ROWS[d][:2]) for d in (
        "kvasir_polyp", "clinicdb_polyp", "bkai_polyp", "isic", "dfu", "busi", "camus", "chexlocalize"))
    per_sample = minutes * 60 / epochs / rows
    source = "paper" if model == spec["model"] else "guess (paper's CLIPSeg time)"
    return per_sample, per_sample, {}, source


def trial_time(spec: dict, table: dict, device: str, data: str | None, epochs_override: int | None,
               first_of_cache: bool, share: float) -> TrialTime:
    train_rows, val_rows, _ = split_rows(spec["train_set"], data)
    test_rows = sum(split_rows(d, data)[2] for d in spec["eval_sets"])
    train_s, eval_s, entry, source = per_sample_seconds(spec, table, device)
    epochs = 0 if spec["mode"] == "zeroshot" else expected_epochs(spec, table, epochs_override)
    seconds = (entry.get("start_s", 0.0) + entry.get("setup_s", 0.0)
               + epochs * (train_rows * train_s + val_rows * eval_s) + test_rows * eval_s)
    if first_of_cache and spec["mode"] == "frozen":
        seconds += entry.get("cache_build_ms_per_row", 0.0) / 1000 * (train_rows + val_rows + test_rows)
    return TrialTime(spec["id"], seconds, share, epochs, source)


def makespan(trials: list[TrialTime], devices: int, max_concurrent: int | None = None,
             share_slowdown: float = 1.0) -> float:
    """Start trials in order, each as soon as one device has its share free (first fit), as Tune does."""
    free = [1.0] * devices
    running: list[tuple[float, int, float]] = []  # (end, device, share)
    now = end = 0.0
    for trial in trials:
        share = min(trial.share, 1.0)
        while True:
            fits = [d for d in range(devices) if free[d] + 1e-9 >= share]
            if fits and (not max_concurrent or len(running) < max_concurrent):
                break
            now, device, released = heapq.heappop(running)
            free[device] += released
        device = fits[0]
        free[device] -= share
        seconds = trial.seconds * (share_slowdown if share < 1 else 1.0)
        heapq.heappush(running, (now + seconds, device, share))
        end = max(end, now + seconds)
    return end


def estimate(specs: list[dict], table: dict, device: str, data: str | None, epochs: int | None,
             gpus_per_trial: float | None, cpus_per_trial: float | None, cpus: int = 1) -> list[TrialTime]:
    seen: set[tuple] = set()
    trials = []
    for spec in specs:
        if device == "cpu":  # one pool of CPUs: a trial takes its CPUs' share of it
            share = (cpus_per_trial or 1.0) / cpus
        else:
            share = resources_for(spec, gpus_per_trial, cpus_per_trial)["gpu"]
        # The feature cache is keyed by the encoders' weights: the seed matters only to random ones (--seeds).
        seed = spec["seed"] if spec["weights"] is None else None
        key = (spec["model"], spec["size"], spec["weights"], seed, spec["train_set"])
        trials.append(trial_time(spec, table, device, data, epochs, key not in seen, share))
        seen.add(key)
    return trials


def asha_epochs(max_t: int, grace: int, factor: float) -> float:
    """Expected epochs of one ASHA trial: all reach the grace period, 1/factor of them each next rung."""
    rungs = [grace]
    while rungs[-1] * factor < max_t:
        rungs.append(int(rungs[-1] * factor))
    rungs.append(max_t)
    total, previous = 0.0, 0
    for k, rung in enumerate(rungs):
        total += (rung - previous) / factor**k
        previous = rung
    return total


def hpo_trials(args, table: dict) -> tuple[list[TrialTime], int | None]:
    datasets = list(HPO_DATASETS) if args.datasets in (None, ["study"]) else args.datasets
    mode = args.mode or card(args.model).as_run_mode
    weights = card(args.model).weights if args.size == "full" else None
    base = base_spec(args.model, mode, args.size, "random", args.max_epochs, weights)
    epochs = asha_epochs(args.max_epochs, args.grace_period, args.reduction_factor)
    trials = []
    for i in range(args.num_samples):  # batch sizes drawn uniformly: cycle through them
        batch = BATCH_SIZES[i % len(BATCH_SIZES)]
        setting = {**base, "batch_size": batch}
        seconds = 0.0
        for spec in trial_specs(base, setting, datasets).values():
            spec = {**spec, "id": f"hpo-{i}"}
            one = trial_time({**spec, "eval_sets": []}, table, args.gpu_type, args.data, 1, False, 1.0)
            seconds += (one.seconds - _fixed(spec, table, args.gpu_type)) * epochs
        seconds += _fixed(base, table, args.gpu_type)
        share = (args.cpus_per_trial or 1.0) / args.gpus if args.gpu_type == "cpu" else resources_for(
            setting, args.gpus_per_trial, args.cpus_per_trial, replicas=len(datasets))["gpu"]
        trials.append(TrialTime(f"hpo-{i}", seconds, share, round(epochs, 1),
                                per_sample_seconds(base, table, args.gpu_type)[3]))
    return trials, args.max_concurrent


def _fixed(spec: dict, table: dict, device: str) -> float:
    entry = per_sample_seconds(spec, table, device)[2]
    return entry.get("start_s", 0.0) + entry.get("setup_s", 0.0)


def grid_specs(args) -> list[dict]:
    return [{**s.to_dict(), "id": s.id} for s in build_specs(args)]


def grid_fit(specs: list[dict], args) -> list[str]:
    """Per block, where the grid's trials fit on the cluster file's node types (--cluster)."""
    by_block: dict[str, list[dict]] = {}
    for spec in specs:
        by_block.setdefault(block_of(ExperimentSpec.from_dict(spec)), []).append(spec)
    path = args.cluster or str(REPO_CLUSTER_FILE)
    return fit_summary(by_block, node_types_from_cluster_file(path), path, gpus_per_trial=args.gpus_per_trial,
                       cpus=args.cpus_per_trial)


def summary(trials: list[TrialTime], args, grid_start_s: float, max_concurrent: int | None) -> dict:
    """The plan's numbers: seconds, device-hours and dollars, packed and one at a time."""
    device, devices = args.gpu_type, args.gpus
    price = args.price if args.price is not None else PRICES.get(device)
    # On CPUs, trials share one pool (their share is CPUs over all CPUs); GPUs are packed one by one.
    pool = 1 if device == "cpu" else devices
    packed = makespan(trials, pool, max_concurrent, args.share_slowdown) + grid_start_s
    alone = sum(t.seconds for t in trials) + grid_start_s
    return {
        "trials": len(trials), "device": device, "devices": devices, "price_per_hour": price,
        "makespan_s": packed, "device_hours": packed * devices / 3600,
        "busy_device_hours": sum(t.seconds * t.share for t in trials) / 3600 * (devices if device == "cpu" else 1),
        "sequential_s": alone, "sequential_device_hours": alone / 3600,
        "cost": None if price is None else packed * devices / 3600 * price,
        "sequential_cost": None if price is None else alone / 3600 * price,
        "sources": sorted({t.source for t in trials}),
    }


def report(trials: list[TrialTime], args, grid_start_s: float, max_concurrent: int | None) -> list[str]:
    numbers = summary(trials, args, grid_start_s, max_concurrent)
    device, devices, price = args.gpu_type, args.gpus, numbers["price_per_hour"]
    packed, alone, billed = numbers["makespan_s"], numbers["sequential_s"], numbers["device_hours"]
    used, sources = numbers["busy_device_hours"], numbers["sources"]
    unit = "CPU" if device == "cpu" else "GPU"
    lines = [f"{len(trials)} trials on {devices} x {device}; step times: {', '.join(sources)}",
             f"expected epochs per trial: {_spread([t.epochs for t in trials])}; "
             f"trial time: {_spread([t.seconds / 60 for t in trials])} min",
             f"{'':<34} {'makespan':>12} {unit + '-hours':>10} {'cost':>10}"]

    def cost(hours: float) -> str:
        return f"${hours * price:,.2f}" if price is not None else "n/a"

    lines.append(f"{f'packed on {devices} {unit}s (fractions)':<34} {_duration(packed):>12} {billed:>10.2f} "
                 f"{cost(billed):>10}")
    lines.append(f"{'one at a time on one ' + unit:<34} {_duration(alone):>12} {alone / 3600:>10.2f} "
                 f"{cost(alone / 3600):>10}")
    lines.append(f"{unit}-hours busy with trials (share x time): {used:.2f}; speed-up of the packed run "
                 f"{alone / packed:.1f}x")
    if price is not None:
        lines.append(f"price: ${price}/{unit}-hour ({'--price' if args.price is not None else PRICES_DATE})")
    else:
        lines.append(f"no price for {device!r}: pass --price (known: {', '.join(PRICES)})")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _spread(values: list[float]) -> str:
    if not values:
        return "none"
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"median {mid:.1f} (min {lo:.1f}, max {hi:.1f})" if lo != hi else f"{mid:.1f}"


# -- calibration ---------------------------------------------------------------------------------

def calibrate(specs: list[dict], data: str, device: str, path: str | None, threads: int,
              epochs: int = 3) -> list[str]:
    """Measure each (model, mode, size) of ``specs`` here through the real Trainer, on the spec's data,
    with a private feature cache (so the grid that follows builds its own); store the entries under
    ``device`` in ``path``, or with None in this user's step-time file (never the shipped table)."""
    import torch  # costly (PyTorch ~2 s, the Trainer and models more): only --calibrate trains

    from trainables.experiment import prepare

    load_step_times(path)  # a table that cannot be read stops here, before the measuring
    entries = {}
    lines = []
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import trainables.tune_trainable"], check=True,
                   env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    start_s = time.perf_counter() - start
    grid_start_s = _ray_start_seconds()
    torch.set_num_threads(threads)
    done = set()
    for spec in specs:
        key = f"{spec['model']}/{spec['mode']}/{spec['size']}"
        if key in done or spec["mode"] == "zeroshot":
            continue
        done.add(key)
        with tempfile.TemporaryDirectory(prefix="plan_calibrate_") as cache:
            previous = os.environ.get("VLSM_CACHE")
            os.environ["VLSM_CACHE"] = cache
            try:
                t0 = time.perf_counter()
                trainer, _ = prepare({**spec, "max_epochs": epochs + 1}, data)
                setup_s = time.perf_counter() - t0
                first, train_times, val_times = None, [], []
                for epoch in range(epochs + 1):
                    t0 = time.perf_counter()
                    trainer.train_epoch()
                    t1 = time.perf_counter()
                    trainer.evaluate(trainer.val_set)
                    t2 = time.perf_counter()
                    trainer.epoch += 1
                    if epoch == 0:
                        first = t2 - t0
                    else:
                        train_times.append(t1 - t0)
                        val_times.append(t2 - t1)
            finally:
                if previous is None:
                    os.environ.pop("VLSM_CACHE", None)
                else:
                    os.environ["VLSM_CACHE"] = previous
        batch = spec["batch_size"]
        train_rows, val_rows = len(trainer.train_set), len(trainer.val_set)
        train_batches = train_rows // batch + (train_rows % batch > 1)  # a last batch of one is dropped
        steady = statistics.median(train_times) + statistics.median(val_times)
        entries[key] = {
            "batch": batch,
            "step_ms": round(statistics.median(train_times) / max(1, train_batches) * 1000, 2),
            "eval_step_ms": round(statistics.median(val_times) / max(1, math.ceil(val_rows / batch)) * 1000, 2),
            "setup_s": round(setup_s, 2), "start_s": round(start_s, 2),
            "cache_build_ms_per_row": round(max(0.0, first - steady) / (train_rows + val_rows) * 1000, 3),
            "source": f"plan --calibrate on {device} ({os.cpu_count()} cores), {threads} torch thread(s), "
                      f"{time.strftime('%Y-%m-%d')}",
        }
        lines.append(f"{key}: step {entries[key]['step_ms']} ms, eval step {entries[key]['eval_step_ms']} ms at "
                     f"batch {batch}; setup {setup_s:.1f} s; first epoch {first:.1f} s, later {steady:.1f} s")
    lines.append(f"trial process start {start_s:.1f} s; Ray start {grid_start_s:.1f} s")
    saved = save_step_times({"devices": {device: entries}, "grid_start_s": {device: round(grid_start_s, 2)}}, path)
    lines.append(f"stored under {device!r} in {saved}" + ("" if path else f" {ship_hint(device)}"))
    return lines


def _ray_start_seconds() -> float:
    import ray  # costly (~0.5 s): only --calibrate starts Ray

    start = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    ray.shutdown()
    return time.perf_counter() - start


# -- command line --------------------------------------------------------------------------------

def add_plan_arguments(p: argparse.ArgumentParser, default_data: str) -> None:
    p.add_argument("what", choices=("grid", "hpo"), help="price a grid (as `run grid` would run it) or a search")
    p.add_argument("--gpus", type=positive_int, default=1, metavar="N",
                   help="GPUs of the cluster (with --gpu-type cpu: CPUs, one trial per CPU)")
    p.add_argument("--gpu-type", default="a10g", metavar="TYPE",
                   help=f"device type: step times and price (priced: {', '.join(PRICES)})")
    p.add_argument("--price", type=non_negative_float, metavar="USD", help="$ per GPU-hour, overriding the table")
    p.add_argument("--profile", choices=sorted(PROFILES), default="demo", help="grid profile")
    p.add_argument("--block", action="append", metavar="NAME", help="study blocks to price (repeatable)")
    p.add_argument("--only", action="append", metavar="PATTERN", help="experiments whose id matches (repeatable)")
    p.add_argument("--max-epochs", type=positive_int, metavar="E",
                   help="cap every experiment's epochs, as `run grid --max-epochs` (hpo: ASHA's max_t)")
    add_spec_arguments(p)
    add_cluster_argument(p)
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="results root, for --hparams-from-hpo")
    p.add_argument("--expected-epochs", type=positive_int, metavar="E",
                   help="assume every experiment stops after E epochs (none: the paper's averages)")
    p.add_argument("--data", default=default_data,
                   help="shards whose manifests give row counts (where missing: DATA-FACTS)")
    p.add_argument("--gpus-per-trial", type=gpu_share, metavar="F", help="GPU share per trial (none: the model's)")
    p.add_argument("--cpus-per-trial", type=positive_float, metavar="C", help="CPUs per trial (none: the model's)")
    p.add_argument("--share-slowdown", type=positive_float, default=1.0, metavar="X",
                   help="trials sharing a GPU run X times slower than alone (1: no contention)")
    p.add_argument("--step-times", metavar="JSON",
                   help="step-time table read (and written by --calibrate) alone; without it, the shipped table "
                        "with this user's measurements ($VLSM_CACHE/step_times.json) over it, --calibrate "
                        "storing into the latter")
    p.add_argument("--calibrate", action="store_true",
                   help="first measure the grid's models here through the Trainer and store them under --gpu-type")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads while calibrating (1: as a trial)")
    p.add_argument("--calibrate-epochs", type=positive_int, default=2, metavar="E",
                   help="epochs measured per model after the first")
    p.add_argument("--json", action="store_true", help="also print the numbers as one JSON line")
    # hpo
    p.add_argument("--datasets", nargs="+", metavar="NAME", help="hpo: datasets (none: the study's eight)")
    p.add_argument("--size", choices=("small", "full"), default="full", help="hpo: model size")
    p.add_argument("--mode", choices=("frozen", "finetune"), help="hpo: what trains (none: as the study)")
    p.add_argument("--num-samples", type=positive_int, default=NUM_SAMPLES,
                   help="hpo: settings tried, as hpo --num-samples")
    p.add_argument("--grace-period", type=positive_int, default=GRACE_PERIOD,
                   help="hpo: ASHA grace period, as hpo --grace-period")
    p.add_argument("--reduction-factor", type=above_one, default=REDUCTION_FACTOR,
                   help="hpo: ASHA reduction factor, as hpo --reduction-factor")
    p.add_argument("--max-concurrent", type=positive_int, default=4,
                   help="hpo: trials at once, as hpo --max-concurrent")


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        table = load_step_times(args.step_times)
        if args.what == "hpo":
            if len(args.model or ()) != 1:  # --model is the spec arguments' (repeatable for a grid)
                print("plan hpo needs one --model: the model searched", file=sys.stderr)
                return 2
            args.model = args.model[0]
            args.max_epochs = args.max_epochs or MAX_T
            trials, limit = hpo_trials(args, table)
            title = (f"hpo search for {args.model}: {args.num_samples} settings, ASHA max_t {args.max_epochs}, "
                     f"grace {args.grace_period}, factor {args.reduction_factor:g}")
        else:
            specs = grid_specs(args)
            if not specs:
                print("no experiment matches", file=sys.stderr)
                return 2
            if args.calibrate:
                ensure_synthetic(args.data, args.profile)
                print(*calibrate(specs, args.data, args.gpu_type, args.step_times, args.threads,
                                 args.calibrate_epochs), sep="\n")
                table = load_step_times(args.step_times)
            trials = estimate(specs, table, args.gpu_type, args.data, args.expected_epochs, args.gpus_per_trial,
                              args.cpus_per_trial, args.gpus)
            limit = None
            title = f"grid {args.profile}" + (f" blocks {', '.join(args.block)}" if args.block else "")
            print(*grid_fit(specs, args), sep="\n")
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    print(title)
    grid_start_s = table.get("grid_start_s", {}).get(args.gpu_type, 0.0)
    print(*report(trials, args, grid_start_s, limit), sep="\n")
    if args.json:
        print(json.dumps(summary(trials, args, grid_start_s, limit)))
    return 0
