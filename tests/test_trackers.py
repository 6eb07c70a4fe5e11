"""Experiment trackers (`--log mlflow`, `--log wandb`): the demo grid logged to a real MLflow store by the
real command on a local Ray, read back with MLflow's own client; W&B's callback set up offline under the
study."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from cli import run_cli

from trainables.results import ResultStore

RAY = ["--cpus-per-trial", "1", "--no-dashboard", "--verbose", "0"]
ONLY = ["synth_polyp-p0", "synth_pairs-p6"]


@pytest.mark.slow  # ~35 s on two cores: a local Ray, two 2-epoch trials
def test_the_demo_logged_to_mlflow_reads_back_with_mlflows_client(tmp_path):
    """One MLflow run per experiment id in the study's experiment, in the default store (a SQLite file
    beside the study's results): the whole spec as parameters, every epoch's metrics as their history, and
    the test dice of result.json as the final metric."""
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "runs"
    only = [arg for pattern in ONLY for arg in ("--only", pattern)]
    grid = run_cli("grid", "--profile", "demo", "--max-epochs", "2", *only, "--data", str(tmp_path / "shards"),
                   "--storage", str(storage), "--log", "mlflow", *RAY, timeout=300)
    assert grid.returncode == 0, grid.stdout[-3000:] + grid.stderr[-5000:]

    results = {r["experiment_id"]: r for r in ResultStore(str(storage), "demo").results()}
    assert len(results) == len(ONLY)
    client = MlflowClient(tracking_uri=f"sqlite:///{storage}/demo/mlflow.db")
    experiment = client.get_experiment_by_name("demo")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(results)  # one run per experiment id, named by it
    for experiment_id, result in results.items():
        run = runs[experiment_id]
        assert run.info.status == "FINISHED"
        spec = json.loads((storage / "demo" / "experiments" / experiment_id / "spec.json").read_text())
        for key in ("model", "mode", "train_set", "prompt_type", "lr", "batch_size", "max_epochs", "seed"):
            assert run.data.params[key] == str(spec[key]), key
        assert run.data.params["id"] == experiment_id
        # Every epoch's metrics, at the epoch as the step; nothing of Tune's config among them.
        history = client.get_metric_history(run.info.run_id, "val_dice")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2] == list(range(1, result["epochs"] + 1))
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
        assert not [key for key in run.data.metrics if key.startswith("config")]
        [test_set] = result["eval"]
        dice = result["eval"][test_set]["dice_mean"]
        assert run.data.metrics["test_dice"] == pytest.approx(dice)
        assert run.data.metrics[f"test_dice/{test_set}"] == pytest.approx(dice)


def test_the_mlflow_store_is_the_flag_else_mlflows_variable_else_a_sqlite_file_beside_the_study(tmp_path, monkeypatch):
    from orchestrator.trackers import TrackerError, mlflow_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_tracking_uri(str(tmp_path / "runs"), "demo") == f"sqlite:///{tmp_path}/runs/demo/mlflow.db"
    assert mlflow_tracking_uri("s3://bucket/runs", "demo") == f"sqlite:///{Path.cwd()}/mlflow.db"
    assert mlflow_tracking_uri("runs", "demo", "http://mlflow.lab:5000") == "http://mlflow.lab:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.lab:5000")  # MLflow's own setting
    assert mlflow_tracking_uri(str(tmp_path / "runs"), "demo") == "http://tracking.lab:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "databricks")  # a workspace: MLflow resolves it, not a file store
    assert mlflow_tracking_uri(str(tmp_path / "runs"), "demo") == "databricks"
    for store in ("mlruns", str(tmp_path / "mlruns"), f"file://{tmp_path}/mlruns"):  # MLflow's file store
        with pytest.raises(TrackerError, match="file store"):
            mlflow_tracking_uri(str(tmp_path / "runs"), "demo", store)


def test_an_mlflow_file_store_is_refused_in_one_line_before_anything_runs(tmp_path):
    """MLflow's file store keeps a metric in a file named by its key: test_dice and test_dice/<set> cannot
    both be there (the grid crashed on it at its first result)."""
    out = run_cli("grid", "--storage", str(tmp_path / "runs"), "--data", str(tmp_path / "shards"),
                  "--log", "mlflow", "--mlflow-uri", f"file://{tmp_path}/mlruns", timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"--mlflow-uri file://{tmp_path}/mlruns: MLflow's file store cannot hold test_dice beside "
        "test_dice/<test set>; use a database (sqlite:///PATH/mlflow.db) or a tracking server (http://HOST:5000)"]
    assert not (tmp_path / "shards").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb is not installed (the optional extra: pip install -e '.[wandb]')")
def test_the_wandb_callback_logs_offline_under_the_study(tmp_path, monkeypatch):
    from ray.air.integrations.wandb import WandbLoggerCallback

    from orchestrator.trackers import tracker_callbacks

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    [callback] = tracker_callbacks(["wandb"], storage=str(tmp_path / "runs"), study="demo")
    assert isinstance(callback, WandbLoggerCallback)
    assert callback.project == "demo"
    assert callback.kwargs == {"mode": "offline", "dir": str(tmp_path / "runs" / "demo")}
    assert (tmp_path / "runs" / "demo").is_dir()
    callback.setup()  # offline: no API key asked for


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None,
                    reason="wandb is installed: the message for a missing extra cannot show")
def test_a_missing_tracker_package_names_its_extra_in_one_line(tmp_path):
    out = run_cli("grid", "--storage", str(tmp_path / "runs"), "--data", str(tmp_path / "shards"),
                  "--log", "wandb", timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "--log wandb needs the wandb package: pip install -e '.[wandb]' in the repository (or pip install wandb)"]
    assert not (tmp_path / "shards").exists()  # refused before anything ran
