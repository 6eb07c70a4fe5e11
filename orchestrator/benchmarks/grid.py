"""Fractional packing: a grid of sleep trials at a quarter of a logical GPU each, makespan against the ideal.

A local Ray declares ``--gpus`` logical GPUs; every trial asks for ``--gpu-fraction`` of one (and a
small CPU share) and sleeps ``--sleep`` seconds, so ``gpus / fraction`` trials fit at once and the
ideal makespan is ``ceil(trials / concurrent) x sleep``. Measured: Tuner.fit from start to end
(what a user waits for once Ray is up), plus Ray's start and the span from the first trial's start
to the last one's end (the packing alone, without Tune's own start and finish).
"""

from __future__ import annotations

import math
import os
import tempfile
import time

HELP = "16 sleep trials at 0.25 logical GPU on 2 logical GPUs: makespan against the ideal"


def add_arguments(parser) -> None:
    parser.add_argument("--trials", type=int, default=16, help="trials in the grid (default: 16)")
    parser.add_argument("--sleep", type=float, default=20.0, help="seconds each trial sleeps (default: 20)")
    parser.add_argument("--gpus", type=int, default=2, help="logical GPUs of the local Ray (default: 2)")
    parser.add_argument("--gpu-fraction", type=float, default=0.25, help="GPU share per trial (default: 0.25)")
    parser.add_argument("--cpus", type=int, default=2, help="logical CPUs of the local Ray (default: 2)")
    parser.add_argument("--reuse-actors", action="store_true",
                        help="let Tune reuse trial processes (the grid runner does not)")


def sleep_trial(config: dict) -> None:
    from ray import tune

    start = time.time()
    time.sleep(config["sleep"])
    tune.report({"started": start, "ended": time.time()})


def run(args) -> int:
    import ray
    from ray import tune

    concurrent = math.floor(args.gpus / args.gpu_fraction + 1e-9)
    cpu_share = args.cpus / concurrent  # so that the CPU never limits the packing
    ideal = math.ceil(args.trials / concurrent) * args.sleep
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, num_gpus=args.gpus, include_dashboard=False,
             log_to_driver=False)
    ray_start = time.perf_counter() - t0
    try:
        with tempfile.TemporaryDirectory(prefix="bench_grid_") as storage:
            tuner = tune.Tuner(
                tune.with_resources(sleep_trial, {"cpu": cpu_share, "gpu": args.gpu_fraction}),
                param_space={"sleep": args.sleep, "i": tune.grid_search(list(range(args.trials)))},
                tune_config=tune.TuneConfig(reuse_actors=args.reuse_actors),
                run_config=tune.RunConfig(name="grid", storage_path=os.path.abspath(storage), verbose=0),
            )
            t1 = time.perf_counter()
            grid = tuner.fit()
            fit = time.perf_counter() - t1
    finally:
        ray.shutdown()
    starts = [r.metrics["started"] for r in grid if r.metrics]
    ends = [r.metrics["ended"] for r in grid if r.metrics]
    errors = sum(r.error is not None for r in grid)
    span = max(ends) - min(starts)
    print(f"{args.trials} trials x {args.sleep:g} s at {args.gpu_fraction:g} GPU on {args.gpus} logical GPUs "
          f"({concurrent} at once, {cpu_share:g} CPU each), reuse_actors={args.reuse_actors}")
    print(f"{'':<34} {'seconds':>8} {'/ ideal':>8}")
    print(f"{'ideal makespan':<34} {ideal:>8.1f} {1:>8.2f}")
    print(f"{'Tuner.fit, start to end':<34} {fit:>8.1f} {fit / ideal:>8.2f}")
    print(f"{'first trial start to last end':<34} {span:>8.1f} {span / ideal:>8.2f}")
    print(f"{'ray.init (not counted above)':<34} {ray_start:>8.1f}")
    if errors or len(starts) != args.trials:
        print(f"{errors} trials failed, {args.trials - len(starts)} reported nothing")
        return 1
    return 0
