"""Packing sleep trials on logical GPUs: makespan against the ideal, by submission order and by reuse_actors.

A local Ray declares ``--gpus`` logical GPUs; every trial asks for a share of one (and a small CPU
share, so the CPU never limits the packing) and sleeps. Measured: Tuner.fit from start to end (what a
user waits for once Ray is up) and the span from the first trial's start to the last one's end (the
packing alone, without Tune's own start and finish). Two workloads:

``mixed`` (default): many short trials and a few 10x longer ones (the study's shape: most trials short,
a few long), submitted as ``launch`` submits a grid (a ``grid_search`` over job names, resources per
job, ``reuse_actors`` on as the grid runner), once in grid order with the long trials last (the worst a
grid order gives) and once longest first. Each is printed against the ideal makespan, max(total work /
capacity, longest trial), and against the planner's simulation of the same order
(``orchestrator.schedule.makespan``).

``uniform``: ``--trials`` equal trials at ``--gpu-fraction``, so ``gpus / fraction`` run at once and the
ideal is ``ceil(trials / concurrent) x sleep``; by default twice on one Ray, with Tune's ``reuse_actors``
off, where every trial starts a process, and on, where the second wave reuses the first wave's processes.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterator

# `python -m benchmarks --help` imports this module, so Ray (~1 s) and the planner are imported in the
# functions that use them.

HELP = "sleep trials on 2 logical GPUs vs the ideal makespan: grid order vs longest first, or reuse_actors"


def add_arguments(parser) -> None:
    parser.add_argument("--workload", choices=("mixed", "uniform"), default="mixed",
                        help="mixed: short and long trials, grid order vs longest first; uniform: equal trials, "
                             "reuse_actors off vs on")
    parser.add_argument("--gpus", type=int, default=2, help="logical GPUs of the local Ray")
    parser.add_argument("--gpu-fraction", type=float, default=0.25, help="GPU share per trial")
    parser.add_argument("--cpus", type=int, default=2, help="logical CPUs of the local Ray")
    parser.add_argument("--reuse-actors", choices=("no", "yes", "both"), default=None,
                        help="Tune's reuse_actors: no, yes (as the grid runner), or both side by side "
                             "(none: both for uniform, yes for mixed)")
    uniform = parser.add_argument_group("uniform workload")
    uniform.add_argument("--trials", type=int, default=16, help="trials in the grid")
    uniform.add_argument("--sleep", type=float, default=20.0, help="seconds each trial sleeps")
    # Defaults sized so that the default run takes ~2 minutes on a 2-core machine: 40 x 4 s short and
    # 2 x 40 s long at 0.25 GPU on 2 GPUs (8 at once) is 30 s of work per GPU, under the longest trial,
    # so the ideal is the long trial and a grid order that starts it last loses ~25 s.
    mixed = parser.add_argument_group("mixed workload")
    mixed.add_argument("--short-trials", type=int, default=40, help="short trials, first in grid order")
    mixed.add_argument("--short-sleep", type=float, default=4.0, help="seconds each short trial sleeps")
    mixed.add_argument("--long-trials", type=int, default=2, help="long trials, last in grid order")
    mixed.add_argument("--long-sleep", type=float, default=40.0, help="seconds each long trial sleeps")
    mixed.add_argument("--long-share", type=float, default=None,
                       help="GPU share of a long trial (none: --gpu-fraction, as the short ones)")
    mixed.add_argument("--repeats", type=int, default=1, help="runs of each order; the medians are printed")


def sleep_trial(config: dict) -> None:
    from ray import tune

    start = time.time()
    time.sleep(config["sleep"])
    tune.report({"started": start, "ended": time.time()})


def run(args) -> int:
    return run_uniform(args) if args.workload == "uniform" else run_mixed(args)


@contextlib.contextmanager
def local_ray(args) -> Iterator[float]:
    """A local Ray with the arguments' logical CPUs and GPUs; yields the seconds ``ray.init`` took."""
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, num_gpus=args.gpus, include_dashboard=False,
             log_to_driver=False)
    try:
        yield time.perf_counter() - t0
    finally:
        ray.shutdown()


# --- the mixed workload: grid order vs longest first -------------------------------------------------

def mixed_jobs(args) -> list[tuple[str, float, float]]:
    """(name, seconds, GPU share) of each trial in grid order: the short trials first, the long ones last."""
    long_share = args.long_share or args.gpu_fraction
    return ([(f"short-{i:03d}", args.short_sleep, args.gpu_fraction) for i in range(args.short_trials)]
            + [(f"long-{i:03d}", args.long_sleep, long_share) for i in range(args.long_trials)])


def longest_first(jobs: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The jobs by decreasing length (LPT), equal lengths in their grid order."""
    return sorted(jobs, key=lambda job: -job[1])


def ideal_makespan(jobs: list[tuple[str, float, float]], gpus: int) -> float:
    """The lower bound no order beats: all GPUs busy to the end, and never less than the longest trial."""
    return max(sum(seconds * share for _, seconds, share in jobs) / gpus, max(seconds for _, seconds, _ in jobs))


def fit_jobs(jobs: list[tuple[str, float, float]], reuse: bool, cpu_share: float) -> dict:
    """Run ``jobs`` as one Tune grid in their order, as ``orchestrator.launch`` submits a grid: a
    ``grid_search`` over the job names, each trial's sleep and resources looked up by its name."""
    from ray import tune

    from orchestrator.console import tune_output

    seconds = {name: s for name, s, _ in jobs}
    shares = {name: share for name, _, share in jobs}
    with tempfile.TemporaryDirectory(prefix="bench_grid_") as storage:
        tuner = tune.Tuner(
            tune.with_resources(sleep_trial, lambda config: {"cpu": cpu_share, "gpu": shares[config["job"]]}),
            param_space={"job": tune.grid_search([name for name, _, _ in jobs]),
                         "sleep": tune.sample_from(lambda config: seconds[config["job"]])},
            tune_config=tune.TuneConfig(reuse_actors=reuse),
            run_config=tune.RunConfig(name="grid", storage_path=os.path.abspath(storage), verbose=0),
        )
        with tune_output(0):
            start, wall = time.perf_counter(), time.time()
            grid = tuner.fit()
            fit = time.perf_counter() - start
    done = [r for r in grid if r.metrics and "started" in r.metrics]
    starts = {r.config["job"]: r.metrics["started"] - wall for r in done}
    ends = [r.metrics["ended"] - wall for r in done]
    first = min(starts.values(), default=math.nan)
    return {"fit": fit, "span": max(ends, default=math.nan) - first, "to_first": first, "starts": starts,
            "reported": len(done), "errors": sum(r.error is not None for r in grid)}


def run_mixed(args) -> int:
    from orchestrator.schedule import TrialTime, makespan  # before Ray starts: the planner's figure for each order

    reuse = {"no": [False], "yes": [True], "both": [False, True], None: [True]}[args.reuse_actors]
    grid_order = mixed_jobs(args)
    orders = {"grid order (long last)": grid_order, "longest first": longest_first(grid_order)}
    concurrent = math.floor(args.gpus / min(share for _, _, share in grid_order) + 1e-9)
    cpu_share = args.cpus / concurrent  # so that the CPU never limits the packing
    simulated = {label: makespan([TrialTime(name, seconds, share, 0, "sleep") for name, seconds, share in jobs],
                                 args.gpus) for label, jobs in orders.items()}
    columns = [(label, r) for r in reuse for label in orders]
    runs: dict[tuple[str, bool], list[dict]] = {column: [] for column in columns}
    with local_ray(args) as ray_start:
        for _ in range(args.repeats):  # the orders alternate, so a slow spell of a shared machine hits both
            for label, r in columns:
                runs[(label, r)].append(fit_jobs(orders[label], r, cpu_share))

    print(f"mixed workload: {args.short_trials} short x {args.short_sleep:g} s at {args.gpu_fraction:g} GPU and "
          f"{args.long_trials} long x {args.long_sleep:g} s at {args.long_share or args.gpu_fraction:g} GPU on "
          f"{args.gpus} logical GPUs (up to {concurrent} at once, {cpu_share:g} CPU each); ray.init {ray_start:.1f} s")
    print_mixed(grid_order, args.gpus, columns, runs, simulated, args.repeats)
    failed = [run for column in columns for run in runs[column] if run["errors"] or run["reported"] != len(grid_order)]
    for run in failed:
        print(f"{run['errors']} trials failed, {len(grid_order) - run['reported']} reported nothing")
    return 1 if failed else 0


def print_mixed(jobs: list[tuple[str, float, float]], gpus: int, columns: list[tuple[str, bool]],
                runs: dict[tuple[str, bool], list[dict]], simulated: dict[str, float], repeats: int) -> None:
    """One column per (order, reuse_actors): the medians of its runs against the ideal makespan."""
    ideal = ideal_makespan(jobs, gpus)
    work = sum(seconds * share for _, seconds, share in jobs) / gpus
    print(f"ideal makespan {ideal:.1f} s = max(work per GPU {work:.1f} s, longest trial "
          f"{max(s for _, s, _ in jobs):g} s); medians of {repeats} run(s) per order")
    both = len({r for _, r in columns}) > 1
    headers = [label + (f", reuse {'on' if r else 'off'}" if both else "") for label, r in columns]
    width = max(len(header) for header in headers) + 3
    print(f"{'':<34}" + "".join(f"{header:>{width}}" for header in headers))
    medians = {column: {key: statistics.median(run[key] for run in runs[column]) for key in ("fit", "span", "to_first")}
               for column in columns}

    def line(label: str, values: list[float]) -> None:
        print(f"{label:<34}" + "".join(f"{f'{v:.1f} s {v / ideal:5.2f}x':>{width}}" for v in values))

    line("planner's simulation", [simulated[label] for label, _ in columns])
    line("Tuner.fit, start to end", [medians[column]["fit"] for column in columns])
    line("first trial start to last end", [medians[column]["span"] for column in columns])
    to_first = [f"{medians[column]['to_first']:.1f} s" for column in columns]
    print(f"{'Tune start to first trial start':<34}" + "".join(f"{cell:>{width - 7}}{'':7}" for cell in to_first))
    longs = [name for name, _, _ in jobs if name.startswith("long-")]
    last = {column: runs[column][-1] for column in columns}  # when the long trials started: the last run's
    starts = [" ".join(f"{last[column]['starts'].get(name, math.nan) - last[column]['to_first']:.1f}" for name in longs)
              for column in columns]
    print(f"{'long trials start, s after first':<34}" + "".join(f"{cell:>{width}}" for cell in starts))
    for r in dict.fromkeys(r for _, r in columns):  # the order changes the packing; Tuner.fit adds process starts
        grid, lpt = medians[("grid order (long last)", r)], medians[("longest first", r)]
        print(f"longest first{f' (reuse_actors={r})' if both else ''}: {lpt['span'] / ideal:.2f}x the ideal first "
              f"start to last end, {lpt['fit'] / ideal:.2f}x Tuner.fit; grid order {grid['span'] / ideal:.2f}x "
              f"and {grid['fit'] / ideal:.2f}x")


# --- the uniform workload: reuse_actors off vs on ------------------------------------------------------

def run_uniform(args) -> int:
    concurrent = math.floor(args.gpus / args.gpu_fraction + 1e-9)
    cpu_share = args.cpus / concurrent  # so that the CPU never limits the packing
    ideal = math.ceil(args.trials / concurrent) * args.sleep
    modes = {"no": [False], "yes": [True], "both": [False, True], None: [False, True]}[args.reuse_actors]
    jobs = [(f"trial-{i:03d}", args.sleep, args.gpu_fraction) for i in range(args.trials)]
    with local_ray(args) as ray_start:
        rows = {reuse: fit_jobs(jobs, reuse, cpu_share) for reuse in modes}
    for row in rows.values():
        row["after_last"] = row["fit"] - row["to_first"] - row["span"]
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
