"""When trials start and end on a cluster: the grid's submission order, the Ray Train workers of each trial,
and the packing that gives the makespan. ``plan`` prints it; ``grid`` submits in the order and with the
workers ``launch_plan`` decides, so what runs is what was planned.

``launch_plan`` prices the trials (``search_spaces.estimates``), orders them longest first (``--order
grid`` keeps the grid's order), and gives a trial longer than the makespan's lower bound (busy GPU-hours /
GPUs) the fewest Ray Train workers (a power of two, at most the GPUs of the largest node type) that bring
it under the bound (``--workers-per-trial``). ``schedule`` starts trials as Ray Tune does: whenever shares
are free, every waiting trial that fits, in that order (a later, smaller one backfills before an earlier
one that does not fit), each on the GPU with the least free share that holds it (a multi-worker trial
takes whole GPUs), at its solo speed (``share_slowdown`` models contention).
"""

from __future__ import annotations

import dataclasses
import heapq

from search_spaces.defaults import resources_for
from search_spaces.estimates import TrialTime, charge_builds, trial_time, with_workers
from search_spaces.experiment import ExperimentSpec
from search_spaces.grid import block_of

ORDERS = ("lpt", "grid")  # longest first, as the grid submits; the grid's own order, to compare


def launch_order(trials: list[TrialTime], order: str = "lpt") -> list[TrialTime]:
    """Longest first (``lpt``; ties keep the grid's order), or the grid's order (``grid``)."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}: expected one of {', '.join(ORDERS)}")
    return sorted(trials, key=lambda t: -t.seconds) if order == "lpt" else list(trials)


def decide_workers(trials: list[TrialTime], gpus: int, max_workers: int, efficiency: float,
                   workers: str | int = "auto") -> list[TrialTime]:
    """Ray Train workers per trial. A number: every trial gets it. ``auto``: a trial longer than what
    packing can hide, the makespan's lower bound (busy GPU-hours / GPUs), gets the smallest power of
    two of workers (whole GPUs, at most ``max_workers``) that brings it under the bound; 1 without GPUs."""
    if workers != "auto":
        return [with_workers(t, int(workers), efficiency) for t in trials]
    if max_workers < 2 or gpus < 2:
        return list(trials)
    bound = sum(t.seconds * t.share for t in trials) / gpus
    decided = []
    for trial in trials:
        n, split = 1, trial
        while split.seconds > bound and n * 2 <= max_workers:
            n *= 2
            split = with_workers(trial, n, efficiency)
        decided.append(split)
    return decided


def launch_plan(specs: list[dict], table: dict, factors: dict, device: str, data: str | None, *, gpus: int,
                max_workers: int, workers: str | int = "auto", order: str = "lpt", epochs: int | None = None,
                gpus_per_trial: float | None = None, cpus_per_trial: float | None = None) -> list[TrialTime]:
    """The trials of ``specs`` as they are submitted: priced, in ``order`` (each cache charged to the
    first trial that needs it), with their Ray Train workers. ``plan`` and ``grid`` both use it."""
    manifests: dict = {}
    trials = []
    for spec in specs:
        if device == "cpu":  # one pool of CPUs: a trial takes its CPUs' share of it
            share = (cpus_per_trial or 1.0) / max(1, gpus)
        else:
            share = resources_for(spec, gpus_per_trial, cpus_per_trial)["gpu"]
        trial = trial_time(spec, table, factors, device, data, epochs, share, manifests)
        trials.append(dataclasses.replace(trial, block=block_of(ExperimentSpec.from_dict(spec))))
    trials = charge_builds(launch_order(trials, order))
    if device == "cpu" and workers == "auto":
        return trials
    trials = decide_workers(trials, gpus, max_workers, factors["ddp_efficiency"]["efficiency"], workers)
    # Split trials may now come later: each cache is charged again to the first that needs it in the new order.
    return charge_builds(launch_order(trials, order))


# -- packing --------------------------------------------------------------------------------------

def schedule(trials: list[TrialTime], devices: int, max_concurrent: int | None = None,
             share_slowdown: float = 1.0) -> list[tuple[TrialTime, float, float]]:
    """(trial, start, end) of each trial, started as Ray Tune starts them: at the start and whenever a
    trial ends, every waiting trial that fits the free shares starts, in submission order, so a later,
    smaller trial starts before an earlier one that does not fit yet (Tune asks Ray for all of them at
    once, and Ray grants whichever fits: `python -m benchmarks grid`). Each goes to the GPU with the
    least free share that holds it, as Ray places fractions (best fit); a multi-worker trial takes
    whole GPUs. Where shares differ, Tune can hold a larger trial back longer than this (Ray retries
    a request that did not fit after a growing delay), so the figure is a lower bound there."""
    for trial in trials:
        if trial.workers > devices:
            raise ValueError(f"{trial.name} asks for {trial.workers} workers, more than the {devices} GPUs")
    free = [1.0] * devices
    running: list[tuple[float, int, list[tuple[int, float]]]] = []  # (end, order, [(device, share)])
    placed: list[tuple[TrialTime, float, float]] = []
    waiting, now = list(trials), 0.0
    while waiting:
        still = []
        for trial in waiting:
            taken = _fit(free, trial) if not max_concurrent or len(running) < max_concurrent else []
            if not taken:
                still.append(trial)
                continue
            for device, share in taken:
                free[device] -= share
            seconds = trial.seconds * (share_slowdown if trial.workers == 1 and trial.share < 1 else 1.0)
            heapq.heappush(running, (now + seconds, len(placed), taken))
            placed.append((trial, now, now + seconds))
        waiting = still
        if waiting:  # the next end frees its shares
            now, _, released = heapq.heappop(running)
            for device, share in released:
                free[device] += share
    return placed


def _fit(free: list[float], trial: TrialTime) -> list[tuple[int, float]]:
    """The GPUs and shares ``trial`` takes of ``free`` now: whole GPUs for a multi-worker trial, else the
    GPU with the least free share that holds its share (best fit); none where it does not fit."""
    if trial.workers > 1:
        whole = [d for d, f in enumerate(free) if f >= 1 - 1e-9]
        return [(d, 1.0) for d in whole[:trial.workers]] if len(whole) >= trial.workers else []
    share = min(trial.share, 1.0)
    fits = [d for d, f in enumerate(free) if f + 1e-9 >= share]
    return [(min(fits, key=lambda d: (free[d], d)), share)] if fits else []


def makespan(trials: list[TrialTime], devices: int, max_concurrent: int | None = None,
             share_slowdown: float = 1.0) -> float:
    """When the last trial ends, started as ``schedule`` starts them."""
    return max((end for _, _, end in schedule(trials, devices, max_concurrent, share_slowdown)), default=0.0)
