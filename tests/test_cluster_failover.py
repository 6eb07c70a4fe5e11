"""A node lost mid-run: two Ray nodes on this machine (started with ``ray start``, logical GPUs), a
grid of fractional-GPU trials on both, results and checkpoints on a real S3 server on loopback. The
second node is killed by PID once its trials have checkpointed; the grid still finishes, every
experiment once, and the lost trials resume from their checkpoints on the surviving node.

Never ``ray stop`` here: it stops every Ray process on the machine. Each node runs in its own
session and temp dir, and is stopped by PID.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import pyarrow.parquet as pq

from tests.cli import REPO, free_port, kill_session

PICK = ["synth_polyp-p0", "synth_polyp-p1", "synth_pairs-p0", "synth_pairs-p1"]
# Four trials share two cores: an epoch of the small CLIPSeg takes ~4 s, so a trial lasts ~40 s, and
# the kill (after the second node's first checkpoints, epoch 1-3) lands well inside it. Early
# stopping (patience 15) cannot end a trial before this.
MAX_EPOCHS = 10
RAY_CLI = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _parent(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    try:  # "pid (comm) state ppid ..."; comm may hold spaces and parentheses
        fields = stat[stat.rindex(b")") + 2:].split()
        return None if fields[0] == b"Z" else int(fields[1])  # a zombie cannot be killed: skip it
    except (ValueError, IndexError):
        return None


class RayNode:
    """``ray start --block`` in its own session and its own temp dir (short: Ray's socket paths have a
    length limit); everything it started is found by session, by its temp dir and by parentage."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")
        self.log = os.path.join(self.temp_dir, "ray-start.log")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([RAY_CLI, "start", "--block", f"--temp-dir={self.temp_dir}",
                                          f"--dashboard-agent-listen-port={free_port()}",
                                          "--object-store-memory=100000000", "--disable-usage-stats", *args],
                                         env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self._mine = re.compile(re.escape(self.temp_dir).encode() + rb"(/|\x00|$)")

    def output(self) -> str:
        return _read(self.log).decode(errors="replace")

    def wait_started(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in self.output():
            assert self.proc.poll() is None, f"ray start exited {self.proc.returncode}:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"ray start not up after {timeout} s:\n{self.output()[-3000:]}"
            time.sleep(0.5)

    def pids(self) -> set[int]:
        """Live processes of this node: its session, anything whose command line, environment or
        working directory is in its temp dir (raylet, GCS, agents, trial workers), and their children."""
        pids, parents = set(), {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            pid = int(entry)
            parent = _parent(pid)
            if parent is None:
                continue
            parents[pid] = parent
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd").encode()
            except OSError:
                cwd = b""
            if (_session_of(pid) == self.proc.pid or self._mine.search(_read(f"/proc/{pid}/cmdline"))
                    or self._mine.search(_read(f"/proc/{pid}/environ")) or self._mine.match(cwd + b"/")):
                pids.add(pid)
        grew = True
        while grew:
            children = {p for p, parent in parents.items() if parent in pids} - pids
            pids |= children
            grew = bool(children)
        return pids

    def trials(self) -> set[str]:
        """Experiment ids of the Tune trials running on this node now. A trial's worker process runs in
        its trial's working dir, which Tune creates under the temp dir of the node the trial runs on:
        ``<temp dir>/session_*/artifacts/*/<launch>/working_dirs/<experiment id>``."""
        found = set()
        for pid in self.pids():
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if cwd.startswith(self.temp_dir + "/") and "/working_dirs/" in cwd:
                found.add(os.path.basename(cwd))
        return found

    def kill(self) -> None:
        """SIGKILL every process of the node, as a lost machine would (no graceful shutdown)."""
        for _ in range(20):
            pids = self.pids()
            if self.proc.poll() is None:
                pids.add(self.proc.pid)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def checkpoints(s3, bucket: str) -> dict[str, int]:
    """Experiment id -> the epoch of its resume checkpoint in S3 (the trial writes progress.json after
    each checkpoint, and once with epoch 0 when it starts)."""
    found: dict[str, int] = {}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="runs/demo/experiments/")
    for page in pages:
        for obj in page.get("Contents", []):
            match = re.fullmatch(r"runs/demo/experiments/([^/]+)/progress.json", obj["Key"])
            if match:
                found[match[1]] = json.loads(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())["epoch"]
    return found


def test_grid_survives_losing_a_node_and_resumes_its_trials_from_checkpoints(s3_bucket, s3_endpoint, tmp_path):
    assert RAY_CLI, "the ray command is not installed beside this Python"
    bucket = s3_bucket.removeprefix("s3://")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    # The nodes, their workers and the driver all reach S3 through AWS_ENDPOINT_URL (set by the
    # fixture). Token auth is off for every party alike (a token would be needed by all of them).
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_CHDIR_TO_TRIAL_DIR": "1"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)

    nodes: list[RayNode] = []
    driver = None
    log_path = tmp_path / "driver.log"

    def driver_log() -> str:
        return log_path.read_text(errors="replace")[-6000:] if log_path.exists() else ""

    try:
        # Every fixed port moved to a free one, so that nothing collides with another Ray here; one
        # CPU per node means two half-CPU trials per node, so the four trials must use both nodes.
        head = RayNode(["--head", f"--port={free_port()}", f"--ray-client-server-port={free_port()}",
                        "--include-dashboard=false", f"--dashboard-port={free_port()}",
                        "--num-cpus=1", "--num-gpus=2"], env)
        nodes.append(head)
        head.wait_started()
        address = _read(os.path.join(head.temp_dir, "ray_current_cluster")).decode().strip()
        assert re.fullmatch(r"[\w.:\[\]-]+:\d+", address), f"no cluster address from the head: {address!r}"
        worker = RayNode([f"--address={address}", "--num-cpus=1", "--num-gpus=2"], env)
        nodes.append(worker)
        worker.wait_started()

        args = ["grid", "--profile", "demo", *[a for p in PICK for a in ("--only", p)], "--address", address,
                "--data", f"{s3_bucket}/shards", "--storage", f"{s3_bucket}/runs",
                "--gpus-per-trial", "0.5", "--cpus-per-trial", "0.5", "--max-epochs", str(MAX_EPOCHS),
                "--checkpoint-interval", "2", "--max-failures", "3"]  # the default console
        started = time.monotonic()
        with open(log_path, "wb") as out:
            driver = subprocess.Popen([sys.executable, "-m", "orchestrator.run", *args], cwd=REPO, env=env,
                                      stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        # Kill the second node only once (a) all four trials run, on both nodes, seen live from the trial
        # worker processes' working dirs (which name the node's temp dir and the experiment; with one CPU
        # per node this is two and two), and (b) each trial on the second node has a checkpoint of epoch 1
        # or later in S3 (experiments/<id>/checkpoint/trainer.pt), so a retry has something to resume from.
        deadline = time.monotonic() + 180
        while True:
            on_head, on_worker, saved = head.trials(), worker.trials(), checkpoints(s3, bucket)
            if (len(on_head | on_worker) == len(PICK) and on_head and on_worker
                    and all(saved.get(i, -1) >= 1 for i in on_worker)):
                break
            assert driver.poll() is None, f"the grid ended before the kill ({driver.returncode}):\n{driver_log()}"
            assert time.monotonic() < deadline, (f"trials not on both nodes with checkpoints: head {on_head}, "
                                                 f"second node {on_worker}, {saved}\n{driver_log()}")
            time.sleep(1)
        print(f"\nkilling the second node at {time.monotonic() - started:.0f} s: trials on the head {sorted(on_head)}, "
              f"on the second node {sorted(on_worker)}; checkpoints {saved}")
        worker.kill()
        assert not worker.pids(), "processes of the killed node are still alive"

        try:
            driver.wait(timeout=300)
        finally:
            print(f"grid finished {time.monotonic() - started:.0f} s after its start")
        assert driver.returncode == 0, driver_log()
        assert "ran 4 experiments: 4 finished, 0 failed" in driver_log(), driver_log()

        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="runs/demo/experiments/") for o in page.get("Contents", [])]
        ids = sorted({k.split("/")[3] for k in keys} - {""})
        assert len(ids) == 4 and all(sum(p in i for i in ids) == 1 for p in PICK), ids
        assert sorted(k for k in keys if k.endswith("/result.json")) == [
            f"runs/demo/experiments/{i}/result.json" for i in ids]
        assert not [k for k in keys if k.endswith("FAILED.json")]
        assert on_head | on_worker == set(ids)  # every experiment was running, on one node or the other
        runs = {}
        for experiment_id in ids:
            assert f"runs/demo/experiments/{experiment_id}/DONE" in keys
            result = json.loads(s3.get_object(Bucket=bucket, Key=f"runs/demo/experiments/{experiment_id}/result.json")
                                ["Body"].read())
            assert result["epochs"] == MAX_EPOCHS, (experiment_id, result["epochs"])
            assert result["run"]["resources"] == {"CPU": 0.5, "GPU": 0.5}
            assert len(result["run"]["gpu_ids"]) == 1
            runs[experiment_id] = result["run"]
            # Exactly once: one score per test image, though some trials ran twice; no resume state left.
            scores = pq.read_table(io.BytesIO(s3.get_object(
                Bucket=bucket, Key=f"runs/demo/experiments/{experiment_id}/per_image.parquet")["Body"].read()))
            images = {(r["eval_set"], r["sample_id"]) for r in scores.select(["eval_set", "sample_id"]).to_pylist()}
            assert scores.num_rows == len(images) == 40, (experiment_id, scores.num_rows, len(images))
            assert not [k for k in keys if k.startswith(f"runs/demo/experiments/{experiment_id}/checkpoint/")
                        or k.endswith(f"{experiment_id}/progress.json")], experiment_id
        print({i: runs[i]["resumed_from_epoch"] for i in ids})
        # The trials lost with the second node were retried from their last checkpoint (not from
        # scratch, and not before it), on the head, the only node left; the head's trials ran through.
        full_log = log_path.read_text(errors="replace")
        for experiment_id in on_worker:
            resumed = runs[experiment_id]["resumed_from_epoch"]
            # From the checkpoint seen before the kill (or a later one), never an older one: nothing valid lost.
            assert isinstance(resumed, int) and max(1, saved[experiment_id]) <= resumed < MAX_EPOCHS, (
                experiment_id, resumed, saved)
            # The console says it: the crash on one line, naming its cause in words (the trial's process
            # or node died, or was lost; Ray's own "actor ... is unavailable: RpcError: Socket closed" does
            # not), never a bare exception name; then where the retry resumed from.
            retried = [line for line in full_log.splitlines() if line.startswith(f"retrying {experiment_id} after: ")]
            assert retried, driver_log()
            assert all(re.search(r"\b(died|dead|lost)\b", line) and not line.rstrip().endswith("()")
                       for line in retried), retried
            assert f"resumed  {experiment_id} from its checkpoint after epoch {resumed}" in driver_log(), driver_log()
        for experiment_id in on_head:
            assert runs[experiment_id]["resumed_from_epoch"] is None, (experiment_id, runs[experiment_id])
        assert len({r["node_ip"] for r in runs.values()}) == 1  # both nodes share this machine's address
    finally:
        if driver is not None:
            kill_session(driver)
        for node in reversed(nodes):
            node.remove()
