"""``python -m datasets.ingest folder``: a user's plain folder (images/, masks/, optional splits.csv and
metadata.csv) of real PNG and JPEG files becomes shards with generated prompts, or a clear error and
nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli import REPO
from PIL import Image

from datasets.ingest.__main__ import main as ingest_main
from datasets.shards import ShardStore
from datasets.validate import main as validate_main

GENERATED = tuple(f"p{i}" for i in range(7))  # p7-p9 need a class description
CLASS = "lesion"  # not one of the study's classes: it has no descriptions of its own


def blob(height: int, width: int, index: int) -> np.ndarray:
    rows, cols = np.mgrid[:height, :width]
    cy, cx = height * (0.3 + 0.08 * (index % 4)), width * (0.3 + 0.1 * (index % 3))
    return ((rows - cy) / (height * 0.2)) ** 2 + ((cols - cx) / (width * 0.25)) ** 2 <= 1


def make_folder(root: Path, n: int = 6, splits: bool = False, metadata: str | None = None) -> Path:
    """n image/mask pairs: PNG and JPEG images, 0/255 masks and one 0/1 mask."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        height, width = 40 + 4 * i, 48
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        suffix = ".jpg" if i % 2 else ".png"
        Image.fromarray(pixels).save(root / "images" / f"case{i}{suffix}")
        mask = blob(height, width, i).astype(np.uint8)
        Image.fromarray(mask if i == 0 else mask * 255).save(root / "masks" / f"case{i}.png")
    if splits:
        split_of = ["train"] * (n - 2) + ["val", "test"]
        (root / "splits.csv").write_text("id,split\n" + "".join(f"case{i},{split_of[i]}\n" for i in range(n)))
    if metadata is not None:
        (root / "metadata.csv").write_text(metadata)
    return root


def ingest(folder: Path, shards: Path, *extra: str, name: str = "mine") -> int:
    return ingest_main(["folder", name, str(folder), "--to", str(shards), "--quiet", *extra])


def rows_of(shards: Path, name: str = "mine") -> dict[str, dict]:
    store = ShardStore(str(shards))
    return {row["sample_id"]: row for split in store.manifest(name).splits for row in store.iter_rows(name, split)}


def test_a_folder_becomes_shards_with_generated_and_own_prompts(tmp_path, capsys):
    own = "".join(f"case{i},the spot number {i},site{i}\n" for i in range(6))
    folder = make_folder(tmp_path / "mine", metadata="id,prompt,site\n" + own)
    shards = tmp_path / "shards"
    # The real command line, once: `python -m datasets.ingest folder NAME PATH --to ROOT`.
    done = subprocess.run([sys.executable, "-m", "datasets.ingest", "folder", "mine", str(folder), "--to",
                           str(shards), "--class-name", CLASS], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((shards / "mine" / "manifest.json").read_text())
    assert manifest["prompt_family"] == "non_radiology"
    assert manifest["prompt_types"] == [*GENERATED, "p10"]
    # No splits.csv: seeded 80/10/10, at least one row in each split.
    assert {split: entry["rows"] for split, entry in manifest["splits"].items()} == {"train": 4, "val": 1, "test": 1}

    rows = rows_of(shards)
    assert sorted(rows) == [f"case{i}" for i in range(6)]
    for i, row in rows.items():
        assert row["p0"] == [""]
        assert row["p1"] == [CLASS]
        assert row["p6"][0].endswith(f"{CLASS}, located in {row['metadata']['attr.location']} of the image")
        assert row["p10"] == [f"the spot number {i[4:]}"]
        assert row["metadata"]["site"] == f"site{i[4:]}"
        assert row["metadata"]["attr.number"] == "one"
        mask = np.asarray(Image.open(__import__("io").BytesIO(row["mask"])))
        assert set(np.unique(mask)) == {0, 255} and mask.shape == (row["height"], row["width"])
    assert rows["case1"]["image"] == (folder / "images" / "case1.jpg").read_bytes()  # kept as encoded

    capsys.readouterr()
    assert validate_main([str(shards)]) == 0, capsys.readouterr().out


def test_splits_file_descriptions_and_class_column(tmp_path):
    metadata = "id,class_name,description\n" + "".join(
        f"case{i},{'polyp' if i < 3 else 'ulcer'},{'' if i < 3 else 'a sore on the skin'}\n" for i in range(6))
    folder = make_folder(tmp_path / "mine", splits=True, metadata=metadata)
    assert ingest(folder, tmp_path / "shards") == 0
    store = ShardStore(str(tmp_path / "shards"))
    manifest = store.manifest("mine")
    # Every row has a description (polyp: the study's five; the rest: its own): p7-p9 too; no prompt column.
    assert manifest.prompt_types == tuple(f"p{i}" for i in range(10))
    assert {split: manifest.rows(split) for split in manifest.splits} == {"train": 4, "val": 1, "test": 1}
    rows = rows_of(tmp_path / "shards")
    assert rows["case4"]["split"] == "val" and rows["case5"]["split"] == "test"
    assert rows["case0"]["class_name"] == "polyp" and len(rows["case0"]["p7"]) == 5
    assert rows["case3"]["p7"] == ["ulcer which is a sore on the skin"]


def break_mask_without_image(folder: Path) -> None:
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(folder / "masks" / "stray.png")


def break_image_without_mask(folder: Path) -> None:
    (folder / "masks" / "case2.png").unlink()


def break_sizes(folder: Path) -> None:
    Image.fromarray(np.zeros((30, 48), np.uint8)).save(folder / "masks" / "case3.png")


def break_binary(folder: Path) -> None:
    mask = np.zeros((52, 48), np.uint8)
    mask[10:20, 10:20], mask[30:40, 10:20] = 128, 255
    Image.fromarray(mask).save(folder / "masks" / "case3.png")


def break_splits_row(folder: Path) -> None:
    with open(folder / "splits.csv", "a") as f:
        f.write("ghost,train\n")


def break_split_value(folder: Path) -> None:
    text = (folder / "splits.csv").read_text().replace("case1,train", "case1,training")
    (folder / "splits.csv").write_text(text)


def break_metadata_row(folder: Path) -> None:
    (folder / "metadata.csv").write_text("id,prompt\n" + "".join(f"case{i},spot\n" for i in range(6))
                                         + "case9,spot\n")


def break_empty_prompt(folder: Path) -> None:
    (folder / "metadata.csv").write_text("id,prompt\n" + "".join(f"case{i},{'spot' if i != 4 else ''}\n"
                                                                 for i in range(6)))


BAD = {  # each: how the folder is broken, and what the message must name
    "mask without image": (break_mask_without_image, ["masks/stray.png", "no image"]),
    "image without mask": (break_image_without_mask, ["images/case2.png", "no mask", "masks/case2.png"]),
    "sizes differ": (break_sizes, ["masks/case3.png", "48x30", "images/case3.jpg", "48x52"]),
    "non-binary mask": (break_binary, ["masks/case3.png", "not a binary mask", "128"]),
    "splits.csv names a missing id": (break_splits_row, ["splits.csv line 8", "field 'id'", "'ghost'"]),
    "splits.csv bad split": (break_split_value, ["splits.csv line 3", "field 'split'", "'training'"]),
    "metadata.csv names a missing id": (break_metadata_row, ["metadata.csv line 8", "field 'id'", "'case9'"]),
    "metadata.csv empty prompt": (break_empty_prompt, ["metadata.csv line 6", "field 'prompt'", "empty"]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_a_clear_error_and_nothing_is_written(case, tmp_path, capsys):
    folder = make_folder(tmp_path / "mine", splits=True, metadata="id,prompt\n" + "".join(
        f"case{i},spot\n" for i in range(6)))
    shards = tmp_path / "shards"
    breaks, named = BAD[case]
    breaks(folder)
    capsys.readouterr()
    assert ingest(folder, shards, "--class-name", CLASS) == 1
    err = capsys.readouterr().err
    for part in named:
        assert part in err, err
    assert "nothing was written" in err
    assert not (shards / "mine").exists()


def test_a_bad_reingest_keeps_the_previous_version(tmp_path, capsys):
    folder = make_folder(tmp_path / "mine")
    shards = tmp_path / "shards"
    assert ingest(folder, shards, "--class-name", CLASS) == 0
    before = (shards / "mine" / "manifest.json").read_text()
    files = sorted(p.name for p in (shards / "mine").iterdir())
    break_binary(folder)
    assert ingest(folder, shards, "--class-name", CLASS) == 1
    assert "masks/case3.png" in capsys.readouterr().err
    assert (shards / "mine" / "manifest.json").read_text() == before
    assert sorted(p.name for p in (shards / "mine").iterdir()) == files
    assert len(rows_of(shards)) == 6


def test_no_class_name_says_how_to_give_one(tmp_path, capsys):
    folder = make_folder(tmp_path / "mine")
    assert ingest(folder, tmp_path / "shards") == 1
    err = capsys.readouterr().err
    assert "--class-name" in err and "class_name" in err


def test_the_worked_example_in_the_docs_runs(tmp_path, monkeypatch, capsys):
    """docs/data.md "Bring your own dataset": its Python exports the synthetic data, its command ingests it."""
    section = (REPO / "docs" / "data.md").read_text().split("## Bring your own dataset")[1].split("\n## ")[0]
    code = section.split("```python\n")[1].split("```")[0]
    command = next(line.split()[3:] for line in section.splitlines() if "datasets.ingest folder" in line)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/data.md", "exec"), {})
    assert ingest_main([*command, "--quiet"]) == 0
    manifest = ShardStore("data/shards").manifest("my_polyps")
    assert manifest.prompt_types == tuple(f"p{i}" for i in range(11))
    assert {split: manifest.rows(split) for split in manifest.splits} == {"train": 40, "val": 10, "test": 10}
    row = next(ShardStore("data/shards").iter_rows("my_polyps", "val"))
    assert row["p10"][0] in ("the polyp on the left", "the polyp on the right")
