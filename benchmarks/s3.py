"""Bytes read from S3 while N trials on one node start together: direct reads vs the node cache.

A real S3 server (moto) runs on 127.0.0.1 in this process and counts the body bytes it serves per
object; N processes (each like a trial) wait at a barrier, then read the same split at once.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
import time
import uuid
from collections import Counter

import numpy as np

from benchmarks.together import start_together

# `python -m benchmarks --help` imports this module, so moto, boto3, pyarrow (datasets.*) and PIL.Image (~15 ms
# of its ~0.2 s) are imported in the functions that use them.

HELP = "bytes read from the S3 server while N trials start together: direct reads vs the node cache"


class ServedCounts:
    """Requests and response body bytes per (method, path), counted by a WSGI wrapper."""

    def __init__(self):
        self.requests: Counter = Counter()
        self.bytes: Counter = Counter()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes.clear()

    def wrap(self, app):
        def counting_app(environ, start_response):
            key = (environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
            with self._lock:
                self.requests[key] += 1
            body = app(environ, start_response)
            try:
                for chunk in body:
                    with self._lock:
                        self.bytes[key] += len(chunk)
                    yield chunk
            finally:
                if hasattr(body, "close"):
                    body.close()

        return counting_app

    def served(self, method: str = "GET", suffix: str = "") -> tuple[int, int]:
        """(requests, body bytes) for paths ending with ``suffix``."""
        with self._lock:
            keys = [k for k in self.requests if k[0] == method and k[1].endswith(suffix)]
            return sum(self.requests[k] for k in keys), sum(self.bytes[k] for k in keys)


def counting_s3_server(port: int = 0, counts: ServedCounts | None = None):
    """Start moto's S3 server on 127.0.0.1 with a counting wrapper; returns (server, endpoint, counts).

    moto keeps its buckets per Python process, so a server restarted on the same port (after
    ``stop_server``) serves the same objects again.
    """
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    counts = counts or ServedCounts()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wsgi = server._server  # werkzeug's server; requests look its app up per request
    wsgi.app = counts.wrap(wsgi.app)
    host, bound = server.get_host_and_port()
    return server, f"http://{host}:{bound}", counts


def stop_server(server) -> None:
    """Stop serving and close the listening socket (moto's stop() leaves it open), so clients are refused."""
    server.stop()
    server._server.server_close()


def _set_offline_env(endpoint: str) -> None:
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"})
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)


def bench_rows(dataset: str, split: str, n: int, seed: int = 0):
    """Rows with random JPEG images (~100 KB) and PNG masks: content does not matter here, bytes do."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        mask = np.zeros((240, 320), np.uint8)
        mask[60:180, 80:240] = 255
        image_buf, mask_buf = io.BytesIO(), io.BytesIO()
        Image.fromarray(pixels).save(image_buf, "JPEG", quality=90)
        Image.fromarray(mask).save(mask_buf, "PNG")
        yield {"sample_id": f"{dataset}-{split}-{i:05d}", "dataset": dataset, "split": split,
               "image": image_buf.getvalue(), "mask": mask_buf.getvalue(), "height": 240, "width": 320,
               "class_name": "polyp", "p0": [""], "metadata": {}}


def read_as_trial(uri: str, dataset: str, split: str, cache_dir: str | None, barrier, results) -> None:
    """One trial: wait for the others, read the split (through the node cache when given), report its rows."""
    from datasets.cache import NodeCache
    from datasets.shards import ShardStore

    store = ShardStore(uri, cache=NodeCache(cache_dir) if cache_dir else False)
    barrier.wait()
    results.put(store.read_split(dataset, split).num_rows)
    results.close()
    results.join_thread()
    # The AWS SDK inside pyarrow can abort at interpreter exit ("terminate called without an active
    # exception", apache/arrow#34314) after the work is done: leave without the interpreter's teardown.
    os._exit(0)


def run_trials(uri: str, dataset: str, split: str, cache_dirs: list[str | None], trials_per_node: int) -> list[int]:
    """Start ``trials_per_node`` processes per cache dir (one dir per simulated node) together; rows each read."""
    jobs = [(uri, dataset, split, cache) for cache in cache_dirs for _ in range(trials_per_node)]
    return start_together(read_as_trial, jobs)


def add_arguments(parser) -> None:
    parser.add_argument("--trials", type=int, default=4, help="trials per node starting together")
    parser.add_argument("--nodes", type=int, default=1, help="nodes, each with its own cache folder")
    parser.add_argument("--rows", type=int, default=1500, help="rows in the split (1,000 per shard file)")


def run(args) -> int:
    import boto3

    from datasets.shards import ShardStore

    server, endpoint, counts = counting_s3_server()
    _set_offline_env(endpoint)
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        uri = f"s3://{bucket}/shards"
        manifest = ShardStore(uri, cache=False).write_dataset("bench", bench_rows("bench", "train", args.rows), ["p0"])
        files = manifest.splits["train"]["files"]
        s3 = boto3.client("s3", endpoint_url=endpoint)
        shard_bytes = sum(s3.head_object(Bucket=bucket, Key=f"shards/bench/{f['path']}")["ContentLength"]
                          for f in files)
        print(f"S3 server {endpoint}; split of {args.rows} rows in {len(files)} shard files, "
              f"{shard_bytes / 1e6:.1f} MB; {args.nodes} node(s) x {args.trials} trials starting together")
        print(f"{'path':<22}{'trials':>8}{'GET requests':>14}{'MB served':>11}{'served / shards':>17}"
              f"{'per node':>10}{'seconds':>9}")
        with tempfile.TemporaryDirectory(prefix="vlsm-bench-s3-") as tmp:
            for label, caches in (("direct (no cache)", [None] * args.nodes),
                                  ("node cache", [os.path.join(tmp, f"node{i}") for i in range(args.nodes)])):
                counts.clear()
                began = time.perf_counter()
                rows = run_trials(uri, "bench", "train", caches, args.trials)
                assert rows == [args.rows] * len(rows), rows
                seconds = time.perf_counter() - began
                requests, served = counts.served("GET", ".parquet")
                ratio = served / shard_bytes
                print(f"{label:<22}{args.nodes * args.trials:>8}{requests:>14}{served / 1e6:>11.1f}"
                      f"{ratio:>17.2f}{ratio / args.nodes:>10.2f}{seconds:>9.1f}")
    finally:
        stop_server(server)
    return 0
