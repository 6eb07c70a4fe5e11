"""``python -m datasets.cache_usage``: a real node cache (shard copies from S3 on loopback, decoded
splits, frozen CLIPSeg features) listed with du's sizes, pruned by last use or age, never under a
held lock, and rebuilt transparently afterwards."""

import itertools
import os
import subprocess
import sys
import time
import uuid

import boto3
import numpy as np
import pytest
import torch

import datasets.shards as shards
from datasets.cache import NodeCache, build_once, open_built
from datasets.cache_usage import DAY_S, entries, human_bytes, main, remove
from datasets.segmentation import SegmentationSplit
from datasets.shards import ShardStore
from datasets.synthetic import synthetic_rows
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES
from tests.cli import REPO
from trainables.feature_cache import FeatureCache
from trainables.models import build_model, build_tokenizer, encoder_prefixes, model_inputs

SIZE = 128  # the small CLIPSeg's input size


@pytest.fixture(scope="module")
def remote(s3_endpoint) -> str:
    """A tiny dataset on the loopback S3 server: train over two shard files, val in one."""
    bucket = f"usage-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    rows = itertools.chain(synthetic_rows("tiny", "train", 6, 0.5, seed=4),
                           synthetic_rows("tiny", "val", 3, 0.5, seed=4))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shards, "ROWS_PER_FILE", 3)
        ShardStore(f"s3://{bucket}/shards", cache=False).write_dataset("tiny", rows, NON_RADIOLOGY_PROMPT_TYPES)
    return f"s3://{bucket}/shards"


@pytest.fixture(scope="module")
def clipseg():
    torch.manual_seed(0)
    model = build_model("clipseg", "frozen", "small")
    return model, build_tokenizer("clipseg"), model_inputs("clipseg", "small")


def fill(remote: str, node: str, clipseg) -> dict[str, np.ndarray]:
    """Open train and val through the node cache and cache train's features; returns their arrays."""
    store = ShardStore(remote, cache=NodeCache(node))
    train, val = (SegmentationSplit(store, "tiny", s, "p6", SIZE, train=False) for s in ("train", "val"))
    model, tokenizer, inputs = clipseg
    features = FeatureCache(model, tokenizer, inputs, "clipseg", encoder_prefixes("clipseg"),
                            root=os.path.join(node, "features")).wrap(train, torch.device("cpu"))
    return {"train": np.array(train.images), "val": np.array(val.images),
            **{f"features/{k}": np.array(v) for k, v in features.image.items()},
            "built": np.array([train.decoded.built, val.decoded.built])}


@pytest.fixture
def node(tmp_path, remote, clipseg) -> str:
    node = str(tmp_path / "node")
    fill(remote, node, clipseg)
    return node


def du(path: str) -> int:
    return int(subprocess.run(["du", "-sB1", path], capture_output=True, text=True, check=True).stdout.split()[0])


def last_use_file(entry) -> str:
    return entry.path if entry.kind == "shards" else os.path.join(entry.path, "meta.json")


def set_last_use(entry, days_ago: float) -> None:
    when = time.time() - days_ago * DAY_S
    os.utime(last_use_file(entry), (when, when))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datasets.cache_usage", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_list_shows_every_entry_with_du_sizes_by_last_use(node):
    found = entries(node)
    kinds = sorted(e.kind for e in found)
    assert kinds == ["decoded"] * 2 + ["features"] * 2 + ["shards"] * 3, [e.name for e in found]
    assert not any(e.leftover for e in found)
    for e in found:
        assert e.bytes == du(e.path) > 0, e.name
    # Oldest first, whatever the order they were built in.
    for days, e in zip([1, 9, 3, 30, 2, 5, 7], found):
        set_last_use(e, days)
    result = cli("list", "--cache", node)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    listed = [line for line in lines if line.split()[0] in ("shards", "decoded", "features") and "ago" in line]
    expected = sorted(zip([1, 9, 3, 30, 2, 5, 7], found), key=lambda pair: -pair[0])
    assert [line.split()[-1] for line in listed] == [e.name for _, e in expected]
    for (days, e), line in zip(expected, listed):
        assert line.startswith(e.kind) and human_bytes(du(e.path)) in line and f"{float(days):.1f} d ago" in line
    for kind in ("shards", "decoded", "features"):
        mine = sum(du(e.path) for e in found if e.kind == kind)
        assert f"{kind}: {sum(e.kind == kind for e in found)} entries, {human_bytes(mine)}" in lines
    assert lines[-1] == f"total: 7 entries, {human_bytes(sum(du(e.path) for e in found))}"


def test_prune_max_gb_removes_the_least_recently_used_first(node, capsys):
    found = entries(node)
    for days, e in enumerate(reversed(found)):  # found[-1] is now the most recent, found[0] the oldest
        set_last_use(e, days + 1)
    oldest = sorted(found, key=lambda e: os.stat(last_use_file(e)).st_atime)
    total = sum(e.bytes for e in found)
    keep = total - oldest[0].bytes - oldest[1].bytes
    assert main(["prune", "--cache", node, "--max-gb", repr((keep + min(e.bytes for e in found) / 2) / 1e9)]) == 0
    out = capsys.readouterr().out
    assert [os.path.exists(e.path) for e in oldest] == [False, False] + [True] * (len(found) - 2)
    assert f"freed {human_bytes(total - keep)} ({total - keep} bytes)" in out
    assert out.count("removed ") == 2 and oldest[0].name in out and oldest[1].name in out
    assert sum(e.bytes for e in entries(node)) == keep


def test_prune_older_than_days_and_dry_run(node, capsys):
    found = entries(node)
    old = {e.path for e in found[::2]}
    for e in found:
        set_last_use(e, 10 if e.path in old else 0.5)
    before = sorted((d, tuple(sorted(f))) for d, _, f in os.walk(node))
    assert main(["prune", "--cache", node, "--older-than-days", "4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert sorted((d, tuple(sorted(f))) for d, _, f in os.walk(node)) == before  # nothing removed, nothing made
    assert out.count("would remove ") == len(old)
    assert f"would free {human_bytes(sum(e.bytes for e in found if e.path in old))}" in out
    assert main(["prune", "--cache", node, "--older-than-days", "4"]) == 0
    assert {e.path for e in entries(node)} == {e.path for e in found} - old


def test_using_an_entry_marks_it_recent(node, remote):
    for e in entries(node):
        set_last_use(e, 10)
    SegmentationSplit(ShardStore(remote, cache=NodeCache(node)), "tiny", "val", "p6", SIZE, train=False)
    assert main(["prune", "--cache", node, "--older-than-days", "1"]) == 0
    # What opening val used stays: its shard copy and its decoded split.
    kept = entries(node)
    assert sorted(e.kind for e in kept) == ["decoded", "shards"]
    assert all("val-" in os.path.basename(e.name) for e in kept), [e.name for e in kept]


def test_an_entry_whose_lock_is_held_is_skipped(node, capsys):
    decoded = [e for e in entries(node) if e.kind == "decoded"][0]
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+b'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(300)",
                               decoded.lock], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["prune", "--cache", node, "--max-gb", "0"]) == 0
        out = capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait()
    assert [e.path for e in entries(node)] == [decoded.path]  # all else went, this one stayed whole
    assert os.path.exists(os.path.join(decoded.path, "meta.json"))
    assert f"skipped (in use: {decoded.lock} is held)" in out and "1 entries skipped" in out


def test_leftovers_of_killed_builders_go_unless_a_builder_still_runs(node, capsys):
    folder = os.path.join(node, "decoded", "tiny", "killed-64px-0123456789abcdef")
    builder = subprocess.Popen([sys.executable, "-c", "import os, sys, time; from datasets.cache import build_once; "
                                "build_once(sys.argv[1], lambda tmp: (open(os.path.join(tmp, 'images.npy'), 'wb')"
                                ".write(bytes(50000)), print('building', flush=True), time.sleep(300)))", folder],
                               cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout.readline().strip() == "building"
        leftover = [e for e in entries(node) if e.leftover]
        assert [e.name for e in leftover] == [os.path.relpath(leftover[0].path, os.path.join(node, "decoded"))]
        assert ".tmp-" in leftover[0].name and leftover[0].bytes >= 50000
        assert main(["prune", "--cache", node, "--older-than-days", "1000"]) == 0  # a running build: kept
        assert "skipped (in use" in capsys.readouterr().out and os.path.isdir(leftover[0].path)
    finally:
        builder.kill()  # killed mid-build: its temporary folder stays
        builder.wait()
    shard = [e for e in entries(node) if e.kind == "shards"][0]
    with open(shard.path + ".part", "wb") as f:  # what a killed download leaves
        f.write(b"\0" * 1000)
    val = [e for e in entries(node) if e.name.startswith("tiny/val-")][0]
    os.remove(os.path.join(val.path, "meta.json"))  # an entry's folder without meta.json is garbage too
    assert sorted(e.name for e in entries(node) if e.leftover) == sorted(
        [leftover[0].name, val.name, os.path.relpath(shard.path, os.path.join(node, "shards")) + ".part"])
    assert main(["prune", "--cache", node, "--older-than-days", "1000"]) == 0
    assert not any(e.leftover for e in entries(node)) and len(entries(node)) == 6
    assert not os.path.exists(val.path)
    assert not os.path.exists(leftover[0].path) and not os.path.exists(shard.path + ".part")
    assert build_once(folder, lambda tmp: open(os.path.join(tmp, "meta.json"), "w").write("{}"))  # its lock is free


def test_after_pruning_everything_the_cache_rebuilds_the_same_arrays(tmp_path, remote, clipseg):
    node = str(tmp_path / "node")
    first = fill(remote, node, clipseg)
    assert first["built"].all()
    result = cli("prune", "--cache", node, "--max-gb", "0")
    assert result.returncode == 0, result.stderr
    assert entries(node) == [] and result.stdout.count("removed ") == 7
    again = fill(remote, node, clipseg)
    assert again["built"].all() and len(entries(node)) == 7
    assert first.keys() == again.keys()
    for key in first:
        assert np.array_equal(first[key], again[key]), key


def test_symlinks_are_never_followed(node, tmp_path):
    outside = tmp_path / "outside"
    (outside / "entry").mkdir(parents=True)
    (outside / "entry" / "meta.json").write_text("{}")
    (outside / "shard.parquet").write_bytes(b"x" * 5000)
    os.symlink(outside / "entry", os.path.join(node, "decoded", "tiny", "linked"))
    shard_dir = os.path.dirname([e for e in entries(node) if e.kind == "shards"][0].path)
    os.symlink(outside / "shard.parquet", os.path.join(shard_dir, "0123456789abcdef-linked.parquet"))
    assert not any("linked" in e.name for e in entries(node))
    assert main(["prune", "--cache", node, "--max-gb", "0"]) == 0
    assert (outside / "entry" / "meta.json").exists() and (outside / "shard.parquet").stat().st_size == 5000


def test_bad_and_empty_cache_folders(tmp_path, capsys):
    stranger = tmp_path / "home"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("precious")
    assert main(["prune", "--cache", str(stranger), "--max-gb", "0"]) == 2
    assert "does not look like a vlsm-tune cache" in capsys.readouterr().err
    (stranger / "shards" / "polyp").mkdir(parents=True)  # a folder of shards is not a cache
    (stranger / "shards" / "polyp" / "0123456789abcdef-train.parquet").write_bytes(b"x" * 5000)
    assert main(["prune", "--cache", str(stranger), "--max-gb", "0"]) == 2
    assert "found thesis.tex" in capsys.readouterr().err
    assert (stranger / "thesis.tex").exists()
    assert (stranger / "shards" / "polyp" / "0123456789abcdef-train.parquet").stat().st_size == 5000
    assert main(["list", "--cache", str(tmp_path / "missing")]) == 0
    assert "no cache at" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["list", "--cache", str(tmp_path / "empty")]) == 0
    assert "is empty" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--cache", str(tmp_path / "empty")])
    assert exit_info.value.code == 2 and "--max-gb N" in capsys.readouterr().err


def test_an_entry_used_after_the_listing_is_kept(node, remote):
    for e in entries(node):
        set_last_use(e, 10)
    listed = [e for e in entries(node) if e.kind == "decoded" and "val-" in e.name]
    SegmentationSplit(ShardStore(remote, cache=NodeCache(node)), "tiny", "val", "p6", SIZE, train=False)
    assert remove(listed[0]) == "used" and os.path.isdir(listed[0].path)


def test_a_reader_that_loses_its_entry_to_a_prune_builds_it_again(tmp_path):
    folder = str(tmp_path / "decoded" / "tiny" / "train-64px-0123456789abcdef")
    build = lambda tmp: open(os.path.join(tmp, "meta.json"), "w").write('{"rows": 3}')  # noqa: E731
    assert build_once(folder, build)
    opened = []

    def load(path: str, built: bool) -> str:
        opened.append(built)
        if len(opened) == 1:  # a prune removes it between build_once and opening its files
            assert remove(next(e for e in entries(str(tmp_path)) if e.path == folder)) == "removed"
        with open(os.path.join(path, "meta.json")) as f:
            return f.read()

    assert open_built(folder, build, load) == '{"rows": 3}'
    assert opened == [False, True]


def test_a_storage_path_with_tmp_in_its_name_is_not_a_leftover(s3_endpoint, tmp_path):
    bucket = f"usage-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    root = f"s3://{bucket}/exp.tmp-0123abcd/shards"
    ShardStore(root, cache=False).write_dataset("tiny", synthetic_rows("tiny", "train", 2, 0.5, seed=1),
                                                NON_RADIOLOGY_PROMPT_TYPES)
    node = str(tmp_path / "node")
    ShardStore(root, cache=NodeCache(node)).read_split("tiny", "train")
    (copy,) = entries(node)
    assert not copy.leftover and ".tmp-0123abcd" in copy.name
    assert main(["prune", "--cache", node, "--older-than-days", "1000"]) == 0
    assert os.path.exists(copy.path)
