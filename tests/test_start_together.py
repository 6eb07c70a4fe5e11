"""start_together, which the node-cache tests and bench s3 start their processes with: a dead process is
named at once, and the ones waiting for it at the barrier are freed."""

import os

import pytest

from benchmarks.together import start_together


def die_before_the_barrier(code: int, barrier, results) -> None:
    if code:
        os._exit(code)
    barrier.wait()
    results.put("reported")


def test_start_together_names_a_process_that_died_and_frees_the_others():
    with pytest.raises(RuntimeError, match=r"process \d+ exited with code 3 before reporting"):
        start_together(die_before_the_barrier, [(0,), (3,), (0,)], timeout_s=120)
