"""One driver per study: ``<storage>/<study>/driver.json`` names the driver running trials into it.

Two drivers on one study would run the same experiments, overwrite each other's checkpoints and
double the cluster's load. A launch writes driver.json (host, pid, pid namespace, command, started
and heartbeat in UTC), a daemon thread refreshes the heartbeat every HEARTBEAT_S, and the file is
deleted on exit if it is still ours. Another launch refuses while the file names a live driver: a
heartbeat younger than STALE_S, unless that pid is gone from the same host and pid namespace (a
killed driver rerun at once starts at once; containers sharing a hostname see other pids, so there
only the heartbeat decides). ``--force`` takes over from a live one.

A driver whose heartbeat finds driver.json naming another driver stops as if Ctrl-C was pressed
(Ray Tune saves its state; the trials resume from their checkpoints on the next launch). The
heartbeat reads the file, then writes it: an old driver's write can land just after a new one's
record and replace it. Then the new one sees the old record on its next beat and stops instead:
whichever record is in the file wins and the other driver stops, so at most one keeps running.

Best effort only: pyarrow's filesystems (S3 included) have no atomic create-if-absent, so two
launches in the same instant can both find no driver and both write. Reading the file back after
SETTLE_S makes the earlier writer see the later one and stop: that narrows the race, not closes it.
Clocks more than STALE_S apart, or a dead driver's pid reused on its host, also mislead the check.
"""

from __future__ import annotations

import _thread
import json
import os
import posixpath
import shlex
import signal
import socket
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

from pyarrow.fs import FileSelector

from datasets.shards import filesystem_for, write_atomically

LEASE_FILE = "driver.json"
HEARTBEAT_S = 30.0
STALE_S = 120.0  # four missed heartbeats
SETTLE_S = 0.5  # before the read-back: by then a rival's write of the same moment has landed
FIELDS = ("host", "pid", "command", "started", "heartbeat", "token")
RELEASE_WAIT_S = 10.0  # for a heartbeat stuck in a storage call, at exit


def _pid_space() -> str:
    """Which pids this process sees: the boot and the pid namespace (another container's differs)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{boot} {namespace}"


class LeaseError(Exception):
    """Another live driver holds the study."""


def add_force_argument(p) -> None:
    p.add_argument("--force", action="store_true",
                   help=f"take the study over from the driver its {LEASE_FILE} names (only if that one is dead)")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a killed process its parent has not reaped yet is a zombie: gone all the same
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read(fs, path: str) -> dict | None:
    """driver.json with its heartbeat's age (``age_s``); ``{"bad": why}`` if unreadable; None if absent."""
    try:
        with fs.open_input_stream(path) as f:
            record = json.loads(f.read())
        age = (datetime.now(UTC) - datetime.fromisoformat(record["heartbeat"])).total_seconds()
        return {**{k: record[k] for k in FIELDS}, "pid": int(record["pid"]), "age_s": age,
                "pid_space": record.get("pid_space")}  # absent from older files: never matches
    except FileNotFoundError:
        return None
    except KeyError as e:
        return {"bad": f"no field {e}"}
    except (ValueError, TypeError) as e:
        return {"bad": str(e)}


def _write(fs, path: str, record: dict) -> None:
    write_atomically(fs, path, json.dumps(record, indent=2).encode())


def not_live(record: dict) -> str | None:
    """Why the driver ``record`` names no longer holds its study; None while it does."""
    if "bad" in record:
        return f"unreadable: {record['bad']}"
    same_pids = record["host"] == socket.gethostname() and record["pid_space"] == _pid_space()
    if same_pids and (record["pid"] <= 0 or not _pid_alive(record["pid"])):
        return f"pid {record['pid']} no longer runs on this host"
    return f"no heartbeat for {record['age_s']:.0f} s" if record["age_s"] >= STALE_S else None


def describe(record: dict) -> str:
    if "bad" in record:
        return f"an unreadable {LEASE_FILE} ({record['bad']})"
    return (f"{record['host']} pid {record['pid']} ({record['command']}), started {record['started']}, "
            f"last heartbeat {record['age_s']:.0f} s ago")


def driver_line(storage: str, study: str) -> str:
    """For ``status``: the driver holding the study, if any, and the live ones holding its hpo searches."""
    record = _read(*filesystem_for(f"{storage.rstrip('/')}/{study}/{LEASE_FILE}"))
    if record is None or (gone := not_live(record)) is None:
        lines = [f"driver: {describe(record) if record else 'none'}"]
    else:
        lines = [f"driver: none (last one stale, {gone}: {describe(record)})"]
    fs, hpo = filesystem_for(f"{storage.rstrip('/')}/{study}/hpo")
    for folder in sorted(fs.get_file_info(FileSelector(hpo, allow_not_found=True)), key=lambda f: f.path):
        if (held := _read(fs, f"{folder.path}/{LEASE_FILE}")) is not None and not_live(held) is None:
            lines.append(f"hpo {posixpath.basename(folder.path)} driver: {describe(held)}")
    return "\n".join(lines)


class Lease:
    """A held study: ``release`` (or leaving its ``with`` block) stops the heartbeat, deletes the file."""

    def __init__(self, uri: str, fs, path: str, record: dict, heartbeat_s: float):
        self.uri, self.fs, self.path, self.record, self.heartbeat_s = uri, fs, path, record, heartbeat_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="driver-lease", daemon=True)
        self._thread.start()

    def _ours(self) -> bool:
        return (_read(self.fs, self.path) or {}).get("token") == self.record["token"]

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                other = _read(self.fs, self.path)
                if other is not None and "bad" not in other and other["token"] != self.record["token"]:
                    print(f"{self.uri} now names {describe(other)}: stopping this driver, as if Ctrl-C was "
                          "pressed; its trials resume from their checkpoints on the next launch", file=sys.stderr)
                    _thread.interrupt_main(signal.SIGINT)  # runs Ray Tune's handler: it stops and saves its state
                    return
                # Ours, or gone or unreadable (no other driver named): write ours again.
                _write(self.fs, self.path, {**self.record, "heartbeat": _now()})
            except OSError as e:  # storage unreachable for a moment: the next beat tries again
                print(f"warning: cannot refresh {self.uri} ({e})", file=sys.stderr)

    def release(self) -> None:
        self._stop.set()
        self._thread.join(RELEASE_WAIT_S)  # a storage call hung in the heartbeat must not hang the exit
        try:
            if self._ours():
                self.fs.delete_file(self.path)
        except OSError:
            pass  # left behind, it goes stale on its own

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def study_lease(storage: str, study: str, force: bool = False, command: str | None = None,
                heartbeat_s: float | None = None) -> Lease:
    """Hold ``<storage>/<study>`` for this process, or raise LeaseError naming the live driver holding it."""
    uri = f"{storage.rstrip('/')}/{study}/{LEASE_FILE}"
    fs, path = filesystem_for(uri)
    if (current := _read(fs, path)) is not None:
        if (gone := not_live(current)) is None and not force:
            raise LeaseError(f"another driver holds this study ({uri}): {describe(current)}.\nTwo drivers would "
                             "run the same experiments and overwrite each other's checkpoints. Wait for it to "
                             "finish, stop it, or pass --force if it is dead.")
        print(f"warning: taking over {uri} from {describe(current)} ({gone or '--force'})", file=sys.stderr)
    main = getattr(sys.modules.get("__main__"), "__spec__", None)  # "python -m orchestrator.run ..."
    argv = (["python", "-m", main.name] if main else sys.argv[:1]) + sys.argv[1:]
    record = {"host": socket.gethostname(), "pid": os.getpid(), "pid_space": _pid_space(),
              "command": command or shlex.join(argv),
              "started": _now(), "heartbeat": _now(), "token": uuid.uuid4().hex}
    fs.create_dir(posixpath.dirname(path), recursive=True)
    _write(fs, path, record)
    time.sleep(SETTLE_S)
    if (back := _read(fs, path)) is None or back.get("token") != record["token"]:
        raise LeaseError(f"another driver took this study ({uri}) at the same moment: "
                         f"{describe(back) if back else 'the file is gone'}. Wait for it, stop it, or pass --force.")
    return Lease(uri, fs, path, record, HEARTBEAT_S if heartbeat_s is None else heartbeat_s)
