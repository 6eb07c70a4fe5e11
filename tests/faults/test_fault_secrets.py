"""What a run exposes: a local Ray listens on loopback alone (every port: GCS, raylet, workers, agents,
metrics, dashboard); a driver joining a token-auth cluster without the token gets one line saying what
to set; and a planted AWS secret key in the driver's environment is found nowhere a run wrote (storage,
Ray's temp folder and logs, the home folder, the console)."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

import boto3
import pytest

from tests.cli import REPO, free_port, kill_session

# A local Ray started as every launch starts it, then every listening socket of its processes.
LISTENERS = """
import json, sys
from orchestrator.launch import start_ray
start_ray(None, None, dashboard=True, verbose=0)
import ray
import psutil  # Ray's own copy, on the path once ray is imported
ray.get(ray.remote(lambda: 1).remote())  # a worker up, as a trial's would be
sockets = []
for proc in [psutil.Process()] + psutil.Process().children(recursive=True):
    try:
        sockets += [[proc.pid, " ".join(proc.cmdline())[:100], c.laddr.ip, c.laddr.port]
                    for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except psutil.NoSuchProcess:
        pass
print(json.dumps(sockets))
ray.shutdown()
"""


@pytest.fixture
def ray_temp():
    """A folder of its own for Ray's temp files, short (Ray's socket paths must stay short), removed after."""
    temp = tempfile.mkdtemp(prefix="rh2", dir="/tmp")
    yield temp
    shutil.rmtree(temp, ignore_errors=True)


def loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return address.is_loopback or (address.version == 6 and address.ipv4_mapped is not None
                                   and address.ipv4_mapped.is_loopback)


def test_a_local_ray_listens_on_loopback_only(ray_temp):
    proc = subprocess.Popen([sys.executable, "-c", LISTENERS], cwd=REPO, env={**os.environ, "RAY_TMPDIR": ray_temp},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        kill_session(proc)
    assert proc.returncode == 0, err[-3000:]
    sockets = json.loads(out.strip().splitlines()[-1])
    kinds = {what.split()[0].rsplit("/", 1)[-1] for _, what, _, _ in sockets}
    # the driver, GCS, raylet, dashboard, its agent (with the metrics endpoint), the runtime-env agent, a worker
    assert len(sockets) >= 10 and {"gcs_server", "raylet", "ray::DashboardAgent"} <= kinds, sockets
    exposed = [s for s in sockets if not loopback(s[2])]
    assert not exposed, exposed


@pytest.fixture
def head_with_token(ray_temp):
    """A Ray head with token authentication (as cluster.yaml starts it), stopped by PID."""
    token, port = secrets.token_hex(16), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    start = subprocess.Popen([ray, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                              f"--temp-dir={ray_temp}", "--disable-usage-stats"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        output, _ = start.communicate(timeout=120)
        assert start.returncode == 0, output[-3000:]
        yield f"127.0.0.1:{port}", token
    finally:
        kill_session(start)  # `ray start` leaves its daemons in our new session


def test_joining_a_token_cluster_without_the_token_is_one_line(head_with_token):
    address, token = head_with_token
    join = f"from orchestrator.launch import start_ray; start_ray({address!r}, None, False)"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", join], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and time.monotonic() - started < 15, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == [
        f"the Ray cluster at {address} requires token authentication: set RAY_AUTH_MODE=token and the cluster's "
        "token in RAY_AUTH_TOKEN or ~/.ray/auth_token (`ray get-auth-token` on the head prints it), then launch "
        "again"], out.stderr[-3000:]

    wrong = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32}
    out = subprocess.run([sys.executable, "-c", join], cwd=REPO, env=wrong, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1, out.stderr[-3000:]
    assert f"the Ray cluster at {address} refused this machine's token" in out.stderr

    right = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    joined = f"{join}; import ray; print(len(ray.nodes())); ray.shutdown()"
    out = subprocess.run([sys.executable, "-c", joined], cwd=REPO, env=right, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "1", out.stderr[-3000:]


def files_containing(root: str, secret: bytes) -> list[str]:
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as f:
                    if secret in f.read():
                        found.append(path)
            except OSError:  # a socket, a file gone meanwhile
                pass
    return found


@pytest.mark.slow
def test_a_planted_secret_key_is_written_nowhere(s3_bucket, tmp_path, ray_temp):
    secret = f"PLANTED{secrets.token_hex(16)}"
    temp = ray_temp
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": secret, "RAY_TMPDIR": temp, "HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.run", "grid", "--profile", "demo", "--only",
                             "synth_polyp-p0", "--max-epochs", "1", "--data", f"{s3_bucket}/shards", "--storage",
                             f"{s3_bucket}/runs", "--verbose", "2"],  # Ray's notes and the trials' output too
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        kill_session(proc)
    assert proc.returncode == 0 and "1 finished" in out, out[-3000:] + err[-3000:]
    assert secret not in out + err
    s3 = boto3.client("s3")
    bucket = s3_bucket.removeprefix("s3://")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    assert any(k.endswith("/DONE") for k in keys), keys
    assert not [k for k in keys if secret.encode() in s3.get_object(Bucket=bucket, Key=k)["Body"].read()]
    sessions = [d for d in os.listdir(os.path.join(temp, "ray")) if d.startswith("session_2")]
    assert sessions and os.listdir(os.path.join(temp, "ray", sessions[0], "logs")), sessions
    assert files_containing(temp, secret.encode()) == []
    assert files_containing(str(home), secret.encode()) == []
    assert files_containing(os.environ["VLSM_CACHE"], secret.encode()) == []
