"""Run the real command line in a child process and stop everything it started, by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def require_reference(path: Path, what: str = "released annotations") -> None:
    """Skip a test whose reference files (../shared/reference) are missing on a developer's machine;
    fail it under CI, which always has them, so a moved folder cannot turn checks into skips."""
    if path.exists():
        return
    import pytest

    message = f"{what} not found at {path}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI always has ../shared/reference")
    pytest.skip(message)


def free_port() -> int:
    """A TCP port free on loopback now (for Ray's ports in tests that start their own nodes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_members(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def run_cli(*args: str, timeout: float = 600, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python -m orchestrator.run ARGS`` in its own session; anything left in it is killed after."""
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.run", *args], cwd=cwd, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        # Ray's local cluster dies with its driver; this catches any process that did not.
        kill_session(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL every process in the session ``proc`` leads (it was started with start_new_session)."""
    for pid in session_members(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.communicate()  # reaps it, and drains its pipes if it has any


# How orchestrator/console.py starts a line about one trial (the trial's name follows).
TRIAL_EVENTS = ("started  ", "resumed  ", "note     ", "retrying ", "done     ", "FAILED   ", "stopped  ")


def console_lines(stdout: str) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """A launch's output at the default verbosity: the lines about each trial (by its name), the
    progress lines, and every other line."""
    trials: dict[str, list[str]] = {}
    progress, others = [], []
    for line in stdout.splitlines():
        if line.startswith(TRIAL_EVENTS):
            trials.setdefault(line[9:].split(":")[0].split(" ")[0], []).append(line)
        elif line.startswith("progress "):
            progress.append(line)
        else:
            others.append(line)
    return trials, progress, others
