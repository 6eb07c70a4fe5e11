"""The walking skeleton end to end: a grid of fractional-GPU trials on a real local Ray, with shards
and results on a real S3 server on loopback; a rerun of the same command runs nothing. At the default
verbosity the console says each trial's start and end, and progress with an ETA, and nothing else."""

import csv
import io
import json

import boto3

from orchestrator.results import load
from tests.cli import console_lines, run_cli

PICK = ["synth_polyp-p0", "synth_polyp-p1", "synth_pairs-p0", "synth_pairs-p1"]


def max_overlap(intervals):
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = best = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


def objects(s3, bucket, prefix):
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: (o["ETag"], o["LastModified"]) for page in pages for o in page.get("Contents", [])}


def test_grid_on_s3_runs_fractional_trials_and_a_rerun_runs_nothing(s3_bucket, s3_endpoint):
    bucket = s3_bucket.removeprefix("s3://")
    args = ["grid", "--profile", "demo", *[a for p in PICK for a in ("--only", p)], "--max-epochs", "2",
            "--data", f"{s3_bucket}/shards", "--storage", f"{s3_bucket}/runs", "--fake-gpus", "2",
            "--cpus-per-trial", "0.5", "--no-dashboard"]
    first = run_cli(*args)  # at the default verbosity
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert "4 experiments: 0 already finished" in first.stdout
    assert "ran 4 experiments: 4 finished, 0 failed" in first.stdout

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    stored = objects(s3, bucket, "runs/demo/experiments/")
    ids = sorted({key.split("/")[3] for key in stored} - {""})  # "" is a folder marker
    assert len(ids) == 4 and all(any(p in i for i in ids) for p in PICK)
    # At most three lines per trial (started, resumed, done), progress lines with an ETA, the launch's
    # plan line and its summary: no Ray table, no Ray start-up notes, no trial output.
    trials, progress, others = console_lines(first.stdout)
    assert sorted(trials) == ids, first.stdout
    for experiment_id, lines in trials.items():
        assert len(lines) <= 3 and [line.split()[0] for line in lines] == ["started", "done"], lines
        assert lines[-1].startswith(f"done     {experiment_id}: best val dice ") and ", 2 epochs, " in lines[-1]
    assert len(progress) >= 4 and progress[-1].startswith("progress 4/4 done, 0 running, 0 failed"), progress
    assert any(", ETA " in line and "ETA unknown" not in line for line in progress), progress
    others = [line for line in others if not line.startswith("generated synthetic dataset")]  # the data, once
    assert [line.split(":")[0] for line in others] == ["4 experiments", "ran 4 experiments", "results table (4 rows)",
                                                       "                  csv"], others
    assert "Trial status" not in first.stdout + first.stderr and "INFO" not in first.stderr, first.stderr[-3000:]
    runs = []
    for experiment_id in ids:
        assert f"runs/demo/experiments/{experiment_id}/DONE" in stored
        result = json.loads(s3.get_object(Bucket=bucket, Key=f"runs/demo/experiments/{experiment_id}/result.json")
                            ["Body"].read())
        assert result["epochs"] == 2 and result["spec"]["max_epochs"] == 2
        assert result["eval"][result["spec"]["train_set"]]["n_images"] == 40
        assert result["run"]["resources"] == {"CPU": 0.5, "GPU": 0.5}
        assert len(result["run"]["gpu_ids"]) == 1
        runs.append(result["run"])
    # Four half-GPU trials on two logical GPUs: both GPUs used, trials running side by side.
    assert {r["gpu_ids"][0] for r in runs} == {"0", "1"}
    assert max_overlap([(r["started_at"], r["finished_at"]) for r in runs]) >= 3

    report = s3.get_object(Bucket=bucket, Key="runs/demo/report.csv")["Body"].read().decode()
    rows = list(csv.DictReader(io.StringIO(report)))
    assert sorted(r["experiment_id"] for r in rows) == ids
    assert all(r["n_images"] == "40" and 0.0 <= float(r["dice_mean_%"]) <= 100.0 for r in rows)  # in %
    # The tidy results: one row per (experiment, eval set, image), every spec field on each.
    images = load(f"{s3_bucket}/runs", "demo")
    assert sorted(images.record_id.unique()) == ids and (images.experiment_id == images.record_id).all()
    assert len(images) == 40 * len(rows) and images.groupby(["record_id", "eval_set"]).size().eq(40).all()
    assert not images.duplicated(["record_id", "eval_set", "sample_id"]).any() and images.dice.between(0, 1).all()
    assert {f"{t}-{p}" for t, p in zip(images.train_set, images.prompt_type)} == set(PICK)
    assert set(images.kind) == {"train"} and set(images.model) == {"clipseg"} and set(images.max_epochs) == {2}
    assert images[["mode", "regime", "seed", "lr", "batch_size", "hparams"]].notna().all().all()
    # Boundary metrics beside dice: NSD in [0, 1] where defined; HD95 undefined (null) only where dice says
    # a mask or the prediction is empty (dice 0, or 1 for two empty masks).
    assert images.nsd.dropna().between(0, 1).all() and images.nsd.notna().any()
    assert images[images.hd95.isna()].dice.isin([0.0, 1.0]).all() and (images.hd95.dropna() >= 0).all()
    summary = load(f"{s3_bucket}/runs", "demo", "experiments")
    assert len(summary) == len(rows) and (summary.gpu_share == 0.5).all() and (summary.epochs == 2).all()
    assert (summary.wall_time_s > 0).all() and (summary.n_images == 40).all() and summary.nsd_mean.notna().all()

    second = run_cli(*args, "--verbose", "0")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "4 experiments: 4 already finished" in second.stdout and "0 to run" in second.stdout
    assert "ran 0 experiments" in second.stdout
    # Nothing under the experiments was written again, and Ray was not even started.
    assert objects(s3, bucket, "runs/demo/experiments/") == stored
    assert "Ray" not in second.stdout + second.stderr
