"""Issue 16, case 5: a full node disk is reported as such, never a SIGBUS of the memory-mapped caches.

Each case runs in a child process whose node cache (``$VLSM_CACHE``) is a real, tiny tmpfs mounted in
a private mount namespace (``unshare -Urm``: works as root and unprivileged where user namespaces are
on). Before the fix, the decoded cache and the feature cache wrote sparse memory-mapped files and the
child died of SIGBUS (returncode -7) as the disk filled; a Ray trial died as ``ActorDiedError()``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest

from datasets.shards import ShardStore
from datasets.synthetic import split_rows
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES
from tests.cli import REPO, kill_session

# Reports what the child's build raised, and what the build left in the cache, as one JSON line.
REPORT = """
import errno, json, os, sys

def report(e: OSError) -> None:
    cache = os.environ["VLSM_CACHE"]
    left = sorted(os.path.relpath(os.path.join(d, f), cache) for d, _, files in os.walk(cache) for f in files)
    print(json.dumps({"type": type(e).__name__, "errno": e.errno, "message": str(e), "left": left}))
    sys.exit(3)
"""

DECODED = REPORT + """
from datasets.segmentation import SegmentationSplit
from datasets.shards import ShardStore
try:  # 16 rows at 352 px: 7.9 MB of images and masks
    SegmentationSplit(ShardStore(sys.argv[1]), "tiny", "train", "p6", 352, train=False)
except OSError as e:
    report(e)
"""

FEATURES = REPORT + """
import torch
from datasets.segmentation import SegmentationSplit
from datasets.shards import ShardStore
from trainables.feature_cache import FeatureCache
from trainables.models import build_model, build_tokenizer, encoder_prefixes, model_inputs
inputs = model_inputs("clipseg", "small")
# Decoded in memory: only the features (16 x 99 kB) go to the 1 MB cache.
split = SegmentationSplit(ShardStore(sys.argv[1], cache=False), "tiny", "train", "p6", inputs.input_size, train=True)
model = build_model("clipseg", "frozen", "small", None)
cache = FeatureCache(model, build_tokenizer("clipseg", None), inputs, "clipseg", encoder_prefixes("clipseg"))
try:
    cache.image_features(split, torch.device("cpu"))
except OSError as e:
    report(e)
"""

# The free-space check cannot see other builds on the node: the allocation itself reports a full disk.
ALLOCATION = REPORT + """
import numpy as np
from datasets.cache import build_once
from datasets.disk import allocated_npy
folder = os.path.join(os.environ["VLSM_CACHE"], "decoded", "tiny", "train-352px-0123456789abcdef")
try:
    build_once(folder, lambda tmp: allocated_npy(os.path.join(tmp, "images.npy"), np.uint8, (8, 3, 352, 352)),
               "a decoded split")
except OSError as e:
    report(e)
"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("shards"))
    ShardStore(root, cache=False).write_dataset("tiny", split_rows("tiny", (("train", 16),), seed=3),
                                                NON_RADIOLOGY_PROMPT_TYPES)
    return root


def on_full_disk(python_args: list[str], disk_size: str, cache: str) -> subprocess.CompletedProcess:
    """``python PYTHON_ARGS`` with ``$VLSM_CACHE`` on a fresh tmpfs of ``disk_size``, in a mount
    namespace of its own (gone, with the tmpfs, when the child exits)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small tmpfs in a private mount namespace")
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", f'mount -t tmpfs -o size=1m tmpfs "{cache}"'],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user and mount namespace here: {probe.stderr.strip()}")
    env = {**os.environ, "VLSM_CACHE": cache, "HF_HUB_OFFLINE": "1", "VLSM_DECODE_THREADS": "1"}
    mount = f'mount -t tmpfs -o size={disk_size} tmpfs "$VLSM_CACHE" && exec "$0" "$@"'
    proc = subprocess.Popen(["unshare", "-Urm", "sh", "-c", mount, sys.executable, *python_args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        kill_session(proc)  # anything the child left running (a grid's Ray processes)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def reported(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 3, (f"the child ended with {result.returncode} (-7 is SIGBUS), not a reported "
                                    f"error:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["type"] == "DiskFullError" and report["errno"] == errno.ENOSPC, report
    assert "node disk full" in report["message"], report
    assert "python -m datasets.cache_usage prune --cache " in report["message"], report
    # Nothing half-built stays to take space: at most empty lock files and checked-file stamps.
    assert all(p.endswith(".lock") or p.startswith("verified/") for p in report["left"]), report
    return report


def test_decoded_split_too_large_for_the_disk_is_refused_before_decoding(shards, tmp_path):
    cache = str(tmp_path / "cache")
    os.makedirs(cache)
    report = reported(on_full_disk(["-c", DECODED, shards], "4m", cache))
    message = report["message"]
    assert "node disk full: the decoded split 'tiny'/'train' at 352px needs 8.0 MB" in message  # bytes needed
    assert f"in {cache}/decoded/tiny/train-352px-" in message  # the folder
    assert "and its disk has 4.2 MB free" in message
    assert f"--cache {cache} " in message


def test_feature_cache_too_large_for_the_disk_is_refused(shards, tmp_path):
    cache = str(tmp_path / "cache")
    os.makedirs(cache)
    report = reported(on_full_disk(["-c", FEATURES, shards], "1m", cache))
    message = report["message"]
    assert "node disk full: the clipseg image features of 'tiny'/'train' needs 1.6 MB" in message
    assert f"in {cache}/features/clipseg-" in message and "and its disk has 1.0 MB free" in message


def test_a_disk_that_fills_during_a_build_is_reported_at_allocation(tmp_path):
    cache = str(tmp_path / "cache")
    os.makedirs(cache)
    report = reported(on_full_disk(["-c", ALLOCATION], "1m", cache))
    assert (f"node disk full: the disk of {cache}/decoded/tiny/train-352px-0123456789abcdef filled up as a "
            "decoded split was written there (No space left on device)") in report["message"]


@pytest.mark.slow
def test_a_trial_on_a_full_disk_names_the_disk_and_is_left_to_run_again(tmp_path):
    """The whole command on a full node disk (~50 s): the trial's error names the disk, and the
    experiment is left neither DONE nor FAILED, so the next launch runs it (an infrastructure fault
    of the node, not bad input)."""
    from datasets.synthetic import write_synthetic

    data, storage, cache = tmp_path / "shards", tmp_path / "runs", tmp_path / "cache"
    cache.mkdir()
    write_synthetic(ShardStore(str(data), cache=False), "synth_polyp")  # 160 train rows: 10.8 MB decoded
    result = on_full_disk(["-m", "orchestrator.run", "grid", "--profile", "demo", "--only", "synth_polyp-p0",
                           "--data", str(data), "--storage", str(storage), "--max-epochs", "1", "--no-dashboard"],
                          "4m", str(cache))
    output = result.stdout + result.stderr
    assert result.returncode in (0, 1), output[-4000:]  # ended by itself, neither crashed nor killed
    assert "node disk full: the decoded split 'synth_polyp'/'train' at 128px needs 10.8 MB" in output, output[-4000:]
    assert "ActorDiedError" not in output and "SIGBUS" not in output, output[-4000:]
    assert "NOT FINISHED" in output, output[-4000:]  # left for the next launch, with its cause
    records = storage / "demo" / "experiments"
    markers = sorted(p.name for p in records.rglob("*") if p.name in ("DONE", "FAILED.json"))
    assert markers == [], [p.read_text() for p in records.rglob("FAILED.json")]
