"""The node cache: each node downloads a remote shard file once, checked, and reads it locally after that.

Layout under the cache folder (``$VLSM_CACHE``, default ``~/.cache/vlsm-tune``)::

    shards/<root>-<hash>/<dataset>/<sha256[:16]>-<file>   verified copies of remote shard files
    shards/.../<...>.part    a download in progress; the next process to take the lock resumes it
    shards/.../<...>.lock    flock: one process per file downloads, the others wait, then read the copy
    verified/<hash of path>  stamps of local-folder shards already checked against their sha256
    decoded/...              decoded, resized arrays (datasets/decoded.py)

A copy becomes visible (renamed to its final name) only after its sha256 matched the manifest, so
every process on the node (Ray trials are separate processes) can read a visible copy without the
lock or hashing it again. Local-folder roots are read in place and never copied; each of their files
is hashed once per node and version (``verified_digest``). A copy that goes bad on this disk after it
was checked is caught only if it no longer parses: that is the price of not re-reading whole shards
at every trial start.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from datasets.disk import full_disk, full_disk_reported
from datasets.progress import Meter
from datasets.storage import ShardError, StorageUnavailable

CACHE_ENV = "VLSM_CACHE"
DEFAULT_CACHE = "~/.cache/vlsm-tune"
CHUNK_BYTES = 8 << 20  # one ranged GET per chunk: a killed download loses at most this much

log = logging.getLogger(__name__)
T = TypeVar("T")


def cache_root() -> str:
    """The node's cache folder: ``$VLSM_CACHE`` or ``~/.cache/vlsm-tune``."""
    return os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """An exclusive lock shared by every process on this node (released if the holder dies)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+b") as f:  # append mode: opening never truncates another holder's file
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def build_once(folder: str, build: Callable[[str], None], what: str = "a cache entry") -> bool:
    """Make ``folder`` exist once on this node: the first process calls ``build(tmp)`` to fill a
    temporary folder, which is renamed into place with ``meta.json`` written last inside it; every
    other process waits on the lock and uses that. Returns whether this process built it.

    A full disk (ENOSPC, EDQUOT) during the build raises ``datasets.disk.DiskFullError`` naming
    ``folder``, ``what`` it is and the prune command, once the partial build is removed."""
    done = os.path.join(folder, "meta.json")
    if os.path.exists(done):  # visible means complete: no lock needed
        mark_used(done)
        return False
    with full_disk_reported(folder, what), file_lock(folder + ".lock"):
        if os.path.exists(done):  # another process built it while we waited
            return False
        # Under the lock nobody else is building: temporary folders are killed builders' leftovers
        # (gigabytes, for decoded splits and features), and a folder without meta.json is one too.
        for leftover in glob.glob(glob.escape(folder) + ".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        tmp = f"{folder}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            os.makedirs(tmp)
            build(tmp)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return True


def open_built(folder: str, build: Callable[[str], None], load: Callable[[str, bool], T],
               what: str = "a cache entry") -> T:
    """``load(folder, built)`` of a folder made once on this node by ``build_once``. A prune that
    removes it between the two steps (readers take no lock) makes this process build it again."""
    built = build_once(folder, build, what)
    try:
        return load(folder, built)
    except FileNotFoundError:
        log.warning("%s went away as it was opened (pruned?); building it again", folder)
        return load(folder, build_once(folder, build, what))


def mark_used(path: str) -> None:
    """Record a use of a cache entry in its access time, which ``python -m datasets.cache_usage prune``
    goes by (set explicitly: mounts often skip atime updates). The mtime stays the time it was written."""
    try:
        os.utime(path, ns=(time.time_ns(), os.stat(path).st_mtime_ns))
    except OSError:  # pruned meanwhile, or a read-only cache: the use still works
        pass


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60]


class NodeCache:
    """Shard copies and decoded arrays on this node's disk, shared by all its processes.

    A download is tried ``attempts`` times with exponential backoff from ``backoff_s`` seconds, each
    try continuing the partial copy (every S3 request in it is retried by pyarrow as well); then
    ``StorageUnavailable`` (an infrastructure fault, never bad input) names the file, the attempts and
    what to check. A full node disk raises ``datasets.disk.DiskFullError``.
    """

    def __init__(self, path: str | None = None, attempts: int = 4, backoff_s: float = 0.5):
        self.path = os.path.abspath(os.path.expanduser(path)) if path else cache_root()
        self.attempts, self.backoff_s = attempts, backoff_s

    def __repr__(self) -> str:
        return f"NodeCache({self.path!r})"

    @property
    def shards_dir(self) -> str:
        return os.path.join(self.path, "shards")

    @property
    def decoded_dir(self) -> str:
        return os.path.join(self.path, "decoded")

    def shard_path(self, root: str, dataset: str, entry: dict) -> str:
        """Where the verified copy of a manifest entry lives: keyed by root, dataset, file and sha256."""
        root_key = f"{safe_name(root.split('://', 1)[-1])}-{hashlib.sha256(root.encode()).hexdigest()[:8]}"
        name = f"{entry['sha256'][:16]}-{safe_name(entry['path'])}"
        return os.path.join(self.shards_dir, root_key, safe_name(dataset), name)

    def verified_digest(self, path: str, sha256: str) -> str:
        """The sha256 of a local file, hashed once per node and file version: a stamp in the cache
        records a match with the file's size, mtime and inode, so later reads skip the hashing (a
        whole split at every trial start) while a file changed since is hashed again. A mismatch is
        never stamped."""
        stamp, version = self._stamp(path, sha256)  # FileNotFoundError when the file is missing
        try:
            with open(stamp) as f:
                if f.read() == version:
                    return sha256
        except FileNotFoundError:
            pass
        digest = file_sha256(path)
        if digest == sha256:
            self._write_stamp(stamp, version)
        return digest

    def _stamp(self, path: str, sha256: str) -> tuple[str, str]:
        """Where a file's stamp lives, and what it holds while the file is the version that was checked."""
        stat = os.stat(path)
        stamp = os.path.join(self.path, "verified", hashlib.sha256(path.encode()).hexdigest()[:32])
        return stamp, f"{sha256} {stat.st_size} {stat.st_mtime_ns} {stat.st_ino}"

    @staticmethod
    def _write_stamp(stamp: str, version: str) -> None:
        """Best effort: without a stamp (disk full, read-only cache) the file is hashed again next time."""
        tmp = f"{stamp}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            os.makedirs(os.path.dirname(stamp), exist_ok=True)
            with open(tmp, "w") as f:
                f.write(version)
            os.replace(tmp, stamp)
        except OSError as e:
            log.warning("cannot record a verified file in %s (%s); it will be hashed again", stamp, e)
            with contextlib.suppress(OSError):
                os.remove(tmp)

    def open_copy(self, fs: pafs.FileSystem, remote_path: str, uri: str, root: str, dataset: str,
                  entry: dict) -> pa.MemoryMappedFile:
        """A verified copy of a remote shard file, downloaded once per node and opened memory-mapped:
        an open map stays readable even if a prune removes the file now. A copy changed on this disk
        since it was checked, or removed as it was found, is downloaded again.

        Raises FileNotFoundError when storage lacks the file (the caller names it as missing).
        """
        sha256 = entry["sha256"]
        local = self.fetch(fs, remote_path, uri, root, dataset, entry)
        try:
            if self.verified_digest(local, sha256) == sha256:
                return pa.memory_map(local)
            log.warning("node-cache copy %s of %s no longer matches its sha256; downloading it again", local, uri)
            with file_lock(local + ".lock"):
                if os.path.exists(local) and self.verified_digest(local, sha256) != sha256:
                    os.remove(local)
        except FileNotFoundError:  # pruned as it was found
            pass
        return pa.memory_map(self.fetch(fs, remote_path, uri, root, dataset, entry))

    def fetch(self, fs: pafs.FileSystem, remote_path: str, uri: str, root: str, dataset: str, entry: dict) -> str:
        """Path of a verified local copy of a remote shard file; the first process on the node downloads it."""
        target = self.shard_path(root, dataset, entry)
        if os.path.exists(target):  # visible means verified: no lock needed
            mark_used(target)
            return target
        with file_lock(target + ".lock"):
            if not os.path.exists(target):  # another process may have finished while we waited
                self._download(fs, remote_path, uri, target, entry, dataset)
        return target

    def _download(self, fs: pafs.FileSystem, remote_path: str, uri: str, target: str, entry: dict,
                  dataset: str) -> None:
        part = target + ".part"  # a fixed name, so a killed process's partial download is found again
        for fresh in (False, True):
            if fresh and os.path.exists(part):
                os.remove(part)
            resumed = self._with_retries(uri, lambda: self._copy(fs, remote_path, uri, part))
            digest = file_sha256(part)
            if digest == entry["sha256"]:
                os.replace(part, target)
                self._write_stamp(*self._stamp(target, digest))  # just checked: no need to hash it again
                return
            if not resumed:  # a whole fresh download that does not match: the stored file is bad
                break
            # A resumed partial may hold bytes of an older file: never use it, start from zero once.
            log.warning("resumed download of %s does not match its sha256; downloading it from the start", uri)
        os.remove(part)
        raise ShardError(f"corrupt shard {uri}: sha256 {digest[:12]}... does not match the manifest's "
                         f"{entry['sha256'][:12]}...; re-ingest {dataset!r}.")

    def _copy(self, fs: pafs.FileSystem, remote_path: str, uri: str, part: str) -> bool:
        """Download into ``part``, continuing from what it holds; True when it continued a partial file."""
        with fs.open_input_file(remote_path) as source:
            size = source.size()
            offset = os.path.getsize(part) if os.path.exists(part) else 0
            if offset > size:  # not a prefix of this file
                offset = 0
            start = offset
            source.seek(offset)
            meter = Meter(f"{f'resuming at byte {offset}' if offset else 'downloading'} {uri} into the node cache",
                          size - offset, "MB", 1e6)
            with open(part, "r+b" if offset else "wb") as out:
                if offset:  # "wb" has emptied a fresh one
                    out.seek(offset)
                    out.truncate()
                while offset < size:
                    chunk = source.read(min(CHUNK_BYTES, size - offset))
                    if not chunk:
                        raise OSError(f"{uri} ended at byte {offset} of {size}")
                    out.write(chunk)
                    offset += len(chunk)
                    meter.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            meter.finish()
        return start > 0

    def _with_retries(self, uri: str, action):
        for attempt in range(1, self.attempts + 1):
            try:
                return action()
            except FileNotFoundError:
                raise
            except OSError as e:  # pyarrow's S3 errors are OSErrors
                # This node's disk: retrying won't help. Not the data's fault either: infrastructure.
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise full_disk(self.shards_dir, f"a copy of {uri}", cause=e.strerror or str(e)) from None
                if e.errno == errno.EROFS:
                    raise StorageUnavailable(f"cannot write {uri} into the node cache {self.path}: its disk is "
                                             "read-only. Point $VLSM_CACHE at a writable disk.") from None
                if attempt == self.attempts:
                    raise StorageUnavailable(
                        f"cannot read {uri} after {attempt} attempts (last error: {e}). Check that this node "
                        "can reach the storage, that AWS_ENDPOINT_URL is right if you set it, and that the "
                        "credentials can read the file (AWS_ACCESS_KEY_ID / AWS_PROFILE / instance role). "
                        "An infrastructure fault, not bad data: the experiment runs again at the next launch."
                    ) from None
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.warning("reading %s failed (%s); attempt %d of %d, retrying in %.1f s",
                            uri, e, attempt, self.attempts, delay)
                time.sleep(delay)
