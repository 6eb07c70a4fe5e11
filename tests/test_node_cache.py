"""The node cache on a real S3 server on loopback: each shard downloaded once per node, checked, resumable, retried.

The server is moto's, with a wrapper that counts the body bytes it serves per object
(benchmarks/s3.py), so "downloaded once" is measured where the bytes leave.
"""

import hashlib
import logging
import os
import threading
import time
import uuid

import boto3
import pytest

import datasets.cache as cache_module
import datasets.shards as shards
from benchmarks.s3 import bench_rows, counting_s3_server, run_trials, stop_server
from datasets.cache import NodeCache
from datasets.disk import DiskFullError
from datasets.shards import ShardError, ShardStore
from datasets.storage import S3_ATTEMPTS_ENV, StorageUnavailable


@pytest.fixture(scope="module")
def counted_s3():
    server, endpoint, counts = counting_s3_server()
    yield {"server": server, "endpoint": endpoint, "counts": counts}
    stop_server(server)


@pytest.fixture
def bucket(counted_s3, monkeypatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", counted_s3["endpoint"])  # inherited by spawned trial processes
    name = f"cache-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=counted_s3["endpoint"]).create_bucket(Bucket=name)
    counted_s3["counts"].clear()
    return name


def write(bucket: str, rows: int = 12, per_file: int = 5, monkeypatch=None) -> tuple[str, dict]:
    """A split over several shard files on the server; returns the root URI and the object sizes."""
    monkeypatch.setattr(shards, "ROWS_PER_FILE", per_file)
    root = f"s3://{bucket}/shards"
    manifest = ShardStore(root, cache=False).write_dataset("tiny", bench_rows("tiny", "train", rows), ["p0"])
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    sizes = {f["path"]: s3.head_object(Bucket=bucket, Key=f"shards/tiny/{f['path']}")["ContentLength"]
             for f in manifest.splits["train"]["files"]}
    return root, sizes


def served(counts, bucket: str, path: str) -> tuple[int, int]:
    return counts.served("GET", f"/{bucket}/shards/tiny/{path}")


def test_trials_starting_together_download_each_shard_once(counted_s3, bucket, tmp_path, monkeypatch):
    root, sizes = write(bucket, monkeypatch=monkeypatch)
    assert len(sizes) == 3
    counts = counted_s3["counts"]
    counts.clear()
    cache_dir = str(tmp_path / "node")
    assert run_trials(root, "tiny", "train", [cache_dir], trials_per_node=4) == [12] * 4
    for path, size in sizes.items():
        assert served(counts, bucket, path)[1] == size, f"{path}: bytes served != its size (downloaded twice?)"
    # A later trial on the node reads only the manifest.
    counts.clear()
    table = ShardStore(root, cache=NodeCache(cache_dir)).read_split("tiny", "train")
    assert table["sample_id"].to_pylist() == [f"tiny-train-{i:05d}" for i in range(12)]
    assert counts.served("GET", ".parquet") == (0, 0)
    # Without the cache each trial downloads everything: the baseline the cache removes.
    assert run_trials(root, "tiny", "train", [None], trials_per_node=2) == [12] * 2
    assert counts.served("GET", ".parquet")[1] == 2 * sum(sizes.values())


def test_local_folders_are_read_in_place(tmp_path):
    store = ShardStore(str(tmp_path / "shards"), cache=NodeCache(str(tmp_path / "node")))
    store.write_dataset("tiny", bench_rows("tiny", "train", 3), ["p0"])
    assert store.read_split("tiny", "train").num_rows == 3
    assert not (tmp_path / "node" / "shards").exists()


def count_hashing(monkeypatch) -> list[str]:
    """The files the node cache hashes (a spy around the real function)."""
    hashed = []
    real = cache_module.file_sha256
    monkeypatch.setattr(cache_module, "file_sha256", lambda path: hashed.append(path) or real(path))
    return hashed


def test_a_shard_is_hashed_once_per_node_until_it_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "ROWS_PER_FILE", 4)
    store = ShardStore(str(tmp_path / "shards"), cache=NodeCache(str(tmp_path / "node")))
    manifest = store.write_dataset("tiny", bench_rows("tiny", "train", 8), ["p0"])
    files = [f["path"] for f in manifest.splits["train"]["files"]]
    hashed = count_hashing(monkeypatch)
    assert store.read_split("tiny", "train").num_rows == 8
    assert sorted(os.path.basename(p) for p in hashed) == sorted(files)
    hashed.clear()  # later trials on the node read only the columns they ask for, unhashed
    other_trial = ShardStore(str(tmp_path / "shards"), cache=NodeCache(str(tmp_path / "node")))
    assert other_trial.read_split("tiny", "train", ["sample_id", "p0"]).num_rows == 8
    assert hashed == []
    # A file changed after it was checked (same size) is hashed again, and refused.
    path = tmp_path / "shards" / "tiny" / files[1]
    time.sleep(0.05)  # file systems stamp mtimes at a coarse clock tick; an edit comes later than this
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=rf"corrupt shard .*tiny/{files[1]}: sha256 .* re-ingest 'tiny'"):
        other_trial.read_split("tiny", "train")
    assert [os.path.basename(p) for p in hashed] == [files[1]]


def test_a_corrupt_download_is_rejected_and_nothing_stays_visible(counted_s3, bucket, tmp_path, monkeypatch):
    root, sizes = write(bucket, monkeypatch=monkeypatch)
    s3 = boto3.client("s3", endpoint_url=counted_s3["endpoint"])
    key = f"shards/tiny/{min(sizes)}"
    good = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=good[:-64] + bytes(64))
    store = ShardStore(root, cache=NodeCache(str(tmp_path / "node")))
    with pytest.raises(ShardError, match=rf"corrupt shard {root}/tiny/{min(sizes)}: sha256 .* re-ingest 'tiny'"):
        store.read_split("tiny", "train")
    left = [p.name for p in (tmp_path / "node").rglob("*") if p.is_file()]
    assert left and all(name.endswith(".lock") for name in left), left
    # The refusal is not remembered: once storage holds the right bytes again, the read works.
    s3.put_object(Bucket=bucket, Key=key, Body=good)
    assert store.read_split("tiny", "train").num_rows == 12


def test_a_partial_download_is_resumed_or_restarted_never_used(counted_s3, bucket, tmp_path, monkeypatch):
    root, sizes = write(bucket, rows=4, monkeypatch=monkeypatch)
    (path, size), = sizes.items()
    data = boto3.client("s3", endpoint_url=counted_s3["endpoint"]).get_object(
        Bucket=bucket, Key=f"shards/tiny/{path}")["Body"].read()
    cache = NodeCache(str(tmp_path / "node"))
    store = ShardStore(root, cache=cache)
    entry = store.manifest("tiny").splits["train"]["files"][0]
    part = cache.shard_path(root, "tiny", entry) + ".part"
    os.makedirs(os.path.dirname(part))
    counts = counted_s3["counts"]

    # Left by a killed download: a true prefix is resumed, and only the rest is fetched.
    with open(part, "wb") as f:
        f.write(data[: size // 2])
    counts.clear()
    assert store.read_split("tiny", "train").num_rows == 4
    assert served(counts, bucket, path)[1] == size - size // 2
    copy = cache.shard_path(root, "tiny", entry)
    assert hashlib.sha256(open(copy, "rb").read()).hexdigest() == entry["sha256"] and not os.path.exists(part)

    # A partial that is not a prefix of the file fails the checksum and is downloaded again from zero.
    os.remove(copy)
    with open(part, "wb") as f:
        f.write(bytes(size // 2))
    counts.clear()
    assert store.read_split("tiny", "train").num_rows == 4
    assert served(counts, bucket, path)[1] == (size - size // 2) + size
    assert hashlib.sha256(open(copy, "rb").read()).hexdigest() == entry["sha256"]

    # A cached copy damaged on the node's disk is dropped and downloaded again.
    time.sleep(0.05)  # file systems stamp mtimes at a coarse clock tick; damage comes later than this
    with open(copy, "r+b") as f:
        f.write(b"junk")
    counts.clear()
    assert store.read_split("tiny", "train").num_rows == 4
    assert served(counts, bucket, path)[1] == size


def test_a_full_node_disk_is_reported_at_once_not_retried(counted_s3, bucket, tmp_path, monkeypatch):
    root, sizes = write(bucket, rows=4, monkeypatch=monkeypatch)
    (path,) = sizes
    cache = NodeCache(str(tmp_path / "node"), attempts=4, backoff_s=5)
    store = ShardStore(root, cache=cache)
    part = cache.shard_path(root, "tiny", store.manifest("tiny").splits["train"]["files"][0]) + ".part"
    os.makedirs(os.path.dirname(part))
    os.symlink("/dev/full", part)  # every write there fails with ENOSPC, as on a full disk
    counts = counted_s3["counts"]
    counts.clear()
    with pytest.raises(DiskFullError, match=r"node disk full: the disk of .*/node/shards filled up as a copy of "
                                            r"s3://.*No space left on device.*cache_usage prune"):
        store.read_split("tiny", "train")
    assert served(counts, bucket, path)[0] == 1  # one GET: no retries with backoff


class _RetryWatch(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.retrying = threading.Event()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())
        if "retrying in" in record.getMessage():
            self.retrying.set()


def test_storage_errors_are_retried_with_backoff_then_reported(counted_s3, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv(S3_ATTEMPTS_ENV, "1")  # the node cache's own tries, without pyarrow's inside each
    root, sizes = write(bucket, rows=4, monkeypatch=monkeypatch)
    port = int(counted_s3["endpoint"].rsplit(":", 1)[1])
    watch = _RetryWatch()
    logging.getLogger("datasets.cache").addHandler(watch)
    store = ShardStore(root, cache=NodeCache(str(tmp_path / "node"), attempts=6, backoff_s=0.2))
    manifest = store.manifest("tiny")
    result: dict = {}

    def read():
        try:
            result["rows"] = store.read_split("tiny", "train", manifest=manifest).num_rows
        except Exception as e:  # reported below
            result["error"] = e

    running = True
    try:
        stop_server(counted_s3["server"])  # the server goes away...
        running = False
        reader = threading.Thread(target=read)
        reader.start()
        assert watch.retrying.wait(120), watch.messages
        # ... and comes back on the same address while the reader backs off.
        counted_s3["server"], running = counting_s3_server(port, counted_s3["counts"])[0], True
        reader.join(120)
        assert result == {"rows": 4}
        assert any(f"reading {root}/tiny/" in m and "attempt 1 of 6" in m for m in watch.messages)

        # Down for longer than the retries last: an infrastructure fault (never bad input) naming the file
        # and what to check.
        stop_server(counted_s3["server"])
        running = False
        failing = ShardStore(root, cache=NodeCache(str(tmp_path / "other"), attempts=2, backoff_s=0.05))
        with pytest.raises(StorageUnavailable, match=rf"cannot read {root}/tiny/train-00000.parquet after 2 "
                                                     r"attempts \(last error: .*\)\. Check that this node can reach "
                                                     r"the storage, that AWS_ENDPOINT_URL"):
            failing.read_split("tiny", "train", manifest=manifest)
        assert not [p for p in (tmp_path / "other").rglob("*.parquet")]
    finally:
        logging.getLogger("datasets.cache").removeHandler(watch)
        if not running:
            counted_s3["server"] = counting_s3_server(port, counted_s3["counts"])[0]
