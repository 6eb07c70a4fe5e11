"""See and reclaim the node cache's disk: ``python -m datasets.cache_usage list`` and ``prune``.

Entries under the cache folder (``$VLSM_CACHE``, default ``~/.cache/vlsm-tune``; datasets/cache.py),
each with its last use in an access time that ``datasets.cache.mark_used`` sets: ``shards`` (a verified
copy of one remote shard file: the file's atime), ``decoded`` (a split at one input size) and
``features`` (frozen-encoder outputs; both: their meta.json's atime). Leftovers of killed builders and
downloads (``*.tmp-*`` folders, ``*.part`` files, entry folders without meta.json) go at every prune.

Beside running trials: an entry goes only while this process holds its lock (the ``<entry>.lock`` its
builder or downloader holds), taken without waiting; one whose lock is held is skipped and named, and
so is one a trial used after the listing (its atime, checked again under the lock). A folder is
renamed to a ``.tmp-`` name first (atomic; the next builder sweeps it up if prune dies). A trial that
has opened an entry keeps reading it (on Linux an open file or mapping holds the inode; its space
comes back when the trial lets go). Readers take no lock: one that finds an entry just as it goes
builds or downloads it again (``datasets.cache.open_built``, ``NodeCache.open_copy``). Lock files
(empty) stay: removing one another process waits on would let two hold "the" lock. Symlinks are never
followed nor listed.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass

from datasets.cache import CACHE_ENV, DEFAULT_CACHE, cache_root
from datasets.cli import DefaultsHelpFormatter
from datasets.disk import human_bytes

KINDS = ("shards", "decoded", "features")
CACHE_FOLDERS = (*KINDS, "verified")
SHARD_COPY = re.compile(r"[0-9a-f]{16}-.+")  # NodeCache.shard_path's name: sha256[:16]-file
TEMPORARY = re.compile(r"(.+)\.tmp-(?:prune)?[0-9a-f]{8}")  # build_once's (or prune's) name for <entry>
DAY_S = 86400.0


@dataclass(frozen=True)
class Entry:
    kind: str  # shards, decoded or features
    name: str  # its path under the kind's folder
    path: str
    bytes: int  # on disk, as du counts it
    last_used: float  # seconds since the epoch
    leftover: bool  # what a killed builder or download left: goes at every prune
    lock: str  # the lock its builder or downloader holds
    used: str  # the file whose atime is its last use


def disk_bytes(path: str) -> int:
    """Blocks allocated to ``path`` and, for a folder, everything in it (``du -sB1``), links not followed."""
    try:
        stat = os.lstat(path)
        total = stat.st_blocks * 512
        if os.path.isdir(path) and not os.path.islink(path):
            with os.scandir(path) as children:
                total += sum(disk_bytes(child.path) for child in children)
        return total
    except FileNotFoundError:  # deleted meanwhile by a builder's leftover sweep
        return 0


def entries(root: str) -> list[Entry]:
    """Every entry of the cache at ``root``, least recently used first."""
    found: list[Entry] = []

    def add(kind: str, path: str, used: str, leftover: bool, lock: str) -> None:
        try:  # ``used``: the file whose atime is the entry's last use
            found.append(Entry(kind, os.path.relpath(path, os.path.join(root, kind)), path, disk_bytes(path),
                               os.lstat(used).st_atime, leftover, lock, used))
        except FileNotFoundError:  # gone since the walk
            pass

    for kind in KINDS:
        top = os.path.join(root, kind)
        pending = [top] if os.path.isdir(top) and not os.path.islink(top) else []
        while pending:
            pending_dir = pending.pop()
            with os.scandir(pending_dir) as children:
                for child in children:
                    path, meta = child.path, os.path.join(child.path, "meta.json")
                    if child.is_symlink() or child.name.endswith(".lock"):
                        continue  # links are never followed; lock files stay
                    if not child.is_dir():
                        if kind == "shards" and SHARD_COPY.fullmatch(child.name):  # or a killed download's .part
                            part = child.name.endswith(".part")
                            add(kind, path, path, part, path.removesuffix(".part") + ".lock")
                    elif (tmp := TEMPORARY.fullmatch(child.name)) and os.path.exists(
                            lock := os.path.join(pending_dir, tmp[1] + ".lock")):
                        add(kind, path, path, True, lock)  # build_once's temporary folder, or one prune renamed
                    elif os.path.isfile(meta) and not os.path.islink(meta):
                        add(kind, path, meta, False, path + ".lock")
                    elif os.path.exists(path + ".lock"):  # an entry's folder, without meta.json
                        add(kind, path, path, True, path + ".lock")
                    else:  # a folder of entries (a root's, a dataset's, a model's)
                        pending.append(path)
    return sorted(found, key=lambda e: (e.last_used, e.kind, e.name))


def choose_victims(entries: list[Entry], max_bytes: float | None, older_than_s: float | None,
                   now: float) -> list[Entry]:
    """What to remove, least recently used first: leftovers, entries unused for over ``older_than_s``
    seconds, then the least recently used until the rest hold at most ``max_bytes``."""
    by_age = sorted(entries, key=lambda e: (e.last_used, e.kind, e.name))
    chosen = {e.path for e in by_age if e.leftover or (older_than_s is not None and now - e.last_used > older_than_s)}
    if max_bytes is not None:
        remaining = sum(e.bytes for e in by_age if e.path not in chosen)
        for e in by_age:
            if remaining <= max_bytes:
                break
            if e.path not in chosen:
                chosen.add(e.path)
                remaining -= e.bytes
    return [e for e in by_age if e.path in chosen]


def remove(entry: Entry, dry_run: bool = False) -> str:
    """Remove ``entry`` under its lock. Returns "removed" (or would be, on a dry run); "in use" when a
    build or download holds the lock; "used" when a trial used it after it was listed; "gone" when it
    went meanwhile."""
    if dry_run and not os.path.exists(entry.lock):  # nobody holds a lock file that does not exist
        return "removed"
    with open(entry.lock, "a+b") as lock:  # as datasets.cache.file_lock opens it; closing it unlocks
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "in use"
        try:
            if os.lstat(entry.used).st_atime > entry.last_used and not entry.leftover:
                return "used"
        except FileNotFoundError:
            return "gone"
        if dry_run:
            return "removed"
        if os.path.isdir(entry.path) and not os.path.islink(entry.path):
            doomed = entry.path
            if not TEMPORARY.fullmatch(os.path.basename(doomed)):  # gone from its name at once, never half-deleted
                doomed = f"{entry.path}.tmp-prune{uuid.uuid4().hex[:8]}"
                os.rename(entry.path, doomed)
            shutil.rmtree(doomed)
        else:
            os.remove(entry.path)
    return "removed"


def strangers_in(root: str) -> list[str]:
    """What in ``root`` a vlsm-tune cache never holds: everything, when it has none of the cache's folders."""
    names = sorted(os.listdir(root))
    if not any(os.path.isdir(os.path.join(root, kind)) for kind in CACHE_FOLDERS):
        return names
    return [name for name in names if name not in CACHE_FOLDERS]


def human_age(seconds: float) -> str:
    for unit, size in (("d", DAY_S), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def describe(e: Entry, now: float) -> str:
    return (f"{e.kind:<9}{human_bytes(e.bytes):>10}  {human_age(now - e.last_used):>8} ago  "
            f"{e.name}{' (leftover)' if e.leftover else ''}")


def print_list(root: str, now: float) -> None:
    found = entries(root)
    if not found:
        print(f"cache {root} holds no entries")
        return
    print(f"cache {root}, least recently used first:")
    for e in found:
        print(describe(e, now))
    for kind in KINDS:
        mine = [e for e in found if e.kind == kind]
        print(f"{kind}: {len(mine)} entries, {human_bytes(sum(e.bytes for e in mine))}")
    print(f"total: {len(found)} entries, {human_bytes(sum(e.bytes for e in found))}")


def prune(root: str, max_bytes: float | None, older_than_s: float | None, dry_run: bool, now: float) -> int:
    """Remove the chosen entries, naming each; returns the bytes freed (or that would be)."""
    kept = entries(root)
    total, freed, in_use = sum(e.bytes for e in kept), 0, []  # in_use: skipped, still on disk
    # An entry skipped because its lock is held still fills the disk: the others make room for it.
    while victims := choose_victims(kept, None if max_bytes is None else max_bytes - sum(e.bytes for e in in_use),
                                    older_than_s, now):
        for e in victims:
            kept.remove(e)
            try:
                outcome = remove(e, dry_run)
            except OSError as error:  # e.g. a file another user owns: the rest can still go
                outcome = f"could not remove: {error}"
            if outcome == "removed":
                freed += e.bytes
                print(f"{'would remove' if dry_run else 'removed'}  {describe(e, now)}")
            elif outcome != "gone":  # still on disk: the others make room for it
                in_use.append(e)
                why = {"in use": f"in use: {e.lock} is held", "used": "used since it was listed"}.get(outcome, outcome)
                print(f"skipped ({why})  {describe(e, now)}")
    print(f"{'would free' if dry_run else 'freed'} {human_bytes(freed)} ({freed} bytes); "
          f"{human_bytes(total - freed)} left in {root}")
    if in_use:
        print(f"{len(in_use)} entries skipped (in use, or not removable); prune again later")
    return freed


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False, formatter_class=DefaultsHelpFormatter)
    common.add_argument("--cache", help=f"the cache folder (none: ${CACHE_ENV}, else {DEFAULT_CACHE})")
    parser = argparse.ArgumentParser(prog="python -m datasets.cache_usage", formatter_class=DefaultsHelpFormatter,
                                     description="See and reclaim the node cache's disk (shards, decoded, features).")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", parents=[common], help="every entry with its size and last use, then the totals",
                        formatter_class=DefaultsHelpFormatter)
    p = commands.add_parser("prune", parents=[common], help="remove least recently used or old entries",
                            formatter_class=DefaultsHelpFormatter)
    p.add_argument("--max-gb", type=float, help="remove least recently used entries until at most this many GB stay")
    p.add_argument("--older-than-days", type=float, help="remove every entry unused for more than this many days")
    p.add_argument("--dry-run", action="store_true", help="print what would go and the bytes freed; remove nothing")
    args = parser.parse_args(argv)
    if args.command == "prune":
        if args.max_gb is None and args.older_than_days is None:
            p.error("say what to remove: --max-gb N (least recently used first) and/or --older-than-days D")
        if min(v for v in (args.max_gb, args.older_than_days) if v is not None) < 0:
            p.error("--max-gb and --older-than-days must be 0 or more")
    root = os.path.realpath(os.path.expanduser(args.cache or cache_root()))
    if not os.path.isdir(root) or not os.listdir(root):
        print(f"{'cache ' + root + ' is empty' if os.path.isdir(root) else 'no cache at ' + root}: "
              f"nothing to {args.command}")
        return 0
    if strangers := strangers_in(root):
        print(f"error: {root} does not look like a vlsm-tune cache, which holds only {', '.join(CACHE_FOLDERS)} "
              f"(found {', '.join(strangers[:5])}{' ...' if len(strangers) > 5 else ''}): refusing to touch it. "
              "Point --cache (or $VLSM_CACHE) at the cache folder.", file=sys.stderr)
        return 2
    now = time.time()
    if args.command == "list":
        print_list(root, now)
    else:
        prune(root, None if args.max_gb is None else args.max_gb * 1e9,
              None if args.older_than_days is None else args.older_than_days * DAY_S, args.dry_run, now)
    return 0


if __name__ == "__main__":
    sys.exit(main())
