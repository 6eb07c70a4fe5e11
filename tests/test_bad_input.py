"""Bad input: a clear error naming the thing and the fix, and nothing half-done marked finished."""

import json
from pathlib import Path

import pytest

from datasets.shards import ShardStore
from datasets.synthetic import synthetic_rows, write_synthetic
from orchestrator.grid_runner import input_problems
from search_spaces.experiment import ExperimentSpec
from tests.cli import run_cli
from trainables.results import ResultStore


def test_unknown_dataset_and_prompt_type_are_reported_before_anything_runs(tmp_path):
    data = str(tmp_path / "shards")
    store = ShardStore(data)
    rows = (r for split in ("train", "val", "test") for r in synthetic_rows("tiny", split, 2, 0, 0))
    store.write_dataset("tiny", rows, ("p0", "p1"))
    specs = [ExperimentSpec(model="clipseg", mode="frozen", train_set="kvasir_polyp", prompt_type="p1"),
             ExperimentSpec(model="clipseg", mode="frozen", train_set="tiny", prompt_type="p6")]
    problems = "\n".join(input_problems(specs, data))
    assert "unknown dataset 'kvasir_polyp'" in problems and "datasets there: tiny" in problems
    assert "dataset 'tiny' has no prompt type 'p6' (it has: p0, p1)" in problems
    # Each problem once, though three splits of each dataset were checked.
    assert len(input_problems(specs, data)) == 2


def test_missing_shard_stops_the_grid_before_ray_starts(tmp_path):
    data, storage = tmp_path / "shards", tmp_path / "runs"
    write_synthetic(ShardStore(str(data)), "synth_polyp")
    write_synthetic(ShardStore(str(data)), "synth_pairs")
    (data / "synth_pairs" / "val-00000.parquet").unlink()
    result = run_cli("grid", "--only", "synth_pairs-p1", "--data", str(data), "--storage", str(storage),
                     "--max-epochs", "1", "--no-dashboard", timeout=120)
    assert result.returncode == 2
    assert f"missing shard {data}/synth_pairs/val-00000.parquet" in result.stderr
    assert "re-ingest 'synth_pairs'" in result.stderr
    assert not storage.exists()


def test_a_corrupt_shard_fails_its_trial_only(tmp_path):
    data, storage = tmp_path / "shards", tmp_path / "runs"
    write_synthetic(ShardStore(str(data)), "synth_polyp")
    write_synthetic(ShardStore(str(data)), "synth_pairs")
    shard = data / "synth_pairs" / "train-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-64] + bytes(64))
    # Relative paths, as a user types them: trials run in other folders and must still find them.
    result = run_cli("grid", "--only", "synth_pairs-p1", "--only", "synth_polyp-p1", "--data", "shards",
                     "--storage", "runs", "--max-epochs", "1", "--no-dashboard", "--verbose", "0",
                     timeout=300, cwd=tmp_path)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-4000:]
    assert "ran 2 experiments: 1 finished, 1 failed" in result.stdout
    # --verbose 0: what the launch runs, then its summary; nothing while the trials run.
    shown = [line.split(":")[0] for line in result.stdout.splitlines() if not line.startswith("no GPUs on this")]
    assert shown == ["2 experiments", "ran 2 experiments", "results table (1 rows)", "                  csv"], shown
    results = ResultStore(str(storage), "demo")
    (finished,), (failed,) = results.finished_ids(), results.failed_ids()
    assert "synth_polyp-p1" in finished and "synth_pairs-p1" in failed
    error = results.failure(failed)["error"]
    assert f"corrupt shard {data}/synth_pairs/train-00000.parquet" in error and "re-ingest" in error
    assert f"FAILED {failed}: corrupt shard" in result.stderr
    assert not (Path(results.path) / "experiments" / failed / "DONE").exists()
    assert not (Path(results.path) / "experiments" / failed / "result.json").exists()
    report = (Path(results.path) / "report.csv").read_text()
    assert finished in report and failed not in report
    assert json.loads((Path(results.path) / "experiments" / finished / "result.json").read_text())["epochs"] == 1


def test_unwritable_storage_is_reported_before_training(tmp_path, s3_endpoint):
    data = tmp_path / "shards"
    write_synthetic(ShardStore(str(data)), "synth_polyp")
    result = run_cli("grid", "--only", "synth_polyp-p1", "--data", str(data), "--storage", "s3://no-such-bucket/runs",
                     "--max-epochs", "1", "--no-dashboard", timeout=120)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "cannot write results to s3://no-such-bucket/runs/demo" in result.stderr
    assert "the bucket exists" in result.stderr


def test_report_on_an_empty_study_says_so(tmp_path):
    result = run_cli("report", "--storage", str(tmp_path), "--study", "typo", timeout=60)
    assert result.returncode == 1
    assert f"no finished experiments or evaluations under {tmp_path}/typo" in result.stderr
    assert not (tmp_path / "typo" / "report.md").exists()


def test_local_storage_is_refused_on_a_multi_node_cluster():
    from orchestrator.launch import check_shared_storage
    from trainables.results import StorageError

    check_shared_storage("/tmp/runs", nodes=1)
    check_shared_storage("s3://bucket/runs", nodes=3)
    with pytest.raises(StorageError, match=r"local folder, but this Ray cluster has 3 nodes.*s3://BUCKET/runs"):
        check_shared_storage("/tmp/runs", nodes=3)
