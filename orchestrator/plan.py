"""Price a grid before it runs: GPU-hours, makespan and cost on a cluster shape, against one GPU at a time.

    python -m orchestrator.run plan grid --gpus 8 --gpu-type a10g [--profile study] [--block B ...] [--explain]
    python -m orchestrator.run plan hpo --model clipseg --datasets study --gpus 4 --gpu-type h200
    python -m orchestrator.run plan grid --gpu-type cpu --calibrate     # measure step times here first

A trial is priced as the project runs it (``search_spaces.estimates``): start and setup, expected epochs
x (train rows x train time + val rows x eval time per sample), its test sets, and the caches it is
the first to need: the decoded split once per (dataset, split, input size), and in frozen mode the
feature cache once per (encoders, dataset, split) for images and once per (dataset, prompt type) for
text, after which the epochs run the decoder alone. Per-sample times are measured on the GPU type
(``search_spaces/step_times.json`` with this user's measurements over it) or the paper's minutes per
experiment, scaled by the ratios the project measured (``search_spaces/time_factors.json``: the feature
cache, bf16, Ray Train's efficiency); every figure carries a label that ``--explain`` resolves to its
source. Expected epochs: the paper's average where it gives one, else twice the patience, never more
than ``max_epochs``.

The order they are submitted in (longest first), each one's Ray Train workers and the packing that gives
the makespan are ``orchestrator.schedule``'s, shared with ``grid``; ``--calibrate`` is
``orchestrator.calibrate``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

from orchestrator.arguments import above_one, gpu_share, non_negative_float, positive_float, positive_int
from orchestrator.calibrate import calibrate
from orchestrator.common import (
    DEFAULT_STORAGE,
    add_cluster_argument,
    add_spec_arguments,
    add_workers_argument,
    build_specs,
    ensure_synthetic,
    study_of,
)
from orchestrator.hpo import base_spec, trial_specs
from orchestrator.placement import (
    HEAD_CLUSTER_FILE,
    REPO_CLUSTER_FILE,
    fit_summary,
    node_types_from_cluster_file,
)
from orchestrator.schedule import ORDERS, launch_plan, makespan, schedule
from search_spaces.defaults import resources_for
from search_spaces.estimates import (  # noqa: F401 (STEP_TIMES, expected_epochs: read from here by tests)
    STEP_TIMES,
    TrialTime,
    expected_epochs,
    figures,
    load_step_times,
    load_time_factors,
    trial_time,
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


def per_sample_seconds(spec: dict, table: dict, device: str) -> tuple[float, float, dict, str]:
    """(train s per sample, eval s per sample, the device entry, the first figure's label) for a spec."""
    found = figures(spec, table, load_time_factors(), device)
    entry = table["devices"].get(device, {}).get(f"{spec['model']}/{spec['mode']}/{spec['size']}") or {}
    return found.train_s, found.eval_s, entry, found.labels[0]


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


def hpo_trials(args, table: dict, factors: dict) -> tuple[list[TrialTime], int | None]:
    datasets = list(HPO_DATASETS) if args.datasets in (None, ["study"]) else args.datasets
    mode = args.mode or card(args.model).as_run_mode
    weights = card(args.model).weights if args.size == "full" else None
    base = base_spec(args.model, mode, args.size, "random", args.max_epochs, weights)
    epochs = asha_epochs(args.max_epochs, args.grace_period, args.reduction_factor)
    found = figures(base, table, factors, args.gpu_type)
    trials = []
    for i in range(args.num_samples):  # batch sizes drawn uniformly: cycle through them
        batch = BATCH_SIZES[i % len(BATCH_SIZES)]
        setting = {**base, "batch_size": batch}
        seconds = found.fixed_s
        for spec in trial_specs(base, setting, datasets).values():
            one = trial_time({**spec, "id": f"hpo-{i}", "eval_sets": []}, table, factors, args.gpu_type, args.data,
                             1, 1.0)
            seconds += (one.seconds - found.fixed_s) * epochs  # one epoch's training and validation
        share = (args.cpus_per_trial or 1.0) / args.gpus if args.gpu_type == "cpu" else resources_for(
            setting, args.gpus_per_trial, args.cpus_per_trial, replicas=len(datasets))["gpu"]
        trials.append(TrialTime(f"hpo-{i}", seconds, share, round(epochs, 1), found.labels, block="hpo",
                                epochs_s=seconds - found.fixed_s))
    return trials, args.max_concurrent


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


def largest_node(args) -> tuple[int, str]:
    """GPUs of the largest node type in the cluster file (--cluster, else the repository's), and its name."""
    path = args.cluster or str(REPO_CLUSTER_FILE)
    types = node_types_from_cluster_file(path)
    if not types:
        return 1, f"no GPU node type in {path}"
    largest = max(types, key=lambda t: t.gpus)
    return largest.gpus, f"{largest.name} in {os.path.basename(path)}"


# -- the numbers and the report --------------------------------------------------------------------

def busy_hours(trials: list[TrialTime], device: str, devices: int) -> float:
    """Device-hours busy with trials (share x time); on CPUs the share is of the pool of all CPUs."""
    return sum(t.seconds * t.share for t in trials) / 3600 * (devices if device == "cpu" else 1)


def summary(trials: list[TrialTime], args, grid_start_s: float, max_concurrent: int | None) -> dict:
    """The plan's numbers: seconds, device-hours and dollars, packed and one at a time."""
    device, devices = args.gpu_type, args.gpus
    price = args.price if args.price is not None else PRICES.get(device)
    # On CPUs, trials share one pool (their share is CPUs over all CPUs); GPUs are packed one by one.
    pool = 1 if device == "cpu" else devices
    packed = makespan(trials, pool, max_concurrent, args.share_slowdown) + grid_start_s
    alone = sum(t.alone_s for t in trials) + grid_start_s
    busy = busy_hours(trials, device, devices)
    return {
        "trials": len(trials), "device": device, "devices": devices, "price_per_hour": price,
        "order": getattr(args, "order", "lpt"), "makespan_s": packed, "device_hours": packed * devices / 3600,
        "busy_device_hours": busy, "busy_fraction": busy / (packed * devices / 3600) if packed else 0.0,
        "workers": {str(n): sum(t.workers == n for t in trials) for n in sorted({t.workers for t in trials})},
        "sequential_s": alone, "sequential_device_hours": alone / 3600,
        "cost": None if price is None else packed * devices / 3600 * price,
        "sequential_cost": None if price is None else alone / 3600 * price,
        "sources": sorted({label for t in trials for label in t.labels}),
    }


def report(trials: list[TrialTime], args, grid_start_s: float, max_concurrent: int | None) -> list[str]:
    numbers = summary(trials, args, grid_start_s, max_concurrent)
    device, devices, price = args.gpu_type, args.gpus, numbers["price_per_hour"]
    packed, alone, billed = numbers["makespan_s"], numbers["sequential_s"], numbers["device_hours"]
    used = numbers["busy_device_hours"]
    unit = "CPU" if device == "cpu" else "GPU"
    lines = [f"{len(trials)} trials on {devices} x {device}, "
             f"{'longest first' if numbers['order'] == 'lpt' else 'in grid order'}; figures: "
             f"{', '.join(numbers['sources'])}",
             f"expected epochs per trial: {_spread([t.epochs for t in trials])}; "
             f"trial time: {_spread([t.seconds / 60 for t in trials])} min",
             f"{'':<34} {'makespan':>12} {unit + '-hours':>10} {'cost':>10}"]

    def cost(hours: float) -> str:
        return f"${hours * price:,.2f}" if price is not None else "n/a"

    lines.append(f"{f'packed on {devices} {unit}s (fractions)':<34} {_duration(packed):>12} {billed:>10.2f} "
                 f"{cost(billed):>10}")
    lines.append(f"{'one at a time on one ' + unit:<34} {_duration(alone):>12} {alone / 3600:>10.2f} "
                 f"{cost(alone / 3600):>10}")
    lines.append(f"{unit}-hours busy with trials (share x time): {used:.2f} of {billed:.2f} billed "
                 f"({100 * numbers['busy_fraction']:.0f}%); speed-up of the packed run {alone / packed:.1f}x")
    if price is not None:
        lines.append(f"price: ${price}/{unit}-hour ({'--price' if args.price is not None else PRICES_DATE})")
    else:
        lines.append(f"no price for {device!r}: pass --price (known: {', '.join(PRICES)})")
    return lines


def explain(trials: list[TrialTime], args, grid_start_s: float, table: dict, factors: dict,
            alternatives: dict[str, list[TrialTime]], workers_from: str) -> list[str]:
    """``plan --explain``: per block the trials, GPU-hours, longest trial and its workers, and the
    figures' labels; then the makespan, billed vs busy, the critical path, what the workers and the
    order change, and each label's source."""
    pool = 1 if args.gpu_type == "cpu" else args.gpus
    unit = "CPU" if args.gpu_type == "cpu" else "GPU"
    lines = [f"per block (search_spaces.grid): {unit}-hours busy (share x time); the longest trial, its hours "
             f"and Ray Train workers", f"  {'block':<16} {'trials':>6} {unit + '-hours':>10}  longest trial"]
    blocks: dict[str, list[TrialTime]] = {}
    for t in trials:
        blocks.setdefault(t.block, []).append(t)
    for name, members in blocks.items():
        longest = max(members, key=lambda t: t.seconds)
        lines.append(f"  {name:<16} {len(members):>6} {busy_hours(members, args.gpu_type, args.gpus):>10.2f}  "
                     f"{longest.name} ({longest.seconds / 3600:.2f} h, {longest.workers} worker"
                     f"{'s' if longest.workers > 1 else ''})")
        lines.append(f"  {'':<16} figures: {', '.join(dict.fromkeys(x for t in members for x in t.labels))}")
    placed = schedule(trials, pool, None, args.share_slowdown)
    end = max(e for _, _, e in placed) + grid_start_s
    busy = busy_hours(trials, args.gpu_type, args.gpus)
    billed = end * args.gpus / 3600
    lines.append(f"makespan {_duration(end)} on {args.gpus} {unit}s: {billed:.1f} {unit}-hours billed, {busy:.1f} "
                 f"busy with trials ({100 * busy / billed:.0f}%)" if billed else "makespan 0 s")
    last, start, stop = max(placed, key=lambda p: p[2])
    work_bound = sum(t.seconds * t.share for t in trials) / pool + grid_start_s
    longest = max(trials, key=lambda t: t.seconds)
    bound, why = max((work_bound, "total work / GPUs: every GPU busy to the end"),
                     (longest.seconds + grid_start_s, f"one long trial ({longest.name})"))
    lines.append(f"critical path: {last.name} ends last (starts at {_duration(start)}, runs {_duration(stop - start)} "
                 f"on {last.workers if last.workers > 1 else last.share:g} {unit}); lower bounds: total work / "
                 f"{unit}s {_duration(work_bound)}, the longest trial {_duration(longest.seconds + grid_start_s)}; "
                 f"bound by {why}, the makespan {end / bound:.2f}x it")
    split = [t for t in trials if t.workers > 1]
    for label, others in alternatives.items():
        other = makespan(others, pool, None, args.share_slowdown) + grid_start_s
        other_busy = busy_hours(others, args.gpu_type, args.gpus)
        lines.append(f"{label}: makespan {_duration(other)}, {100 * other_busy / (other * args.gpus / 3600):.0f}% "
                     f"busy (this plan: {_duration(end)})")
    lines.append(f"Ray Train workers per trial: {args.workers_per_trial} (at most {workers_from}); "
                 + (f"{len(split)} trial(s) with more than one: "
                    + ", ".join(f"{t.name} x{t.workers} ({t.seconds / 3600:.2f} h)" for t in split[:4])
                    + (", ..." if len(split) > 4 else "") if split else "every trial on one"))
    lines.append("figures (label: source):")
    for label in dict.fromkeys(x for t in trials for x in t.labels):
        lines.append(f"  {label}: {describe(label, table, factors, args.gpu_type)}")
    if args.gpu_type != "cpu" and not table["devices"].get(args.gpu_type):
        lines.append(f"  nothing is measured on {args.gpu_type!r}: trial start and setup are not priced "
                     f"(measure with `python -m benchmarks gpu --save` on one)")
    return lines


def describe(label: str, table: dict, factors: dict, device: str) -> str:
    """Where the figure a label names comes from."""
    model = label.rsplit(" ", 1)[-1]
    if label.endswith(" measured"):
        sources = {e.get("source", "no source recorded") for e in table["devices"].get(device, {}).values()}
        return f"step times measured on {device}: " + "; ".join(sorted(sources))
    if label.startswith("paper "):
        minutes, epochs = card(model).paper_time
        return (f"the paper's {minutes:g} min and {epochs} epochs per experiment of {card(model).title} "
                f"(Appendix C.1, GPU not named; its as-run regime, {card(model).as_run_mode}) over its eight "
                "datasets' mean rows")
    if label.startswith("guess: "):
        return "no paper time for this model: CLIPSeg's, a guess"
    if label.startswith("as "):
        return (f"the paper's time is of the {label[3:]} regime: another mode is priced as that (CRIS frozen: an "
                "upper bound, no encoder backward; end_to_end: a lower bound)")
    if label.startswith("regime "):
        f = factors["regime"][model]
        return f"a frozen step takes {f['frozen_over_finetune']:.3f} of an end-to-end one: {f['source']}; " \
               f"measured on a CPU, assumed to hold on {device}"
    if label.startswith("feature cache "):
        f = factors["feature_cache"][model]
        build = (f["build_s"] - f["cached_s"]) / f["live_s"]
        return (f"an epoch on cached features takes {f['cached_s'] / f['live_s']:.4f} of one with the encoders every "
                f"step ({f['live_s'] / f['cached_s']:.1f}x), the build {build:.3f} of a live epoch per row: "
                f"{f['source']}; measured on a CPU, assumed to hold on {device}")
    if label.startswith("text share "):
        f = factors["text_share"][model]
        return f"the text tower is {f['share']:.3f} of an encoder pass per row: {f['source']}"
    if label == "one string per row":
        return "assumption: a prompt set has at most one distinct string per row (the text build)"
    if label == "decoded cache":
        return f"{factors['decode']['ms_per_row']:g} ms per image, once per (dataset, split, size): " \
               f"{factors['decode']['source']}"
    if label == "bf16":
        return f"x{1 / factors['bf16']['speedup']:g}: {factors['bf16']['source']}"
    if label == "ddp efficiency":
        return f"{factors['ddp_efficiency']['efficiency']:g} per GPU: {factors['ddp_efficiency']['source']}"
    return "no source recorded"


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


# -- the grid command's submission -----------------------------------------------------------------

def grid_launch(specs: list[ExperimentSpec], args) -> tuple[list[ExperimentSpec], dict[str, int], str]:
    """What ``grid`` submits: its experiments in ``launch_plan``'s order, the Ray Train workers of those
    with more than one (id -> workers) and a line saying so. Reads no data but manifests, starts no Ray:
    the GPUs are the cluster file's (with --address) or this machine's (nvidia-smi); none: one worker each."""
    gpus, most, device, where = launch_gpus(args)
    dicts = [{**s.to_dict(), "id": s.id} for s in specs]
    try:
        trials = launch_plan(dicts, load_step_times(), load_time_factors(), device, args.data, gpus=max(gpus, 1),
                             max_workers=most, workers=args.workers_per_trial, gpus_per_trial=args.gpus_per_trial,
                             cpus_per_trial=args.cpus_per_trial)
    except ValueError as e:  # no row counts for a plug-in dataset, a broken step-time file
        workers = {} if args.workers_per_trial == "auto" else {s.id: int(args.workers_per_trial) for s in specs}
        return list(specs), workers, f"launch order: the grid's ({e})"
    by_id = {s.id: s for s in specs}
    workers = {t.name: t.workers for t in trials if t.workers > 1}
    hours = [t.seconds / 3600 for t in trials]
    line = (f"launch order: longest first by the planner's estimate on {device} ({min(hours):.2f} to "
            f"{max(hours):.2f} h per trial; plan grid --explain prices it); Ray Train workers per trial: "
            f"{args.workers_per_trial}, "
            + (f"{len(workers)} trial(s) with more than one" if workers else "one each") + f" ({where})")
    return [by_id[t.name] for t in trials], workers, line


def launch_gpus(args) -> tuple[int, int, str, str]:
    """(GPUs, GPUs of the largest node, device type, where they were read) for the grid's launch."""
    if args.address:
        path = args.cluster or (str(HEAD_CLUSTER_FILE) if HEAD_CLUSTER_FILE.exists() else None)
        types = node_types_from_cluster_file(path) if path else []
        if not types:
            return 0, 1, "gpu", "no cluster file with GPU node types: pass --cluster"
        nodes = {t.name: 1 if t.max_workers is None else t.max_workers for t in types}
        gpus = sum(t.gpus * nodes[t.name] for t in types)
        largest = max(types, key=lambda t: t.gpus * nodes[t.name])
        return (gpus, max(t.gpus for t in types), _device_type(largest.accelerator or "gpu"),
                f"{gpus} GPUs in {path}: each node type's GPUs x its max_workers")
    if not shutil.which("nvidia-smi"):
        return 0, 1, "cpu", "no GPU on this machine"
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30, check=True).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return 0, 1, "cpu", "nvidia-smi failed: no GPU counted"
    names = [n.strip() for n in names if n.strip()]
    return len(names), len(names), _device_type(names[0] if names else "gpu"), f"{len(names)} GPU(s) on this machine"


def _device_type(name: str) -> str:
    """A step-time device type (a10g, h100, ...) from an accelerator or GPU name."""
    lowered = name.lower()
    for known in sorted(PRICES, key=len, reverse=True):
        if known != "cpu" and re.search(rf"\b{known}", lowered):
            return known
    return re.sub(r"[^a-z0-9]+", "-", lowered.replace("nvidia", "")).strip("-")


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
    p.add_argument("--order", choices=ORDERS, default="lpt",
                   help="submission order: lpt, longest first (as grid submits); grid, the grid's order (to compare)")
    add_workers_argument(p)
    p.add_argument("--explain", action="store_true",
                   help="per block: trials, GPU-hours, the longest trial and its workers, the figures' sources; "
                        "then the makespan, busy share, critical path and what the workers and the order change")
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
        table, factors = load_step_times(args.step_times), load_time_factors()
        if args.what == "hpo":
            if len(args.model or ()) != 1:  # --model is the spec arguments' (repeatable for a grid)
                print("plan hpo needs one --model: the model searched", file=sys.stderr)
                return 2
            args.model = args.model[0]
            args.max_epochs = args.max_epochs or MAX_T
            trials, limit = hpo_trials(args, table, factors)
            title = (f"hpo search for {args.model}: {args.num_samples} settings, ASHA max_t {args.max_epochs}, "
                     f"grace {args.grace_period}, factor {args.reduction_factor:g}")
        else:
            specs = grid_specs(args)
            if not specs:
                print("no experiment matches", file=sys.stderr)
                return 2
            if args.calibrate:
                ensure_synthetic(args.data, study_of(args))
                print(*calibrate(specs, args.data, args.gpu_type, args.step_times, args.threads,
                                 args.calibrate_epochs), sep="\n")
                table = load_step_times(args.step_times)
            most, where = (1, "no GPU: --gpu-type cpu") if args.gpu_type == "cpu" else largest_node(args)
            most = min(most, args.gpus)
            if args.workers_per_trial != "auto" and int(args.workers_per_trial) > 1 and (
                    args.gpu_type == "cpu" or int(args.workers_per_trial) > args.gpus):
                print(f"--workers-per-trial {args.workers_per_trial}: more Ray Train workers than the {args.gpus} "
                      f"{'CPU pool' if args.gpu_type == 'cpu' else 'GPUs'} hold; pass at most --gpus, or auto",
                      file=sys.stderr)
                return 2

            def plan_with(workers: str | int, order: str) -> list[TrialTime]:
                return launch_plan(specs, table, factors, args.gpu_type, args.data, gpus=args.gpus, max_workers=most,
                                   workers=workers, order=order, epochs=args.expected_epochs,
                                   gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial)

            trials = plan_with(args.workers_per_trial, args.order)
            alternatives = {}
            if any(t.workers > 1 for t in trials) or args.explain:
                alternatives["one worker per trial"] = plan_with(1, args.order)
            if args.explain:
                other = "grid" if args.order == "lpt" else "lpt"
                alternatives[f"order {other}"] = plan_with(args.workers_per_trial, other)
            limit = None
            title = f"grid {args.profile}" + (f" blocks {', '.join(args.block)}" if args.block else "")
            print(*grid_fit(specs, args), sep="\n")
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    print(title)
    grid_start_s = table.get("grid_start_s", {}).get(args.gpu_type, 0.0)
    print(*report(trials, args, grid_start_s, limit), sep="\n")
    if args.what == "grid":
        if args.explain:
            print(*explain(trials, args, grid_start_s, table, factors, alternatives, f"{most}: {where}"), sep="\n")
        elif "one worker per trial" in alternatives:
            pool = 1 if args.gpu_type == "cpu" else args.gpus
            one = makespan(alternatives["one worker per trial"], pool, None, args.share_slowdown) + grid_start_s
            split = sum(t.workers > 1 for t in trials)
            print(f"Ray Train workers: {split} trial(s) on more than one GPU; with one worker each the makespan "
                  f"would be {_duration(one)}")
    if args.json:
        print(json.dumps(summary(trials, args, grid_start_s, limit)))
    return 0
