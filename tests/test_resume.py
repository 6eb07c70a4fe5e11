"""Stopping the driver at any moment and rerunning the same command repeats no work: the grid's
driver is killed (its whole session, SIGKILL) once one experiment has finished and another has
written a checkpoint, on a real local Ray with shards and results on a real S3 server on loopback.
The rerun skips the finished experiment, resumes the interrupted ones from their checkpoints, and
every experiment ends with exactly one result.

Also, without Ray: a checkpoint that cannot be used (torn, foreign, of another experiment) is
never loaded."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import boto3
import pyarrow.parquet as pq

from tests.cli import REPO, kill_session, run_cli

PICK = ["synth_polyp-p0", "synth_polyp-p1", "synth_pairs-p0"]
# Two trials side by side on two cores: an epoch of the small CLIPSeg takes ~2 s, so each trial
# runs ~12 s and the third starts when one of the first two ends. Early stopping (patience 15)
# cannot end a trial before this.
MAX_EPOCHS = 5


def listing(s3, bucket: str, prefix: str) -> dict[str, str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"] + str(o["LastModified"]) for page in pages for o in page.get("Contents", [])}


def by_experiment(keys) -> dict[str, set[str]]:
    """``runs/demo/experiments/<id>/<name>`` -> {id: {name, ...}}."""
    found: dict[str, set[str]] = {}
    for key in keys:
        parts = key.split("/", 4)
        if len(parts) == 5 and parts[4]:
            found.setdefault(parts[3], set()).add(parts[4])
    return found


def read_json(s3, bucket: str, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_a_killed_grid_resumes_from_checkpoints_and_finishes_every_experiment_once(s3_bucket, s3_endpoint, tmp_path):
    bucket = s3_bucket.removeprefix("s3://")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    prefix = "runs/demo/experiments/"
    args = ["grid", "--profile", "demo", *[a for p in PICK for a in ("--only", p)], "--max-epochs", str(MAX_EPOCHS),
            "--data", f"{s3_bucket}/shards", "--storage", f"{s3_bucket}/runs", "--cpus-per-trial", "1",
            "--checkpoint-interval", "0", "--no-dashboard"]
    log_path = tmp_path / "driver.log"
    started = time.monotonic()
    with open(log_path, "wb") as out:
        driver = subprocess.Popen([sys.executable, "-m", "orchestrator.run", *args, "--verbose", "0"], cwd=REPO,
                                  env=os.environ.copy(),
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Kill once one experiment is done and another has a checkpoint but no DONE: the moment of
        # interest, mid-grid with finished, interrupted and (maybe) unstarted work.
        deadline = time.monotonic() + 240
        while True:
            files = by_experiment(listing(s3, bucket, prefix))
            done = {i for i, names in files.items() if "DONE" in names}
            # A checkpoint is written before its progress note: the note's epoch is at most the checkpoint's.
            # Wait for one with epochs left to train (after the last epoch a trial checkpoints, then tests).
            seen_epoch = {i: read_json(s3, bucket, f"{prefix}{i}/progress.json")["epoch"]
                          for i, names in files.items() if i not in done and "checkpoint/trainer.pt" in names
                          and "progress.json" in names}
            interrupted = {i for i, epoch in seen_epoch.items() if 1 <= epoch < MAX_EPOCHS}
            if done and interrupted:
                break
            log = log_path.read_text(errors="replace")[-5000:]
            assert driver.poll() is None, f"the grid ended before the kill ({driver.returncode}):\n{log}"
            assert time.monotonic() < deadline, f"no finished and interrupted experiments in time: {files}\n{log}"
            time.sleep(0.3)
    finally:
        kill_session(driver)
    print(f"\nkilled the driver after {time.monotonic() - started:.0f} s: done {sorted(done)}, "
          f"checkpoints at epochs {seen_epoch}")
    # What a finished experiment holds, less the resume state a kill between DONE and its cleanup may
    # leave (the rerun clears that).
    finished_before = {k: v for k, v in listing(s3, bucket, prefix).items() if k.split("/")[3] in done
                       and "/checkpoint/" not in k and not k.endswith(("/checkpoint/", "/progress.json"))}

    # status sees the stopped grid as it is: finished, interrupted (running, as far as storage shows), pending.
    shown = run_cli("status", "--storage", f"{s3_bucket}/runs", *args[1:args.index("--data")], timeout=120)
    total = next(line.split()[1:] for line in shown.stdout.splitlines() if line.startswith("total "))
    done_n, running_n, failed_n, pending_n = map(int, total[:4])
    assert (done_n, failed_n) == (len(done), 0) and running_n >= len(interrupted), shown.stdout
    assert done_n + running_n + pending_n == len(PICK), shown.stdout

    rerun_started = time.monotonic()
    rerun = run_cli(*args)  # at the default verbosity: its console says which trials resumed
    print(f"the rerun took {time.monotonic() - rerun_started:.0f} s")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-5000:]
    left = len(PICK) - len(done)
    assert f"3 experiments: {len(done)} already finished" in rerun.stdout, rerun.stdout
    assert f"{left} to run, " in rerun.stdout and "of them from their checkpoints" in rerun.stdout, rerun.stdout
    assert f"ran {left} experiments: {left} finished, 0 failed" in rerun.stdout, rerun.stdout

    after = listing(s3, bucket, prefix)
    files = by_experiment(after)
    assert len(files) == len(PICK) and all(sum(p in i for i in files) == 1 for p in PICK), sorted(files)
    for experiment_id, names in files.items():
        # Exactly one result each, and no resume state left behind once DONE is written.
        assert {"DONE", "result.json", "per_image.parquet", "spec.json"} <= names, (experiment_id, names)
        assert not any(n.startswith(("checkpoint/", "progress.json", "FAILED")) for n in names), (experiment_id, names)
        result = read_json(s3, bucket, f"{prefix}{experiment_id}/result.json")
        assert result["epochs"] == MAX_EPOCHS
        table = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=f"{prefix}{experiment_id}/per_image.parquet")
                                         ["Body"].read())).to_pylist()
        assert len(table) == 40 and len({(r["eval_set"], r["sample_id"]) for r in table}) == 40
        resumed = result["run"]["resumed_from_epoch"]
        if experiment_id in seen_epoch:
            # From its checkpoint (the one seen, or a later one written before the kill), not from epoch 0.
            assert isinstance(resumed, int) and max(1, seen_epoch[experiment_id]) <= resumed <= MAX_EPOCHS, (
                experiment_id, resumed)
        elif experiment_id not in done:  # no checkpoint seen: it started afresh, or checkpointed just before the kill
            assert resumed is None or 1 <= resumed <= MAX_EPOCHS
        if experiment_id not in done:
            said = f"resumed  {experiment_id} from its checkpoint after epoch {resumed}"
            # A trial resumed after its last epoch reports no epoch, so says nothing of its resume.
            assert (said in rerun.stdout) == (resumed is not None and resumed < MAX_EPOCHS), rerun.stdout
            assert rerun.stdout.count(f"done     {experiment_id}: ") == 1, rerun.stdout
    # The experiments finished before the kill were not touched by the rerun.
    assert {k: v for k, v in after.items() if k in finished_before} == finished_before

    # TensorBoard: each resumed trial's event file counts epochs on from its checkpoint.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for experiment_id in interrupted:
        resumed = read_json(s3, bucket, f"{prefix}{experiment_id}/result.json")["run"]["resumed_from_epoch"]
        if resumed == MAX_EPOCHS:  # a later checkpoint, after the last epoch, was written before the kill
            continue
        # Each launch has its own Tune folder, runs/demo/tune/<launch>/<id>/: the killed one's and the rerun's.
        events = [k for k in listing(s3, bucket, "runs/demo/tune/") if f"/{experiment_id}/" in k and "tfevents" in k]
        assert events, f"no TensorBoard events for {experiment_id}"
        steps = set()
        for n, key in enumerate(events):
            local = tmp_path / experiment_id / f"{n}.tfevents"
            local.parent.mkdir(exist_ok=True)
            local.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            accumulator = EventAccumulator(str(local))
            accumulator.Reload()
            if "ray/tune/val_dice" in accumulator.Tags()["scalars"]:  # the killed run's file may hold none
                steps |= {e.step for e in accumulator.Scalars("ray/tune/val_dice")}
        assert set(range(resumed + 1, MAX_EPOCHS + 1)) <= steps, (experiment_id, resumed, steps)


def test_an_unusable_checkpoint_is_never_loaded(tmp_path):
    from datasets.shards import ShardStore
    from datasets.synthetic import write_synthetic
    from search_spaces.grid import demo
    from trainables.experiment import prepare
    from trainables.results import ResultStore
    from trainables.tune_trainable import save_checkpoint, stored_state

    data = str(tmp_path / "shards")
    write_synthetic(ShardStore(data), "synth_polyp")
    spec = next(s for s in demo() if s.train_set == "synth_polyp")
    spec = {**spec.to_dict(), "id": spec.id, "max_epochs": 1}
    results = ResultStore(str(tmp_path / "runs"), "demo")
    trainer, _ = prepare(spec, data)
    assert stored_state(results, spec["id"], trainer.device) is None  # nothing stored yet

    trainer.step()
    save_checkpoint(results, spec["id"], trainer)
    good = results.load_checkpoint(spec["id"])
    fresh, _ = prepare(spec, data)
    fresh.load_state_dict(stored_state(results, spec["id"], fresh.device))
    assert fresh.epoch == 1 and fresh.best_dice == trainer.best_dice

    # A write cut short leaves only a temporary file beside the checkpoint: the checkpoint is still read.
    checkpoint = tmp_path / "runs/demo/experiments" / spec["id"] / "checkpoint"
    (checkpoint / "trainer.pt.tmp-dead0000").write_bytes(good[: len(good) // 2])
    assert stored_state(results, spec["id"], trainer.device)["epoch"] == 1

    # Torn bytes, foreign bytes, another experiment's checkpoint: each is refused, not loaded.
    for data_bytes in (good[: len(good) // 2], b"not a checkpoint", b""):
        results.save_checkpoint(spec["id"], data_bytes)
        assert stored_state(results, spec["id"], trainer.device) is None
    results.save_checkpoint("clipseg-other", good)
    assert stored_state(results, "clipseg-other", trainer.device) is None

    # Once DONE is written the trial clears the folder, temporary files included.
    results.write_progress(spec["id"], {"epoch": 1})
    results.clear_resume_state(spec["id"])
    assert not checkpoint.exists() and results.progress(spec["id"]) is None
