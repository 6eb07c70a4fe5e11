"""The decoded cache: the arrays of a direct decode, built once per node, reused, rebuilt when a shard changes."""

import hashlib
import io
import itertools
import os

import numpy as np
import pytest
import torch
from PIL import Image

import datasets.decoded as decoded
import datasets.shards as shards
from benchmarks.together import start_together
from datasets.cache import NodeCache
from datasets.segmentation import SegmentationSplit
from datasets.shards import ShardError, ShardStore
from datasets.synthetic import synthetic_rows
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES

SIZE = 64


def enlarged(row: dict, factor: int) -> dict:
    """The row at ``factor`` times its size: JPEGs large enough to be decoded at a reduced DCT scale."""
    image = Image.open(io.BytesIO(row["image"]))
    mask = Image.open(io.BytesIO(row["mask"]))
    size = (image.width * factor, image.height * factor)
    image_buf, mask_buf = io.BytesIO(), io.BytesIO()
    image.resize(size, Image.BICUBIC).save(image_buf, "JPEG", quality=90)
    mask.resize(size, Image.NEAREST).save(mask_buf, "PNG")
    return {**row, "image": image_buf.getvalue(), "mask": mask_buf.getvalue(),
            "height": size[1], "width": size[0]}


def rows(seed: int = 2, n: int = 11):
    for i, row in enumerate(synthetic_rows("tiny", "train", n, 0.5, seed=seed)):
        yield enlarged(row, 3) if i % 3 == 0 else row
    yield from synthetic_rows("tiny", "val", 4, 0.5, seed=seed)


@pytest.fixture
def root(tmp_path, monkeypatch) -> str:
    monkeypatch.setattr(shards, "ROWS_PER_FILE", 4)  # a split over several shard files
    root = str(tmp_path / "shards")
    ShardStore(root, cache=False).write_dataset("tiny", rows(), NON_RADIOLOGY_PROMPT_TYPES)
    return root


def test_cached_split_equals_the_direct_decode(root, tmp_path):
    cached = SegmentationSplit(ShardStore(root, cache=NodeCache(str(tmp_path / "node"))), "tiny", "train", "p6",
                               SIZE, train=False)
    direct = SegmentationSplit(ShardStore(root, cache=False), "tiny", "train", "p6", SIZE, train=False)
    assert cached.decoded.built and isinstance(cached.images, np.memmap) and isinstance(cached.masks, np.memmap)
    assert len(cached) == len(direct) == 11
    for i in range(len(direct)):
        a, b = cached[i], direct[i]
        assert a["sample_id"] == b["sample_id"] and a["text"] == b["text"]
        for key in ("image", "mask", "full_mask"):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (i, key)
    # Against the stored bytes: original-size masks exactly, images close to a full-size bilinear
    # resize (large JPEGs are decoded at a reduced DCT scale first).
    table = ShardStore(root).read_split("tiny", "train")
    for i, (image, mask) in enumerate(zip(table["image"].to_pylist(), table["mask"].to_pylist())):
        assert torch.equal(cached[i]["full_mask"], torch.from_numpy(np.asarray(Image.open(io.BytesIO(mask))) == 255))
        reference = np.asarray(Image.open(io.BytesIO(image)).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))
        difference = np.abs(cached[i]["image"].numpy().transpose(1, 2, 0).astype(int) - reference)
        assert difference.mean() < 2.0, (i, difference.mean())
    assert cached[0]["full_mask"].shape == (table["height"][0].as_py(), table["width"][0].as_py())
    assert cached[0]["full_mask"].shape[0] > 3 * SIZE  # the enlarged row kept its original size


def test_second_open_reuses_the_cache_without_decoding(root, tmp_path, monkeypatch):
    store = ShardStore(root, cache=NodeCache(str(tmp_path / "node")))
    first = SegmentationSplit(store, "tiny", "train", "p1", SIZE, train=True)
    inode = os.stat(os.path.join(first.decoded.folder, "images.npy")).st_ino

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(decoded, "decode_row", no_decoding)
    second = SegmentationSplit(store, "tiny", "train", "p7", SIZE, train=True)  # another prompt type, same arrays
    assert first.decoded.built and not second.decoded.built
    assert second.decoded.folder == first.decoded.folder
    assert os.stat(os.path.join(second.decoded.folder, "images.npy")).st_ino == inode
    assert np.array_equal(first.images, second.images)
    # Another input size is another entry.
    monkeypatch.undo()
    monkeypatch.setattr(shards, "ROWS_PER_FILE", 4)
    other = SegmentationSplit(store, "tiny", "train", "p1", 32, train=True)
    assert other.decoded.built and other.images.shape[-1] == 32


def test_a_changed_shard_makes_a_new_cache(root, tmp_path):
    store = ShardStore(root, cache=NodeCache(str(tmp_path / "node")))
    before = SegmentationSplit(store, "tiny", "train", "p1", SIZE, train=False)
    store.write_dataset("tiny", rows(seed=9), NON_RADIOLOGY_PROMPT_TYPES)  # re-ingested: new bytes, new sha256s
    after = SegmentationSplit(store, "tiny", "train", "p1", SIZE, train=False)
    direct = SegmentationSplit(ShardStore(root, cache=False), "tiny", "train", "p1", SIZE, train=False)
    assert after.decoded.built and after.decoded.folder != before.decoded.folder
    assert np.array_equal(after.images, direct.images) and not np.array_equal(after.images, before.images)
    assert all(torch.equal(after[i]["full_mask"], direct[i]["full_mask"]) for i in range(len(direct)))


def open_in_process(root: str, cache_dir: str, barrier, results) -> None:
    store = ShardStore(root, cache=NodeCache(cache_dir))
    barrier.wait()
    split = SegmentationSplit(store, "tiny", "train", "p1", SIZE, train=True)
    results.put((split.decoded.built, hashlib.sha256(np.ascontiguousarray(split.images)).hexdigest()))


def test_processes_on_one_node_build_it_once(root, tmp_path):
    cache_dir = str(tmp_path / "node")
    outcomes = start_together(open_in_process, [(root, cache_dir)] * 3, timeout_s=180)
    assert sorted(built for built, _ in outcomes) == [False, False, True]
    assert len({digest for _, digest in outcomes}) == 1
    direct = SegmentationSplit(ShardStore(root, cache=False), "tiny", "train", "p1", SIZE, train=True)
    assert outcomes[0][1] == hashlib.sha256(direct.images).hexdigest()
    assert not [p for p in (tmp_path / "node").rglob("*") if ".tmp-" in p.name]


def test_a_bad_row_leaves_no_cache_behind(tmp_path):
    bad = list(itertools.islice(rows(), 5))
    grey = np.zeros((bad[3]["height"], bad[3]["width"]), np.uint8)
    grey[2:9, 2:9] = 77
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG")
    bad[3]["mask"] = buf.getvalue()
    store = ShardStore(str(tmp_path / "shards"), cache=NodeCache(str(tmp_path / "node")))
    store.write_dataset("tiny", bad, NON_RADIOLOGY_PROMPT_TYPES)
    with pytest.raises(ShardError, match=r"row 3 \(sample_id 'tiny-train-00003'\), field 'mask': "
                                         r"expected binary values 0/255, found 0, 77"):
        SegmentationSplit(store, "tiny", "train", "p1", SIZE, train=True)
    left = [p.name for p in (tmp_path / "node" / "decoded").rglob("*") if p.is_file() or ".tmp-" in p.name]
    assert left and all(name.endswith(".lock") for name in left), left


def test_training_on_the_cached_split_matches_the_direct_path(root, tmp_path):
    # Imported here: the spawned processes above import this module and need none of it.
    from trainables.models import build_model, build_tokenizer, model_inputs
    from trainables.trainer import TrainConfig, Trainer

    torch.set_num_threads(2)
    inputs = model_inputs("clipseg", "small")
    results = []
    for store in (ShardStore(root, cache=NodeCache(str(tmp_path / "node"))), ShardStore(root, cache=False)):
        train = SegmentationSplit(store, "tiny", "train", "p6", inputs.input_size, train=True, seed=1)
        val = SegmentationSplit(store, "tiny", "val", "p6", inputs.input_size, train=False)
        torch.manual_seed(0)
        model = build_model("clipseg", "frozen", "small")
        config = TrainConfig(batch_size=4, max_epochs=1)
        trainer = Trainer(model, build_tokenizer("clipseg"), inputs, config, train, val, device=torch.device("cpu"))
        trainer.fit()
        results.append((trainer.best_dice, trainer.evaluate(val)[1]))
    (cached_best, cached_dice), (direct_best, direct_dice) = results
    assert 0.0 <= cached_best <= 1.0 and len(cached_dice) == 4
    assert cached_best == direct_best and cached_dice == direct_dice

