"""Processes that start at the same instant, like trials landing on one node together."""

from __future__ import annotations

import multiprocessing
import queue
import time


def start_together(target, jobs: list[tuple], timeout_s: float = 600) -> list:
    """Run ``target(*job, barrier, results)`` in a fresh (spawned, as a Ray trial is) process per job;
    each waits at ``barrier`` and puts one value on ``results``. Returns the values in arrival order.
    A process that dies first, or silence past ``timeout_s``, raises at once and frees the others."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(jobs)), context.Queue()
    processes = [context.Process(target=target, args=(*job, barrier, results)) for job in jobs]
    for p in processes:
        p.start()
    values, deadline = [], time.monotonic() + timeout_s
    join_by = deadline + 60  # after its report, a process still has to exit
    try:
        while len(values) < len(processes):
            try:
                values.append(results.get(timeout=1))
            except queue.Empty:
                if dead := [p for p in processes if p.exitcode not in (None, 0)]:
                    raise RuntimeError(f"process {dead[0].pid} exited with code {dead[0].exitcode} "
                                       "before reporting") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(processes) - len(values)} of {len(processes)} processes did not "
                                       f"report within {timeout_s:g} s") from None
    except BaseException:
        barrier.abort()  # the others may wait at the barrier for the dead one
        join_by = time.monotonic() + 5
        raise
    finally:
        for p in processes:
            p.join(max(0.0, join_by - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
    failed = [f"{p.pid}: {p.exitcode}" for p in processes if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"processes exited with errors ({', '.join(failed)})")
    return values
