"""Decompression bombs and oversized files (issue 16, case 7): every place that opens an image refuses
one over the limits with an error naming the file (or row), the limit and how to raise it, and never
lets Pillow's DecompressionBombError (or its warning) escape."""

from __future__ import annotations

import gzip
import struct
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from datasets.decoded import decode_split
from datasets.ingest.__main__ import main as ingest_main
from datasets.ingest.raw.chexlocalize import _polygon_loader, _rle_loader
from datasets.ingest.raw.volumes import read_metaimage, read_nifti
from datasets.ingest.records import RowError
from datasets.prompts import main as prompts_main
from datasets.shards import ShardError, ShardStore
from datasets.synthetic import NON_RADIOLOGY_PROMPT_TYPES, split_rows
from datasets.validate import validate
from prompts.images import MAX_BYTES_ENV, MAX_PIXELS_ENV, open_image
from trainables.evaluate import Evaluator


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height 8-bit grey pixels: what a bomb's header says (its pixels are
    never read, since the size alone is refused)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def kvasir(folder: Path, bomb_mask: bytes) -> Path:
    """A Kvasir-SEG download of five pairs, one of whose masks is ``bomb_mask``."""
    rng = np.random.default_rng(0)
    for i in range(5):
        save(folder / "images" / f"{i}.png", rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
        mask = np.zeros((24, 32), np.uint8)
        mask[4:12, 5 + i:15 + i] = 255
        save(folder / "masks" / f"{i}.png", mask)
    (folder / "masks" / "3.png").write_bytes(bomb_mask)
    return folder


@pytest.mark.parametrize("megapixels", [169, 196])  # under and over twice Pillow's own limit
def test_bomb_mask_in_a_raw_download_is_quarantined_naming_the_limit(tmp_path, capsys, megapixels):
    side = int((megapixels * 1e6) ** 0.5)
    folder = kvasir(tmp_path / "Kvasir-SEG", png_header(side, side))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape either
        rc = ingest_main(["raw", "kvasir_polyp", str(folder), "--to", str(tmp_path / "shards"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "wrote 4 rows" in out and "quarantined 1" in out
    assert f"3.png: {side}x{side} pixels" in out and f"over the limit of 64 megapixels ({MAX_PIXELS_ENV})" in out, out


def test_our_pixel_limit_alone_decides_even_above_twice_pillows(monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "250000000")  # a legitimate 196 MP image: Pillow's limit no longer refuses it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_image(png_header(14000, 14000), "big.png") as image:
            assert image.size == (14000, 14000)


def test_bombs_in_shards_are_refused_by_the_decoded_cache_prompts_and_validate(tmp_path, capsys):
    store = ShardStore(str(tmp_path), cache=False)
    rows = list(split_rows("bomb", (("train", 3), ("test", 1))))
    for i in (1, 3):
        rows[i] = {**rows[i], "image": png_header(14000, 14000), "height": 14000, "width": 14000}
    store.write_dataset("bomb", rows, NON_RADIOLOGY_PROMPT_TYPES, "non_radiology")
    where = r"dataset 'bomb' split 'train' row 1 \(sample_id 'bomb-train-00001'\), field 'image'"
    with pytest.raises(ShardError, match=rf"{where}: .*over the limit of 64 megapixels \({MAX_PIXELS_ENV}\)"):
        decode_split(store, "bomb", "train", 32, workers=1)
    assert prompts_main(["generate", str(tmp_path), "--name", "bomb", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "row 1 (sample_id 'bomb-train-00001')" in err and "over the limit of 64 megapixels" in err, err
    problems = [p for c in validate(str(tmp_path)) for p in c.problems]
    assert any("row 1" in p and "field 'image'" in p and "over the limit" in p for p in problems), problems
    # The evaluation's originals (only its store is used: no model needs building for them).
    with pytest.raises(ShardError, match=r"bomb/test row bomb-test-00000, field 'image': 14000x14000 pixels"):
        Evaluator.originals(SimpleNamespace(store=store), "bomb", ["bomb-test-00000"])


def nifti_header(width: int, height: int) -> bytes:
    """A NIfTI-1 header of a width x height uint8 frame, data at offset 352."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 2, width, height, 1, 1, 1, 1, 1)
    struct.pack_into("<2h", header, 70, 2, 8)
    struct.pack_into("<3f", header, 108, 352.0, 1.0, 0.0)
    header[344:348] = b"n+1\0"
    return bytes(header)


def test_volume_readers_refuse_bombs_before_allocating_them(tmp_path, monkeypatch):
    zeros = b"\0" * 20_000_000  # inflates 2000 times past what a 100x100 frame declares
    mhd = "NDims = 2\nDimSize = {}\nElementType = MET_UCHAR\nCompressedData = True\nElementDataFile = LOCAL\n"
    bomb = tmp_path / "bomb.mhd"
    bomb.write_bytes(mhd.format("100 100").encode() + zlib.compress(zeros))
    with pytest.raises(RowError, match=r"bomb.mhd: compressed data inflate to more than the 10000 bytes"):
        read_metaimage(bomb)
    bomb.write_bytes(mhd.format("10000 10000").encode() + zlib.compress(b"\0" * 100))
    with pytest.raises(RowError, match=r"bomb.mhd: 10000x10000 pixels, .*over the limit of 64 megapixels"):
        read_metaimage(bomb)
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(gzip.compress(nifti_header(100, 100) + zeros))
    with pytest.raises(RowError, match=r"bomb.nii.gz: compressed data inflate to more than the 10352 bytes"):
        read_nifti(bomb)
    bomb.write_bytes(gzip.compress(nifti_header(10000, 10000)))
    with pytest.raises(RowError, match=r"bomb.nii.gz: 10000x10000 pixels, .*over the limit"):
        read_nifti(bomb)
    big = tmp_path / "big.nii"
    big.write_bytes(nifti_header(100, 100) + bytes(10000))
    monkeypatch.setenv(MAX_BYTES_ENV, "4000")
    with pytest.raises(RowError, match=rf"big.nii: 10352 bytes, over the limit of 4000 bytes \({MAX_BYTES_ENV}\)"):
        read_nifti(big)


def test_chexlocalize_masks_over_the_pixel_limit_are_refused_before_allocating(monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")  # the sizes come from annotation JSON, not an image header
    where = r"gt.json entry p1_s1_view1_frontal/Edema: .*100x100.*over the limit of 0.001 megapixels"
    with pytest.raises(RowError, match=where):
        _rle_loader(Path("gt.json"), "p1_s1_view1_frontal", "Edema", {"size": [100, 100], "counts": [9000, 1000]})()
    with pytest.raises(RowError, match=where):
        _polygon_loader(Path("gt.json"), "p1_s1_view1_frontal", "Edema", [[[0, 0], [5, 0], [5, 5]]], [100, 100])()


def test_an_image_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch):
    folder = kvasir(tmp_path / "Kvasir-SEG", b"")
    save(folder / "masks" / "3.png", np.zeros((24, 32), np.uint8))
    big = folder / "images" / "2.png"
    big.write_bytes(big.read_bytes() + b"\0" * 5000)  # trailing bytes: still a valid PNG, but a large file
    monkeypatch.setenv(MAX_BYTES_ENV, "4000")
    assert ingest_main(["raw", "kvasir_polyp", str(folder), "--to", str(tmp_path / "shards"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "quarantined 1" in out and "2.png" in out and f"over the limit of 4000 bytes ({MAX_BYTES_ENV})" in out, out
