"""The Ray dashboard as cluster.yaml starts it: bound to localhost only, refusing API calls without the token."""

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from tests.cli import free_port, kill_session


def listening_addresses(port: int) -> set[str]:
    """Addresses with a TCP socket listening on ``port``, read from the kernel (no traffic sent)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(address)
                    # /proc writes IPv4 as one little-endian word; IPv6 as four of them.
                    words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]
                    found.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, b"".join(words)))
    return found


def get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture
def head_with_token():
    """A Ray head started as cluster.yaml starts it (token auth, dashboard on 127.0.0.1), stopped by PID."""
    token = secrets.token_hex(16)
    port, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rdash", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    ray = os.path.join(os.path.dirname(sys.executable), "ray")  # the venv's own, not a realpath
    start = subprocess.Popen(
        [ray, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = start.communicate(timeout=120)
        assert start.returncode == 0, output[-3000:]
        deadline = time.time() + 60
        while get(f"http://127.0.0.1:{dashboard}/api/version", token) != 200:
            assert time.time() < deadline, "the dashboard did not come up"
            time.sleep(1)
        yield dashboard, token
    finally:
        kill_session(start)  # `ray start` leaves its daemons in our new session


def test_dashboard_listens_on_localhost_only_and_requires_the_token(head_with_token):
    dashboard, token = head_with_token
    assert listening_addresses(dashboard) == {"127.0.0.1"}
    for path in ("/api/version", "/api/jobs/", "/nodes?view=summary"):
        assert get(f"http://127.0.0.1:{dashboard}{path}") in (401, 403), path
        assert get(f"http://127.0.0.1:{dashboard}{path}", "wrong" + token) in (401, 403), path
        assert get(f"http://127.0.0.1:{dashboard}{path}", token) == 200, path
