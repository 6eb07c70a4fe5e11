"""Shard format v1 on a local folder and on a real S3 server: round trip, and clear errors for bad input."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import datasets.shards as shards
from datasets.segmentation import SegmentationSplit
from datasets.shards import ROWS_PER_GROUP, ShardError, ShardStore
from datasets.synthetic import split_rows, write_synthetic
from prompts.perturb import Perturbation, PerturbationError, opposite
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES


def rows(dataset="tiny", sizes=(("train", 12), ("val", 4), ("test", 4))):
    return split_rows(dataset, sizes, seed=1)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return ShardStore(str(tmp_path / "shards"))
    return ShardStore(request.getfixturevalue("s3_bucket") + "/shards")


def test_round_trip_keeps_every_field(store):
    written = list(rows())
    manifest = store.write_dataset("tiny", written, NON_RADIOLOGY_PROMPT_TYPES)
    assert store.datasets() == ["tiny"]
    assert store.manifest("tiny") == manifest
    assert {s: manifest.rows(s) for s in manifest.splits} == {"train": 12, "val": 4, "test": 4}
    read = [r for split in ("train", "val", "test") for r in store.iter_rows("tiny", split)]
    assert read == written


def test_row_groups_are_small_for_random_access(tmp_path):
    store = ShardStore(str(tmp_path))
    store.write_dataset("tiny", rows(sizes=(("train", 250),)), NON_RADIOLOGY_PROMPT_TYPES)
    meta = pq.ParquetFile(tmp_path / "tiny" / "train-00000.parquet").metadata
    assert meta.num_rows == 250
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [ROWS_PER_GROUP, ROWS_PER_GROUP, 50]


def test_rows_stream_to_storage_and_a_failed_write_leaves_no_file(store, monkeypatch):
    """Row groups leave memory as they fill; if the rows fail midway, no file of the write stays."""
    monkeypatch.setattr(shards, "ROWS_PER_FILE", 150)
    folder = store.path + "/tiny"

    def files_now() -> dict[str, int]:
        from pyarrow.fs import FileSelector

        return {i.base_name: i.size for i in store.fs.get_file_info(FileSelector(folder, allow_not_found=True))}

    seen_while_writing = []

    def rows_then_failure():
        for i, row in enumerate(rows(sizes=(("train", 2 * ROWS_PER_GROUP + 10),))):
            if i == 2 * ROWS_PER_GROUP + 5:
                seen_while_writing.append(files_now())
                raise RuntimeError("reader failed at row 205")
            yield row

    with pytest.raises(RuntimeError, match="row 205"):
        store.write_dataset("tiny", rows_then_failure(), NON_RADIOLOGY_PROMPT_TYPES)
    (written,) = seen_while_writing
    assert "train-00000.parquet" in written  # the first file was complete at row 150
    if not store.remote:  # on disk, the second file's first row group too, under a temporary name
        # (an S3 multipart upload becomes visible only when it completes, which tiny rows never start)
        (name,) = set(written) - {"train-00000.parquet"}
        assert name.startswith("train-00001.parquet.tmp-") and written[name] > 0
    assert files_now() == {}  # no file of the failed write: neither the temporary one nor the finished one
    with pytest.raises(ShardError, match="unknown dataset 'tiny'"):  # and no manifest
        store.manifest("tiny")


def test_no_manifest_means_no_dataset(tmp_path):
    store = ShardStore(str(tmp_path))
    store.write_dataset("tiny", rows(), NON_RADIOLOGY_PROMPT_TYPES)
    (tmp_path / "tiny" / "manifest.json").unlink()
    with pytest.raises(ShardError, match="unknown dataset 'tiny'"):
        store.manifest("tiny")
    assert list(tmp_path.glob("**/*.tmp-*")) == []


def test_unknown_dataset_names_the_known_ones(tmp_path):
    store = ShardStore(str(tmp_path))
    store.write_dataset("tiny", rows(), NON_RADIOLOGY_PROMPT_TYPES)
    with pytest.raises(ShardError, match=r"unknown dataset 'kvasir'.*datasets there: tiny.*--data"):
        store.check_split("kvasir", "train")


def test_prompt_type_the_dataset_lacks(tmp_path):
    store = ShardStore(str(tmp_path))
    store.write_dataset("tiny", rows(), ("p0", "p1", "p2"))
    with pytest.raises(ShardError, match=r"no prompt type 'p6' \(it has: p0, p1, p2\)"):
        SegmentationSplit(store, "tiny", "train", "p6", 32, train=True)


def test_missing_and_corrupt_shards(tmp_path):
    store = ShardStore(str(tmp_path))
    store.write_dataset("tiny", rows(), NON_RADIOLOGY_PROMPT_TYPES)
    shard = tmp_path / "tiny" / "val-00000.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[:100] + b"garbage" + data[107:])
    with pytest.raises(ShardError, match=r"corrupt shard .*val-00000.parquet: sha256 .* re-ingest 'tiny'"):
        store.read_split("tiny", "val")
    shard.unlink()
    assert store.missing_files("tiny", "val") == [f"{tmp_path}/tiny/val-00000.parquet"]
    with pytest.raises(ShardError, match=r"missing shard .*val-00000.parquet"):
        store.read_split("tiny", "val")


def test_unreadable_parquet_with_matching_checksum(tmp_path):
    # A file that passes the checksum (manifest rewritten to match) but is not Parquet.
    store = ShardStore(str(tmp_path))
    store.write_dataset("tiny", rows(), NON_RADIOLOGY_PROMPT_TYPES)
    (tmp_path / "tiny" / "val-00000.parquet").write_bytes(b"not parquet")
    manifest = json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    import hashlib

    manifest["splits"]["val"]["files"][0]["sha256"] = hashlib.sha256(b"not parquet").hexdigest()
    (tmp_path / "tiny" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="not a readable Parquet file"):
        store.read_split("tiny", "val")


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_non_binary_mask_names_row_and_field(tmp_path):
    bad = list(rows(sizes=(("train", 3),)))
    grey = np.zeros((bad[1]["height"], bad[1]["width"]), np.uint8)
    grey[5:20, 5:20] = 128
    bad[1]["mask"] = _png(grey)
    store = ShardStore(str(tmp_path))
    store.write_dataset("tiny", bad, NON_RADIOLOGY_PROMPT_TYPES)
    with pytest.raises(ShardError, match=r"split 'train' row 1 \(sample_id 'tiny-train-00001'\), field 'mask': "
                                         r"expected binary values 0/255, found 0, 128"):
        SegmentationSplit(store, "tiny", "train", "p1", 32, train=True)


def test_mask_of_the_wrong_size_is_refused(tmp_path):
    bad = list(rows(sizes=(("train", 2),)))
    bad[0]["mask"] = _png(np.zeros((7, 9), np.uint8))
    store = ShardStore(str(tmp_path))
    store.write_dataset("tiny", bad, NON_RADIOLOGY_PROMPT_TYPES)
    with pytest.raises(ShardError, match=r"row 0 .*mask is \(7, 9\)"):
        SegmentationSplit(store, "tiny", "train", "p1", 32, train=True)


def test_prompt_choice_is_random_in_training_and_fixed_in_evaluation(tmp_path):
    store = ShardStore(str(tmp_path))
    store.write_dataset("tiny", rows(), NON_RADIOLOGY_PROMPT_TYPES)
    train = SegmentationSplit(store, "tiny", "train", "p7", 32, train=True)
    per_epoch = []
    for epoch in range(6):
        train.set_epoch(epoch)
        per_epoch.append([train[i]["text"] for i in range(len(train))])
    assert len({tuple(texts) for texts in per_epoch}) > 1
    assert all(t in train.prompts[i][0] for texts in per_epoch for i, t in enumerate(texts))
    val = SegmentationSplit(store, "tiny", "val", "p7", 32, train=False)
    first = [val[i]["text"] for i in range(len(val))]
    val.set_epoch(3)
    assert [val[i]["text"] for i in range(len(val))] == first


def test_random_prompt_type_draws_across_p1_to_pn(tmp_path):
    store = ShardStore(str(tmp_path))
    written = list(rows())
    store.write_dataset("tiny", written, NON_RADIOLOGY_PROMPT_TYPES)
    train = SegmentationSplit(store, "tiny", "train", "random", 32, train=True)
    seen = set()
    for epoch in range(20):
        train.set_epoch(epoch)
        seen.add(train[0]["text"])
    by_type = {p: set(written[0][p]) for p in NON_RADIOLOGY_PROMPT_TYPES}
    drawn_types = {p for p, texts in by_type.items() if seen & texts}
    assert "p0" not in drawn_types and len(drawn_types) >= 4
    assert seen <= set().union(*(by_type[p] for p in NON_RADIOLOGY_PROMPT_TYPES[1:]))


def test_perturbation_rerenders_evaluation_prompts_from_stored_attributes(tmp_path):
    store = ShardStore(str(tmp_path))
    write_synthetic(store, "synth_pairs")
    plain = SegmentationSplit(store, "synth_pairs", "test", "p6", 32, train=False)
    flipped = SegmentationSplit(store, "synth_pairs", "test", "p6", 32, train=False,
                                perturbation=Perturbation("opposite", "location"))
    for i in range(len(plain)):
        before, after = plain[i]["text"], flipped[i]["text"]
        assert before.split(", located in ")[0] == after.split(", located in ")[0]
        where = before.split("located in ")[1].removesuffix(" of the image")
        assert after.endswith(f"located in {opposite('location', where)} of the image")
    with pytest.raises(PerturbationError, match="at evaluation"):
        SegmentationSplit(store, "synth_pairs", "train", "p6", 32, train=True,
                          perturbation=Perturbation("opposite", "location"))
    with pytest.raises(PerturbationError, match="no 'location' to perturb"):
        SegmentationSplit(store, "synth_pairs", "test", "p3", 32, train=False,
                          perturbation=Perturbation("opposite", "location"))
