"""The study on a cluster as docs/cluster.md runs it: a grid submitted with ``ray job submit`` to a head
node started with ``ray start --head`` (token authentication on, the dashboard on 127.0.0.1, as
cluster.yaml starts it), followed with ``ray job logs -f`` and ``ray job status``; the job runs the
grid with ``--address auto`` and its results land in storage, where ``status`` reads them.

Never ``ray stop`` here: it stops every Ray process on the machine. The head runs in its own session
and temp dir and is stopped by PID, with everything it started (the job's driver and trials too).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import tests.test_cluster_failover as failover  # its RayNode; a module import, so its test is not collected twice
from tests.cli import REPO, free_port, run_cli

SUBMISSION = "vlsm-grid-test"
PICK = "p6"  # the demo's two rich-prompt experiments
MAX_EPOCHS = 2


def dashboard_up(port: int, token: str) -> bool:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/version",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def ray_job(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([failover.RAY_CLI, "job", *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_ray_job_submit_runs_a_grid_on_a_head_node_and_its_results_land_in_storage(tmp_path):
    assert failover.RAY_CLI, "the ray command is not installed beside this Python"
    token = secrets.token_hex(16)
    # The job's entrypoint runs in a shell the head's raylet starts: `python` must be this environment's.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    data, storage = tmp_path / "shards", tmp_path / "runs"
    dashboard = free_port()
    address = f"http://127.0.0.1:{dashboard}"
    head = None
    try:
        # Every fixed port moved to a free one; one logical GPU, as a GPU node would have: a grid that
        # joins a cluster asks for GPUs (its trials take half of one each).
        head = failover.RayNode(["--head", f"--port={free_port()}", f"--ray-client-server-port={free_port()}",
                                 "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                                 f"--dashboard-port={dashboard}", "--num-cpus=2", "--num-gpus=1"], env)
        head.wait_started()
        deadline = time.monotonic() + 60
        while not dashboard_up(dashboard, token):
            assert time.monotonic() < deadline, f"the dashboard did not come up:\n{head.output()[-3000:]}"
            time.sleep(0.5)

        # The job CLI turns token auth on only from RAY_AUTH_MODE: without it, the dashboard refuses it.
        anonymous = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
        refused = ray_job("list", "--address", address, env=anonymous)
        assert refused.returncode != 0 and "Authentication required" in refused.stdout + refused.stderr, (
            refused.stdout[-2000:] + refused.stderr[-2000:])

        # As docs/cluster.md submits it: no working dir (the code is installed where the job runs), the
        # grid run in the repository's folder (Ray quotes each word of the entrypoint, hence bash -c),
        # --no-wait so the submitting machine can go.
        grid = (f"cd {shlex.quote(str(REPO))} && python -m orchestrator.run grid --profile demo --only {PICK} "
                f"--max-epochs {MAX_EPOCHS} --address auto --data {shlex.quote(str(data))} "
                f"--storage {shlex.quote(str(storage))}")
        submitted = ray_job("submit", "--address", address, "--submission-id", SUBMISSION, "--no-wait",
                            "--", "bash", "-c", grid, env=env)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        assert SUBMISSION in submitted.stdout, submitted.stdout

        # Follows the job's output until it ends.
        logs = ray_job("logs", "-f", "--address", address, SUBMISSION, env=env, timeout=240)
        status = ray_job("status", "--address", address, SUBMISSION, env=env)
        assert f"Job '{SUBMISSION}' succeeded" in status.stdout, status.stdout + status.stderr + logs.stdout[-5000:]
        assert "ran 2 experiments: 2 finished, 0 failed" in logs.stdout, logs.stdout[-5000:]
    finally:
        if head is not None:
            head.remove()
    assert not head.pids(), "processes of the head node are still alive"

    experiments = storage / "demo" / "experiments"
    ids = sorted(p.name for p in experiments.iterdir())
    assert len(ids) == 2 and all(f"-{PICK}-" in i for i in ids), ids
    for experiment_id in ids:
        assert (experiments / experiment_id / "DONE").exists(), experiment_id
        result = json.loads((experiments / experiment_id / "result.json").read_text())
        assert result["epochs"] == MAX_EPOCHS and result["run"]["resources"]["GPU"] > 0, result["run"]
    # From any machine that reads the storage.
    progress = run_cli("status", "--storage", str(storage), "--profile", "demo", "--only", PICK,
                       "--max-epochs", str(MAX_EPOCHS), timeout=120)
    assert progress.returncode == 0, progress.stderr[-3000:]
    # Both done, nothing running, failed or pending, and the job's driver gave its lease back.
    assert re.search(r"^total\s+2\s+0\s+0\s+0\s", progress.stdout, re.M), progress.stdout
    assert "driver: none" in progress.stdout, progress.stdout
