"""Fractional packing: a grid of sleep trials at a quarter of a logical GPU each, makespan against the ideal.

A local Ray declares ``--gpus`` logical GPUs; every trial asks for ``--gpu-fraction`` of one (and a
small CPU share) and sleeps ``--sleep`` seconds, so ``gpus / fraction`` trials fit at once and the
ideal makespan is ``ceil(trials / concurrent) x sleep``. Measured: Tuner.fit from start to end
(what a user waits for once Ray is up), plus Ray's start and the span from the first trial's start
to the last one's end (the packing alone, without Tune's own start and finish). By default the
grid runs twice on one Ray: with Tune's ``reuse_actors`` off, where every trial
starts a process, and on (as the grid runner), where the second wave reuses the first wave's processes.
"""

from __future__ import annotations

import math
import os
import tempfile
import time

# `python -m benchmarks --help` imports this module, so Ray (~1 s) is imported in the functions that use it.

HELP = "16 sleep trials at 0.25 logical GPU on 2 logical GPUs: makespan against the ideal"


def add_arguments(parser) -> None:
    parser.add_argument("--trials", type=int, default=16, help="trials in the grid")
    parser.add_argument("--sleep", type=float, default=20.0, help="seconds each trial sleeps")
    parser.add_argument("--gpus", type=int, default=2, help="logical GPUs of the local Ray")
    parser.add_argument("--gpu-fraction", type=float, default=0.25, help="GPU share per trial")
    parser.add_argument("--cpus", type=int, default=2, help="logical CPUs of the local Ray")
    parser.add_argument("--reuse-actors", choices=("no", "yes", "both"), default="both",
                        help="Tune's reuse_actors: no, yes (as the grid runner), or both side by side")


def sleep_trial(config: dict) -> None:
    from ray import tune

    start = time.time()
    time.sleep(config["sleep"])
    tune.report({"started": start, "ended": time.time()})


def fit_grid(args, reuse: bool, cpu_share: float) -> dict:
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="bench_grid_") as storage:
        tuner = tune.Tuner(
            tune.with_resources(sleep_trial, {"cpu": cpu_share, "gpu": args.gpu_fraction}),
            param_space={"sleep": args.sleep, "i": tune.grid_search(list(range(args.trials)))},
            tune_config=tune.TuneConfig(reuse_actors=reuse),
            run_config=tune.RunConfig(name="grid", storage_path=os.path.abspath(storage), verbose=0),
        )
        start, wall = time.perf_counter(), time.time()
        grid = tuner.fit()
        fit = time.perf_counter() - start
    starts = [r.metrics["started"] for r in grid if r.metrics]
    ends = [r.metrics["ended"] for r in grid if r.metrics]
    return {"fit": fit, "span": max(ends) - min(starts), "to_first": min(starts) - wall,
            "after_last": wall + fit - max(ends), "reported": len(starts),
            "errors": sum(r.error is not None for r in grid)}


def run(args) -> int:
    import ray

    concurrent = math.floor(args.gpus / args.gpu_fraction + 1e-9)
    cpu_share = args.cpus / concurrent  # so that the CPU never limits the packing
    ideal = math.ceil(args.trials / concurrent) * args.sleep
    modes = {"no": [False], "yes": [True], "both": [False, True]}[args.reuse_actors]
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, num_gpus=args.gpus, include_dashboard=False,
             log_to_driver=False)
    ray_start = time.perf_counter() - t0
    try:
        rows = {reuse: fit_grid(args, reuse, cpu_share) for reuse in modes}
    finally:
        ray.shutdown()
    print(f"{args.trials} trials x {args.sleep:g} s at {args.gpu_fraction:g} GPU on {args.gpus} logical GPUs "
          f"({concurrent} at once, {cpu_share:g} CPU each); ideal makespan {ideal:.1f} s; ray.init {ray_start:.1f} s")
    header = "".join(f"{'reuse_actors=' + str(reuse):>22}" for reuse in rows)
    print(f"{'':<34}{header}")

    def line(label: str, key: str, ratio: bool) -> None:
        cells = "".join(f"{row[key]:>10.1f} s" + (f" {row[key] / ideal:>5.2f}x" if ratio else " " * 7) + "   "
                        for row in rows.values())
        print(f"{label:<34}{cells}")

    line("Tuner.fit, start to end", "fit", True)
    line("first trial start to last end", "span", True)
    line("Tune start to first trial start", "to_first", False)
    line("last trial end to Tune end", "after_last", False)
    failed = [row for row in rows.values() if row["errors"] or row["reported"] != args.trials]
    for row in failed:
        print(f"{row['errors']} trials failed, {args.trials - row['reported']} reported nothing")
    return 1 if failed else 0
