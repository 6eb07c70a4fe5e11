"""Storage faults: an S3 outage is retried and never blamed on the data; a full disk and a DONE marker
without its result say what they are.

The outage test puts a small TCP proxy between the commands and the loopback S3 server, and cuts it for
30 s while a grid's trials run: every connection in that time is reset, as a network partition or an
S3 outage would."""

from __future__ import annotations

import os
import socket
import threading
import time

import boto3
import pytest

from tests.cli import run_cli

PICK = ["synth_polyp-p0", "synth_polyp-p1", "synth_pairs-p0", "synth_pairs-p1"]
OUTAGE_S = 30.0


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target``; ``cut()`` resets every open connection and every
    new one until ``restore()``. Counts the connections it reset."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = threading.Event()
        self.stopped = threading.Event()
        self.reset_count = 0
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _reset(self, conn: socket.socket) -> None:
        # SO_LINGER 0: close sends a TCP reset, as a dropped route or a failed load balancer does.
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set():
                self.reset_count += 1
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                self._reset(client)
                continue
            with self.lock:
                self.open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= {source, sink}
            for s in (source, sink):
                if self.down.is_set():
                    self._reset(s)
                else:
                    _close(s)

    def cut(self) -> None:
        self.down.set()
        with self.lock:
            connections, self.open = list(self.open), set()
        self.reset_count += len(connections)
        for conn in connections:
            self._reset(conn)

    def restore(self) -> None:
        self.down.clear()

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()


def _close(s: socket.socket) -> None:
    try:
        s.close()
    except OSError:
        pass


def keys(s3, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.slow
def test_a_30s_s3_outage_during_a_grid_ends_with_every_experiment_done(s3_bucket, s3_endpoint, monkeypatch):
    """Issue 16's Done-when: 30 s of reset connections to S3 while a grid's trials start and train (their
    checkpoint and progress reads and writes, the driver's Tune state and lease) end with every
    experiment DONE, none FAILED, in the one launch. With Ray's trial retries off (--max-failures 0): the
    S3 requests' own retries ride the outage out. (Before, each trial failed as `RayTaskError(OSError)()`.)"""
    bucket = s3_bucket.removeprefix("s3://")
    direct = boto3.client("s3", endpoint_url=s3_endpoint)  # the test's own view, around the proxy
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = CuttableProxy((host, int(port)))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)  # the command, its Ray and its trials: all through it
    args = ["grid", "--profile", "demo", *[a for p in PICK for a in ("--only", p)], "--max-epochs", "3",
            "--data", f"{s3_bucket}/shards", "--storage", f"{s3_bucket}/runs", "--fake-gpus", "2",
            "--cpus-per-trial", "0.5", "--no-dashboard", "--max-failures", "0"]
    ran: dict = {}
    command = threading.Thread(target=lambda: ran.update(result=run_cli(*args, timeout=900)))
    command.start()
    try:
        # Cut once the trials run: their progress notes are in storage.
        deadline = time.monotonic() + 400
        while not any(k.endswith("/progress.json") for k in keys(direct, bucket, "runs/demo/experiments/")):
            assert command.is_alive() and time.monotonic() < deadline, ran.get("result")
            time.sleep(0.2)
        proxy.cut()
        cut_at = time.monotonic()
        time.sleep(OUTAGE_S)
        proxy.restore()
        outage = time.monotonic() - cut_at
        command.join(600)
    finally:
        proxy.restore()
        command.join(900)
        proxy.stop()
    result = ran["result"]
    output = result.stdout[-4000:] + result.stderr[-6000:]
    assert outage >= OUTAGE_S and proxy.reset_count > 0, (outage, proxy.reset_count)  # the outage was felt
    assert result.returncode == 0, output
    assert "ran 4 experiments: 4 finished, 0 failed, 0 stopped" in result.stdout, output
    assert not [line for line in result.stdout.splitlines() if line.startswith(("FAILED", "stopped"))], output
    stored = keys(direct, bucket, "runs/demo/experiments/")
    done = {k.split("/")[3] for k in stored if k.endswith("/DONE")}
    assert len(done) == 4 and not [k for k in stored if k.endswith("FAILED.json")], stored
    assert not [k for k in stored if ".tmp-" in k], stored


def test_proxy_resets_connections_while_cut(s3_endpoint):
    """The test's own tool: through the proxy S3 answers; cut, every request fails at once."""
    from botocore.config import Config

    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = CuttableProxy((host, int(port)))
    try:
        s3 = boto3.client("s3", endpoint_url=proxy.endpoint, config=Config(retries={"max_attempts": 0}))
        s3.list_buckets()
        proxy.cut()
        with pytest.raises(Exception, match="connect|reset|closed|aborted"):
            s3.list_buckets()
        assert proxy.reset_count >= 1
        proxy.restore()
        s3.list_buckets()
    finally:
        proxy.stop()


def demo_results(storage: str) -> list[str]:
    """Two demo experiments recorded as trials record them; their ids."""
    from search_spaces.grid import demo
    from trainables.results import ResultStore

    results, ids = ResultStore(storage, "demo"), []
    for spec in demo()[:2]:
        full = {**spec.to_dict(), "id": spec.id}
        dice = {f"img{i}": 0.5 + i / 100 for i in range(8)}
        results.write_result(full, {"experiment_id": spec.id, "spec": full, "best_val_dice": 0.5, "epochs": 2,
                                    "eval": {spec.train_set: {"dice_mean": 0.535, "dice_std": 0.02, "n_images": 8}}},
                             {spec.train_set: dice})
        ids.append(spec.id)
    return ids


def test_a_done_marker_without_its_result_is_not_finished_and_breaks_nothing(tmp_path):
    """Case 10: a DONE whose result.json is gone (a partial copy, a hand cleanup) used to crash the
    commands that read every finished result (`ood`, `ablate`, the end of a grid). Such a record is not
    finished: the commands leave it out and say where it is, and the grid runs it again."""
    storage = str(tmp_path / "runs")
    kept, broken = demo_results(storage)
    (tmp_path / "runs" / "demo" / "experiments" / broken / "result.json").unlink()

    report = run_cli("report", "--storage", storage, "--profile", "demo")
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-3000:]
    said = report.stdout + report.stderr
    assert f"{storage}/demo/experiments/{broken}" in said and "no result.json" in said, said
    assert kept in (tmp_path / "runs" / "demo" / "report.csv").read_text()

    ood = run_cli("ood", "--profile", "demo", "--storage", storage)  # reads every finished experiment's result
    assert "Traceback" not in ood.stderr and "nothing to evaluate" in ood.stderr, ood.stderr[-3000:]

    planned = run_cli("grid", "--profile", "demo", "--storage", storage, "--dry-run")
    assert planned.returncode == 0, planned.stderr[-3000:]
    states = {line.split()[0]: line.split()[-1] for line in planned.stdout.splitlines() if line.startswith("clipseg")}
    assert states[kept] == "done" and states[broken] == "pending", planned.stdout


def test_infrastructure_faults_are_told_from_bad_input_through_rays_wrappers():
    """One classification: storage, network, node and memory faults are infrastructure (retried, never
    FAILED), bad input and bugs are not; the text names the innermost cause, not Ray's wrapper."""
    from ray.exceptions import ActorDiedError, RayTaskError

    from datasets.storage import (
        ShardError,
        StorageFull,
        StorageUnavailable,
        error_text,
        is_infrastructure,
    )

    def wrapped(error):  # as a trial's error reaches the driver
        return RayTaskError("train_experiment", "Traceback ...", error).as_instanceof_cause()

    message = "When reading information for key 'x' in bucket 'b': AWS Error NETWORK_CONNECTION"
    outage = wrapped(OSError(message))
    assert repr(outage) == "RayTaskError(OSError)()"  # what FAILED.json used to say
    assert error_text(outage) == f"OSError: {message}"
    for fault in (outage, wrapped(StorageUnavailable("cannot read s3://b/x after 4 attempts")),
                  StorageFull("disk full: no space left in /runs"), wrapped(ConnectionResetError()),
                  wrapped(MemoryError()), ActorDiedError()):
        assert is_infrastructure(fault), fault
    for not_a_fault in (wrapped(ShardError("corrupt shard s3://b/x")), ShardError("x"), wrapped(ValueError("boom")),
                        wrapped(FileNotFoundError("no best_model.pt stored for x"))):
        assert not is_infrastructure(not_a_fault), not_a_fault
    assert error_text(wrapped(ShardError("corrupt shard s3://b/x"))) == "ShardError: corrupt shard s3://b/x"
    # Tune's text of an error it could not keep: its last line.
    text = "Failure # 1\nTraceback (most recent call last):\n  File 'x.py'\nOSError: gone\n"
    assert error_text(text) == "OSError: gone"


def test_a_crash_from_a_fault_is_left_unfinished_and_any_other_is_failed_with_its_cause(tmp_path):
    from ray.exceptions import RayTaskError

    from orchestrator.launch import Outcome
    from trainables.results import ResultStore

    store, outcome = ResultStore(str(tmp_path), "study"), Outcome()
    outage = RayTaskError("f", "tb", OSError("AWS Error NETWORK_CONNECTION")).as_instanceof_cause()
    bug = RayTaskError("f", "tb", ValueError("boom")).as_instanceof_cause()
    store.record_outcome(outcome, [("a", {}, outage), ("b", {}, bug)])
    assert outcome.unfinished == ["a"] and outcome.causes == {"a": "OSError: AWS Error NETWORK_CONNECTION"}
    assert outcome.failed == {"b": "ValueError: boom"} and store.failure("b")["error"] == "ValueError: boom"
    assert store.failure("a") is None and store.failed_ids() == {"b"}


def test_credentials_in_a_storage_uri_are_refused_without_echoing_them():
    from datasets.storage import ShardError, filesystem_for

    with pytest.raises(ShardError) as refused:
        filesystem_for("s3://AKIAEXAMPLE:s3cr3t+key/x@my-bucket/runs")
    message = str(refused.value)
    assert "s3cr3t" not in message and "AKIAEXAMPLE" not in message and "\n" not in message
    assert "s3://...@my-bucket/runs" in message and "environment" in message and "instance role" in message

    shown = run_cli("grid", "--profile", "demo", "--storage", "s3://AKIAEXAMPLE:s3cr3t@my-bucket/runs", "--dry-run")
    assert shown.returncode != 0 and "must not hold credentials" in shown.stderr, shown.stdout + shown.stderr
    assert "s3cr3t" not in shown.stdout + shown.stderr


FULL_DISK_SCRIPT = """
import os, sys
import pyarrow.fs as pafs
from datasets.storage import write_atomically
from trainables.results import ResultStore

folder = sys.argv[1]
store = ResultStore(folder, "study")
try:
    store.save_checkpoint("exp-1", os.urandom(400_000))  # a checkpoint larger than the disk
except Exception as e:
    print(f"{type(e).__name__}: {e}")
write_atomically(pafs.LocalFileSystem(), os.path.join(folder, "small.json"), b"{}")  # what fits still works
print("left:", sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs))
"""


def test_a_full_storage_disk_is_reported_as_such_and_leaves_no_temporary_files(tmp_path):
    """Case 12: a full disk under a local --storage: the error says so and names the folder (it surfaced
    as EOFError or a bare errno), and the failed write leaves no .tmp-* file. A 256 kB tmpfs in a private
    mount namespace stands in for the full disk."""
    import shutil
    import subprocess
    import sys

    from tests.cli import REPO

    if not shutil.which("unshare"):
        pytest.skip("no unshare(1) here to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(FULL_DISK_SCRIPT)
    mount_then_run = 'mount -t tmpfs -o size=256k tmpfs "$1" && exec "$2" "$3" "$1"'
    run = subprocess.run(["unshare", "-Urm", "sh", "-c", mount_then_run, "sh", str(disk), sys.executable, str(script)],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    if run.returncode != 0 and "mount" in run.stderr and "StorageFull" not in run.stdout:
        pytest.skip(f"cannot mount a tmpfs in a private namespace here: {run.stderr.strip()[:200]}")
    assert run.returncode == 0, run.stderr[-3000:]
    folder = f"{disk}/study/experiments/exp-1/checkpoint"
    said = f"StorageFull: disk full: no space left in {folder} to write trainer.pt. Free space"
    assert said in run.stdout, run.stdout
    assert "left: ['small.json']" in run.stdout, run.stdout  # no trainer.pt.tmp-*


def test_the_console_says_a_trial_stopped_by_a_fault_is_not_failed(capsys, tmp_path):
    """The line for a trial that a storage fault ended after Ray's retries: its cause, and that it is not
    marked failed and runs again; a bug's crash stays FAILED, with its cause, not Ray's wrapper."""
    from ray import cloudpickle
    from ray.exceptions import RayTaskError

    from orchestrator.console import TrialConsole
    from orchestrator.launch import Outcome, say_causes

    class Trial:  # what the console reads of a Tune trial
        def __init__(self, name: str, error: BaseException):
            self.name, self.status, self.last_result, self.error_file = name, "RUNNING", {}, None
            self.pickled_error_file = str(tmp_path / f"{name}.pkl")
            with open(self.pickled_error_file, "wb") as f:
                cloudpickle.dump(RayTaskError("f", "tb", error).as_instanceof_cause(), f)

        def __str__(self) -> str:
            return self.name

    console = TrialConsole()
    trials = [Trial("a", OSError("AWS Error NETWORK_CONNECTION during HeadObject")), Trial("b", ValueError("boom"))]
    console.setup(total_num_samples=2)
    for trial in trials:
        console.on_trial_start(0, trials, trial)
    capsys.readouterr()
    for trial in trials:
        trial.status = "ERROR"
        console.on_trial_error(1, trials, trial)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("stopped  a: OSError: AWS Error NETWORK_CONNECTION during HeadObject (a fault of "
                               "storage, network, node or memory, not of its input: not marked failed")
    assert lines[1].startswith("progress 0/2 done, 1 running, 0 failed, 1 stopped by a fault")
    assert lines[2] == "FAILED   b: ValueError: boom" and "RayTaskError" not in "\n".join(lines)

    say_causes(Outcome(unfinished=["a"], causes={"a": "OSError: AWS Error NETWORK_CONNECTION during HeadObject"}))
    said = capsys.readouterr().err
    assert "NOT FINISHED a: OSError: AWS Error NETWORK_CONNECTION" in said and "no --retry-failed needed" in said
