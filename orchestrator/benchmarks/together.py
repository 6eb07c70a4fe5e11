"""Processes that start at the same instant, like trials landing on one node together."""

from __future__ import annotations

import multiprocessing


def start_together(target, jobs: list[tuple], timeout_s: float = 600) -> list:
    """Run ``target(*job, barrier, results)`` in a fresh (spawned, as a Ray trial is) process per job;
    each waits at ``barrier`` and puts one value on ``results``. Returns the values in arrival order;
    raises if a process exits with an error."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(jobs)), context.Queue()
    processes = [context.Process(target=target, args=(*job, barrier, results)) for job in jobs]
    for p in processes:
        p.start()
    try:
        values = [results.get(timeout=timeout_s) for _ in processes]
    finally:
        for p in processes:
            p.join(60)
            if p.is_alive():
                p.kill()
    failed = [f"{p.pid}: {p.exitcode}" for p in processes if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"processes exited with errors ({', '.join(failed)})")
    return values
