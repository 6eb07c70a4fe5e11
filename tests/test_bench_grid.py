"""`python -m benchmarks grid` on its mixed workload at a tiny scale: grid order against longest first.

The workload is built so that grid order must lose: one long trial (6 s) submitted after four short
ones (1 s) on two slots (one logical GPU at 0.5 each). In grid order the short trials run in two waves
before the long one starts (2 s + 6 s); longest first runs the short ones beside the long one (6 s, the
ideal: the longest trial, more than the 5 s of work per slot). The test runs the real command on a real
local Ray and reads its printed table.
"""

import os
import re
import subprocess
import sys

from tests.cli import REPO, kill_session

WORKLOAD = ("--gpus", "1", "--gpu-fraction", "0.5", "--short-trials", "4", "--short-sleep", "1",
            "--long-trials", "1", "--long-sleep", "6")


def run_bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks", "grid", *args], cwd=REPO, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_session(proc)  # Ray's processes too
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def seconds(out: str, row: str) -> list[float]:
    """The figures in seconds of the table row that starts with ``row``, one per column."""
    line = next(line for line in out.splitlines() if line.startswith(row))
    return [float(value) for value in re.findall(r"(\d+\.\d+) s\b", line[len(row):])]


def test_longest_first_beats_grid_order_on_a_mixed_workload():
    result = run_bench(*WORKLOAD)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    header = next(line for line in out.splitlines() if "grid order (long last)" in line)
    assert header.index("grid order (long last)") < header.index("longest first"), out
    ideal = float(re.search(r"ideal makespan (\d+\.\d+) s", out).group(1))
    assert ideal == 6.0, out  # max(5 s of work per slot, the 6 s trial)

    simulated_grid, simulated_lpt = seconds(out, "planner's simulation")
    assert simulated_lpt == ideal and simulated_grid > simulated_lpt, out
    grid_span, lpt_span = seconds(out, "first trial start to last end")
    grid_fit, lpt_fit = seconds(out, "Tuner.fit, start to end")
    # Grid order loses 2 s by construction; start latencies of a loaded 2-core machine take some of that.
    assert lpt_span < grid_span, out
    assert lpt_span >= ideal - 0.1 and grid_fit > 0 and lpt_fit > 0, out  # a sleep cannot beat the bound
    starts = next(line for line in out.splitlines() if line.startswith("long trials start, s after first"))
    grid_long, lpt_long = (float(cell) for cell in starts.split()[-2:])
    assert lpt_long < 1.0 < grid_long, out  # grid order: after the first wave of 1 s trials
