"""`python -m benchmarks gpu` on the CPU with tiny settings: the same code a GPU runs, end to end.

It runs the real command in a child process (small models, 2 steps, 1 and 2 sharing trials), reads
its printed tables, and checks that `--save` writes entries the planner reads. Times are only
checked to be positive numbers: speed belongs in the benchmark's output, not in a test.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu import device_type, save
from orchestrator.plan import STEP_TIMES, load_step_times, per_sample_seconds
from tests.cli import REPO, kill_session

MODELS = ("clipseg", "unet")


def run_bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks", "gpu", *args], cwd=REPO,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_session(proc)  # the spawned model and trial processes too
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def table_rows(out: str, header_start: str) -> list[list[str]]:
    """The whitespace-split rows under the header line that starts with ``header_start``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(header_start))
    rows = []
    for line in lines[start + 1:]:
        if not line.strip() or not (line.split()[0] in MODELS or line.split()[0].isdigit()):
            break
        rows.append(line.split())
    return rows


def number(cell: str) -> float:
    return float(cell.rstrip("x"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    table = tmp_path_factory.mktemp("step_times") / "step_times.json"
    shutil.copy(STEP_TIMES, table)
    result = run_bench("--models", *MODELS, "--steps", "2", "--epochs", "2", "--shares", "1", "2",
                       "--save", "--gpu-type", "cpu-test", "--step-times", str(table))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, table


def test_cpu_run_says_it_is_not_the_study_sizes(bench):
    out, _ = bench
    assert "on CPU" in out and "not the study's sizes" in out


def test_step_time_row_per_model_with_positive_numbers(bench):
    out, _ = bench
    rows = table_rows(out, "model")
    assert [r[0] for r in rows] == list(MODELS), out
    clipseg, unet = rows
    # model, mode, input, batch, step, cached, eval, encode, peak, cached peak ("-" where none)
    assert clipseg[1] == "frozen" and unet[1] == "finetune"
    assert clipseg[2] == "128" and clipseg[3] == "2"  # small size, the CPU batch
    for cell in (clipseg[4], clipseg[5], clipseg[6], clipseg[7], clipseg[8], unet[4], unet[6], unet[8]):
        assert number(cell) > 0, out
    assert unet[5] == "-" and unet[7] == "-"  # a CNN has no feature-cache path


def test_sharing_row_per_trial_count_with_positive_numbers(bench):
    out, _ = bench
    rows = table_rows(out, "trials")
    assert [r[0] for r in rows] == ["1", "2"], out
    assert "CPU" in out and "decoder on the feature cache" in out
    # trials, threads, total samples/s, per trial, speed-up, slowdown, start spread
    one, two = rows
    assert [int(one[1]), int(two[1])] == [max(1, os.cpu_count() // 1), max(1, os.cpu_count() // 2)]
    for row in rows:
        assert number(row[2]) > 0 and number(row[3]) > 0 and number(row[4]) > 0 and number(row[5]) > 0, out
    assert number(one[4]) == 1.0 and number(one[5]) == 1.0
    # Each figure is printed rounded (samples/s to 0.1, ratios to 0.01): the checks allow what the rounding of
    # the printed figures they use can add up to, however small the figures (a loaded machine makes them small).
    rounding = 0.05 * number(two[4]) + 0.005 * number(one[2]) + 0.05  # of one[2], of the speed-up, of two[2]
    assert number(two[2]) == pytest.approx(number(two[4]) * number(one[2]), abs=rounding * 1.01)
    per_trial_rounding = 0.05 / number(one[3]) + 0.05 / number(two[3])
    assert number(two[5]) == pytest.approx(number(one[3]) / number(two[3]), rel=per_trial_rounding + 0.001,
                                           abs=0.005)


def test_save_writes_entries_the_planner_reads(bench):
    _, path = bench
    entries = json.loads(path.read_text())["devices"]["cpu-test"]
    assert set(entries) == {"clipseg/frozen/small", "unet/finetune/small"}
    clipseg = entries["clipseg/frozen/small"]
    assert clipseg["batch"] == 2 and clipseg["step_ms"] > 0 and clipseg["cache_build_ms_per_row"] > 0
    assert "cached fp16 features" in clipseg["source"]
    assert "cache_build_ms_per_row" not in entries["unet/finetune/small"]
    train_s, eval_s, _, source = per_sample_seconds({"model": "clipseg", "mode": "frozen", "size": "small"},
                                                    load_step_times(str(path)), "cpu-test")
    assert source == "cpu-test measured"
    assert train_s == pytest.approx(clipseg["step_ms"] / 1000 / 2) and eval_s > 0


def test_save_without_a_path_goes_to_the_user_cache(tmp_path, monkeypatch):
    """No --step-times: the entries go to $VLSM_CACHE/step_times.json, the shipped table stays byte for
    byte, and the planner's table then holds them over the shipped ones."""
    monkeypatch.setenv("VLSM_CACHE", str(tmp_path / "cache"))
    shipped = hashlib.sha256(Path(STEP_TIMES).read_bytes()).hexdigest()
    shipped_cpu = load_step_times(STEP_TIMES)["devices"]["cpu"]["clipseg/frozen/small"]
    row = {"model": "clipseg", "mode": "frozen", "size": "small", "batch": 2, "input": 128, "step_s": 0.011,
           "cached_s": 0.007, "eval_s": 0.004, "peak_gib": 0.5, "encode_ms_per_row": 2.5}
    saved = save([row], "cpu", "CPU, test", None)
    assert saved == str(tmp_path / "cache" / "step_times.json")
    assert hashlib.sha256(Path(STEP_TIMES).read_bytes()).hexdigest() == shipped
    written = json.loads(Path(saved).read_text())
    assert list(written["devices"]) == ["cpu"] and "paper" not in written
    entry = load_step_times()["devices"]["cpu"]["clipseg/frozen/small"]
    assert entry == written["devices"]["cpu"]["clipseg/frozen/small"]
    assert entry["step_ms"] == 7.0 and entry["cache_build_ms_per_row"] == 2.5
    # What a benchmark does not measure (batch-free) comes over from the table it read.
    assert entry["setup_s"] == shipped_cpu["setup_s"] and entry["start_s"] == shipped_cpu["start_s"]
    train_s, _, _, source = per_sample_seconds({"model": "clipseg", "mode": "frozen", "size": "small"},
                                               load_step_times(), "cpu")
    assert source == "cpu measured" and train_s == pytest.approx(0.007 / 2)


def test_device_type_from_gpu_names():
    assert device_type("NVIDIA H100 80GB HBM3") == "h100"
    assert device_type("NVIDIA A100-SXM4-40GB") == "a100"
    assert device_type("NVIDIA A10G") == "a10g"
    assert device_type("NVIDIA H200") == "h200"
    assert device_type("NVIDIA L4") == "l4"
    assert device_type("Tesla T4") == "tesla-t4"
