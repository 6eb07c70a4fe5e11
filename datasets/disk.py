"""The node cache's disk: free space checked before a cache entry is built, and a full disk reported as such.

Cache entries (decoded splits, frozen-encoder features) are ``.npy`` files that are memory-mapped
while they are filled. A page of a sparse file that finds no free block when it is first written
kills the process with SIGBUS (a trial then dies as ``ActorDiedError()``, with no word of the disk).
So every such file is allocated whole on disk before it is mapped (``os.posix_fallocate``: where a
file system lacks the call, glibc writes the blocks instead), and a full disk raises
``DiskFullError`` at allocation, as an ordinary write would. A free-space check before each build
(``check_free``) says the same before any work is spent; the allocation still decides, since
builds of other entries on the node may take the space between the check and the write.

``DiskFullError`` is an ``OSError`` with errno ENOSPC: a fault of this node's disk, never of the
data, so a trial that meets it fails as an infrastructure fault (retried, never recorded FAILED).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator

import numpy as np

from datasets.storage import StorageFull

# Kept free on the cache's disk for what else writes there (Ray's logs and object spilling, checkpoints).
RESERVE_BYTES = 1 << 30
RESERVE_FRACTION = 0.05  # of the disk's size, where that is less than RESERVE_BYTES
CACHE_KINDS = ("shards", "decoded", "features")  # the node cache's top folders (datasets/cache.py)


def human_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def cache_root_of(folder: str) -> str:
    """The node cache that holds ``folder``: the parent of its ``shards``/``decoded``/``features`` folder."""
    path = os.path.abspath(folder)
    while os.path.dirname(path) != path:
        if os.path.basename(path) in CACHE_KINDS:
            return os.path.dirname(path)
        path = os.path.dirname(path)
    return os.path.dirname(os.path.abspath(folder))


class DiskFullError(StorageFull):
    """No room on this node's disk for a cache entry (errno ENOSPC); the message names the folder, the
    bytes needed and free where known, and how to free space (``full_disk``)."""


def full_disk(folder: str, what: str, needed: int | None = None, free: int | None = None,
              cause: str | None = None) -> DiskFullError:
    """The error for ``what`` (words: "the decoded split 'x'/'train' at 352px") not fitting in ``folder``:
    ``needed`` and ``free`` bytes found by a check, or the ``cause`` of a write that failed."""
    usage = shutil.disk_usage(existing_ancestor(folder))
    if needed is not None and free is not None:
        problem = (f"{what} needs {human_bytes(needed)} in {folder}, and its disk has {human_bytes(free)} free "
                   f"({human_bytes(reserve_bytes(usage.total))} of it kept for logs, spilling and checkpoints)")
    else:
        problem = (f"the disk of {folder} filled up as {what} was written there ({cause}); "
                   f"{human_bytes(usage.free)} free now")
    return DiskFullError(
        f"node disk full: {problem}. Free space in the node cache with `python -m datasets.cache_usage prune "
        f"--cache {cache_root_of(folder)} --max-gb N` (`list` shows what it holds), or point $VLSM_CACHE at "
        "a larger disk.")


def existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def reserve_bytes(disk_total: int) -> int:
    return min(RESERVE_BYTES, int(disk_total * RESERVE_FRACTION))


def check_free(folder: str, needed: int, what: str) -> None:
    """Raise DiskFullError unless ``folder``'s disk holds ``needed`` bytes more and still keeps its reserve."""
    usage = shutil.disk_usage(existing_ancestor(folder))
    if usage.free < needed + reserve_bytes(usage.total):
        raise full_disk(folder, what, needed, usage.free)


def allocated_npy(path: str, dtype, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` file memory-mapped for writing, every block of it allocated on disk first: a
    full disk raises ENOSPC here instead of SIGBUS at the first write to a page."""
    array = np.lib.format.open_memmap(path, "w+", dtype, shape)
    with open(path, "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    return array


@contextlib.contextmanager
def full_disk_reported(folder: str, what: str) -> Iterator[None]:
    """An ENOSPC or EDQUOT raised inside becomes a DiskFullError naming ``folder`` and the prune command."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise full_disk(folder, what, cause=e.strerror or str(e)) from e
