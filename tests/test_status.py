"""``status`` on a real S3 server on loopback holding finished, failed, running and pending experiments
(written through ResultStore, as trials write them) prints the right counts per block, the best
validation dice so far and an ETA; and ``grid`` skips failed experiments unless ``--retry-failed``."""

from __future__ import annotations

import json
import time

from orchestrator.status import STALE_AFTER_S, collect, render
from search_spaces.grid import PROFILES
from tests.cli import run_cli
from trainables.results import ResultStore


def demo_ids() -> dict[str, str]:
    """``synth_polyp-p0`` -> the demo's experiment id."""
    return {f"{s.train_set}-{s.prompt_type}": s.id for s in PROFILES["demo"]()}


def finish(results: ResultStore, experiment_id: str, best: float, seconds: float, resumed: int | None = None):
    result = {"experiment_id": experiment_id, "best_val_dice": best, "epochs": 50, "eval": {},
              "run": {"started_at": 1000.0, "finished_at": 1000.0 + seconds, "resumed_from_epoch": resumed}}
    results.write_result({"id": experiment_id}, result, {"synth": {"a": 0.5, "b": 0.7}})


def run(results: ResultStore, experiment_id: str, epoch: int, best: float | None):
    results.save_checkpoint(experiment_id, b"trainer state")
    results.write_progress(experiment_id, {"epoch": epoch, "max_epochs": 50, "best_val_dice": best})


def fill(results: ResultStore) -> dict[str, str]:
    ids = demo_ids()
    finish(results, ids["synth_polyp-p0"], 0.80, 600)
    results.write_failure(ids["synth_polyp-p1"], {}, "shard synth_polyp/train-0.parquet row 3: mask is not a PNG")
    run(results, ids["synth_polyp-p6"], 25, 0.90)  # half done
    finish(results, ids["synth_pairs-p0"], 0.60, 300, resumed=25)  # resumed half way: a full run takes 600 s
    run(results, ids["synth_pairs-p1"], 0, None)  # just started
    # synth_pairs-p6: pending. And an experiment of another selection (e.g. another --max-epochs):
    results.write_failure("clipseg-frozen-synth_pairs-p6-00000000", {}, "elsewhere")
    return ids


def rows(output: str) -> dict[str, list[str]]:
    found = {}
    for line in output.splitlines():
        for name in ("clipseg frozen synth_polyp", "clipseg frozen synth_pairs", "total"):
            if line.startswith(name + " "):
                found[name] = line[len(name):].split()
    return found


def test_status_counts_each_block_from_storage(s3_bucket):
    results = ResultStore(f"{s3_bucket}/runs", "demo")
    ids = fill(results)

    shown = run_cli("status", "--storage", f"{s3_bucket}/runs", timeout=120)
    assert shown.returncode == 0, shown.stderr[-3000:]
    print(shown.stdout)
    table = rows(shown.stdout)
    # regime, done running failed pending, best validation dice (%), work left: the block's mean
    # full-run time (600 s) times the runs left (half of one; one and a whole pending one).
    assert table["clipseg frozen synth_polyp"] == ["as_run", "1", "1", "1", "0", "90.0", "5", "min"]
    assert table["clipseg frozen synth_pairs"] == ["as_run", "1", "1", "0", "1", "60.0", "20", "min"]
    assert table["total"] == ["2", "2", "1", "1", "90.0"]
    # 300 s + 1,200 s of trial time left, two experiments running side by side.
    assert "ETA: 12 min at 2 experiments in parallel" in shown.stdout
    assert f"FAILED {ids['synth_polyp-p1']}: shard synth_polyp/train-0.parquet row 3" in shown.stdout
    assert "1 more experiments in storage are not in this selection" in shown.stdout

    # --only narrows the selection like grid's.
    narrow = run_cli("status", "--storage", f"{s3_bucket}/runs", "--only", "synth_pairs", timeout=120)
    assert list(rows(narrow.stdout)) == ["clipseg frozen synth_pairs", "total"]
    assert "4 more experiments in storage" in narrow.stdout


def test_status_marks_silent_runs_and_unknown_eta(tmp_path):
    specs = PROFILES["demo"]()
    results = ResultStore(str(tmp_path / "runs"), "demo")
    empty = render(collect(specs, results), "here")
    assert "ETA: unknown (no experiment has finished yet)" in empty
    assert rows(empty)["total"] == ["0", "0", "0", "6", "-"]

    fill(results)
    # An hour later nothing has reported: the two running experiments lost their driver.
    later = collect(specs, results, now=time.time() + 2 * STALE_AFTER_S)
    assert later.running_now == 0 and len(later.stale) == 2
    text = render(later, "here")
    assert "ETA: unknown (nothing is running: rerun the grid command to go on)" in text
    assert "2 running experiments have not reported" in text
    # A block with work left and nothing finished has no ETA.
    results.clear_resume_state(demo_ids()["synth_polyp-p6"])
    (tmp_path / "runs/demo/experiments" / demo_ids()["synth_polyp-p0"] / "DONE").unlink()
    text = render(collect(specs, results), "here")
    assert "ETA: unknown (nothing finished yet in clipseg frozen synth_polyp)" in text


def test_grid_skips_failed_experiments_unless_asked_to_retry_them(tmp_path):
    ids = demo_ids()
    data, storage = str(tmp_path / "shards"), str(tmp_path / "runs")
    args = ["grid", "--only", "synth_polyp-p0", "--max-epochs", "1", "--data", data, "--storage", storage,
            "--no-dashboard", "--verbose", "0"]
    spec = next(s for s in PROFILES["demo"]() if s.id == ids["synth_polyp-p0"])
    experiment_id = spec.__class__.from_dict({**spec.to_dict(), "max_epochs": 1}).id
    results = ResultStore(storage, "demo")
    results.write_failure(experiment_id, {}, "bad input")

    skipped = run_cli(*args, timeout=300)
    assert skipped.returncode == 1, skipped.stdout + skipped.stderr
    assert "1 experiments: 0 already finished" in skipped.stdout
    assert "1 failed before (skipped; --retry-failed reruns them), 0 to run" in skipped.stdout
    assert "failed in an earlier launch and were skipped" in skipped.stderr and experiment_id in skipped.stderr
    assert results.failure(experiment_id)["error"] == "bad input"

    retried = run_cli(*args, "--retry-failed", timeout=300)
    assert retried.returncode == 0, retried.stdout[-3000:] + retried.stderr[-3000:]
    assert "1 failed before (retried), 1 to run" in retried.stdout
    assert "ran 1 experiments: 1 finished, 0 failed" in retried.stdout
    assert results.failure(experiment_id) is None and experiment_id in results.finished_ids()
    assert json.loads((tmp_path / "runs/demo/experiments" / experiment_id / "result.json").read_text())["epochs"] == 1
