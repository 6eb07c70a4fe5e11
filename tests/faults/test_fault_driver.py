"""Exactly one driver, even on S3: two launches of one study released at the same instant cannot both
hold it, nor can two taking over the same dead driver (driver.json is written with S3's conditional
writes, If-None-Match / If-Match, on the loopback S3 server, and with an exclusive link or a locked
rename on a local folder); an experiment cannot be marked DONE twice; a storage fault while taking
the lease is one line naming the file, not a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from datasets.storage import absolute_uri, filesystem_for, write_if_unchanged
from orchestrator.lease import LEASE_FILE, STALE_S, LeaseError, study_lease
from tests.cli import REPO
from trainables.results import ResultStore

# A launch that waits at the barrier (the file ``go`` appearing), then takes the study's lease at once.
LAUNCH = """
import os, sys, time
from orchestrator.lease import LeaseError, study_lease
storage, study, barrier, release = sys.argv[1:5]
print("ready", flush=True)
while not os.path.exists(barrier):
    pass
try:
    lease = study_lease(storage, study, command=f"launch {os.getpid()}")
except LeaseError as e:
    print("refused", str(e).replace(chr(10), " "), flush=True)
    sys.exit(0)
print("held", flush=True)
while not os.path.exists(release):  # holds the study while the other one tries
    time.sleep(0.01)
lease.release()
"""


def write_stale_record(uri: str) -> None:
    """driver.json of a driver on another host whose last heartbeat is long past."""
    beat = (datetime.now(UTC) - timedelta(seconds=STALE_S + 60)).isoformat()
    record = {"host": "gone-node", "pid": 4242, "command": "grid", "started": beat, "heartbeat": beat, "token": "old"}
    fs, path = filesystem_for(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(json.dumps(record).encode())


def race(storage: str, study: str, tmp_path, launches: int = 2) -> list[tuple[int, str]]:
    """``launches`` processes take ``<storage>/<study>``'s lease at the same instant: (pid, what each said)."""
    barrier, release = tmp_path / f"{study}.go", tmp_path / f"{study}.release"
    procs = [subprocess.Popen([sys.executable, "-c", LAUNCH, storage, study, str(barrier), str(release)], cwd=REPO,
                              env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(launches)]
    try:
        for proc in procs:  # every one imported everything and waits at the barrier
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        barrier.touch()
        said = [(proc.pid, proc.stdout.readline().strip()) for proc in procs]
        release.touch()
        for proc in procs:
            proc.wait(timeout=60)
        return said
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.mark.parametrize("where", ["s3", "local"])
def test_two_launches_at_the_same_instant_one_runs_the_other_names_it(where, request, tmp_path):
    storage = f"{request.getfixturevalue('s3_bucket')}/runs" if where == "s3" else str(tmp_path / "runs")
    if where == "s3":  # every write of driver.json is kept as a version: the refused launch must have written none
        bucket = storage.removeprefix("s3://").split("/")[0]
        s3 = boto3.client("s3")
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for attempt in range(4):
        study = f"race{attempt}"
        stale = attempt % 2  # every other round both take over the same dead driver's driver.json
        if stale:
            write_stale_record(f"{storage}/{study}/{LEASE_FILE}")
        said = race(storage, study, tmp_path)
        held = [pid for pid, line in said if line == "held"]
        refused = [line for _, line in said if line.startswith("refused")]
        assert len(held) == 1 and len(refused) == 1, said
        assert f"another driver holds this study ({storage}/{study}/{LEASE_FILE})" in refused[0], said
        assert f"pid {held[0]} (launch {held[0]})" in refused[0], said
        fs, path = filesystem_for(f"{storage}/{study}/{LEASE_FILE}")
        assert fs.get_file_info(path).type.name == "NotFound"  # the holder released it
        if where == "s3":
            versions = s3.list_object_versions(Bucket=bucket, Prefix=f"runs/{study}/{LEASE_FILE}")
            # the dead driver's record and the holder's: none from the refused launch
            assert len(versions.get("Versions", [])) == 1 + stale, versions.get("Versions")


@pytest.mark.parametrize("where", ["s3", "local"])
def test_an_experiment_is_marked_done_once(where, request, tmp_path, capsys):
    storage = f"{request.getfixturevalue('s3_bucket')}/runs" if where == "s3" else str(tmp_path / "runs")
    store = ResultStore(storage, "demo")
    spec = {"id": "exp1", "model": "clipseg"}

    def result(dice: float) -> dict:
        return {"experiment_id": "exp1", "eval": {"test": {"dice_mean": dice, "dice_std": 0.0, "n_images": 1}},
                "run": {"started_at": 0.0, "finished_at": 1.0}}

    store.write_result(spec, result(0.5), {"test": {"a": 0.5}})
    first_done = store._read_json("exp1", "DONE")
    assert store.finished_ids() == {"exp1"} and "already" not in capsys.readouterr().out
    time.sleep(0.01)
    store.write_result(spec, result(0.7), {"test": {"a": 0.7}})  # a second writer of the same experiment
    assert store._read_json("exp1", "DONE") == first_done  # not rewritten, nor its result
    assert store.result("exp1")["eval"]["test"]["dice_mean"] == 0.5
    assert "exp1: already finished by another run" in capsys.readouterr().out
    assert store.finished_ids() == {"exp1"}
    # Two writers past that check in the same instant: DONE's create is conditional, so one of them wins.
    done_uri = f"{absolute_uri(storage)}/demo/experiments/exp1/DONE"
    assert not write_if_unchanged(done_uri, b'{"finished_at": 2.0}')
    assert store._read_json("exp1", "DONE") == first_done


def test_a_storage_fault_while_taking_the_lease_is_one_line(s3_endpoint, tmp_path):
    # A bucket that does not exist: every call on it fails (as an outage or a permission would).
    with pytest.raises(LeaseError) as failed:
        study_lease("s3://no-such-bucket-h2/runs", "demo")
    message = str(failed.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert f"s3://no-such-bucket-h2/runs/demo/{LEASE_FILE}" in message and "Check --storage" in message, message

    # A local study folder that is a file.
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(LeaseError) as failed:
        study_lease(str(tmp_path / "runs"), "demo")
    assert f"{tmp_path}/runs/demo/{LEASE_FILE}" in str(failed.value) and "\n" not in str(failed.value)


def test_the_lease_file_is_whole_and_json(s3_bucket):
    with study_lease(f"{s3_bucket}/runs", "demo") as held:
        fs, path = filesystem_for(f"{s3_bucket}/runs/demo/{LEASE_FILE}")
        with fs.open_input_stream(path) as f:
            assert json.loads(f.read())["token"] == held.record["token"]
