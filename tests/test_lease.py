"""One driver per study: a second launch is refused while driver.json names a live driver, and takes
over at once from a dead one on this host, from a silent one elsewhere, or from any with --force; the
driver taken over from stops as if Ctrl-C was pressed. On a local folder and on a real S3 server on
loopback; the last test runs the real command line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from datasets.shards import filesystem_for
from orchestrator import lease as lease_module
from orchestrator.lease import LEASE_FILE, LeaseError, driver_line, study_lease
from tests.cli import REPO, run_cli

STUDY = "demo"


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> str:
    if request.param == "s3":
        return f"{request.getfixturevalue('s3_bucket')}/runs"
    return str(tmp_path / "runs")


def lease_path(storage: str, study: str = STUDY):
    return filesystem_for(f"{storage}/{study}/{LEASE_FILE}")


def read_record(storage: str) -> dict | None:
    fs, path = lease_path(storage)
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def write_record(storage: str, host: str, pid: int, heartbeat_age_s: float = 0.0, pid_space: str | None = None,
                 study: str = STUDY) -> None:
    """driver.json as another driver would leave it, its heartbeat ``heartbeat_age_s`` old (no
    ``pid_space``: as drivers before that field wrote it)."""
    beat = (datetime.now(UTC) - timedelta(seconds=heartbeat_age_s)).isoformat()
    record = {"host": host, "pid": pid, "command": "python -m orchestrator.run grid --profile study",
              "started": beat, "heartbeat": beat, "token": "theirs"}
    if pid_space is not None:
        record["pid_space"] = pid_space
    fs, path = lease_path(storage, study)
    fs.create_dir(os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(json.dumps(record).encode())


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def holder_process(storage: str, heartbeat_s: float = 30.0) -> subprocess.Popen:
    """A driver holding the study in another process, its main thread asleep as Ray Tune's loop would be."""
    code = ("import sys, time; from orchestrator.lease import study_lease; "
            "study_lease(sys.argv[1], sys.argv[2], heartbeat_s=float(sys.argv[3])); print('held', flush=True)\n"
            "while True: time.sleep(0.05)")
    return subprocess.Popen([sys.executable, "-c", code, storage, STUDY, str(heartbeat_s)], cwd=REPO,
                            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def dead_pid() -> int:
    """The pid of a process that ran and was reaped."""
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    return gone.pid


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_second_driver_is_refused_while_the_first_holds_the_study(storage):
    first = study_lease(storage, STUDY, command="grid --profile study")
    try:
        assert read_record(storage)["pid"] == os.getpid()
        with pytest.raises(LeaseError) as refused:
            study_lease(storage, STUDY)
        message = str(refused.value)
        assert f"{socket.gethostname()} pid {os.getpid()}" in message and "grid --profile study" in message
        assert "started " in message and "last heartbeat" in message and "--force" in message
        assert read_record(storage)["token"] == first.record["token"]  # the refused launch wrote nothing
        assert driver_line(storage, STUDY).startswith(f"driver: {socket.gethostname()} pid {os.getpid()}")
    finally:
        first.release()
    assert read_record(storage) is None and driver_line(storage, STUDY) == "driver: none"
    study_lease(storage, STUDY).release()  # free again once released


def test_a_killed_driver_on_this_host_is_taken_over_at_once(storage, capsys):
    holder = holder_process(storage)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert read_record(storage)["pid"] == holder.pid
        with pytest.raises(LeaseError, match=f"pid {holder.pid}"):
            study_lease(storage, STUDY)
        os.kill(holder.pid, signal.SIGKILL)
        # Not reaped yet (a zombie), as when a parent has not waited for its killed child: gone all the same.
        deadline = time.monotonic() + 30
        while open(f"/proc/{holder.pid}/stat").read().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed holder did not die"
            time.sleep(0.05)
        assert read_record(storage)["pid"] == holder.pid  # its heartbeat is fresh: only the pid tells
        assert "stale" in driver_line(storage, STUDY) and f"pid {holder.pid} no longer runs" in driver_line(
            storage, STUDY)
        with study_lease(storage, STUDY):
            assert read_record(storage)["pid"] == os.getpid()
        assert f"pid {holder.pid} no longer runs on this host" in capsys.readouterr().err
    finally:
        stop(holder)


def test_a_silent_driver_on_another_host_is_taken_over_and_a_fresh_one_is_not(storage, capsys):
    write_record(storage, "head-node", 4242, heartbeat_age_s=5)
    with pytest.raises(LeaseError, match="head-node pid 4242"):
        study_lease(storage, STUDY)
    assert driver_line(storage, STUDY).startswith("driver: head-node pid 4242")

    write_record(storage, "head-node", 4242, heartbeat_age_s=lease_module.STALE_S + 5)
    assert driver_line(storage, STUDY).startswith("driver: none (last one stale, no heartbeat for")
    with study_lease(storage, STUDY):
        assert read_record(storage)["host"] == socket.gethostname()
    assert "head-node pid 4242" in capsys.readouterr().err
    assert read_record(storage) is None


def test_force_takes_over_a_live_driver(storage, capsys):
    write_record(storage, "laptop", 777)
    with study_lease(storage, STUDY, force=True) as taken:
        assert read_record(storage)["token"] == taken.record["token"]
    err = capsys.readouterr().err
    assert "took over" in err and "laptop pid 777" in err and "(--force)" in err
    assert read_record(storage) is None


def test_the_driver_taken_over_from_stops_as_if_ctrl_c_was_pressed(storage):
    holder = holder_process(storage, heartbeat_s=0.2)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseError, match=f"pid {holder.pid}"):
            study_lease(storage, STUDY)
        with study_lease(storage, STUDY, force=True) as taken:
            # Its next beat finds our record: its main thread gets a KeyboardInterrupt and it exits on its own.
            err = holder.communicate(timeout=60)[1]
            assert holder.returncode != 0 and "KeyboardInterrupt" in err, err
            assert (f"{storage}/{STUDY}/{LEASE_FILE} now names {socket.gethostname()} pid {os.getpid()}" in err
                    and "stopping this driver, as if Ctrl-C was pressed" in err), err
            assert read_record(storage)["token"] == taken.record["token"]  # it left our file alone
        assert read_record(storage) is None
    finally:
        stop(holder)


def test_the_pid_check_applies_only_in_the_same_pid_namespace(storage, capsys):
    here, pid = socket.gethostname(), dead_pid()
    # Another container on this host (--net=host: same hostname, other pids): only the heartbeat decides.
    write_record(storage, here, pid, pid_space=f"{lease_module._pid_space()}-other")
    with pytest.raises(LeaseError, match=f"{here} pid {pid}"):
        study_lease(storage, STUDY)
    write_record(storage, here, pid)  # a driver.json written before pid_space: the same
    with pytest.raises(LeaseError, match=f"{here} pid {pid}"):
        study_lease(storage, STUDY)
    write_record(storage, here, pid, pid_space=lease_module._pid_space())  # ours: its pid is gone
    with study_lease(storage, STUDY) as held:
        assert read_record(storage)["pid_space"] == lease_module._pid_space() == held.record["pid_space"]
    assert f"pid {pid} no longer runs on this host" in capsys.readouterr().err


def test_status_lists_the_live_hpo_drivers_too(storage):
    write_record(storage, "head-node", 4242, study=f"{STUDY}/hpo/cris")
    write_record(storage, "head-node", 4343, heartbeat_age_s=lease_module.STALE_S + 5, study=f"{STUDY}/hpo/lavt")
    with study_lease(storage, f"{STUDY}/hpo/clipseg"):
        lines = driver_line(storage, STUDY).splitlines()
    assert lines[0] == "driver: none" and len(lines) == 3, lines
    assert lines[1].startswith(f"hpo clipseg driver: {socket.gethostname()} pid {os.getpid()}"), lines
    assert lines[2].startswith("hpo cris driver: head-node pid 4242"), lines  # lavt's is stale: not listed


def test_the_heartbeat_advances_and_the_file_goes_on_exit(storage):
    with study_lease(storage, STUDY, heartbeat_s=0.1) as held:
        first = read_record(storage)
        assert first["started"] == first["heartbeat"] and first["host"] == socket.gethostname()
        deadline = time.monotonic() + 30
        while (now := read_record(storage))["heartbeat"] == first["heartbeat"]:
            assert time.monotonic() < deadline, "the heartbeat never advanced"
            time.sleep(0.05)
        assert now["heartbeat"] > first["heartbeat"] and now["started"] == first["started"]
        assert now["token"] == held.record["token"]
    assert read_record(storage) is None


def test_an_unreadable_driver_file_does_not_block_the_study(tmp_path, capsys):
    storage = str(tmp_path / "runs")
    (tmp_path / "runs" / STUDY).mkdir(parents=True)
    (tmp_path / "runs" / STUDY / LEASE_FILE).write_text('{"host": "x"')
    assert "unreadable" in driver_line(storage, STUDY)
    with study_lease(storage, STUDY):
        pass
    assert f"unreadable {LEASE_FILE}" in capsys.readouterr().err


def test_grid_refuses_to_start_while_another_driver_holds_the_study(tmp_path):
    storage = str(tmp_path / "runs")
    holder = sleeper()
    try:
        write_record(storage, socket.gethostname(), holder.pid)
        out = run_cli("grid", "--profile", "demo", "--only", "synth_polyp-p0", "--max-epochs", "1",
                      "--data", str(tmp_path / "shards"), "--storage", storage, "--no-dashboard", "--verbose", "0",
                      timeout=300)
        assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
        assert f"another driver holds this study ({storage}/{STUDY}/{LEASE_FILE})" in out.stderr, out.stderr
        assert f"{socket.gethostname()} pid {holder.pid}" in out.stderr and "pass --force" in out.stderr
        assert "1 to run" in out.stdout  # it got as far as the launch, and stopped there:
        assert "no GPUs on this machine" not in out.stdout and not (tmp_path / "runs" / STUDY / "tune").exists()
        assert read_record(storage)["pid"] == holder.pid  # the holder's file is untouched
    finally:
        stop(holder)
