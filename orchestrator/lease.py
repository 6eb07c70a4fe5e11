"""One driver per study: ``<storage>/<study>/driver.json`` names the driver running trials into it.

Two drivers on one study would run the same experiments, overwrite each other's checkpoints and
double the cluster's load. A launch writes driver.json (host, pid, pid namespace, command, started
and heartbeat in UTC), a daemon thread refreshes the heartbeat every HEARTBEAT_S, and the file is
deleted on exit if it is still ours. Another launch refuses while the file names a live driver: a
heartbeat younger than STALE_S, unless that pid is gone from the same host and pid namespace (a
killed driver rerun at once starts at once; containers sharing a hostname see other pids, so there
only the heartbeat decides). ``--force`` takes over from a live one.

A driver whose heartbeat finds driver.json naming another driver stops as if Ctrl-C was pressed
(Ray Tune saves its state; the trials resume from their checkpoints on the next launch).

Every write of driver.json is conditional (``datasets.storage.write_if_unchanged``: S3's
``If-None-Match: *`` and ``If-Match``, an exclusive link or a locked rename on a local folder): a
launch creates it only where there is none, takes a stale one over only if it is still the record it
judged stale, and the heartbeat rewrites it only if it is still the record it last wrote. So of two
launches in the same instant exactly one holds the study and the other names it; of two launches
taking over the same dead driver, one; and a driver that was taken over cannot write itself back.
What remains: clocks more than STALE_S apart, or a dead driver's pid reused on its host, mislead the
liveness check; and a driver exiting as a --force launch takes over can delete the new record (the
new driver's next heartbeat creates it again, exclusively).
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
import uuid
from datetime import UTC, datetime

from pyarrow.fs import FileSelector

from datasets.storage import ShardError, absolute_uri, filesystem_for, read_if_exists, write_if_unchanged

LEASE_FILE = "driver.json"
HEARTBEAT_S = 30.0
STALE_S = 180.0  # six missed heartbeats: one S3 request can spend about a minute in its retries (storage.S3_ATTEMPTS)
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
    """The study cannot be held: another live driver holds it, or its driver.json cannot be read or written."""


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
    return _parse(read_if_exists(fs, path))


def _parse(raw: bytes | None) -> dict | None:
    """What _read says of driver.json's bytes ``raw`` (None: no file)."""
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        age = (datetime.now(UTC) - datetime.fromisoformat(record["heartbeat"])).total_seconds()
        return {**{k: record[k] for k in FIELDS}, "pid": int(record["pid"]), "age_s": age,
                "pid_space": record.get("pid_space")}  # absent from older files: never matches
    except KeyError as e:
        return {"bad": f"no field {e}"}
    except (ValueError, TypeError) as e:
        return {"bad": str(e)}


def _encode(record: dict) -> bytes:
    return json.dumps(record, indent=2).encode()


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

    def __init__(self, uri: str, fs, path: str, record: dict, written: bytes, heartbeat_s: float):
        self.uri, self.fs, self.path, self.record, self.heartbeat_s = uri, fs, path, record, heartbeat_s
        self._written = written  # driver.json as this driver last wrote it: the heartbeat replaces only that
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="driver-lease", daemon=True)
        self._thread.start()

    def _ours(self) -> bool:
        return (_read(self.fs, self.path) or {}).get("token") == self.record["token"]

    def _refresh(self) -> dict | None:
        """Write a new heartbeat over our last record; None if written, else the record now there."""
        data = _encode({**self.record, "heartbeat": _now()})
        if write_if_unchanged(absolute_uri(self.uri), data, expected=self._written):
            self._written = data
            return None
        raw = read_if_exists(self.fs, self.path)
        if raw is None:  # deleted (by hand, or by a driver exiting as we took over): ours again, if still free
            if write_if_unchanged(absolute_uri(self.uri), data):
                self._written = data
                return None
            raw = read_if_exists(self.fs, self.path)
        other = _parse(raw)
        if other is not None and other.get("token") == self.record["token"]:  # a retried write that had landed
            self._written = raw
            return None
        if other is not None and "bad" in other and write_if_unchanged(absolute_uri(self.uri), data, expected=raw):
            self._written = data  # garbled (no other driver named): ours again
            return None
        return other or {"bad": "the file is gone"}

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if (other := self._refresh()) is not None:
                    print(f"{self.uri} now names {describe(other)}: stopping this driver, as if Ctrl-C was "
                          "pressed; its trials resume from their checkpoints on the next launch", file=sys.stderr)
                    _thread.interrupt_main(signal.SIGINT)  # runs Ray Tune's handler: it stops and saves its state
                    return
            except Exception as e:  # storage unreachable for a moment (or a bug): the next beat tries again
                print(f"warning: cannot refresh {self.uri} ({type(e).__name__}: {e})", file=sys.stderr)

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
    """Hold ``<storage>/<study>`` for this process, or raise LeaseError naming the live driver holding it
    (or, in one line, the storage fault that kept it from reading or writing driver.json)."""
    uri = f"{storage.rstrip('/')}/{study}/{LEASE_FILE}"
    main = getattr(sys.modules.get("__main__"), "__spec__", None)  # "python -m orchestrator.run ..."
    argv = (["python", "-m", main.name] if main else sys.argv[:1]) + sys.argv[1:]
    now = _now()
    record = {"host": socket.gethostname(), "pid": os.getpid(), "pid_space": _pid_space(),
              "command": command or shlex.join(argv), "started": now, "heartbeat": now, "token": uuid.uuid4().hex}
    data, beat = _encode(record), HEARTBEAT_S if heartbeat_s is None else heartbeat_s
    try:
        fs, path = filesystem_for(uri)
        # A second round only after another launch wrote between our read and our write: it is live.
        for may_force in (force, False):
            raw = read_if_exists(fs, path)
            if (current := _parse(raw)) is not None:
                if current.get("token") == record["token"]:  # our write landed; its answer was lost and retried
                    return Lease(uri, fs, path, record, raw, beat)
                if (gone := not_live(current)) is None and not may_force:
                    raise LeaseError(
                        f"another driver holds this study ({uri}): {describe(current)}.\nTwo drivers would run "
                        "the same experiments and overwrite each other's checkpoints. Wait for it to finish, "
                        "stop it, or pass --force if it is dead.")
            if write_if_unchanged(absolute_uri(uri), data, expected=raw):
                if current is not None:
                    print(f"warning: took over {uri} from {describe(current)} ({gone or '--force'})", file=sys.stderr)
                return Lease(uri, fs, path, record, data, beat)
        raise LeaseError(f"another driver took this study ({uri}) at the same moment, then it changed again. "
                         "Look with `status`, and launch again.")
    except (OSError, ShardError) as e:  # ShardError: a storage URI of no supported kind
        why = " ".join(str(e).removeprefix(f"{absolute_uri(uri)}: ").split())  # one line
        raise LeaseError(f"cannot read or write {uri}, the study's lease ({why}). Check --storage "
                         "(that the folder or bucket exists and is reachable, and that your credentials can read "
                         "and write it), then launch again.") from None
