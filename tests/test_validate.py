"""``python -m datasets.validate``: passes on good shards (a folder and a real S3 server), and names the
file, row and field of every problem in corrupted ones."""

import hashlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from datasets.shards import ShardStore
from datasets.synthetic import split_rows
from datasets.validate import validate
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES
from tests.cli import REPO
from tests.layouts import make_layout, polyp_entry


def rows(dataset="tiny", sizes=(("train", 6), ("val", 3), ("test", 3))):
    return list(split_rows(dataset, sizes, seed=2))


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def run_validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datasets.validate", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def problems_of(root: str, dataset: str = "tiny") -> list[str]:
    [check] = validate(root, [dataset], out=io.StringIO())
    return check.problems


def test_good_shards_on_s3_pass(s3_bucket, tmp_path):
    # Ingested by the real command line straight into the bucket, then validated from there.
    folder = make_layout(tmp_path / "data", "polyps", {"train": [polyp_entry(f"a{i}") for i in range(4)],
                                                       "test": [polyp_entry("b0")]})
    root = f"{s3_bucket}/shards"
    ingest = subprocess.run([sys.executable, "-m", "datasets.ingest", "medvlsm", str(folder), "--to", root],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ingest.returncode == 0, ingest.stderr
    ShardStore(root).write_dataset("tiny", rows(), NON_RADIOLOGY_PROMPT_TYPES)
    result = run_validate(root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["OK polyps: 5 rows (train 4, test 1)",
                                          "OK tiny: 12 rows (train 6, val 3, test 3)",
                                          "no image or mask shared across datasets (2 compared)"]
    store = ShardStore(root)  # the finding is recorded beside the datasets, on S3 too
    with store.fs.open_input_stream(f"{store.path}/overlap.json") as f:
        assert json.loads(f.read()) == {"compared": ["polyps", "tiny"], "overlaps": []}


def test_one_dataset_of_a_folder(tmp_path):
    store = ShardStore(str(tmp_path))
    store.write_dataset("tiny", rows(), NON_RADIOLOGY_PROMPT_TYPES)
    bad = rows("other", (("train", 2),))
    bad[0]["mask"] = b"not an image"
    store.write_dataset("other", bad, NON_RADIOLOGY_PROMPT_TYPES)
    assert run_validate(str(tmp_path), "--datasets", "tiny").returncode == 0
    everything = run_validate(str(tmp_path))
    assert everything.returncode == 1
    assert "FAILED other: 1 problem(s)" in everything.stdout and "OK tiny" in everything.stdout


def test_row_problems_name_file_row_and_field(tmp_path):
    bad = rows(sizes=(("train", 6),))
    h, w = bad[1]["height"], bad[1]["width"]
    grey = np.zeros((h, w), np.uint8)
    grey[2:6, 2:6] = 128
    bad[1]["mask"] = png(grey)  # not binary
    h2, w2 = bad[2]["height"], bad[2]["width"]
    bad[2]["mask"] = png(np.zeros((h2 + 1, w2), np.uint8))  # not the image's size
    bad[3]["image"] = b"\xff\xd8 truncated jpeg"
    bad[4]["p3"] = []  # no prompt
    bad[5]["p6"] = [""]  # an empty prompt where only p0 may be empty
    bad[5]["height"] += 5
    ShardStore(str(tmp_path)).write_dataset("tiny", bad, NON_RADIOLOGY_PROMPT_TYPES)
    found = problems_of(str(tmp_path))
    where = "tiny/train-00000.parquet row {} (sample_id 'tiny-train-0000{}'), field "
    expected = [
        (1, "'mask': expected binary values 0/255, found 0, 128"),
        (2, f"'mask': {h2 + 1}x{w2} (HxW), row says {h2}x{w2}"),
        (3, "'image': does not decode"),
        (4, "'p3': []; expected a non-empty list of strings"),
        (5, "'p6': holds an empty string"),
        (5, "'height'/'width': row says"),
    ]
    for row, message in expected:
        assert any(p.startswith(where.format(row, row) + message) for p in found), (row, message, found)
    assert not any("row 0 " in p for p in found)
    result = run_validate(str(tmp_path))
    assert result.returncode == 1 and "FAILED tiny" in result.stdout and "field 'p3'" in result.stdout


def test_manifest_and_file_problems(tmp_path):
    store = ShardStore(str(tmp_path))
    store.write_dataset("tiny", rows(), NON_RADIOLOGY_PROMPT_TYPES)
    manifest_path = tmp_path / "tiny" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"]["train"]["rows"] = 7  # the split count disagrees with its files
    manifest["splits"]["val"]["files"][0]["rows"] = 4  # a file's count disagrees with the file
    manifest_path.write_text(json.dumps(manifest))
    (tmp_path / "tiny" / "test-00000.parquet").unlink()
    found = problems_of(str(tmp_path))
    assert "tiny/manifest.json, split 'train': says 7 rows, its files say 6" in found
    assert "tiny/val-00000.parquet: holds 3 rows, the manifest says 4" in found
    assert "tiny/test-00000.parquet: listed in the manifest but missing" in found


def test_corrupt_file_bytes(tmp_path):
    store = ShardStore(str(tmp_path))
    store.write_dataset("tiny", rows(), NON_RADIOLOGY_PROMPT_TYPES)
    shard = tmp_path / "tiny" / "val-00000.parquet"
    shard.write_bytes(b"not parquet")
    found = problems_of(str(tmp_path))
    assert "tiny/val-00000.parquet: sha256 does not match the manifest" in found
    assert any(p.startswith("tiny/val-00000.parquet: not a readable Parquet file") for p in found)
    manifest = json.loads((tmp_path / "tiny/manifest.json").read_text())
    assert manifest["splits"]["val"]["files"][0]["sha256"] != hashlib.sha256(b"not parquet").hexdigest()


@pytest.mark.parametrize("args, message", [
    (("{root}",), "no datasets (no */manifest.json) under"),
    (("{root}", "--datasets", "nope"), "unknown dataset 'nope'"),
])
def test_nothing_to_validate_fails(tmp_path, args, message):
    result = run_validate(*(a.format(root=tmp_path) for a in args))
    assert result.returncode == 1 and message in result.stdout
