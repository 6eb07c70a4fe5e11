"""The released-layout importer on the study's own annotation files (Kvasir-SEG; CAMUS val/test) with
generated images and masks of matching names: every prompt of every type kept exactly, masks and
rows right, duplicates kept under their own ids and reported, and the record variants of other
datasets read."""

import io
import json

import numpy as np
from PIL import Image

from datasets.ingest.medvlsm import medvlsm_records
from datasets.ingest.rows import REPORT_NAME, ingest
from datasets.shards import ShardStore
from tests.layouts import make_layout, mask_for, polyp_entry, released, run_ingest


def as_lists(prompts: dict) -> dict[str, list[str]]:
    return {k: v if isinstance(v, list) else [v] for k, v in prompts.items()}


def decoded_mask(row: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(row["mask"]))) == 255


def rows_by_id(store: ShardStore, dataset: str, split: str) -> dict[str, dict]:
    return {r["sample_id"]: r for r in store.iter_rows(dataset, split)}


def test_kvasir_round_trip_keeps_every_prompt_exactly(tmp_path):
    anns = {split: released("kvasir_polyp", split) for split in ("train", "val", "test")}
    folder = make_layout(tmp_path / "data", "kvasir_polyp", anns)
    result = run_ingest("medvlsm", str(folder), "--to", str(tmp_path / "shards"))
    assert result.returncode == 0, result.stderr
    assert "wrote 1000 rows (train 800, val 100, test 100); quarantined 0" in result.stdout

    store = ShardStore(str(tmp_path / "shards"))
    manifest = store.manifest("kvasir_polyp")
    assert manifest.prompt_types == tuple(f"p{i}" for i in range(10))
    assert manifest.prompt_family == "non_radiology"
    for split, entries in anns.items():
        rows = rows_by_id(store, "kvasir_polyp", split)
        assert len(rows) == len(entries)
        for entry in entries:
            row = rows[entry["mask_name"].rsplit(".", 1)[0]]
            assert {p: row[p] for p in manifest.prompt_types} == as_lists(entry["prompts"])
            assert row["class_name"] == "polyp"
            assert row["metadata"]["bbox"] == ",".join(map(str, entry["bbox"]))
            assert (row["height"], row["width"]) == (32, 40)
            # The released masks are JPEGs (lossy): thresholded at 127 they come back nearly exact.
            assert (decoded_mask(row) != mask_for(entry["mask_name"])).mean() < 0.02
    report = json.loads((tmp_path / "shards" / "kvasir_polyp" / REPORT_NAME).read_text())
    assert report["rows"] == {"train": 800, "val": 100, "test": 100}
    assert report["quarantined"] == [] and report["notes"] == []


def test_camus_masks_in_subfolders_and_same_names_in_val_and_test(tmp_path):
    # CAMUS keeps training and test patients in images/{train,test} with the same file names;
    # val patients come from the training folder. Same names, different files: not duplicates.
    anns = {"val": released("camus", "val"), "test": released("camus", "test")}
    folder = make_layout(tmp_path / "data", "camus", anns, split_folders={"val": "train", "test": "test"},
                         seed_by_folder=True)
    store = ShardStore(str(tmp_path / "shards"))
    manifest, report = ingest(lambda: medvlsm_records(folder, "camus", "camus"), store, "camus", "camus",
                              str(folder), progress=False)
    assert report.rows == {"val": 600, "test": 600}
    assert report.quarantined == [] and report.notes == []
    assert manifest.prompt_types == tuple(f"p{i}" for i in range(8))
    structures = {"mask_1": "Left ventricular cavity", "mask_2": "Myocardium", "mask_3": "Left atrium cavity"}
    for split, sub in (("val", "train"), ("test", "test")):
        rows = rows_by_id(store, "camus", split)
        for entry in anns[split]:
            row = rows[f"{sub}/{entry['mask_name'].removesuffix('.png')}"]
            assert {p: row[p] for p in manifest.prompt_types} == as_lists(entry["prompts"])
            assert all(len(row[p]) == 2 for p in manifest.prompt_types[1:])
            # Each split's row holds its own folder's mask, exactly (PNG masks are lossless).
            assert np.array_equal(decoded_mask(row), mask_for(f"{sub}/{entry['mask_name']}"))
            assert row["class_name"] == structures[entry["mask_name"].split("/")[0]]


def test_duplicates_within_and_across_splits_are_reported(tmp_path):
    train = [polyp_entry(f"t{i}") for i in range(4)]
    val = [polyp_entry(f"v{i}") for i in range(3)]
    val.append(dict(val[1]))  # the same image and mask twice in val
    test = [polyp_entry("x0"), dict(train[2]), dict(train[2])]  # a training image in the test split (a leak), twice
    folder = make_layout(tmp_path / "data", "dup", {"train": train, "val": val, "test": test})
    result = run_ingest("medvlsm", str(folder), "--to", str(tmp_path / "shards"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "shards" / "dup" / REPORT_NAME).read_text())
    assert report["rows"] == {"train": 4, "val": 4, "test": 3}  # every released row is kept
    assert report["quarantined"] == []
    assert report["duplicates"] == {"val": {"v1#2": "v1"}, "test": {"t2@test#2": "t2@test"}}
    leaks = report["notes"]  # both test rows of the training image
    assert [(n["split"], n["sample_id"]) for n in leaks] == [("test", "t2@test"), ("test", "t2@test#2")]
    assert all("images/t2.png is also in split 'train'" in n["reason"] for n in leaks)
    assert "quarantined 0; notes 2; duplicates kept 2" in result.stdout
    assert "warning: dup: 1 exact duplicate row(s) in split 'val'" in result.stderr

    store = ShardStore(str(tmp_path / "shards"))
    assert set(rows_by_id(store, "dup", "test")) == {"x0", "t2@test", "t2@test#2"}
    assert store.manifest("dup").duplicates == report["duplicates"]
    strict = run_ingest("medvlsm", str(folder), "--to", str(tmp_path / "strict"), "--strict")
    assert strict.returncode == 1  # on the leak; the duplicates alone would pass (tests/test_duplicates.py)
    assert "images/t2.png is also in split 'train'" in strict.stderr


def test_test_only_dataset(tmp_path):
    entries = released("kvasir_polyp", "test")[:6]
    only_test = make_layout(tmp_path / "data", "etis_polyp", {"test": entries})
    store = ShardStore(str(tmp_path / "shards"))
    manifest, report = ingest(lambda: medvlsm_records(only_test, "etis_polyp", "non_radiology"), store,
                              "etis_polyp", "non_radiology", str(only_test), progress=False)
    assert list(manifest.splits) == ["test"] and report.rows == {"test": 6}

    # Released CVC-300 has train.json and test.json, both scored as test: --test-only pools them,
    # and an entry in both files is then a duplicate within "test", kept as released.
    two_files = make_layout(tmp_path / "data", "cvc300_polyp", {"train": entries[:3], "test": entries[2:]})
    result = run_ingest("medvlsm", str(two_files), "--to", str(tmp_path / "shards"), "--test-only")
    assert result.returncode == 0, result.stderr
    manifest = store.manifest("cvc300_polyp")
    assert list(manifest.splits) == ["test"]
    twice = entries[2]["mask_name"].rsplit(".", 1)[0]
    assert manifest.duplicates == {"test": {f"{twice}#2": twice}}
    assert set(rows_by_id(store, "cvc300_polyp", "test")) == {e["mask_name"].rsplit(".", 1)[0] for e in entries} | {
        f"{twice}#2"}
    # Its files are the ETIS ones just ingested (the same entries): ingest says so.
    assert "warning: cvc300_polyp and etis_polyp share 6 image(s) and " in result.stderr


def test_other_record_variants(tmp_path):
    # DFU has no bbox, CAMUS only the three required keys, some files carry keys nobody uses,
    # segment_id is a string or an int, and a prompt is a string or a list of strings.
    entries = [
        polyp_entry("a"),
        {k: v for k, v in polyp_entry("b").items() if k != "bbox"},
        {"img_name": "c.png", "mask_name": "c.png", "prompts": polyp_entry("c")["prompts"]},
        polyp_entry("d", segment_id=17, sentences_num=1, extra={"nested": [1, 2]}, note="unused"),
    ]
    folder = make_layout(tmp_path / "data", "dfu", {"train": entries})
    store = ShardStore(str(tmp_path / "shards"))
    manifest, report = ingest(lambda: medvlsm_records(folder, "dfu", "non_radiology"), store, "dfu",
                              "non_radiology", str(folder), progress=False)
    assert report.rows == {"train": 4} and report.quarantined == []
    rows = rows_by_id(store, "dfu", "train")
    assert "bbox" not in rows["b"]["metadata"] and rows["a"]["metadata"]["bbox"] == "1,2,3,4"
    assert rows["c"]["metadata"] == {"img_name": "c.png", "mask_name": "c.png", "anns": "train.json"}
    assert rows["d"]["metadata"]["segment_id"] == "17"
    for name, row in rows.items():
        assert row["p0"] == [""] and row["p1"] == ["polyp"]
        assert row["p2"] == [f"round polyp {name}"] and row["p7"] == [f"polyp {name} a", f"polyp {name} b"]
    assert manifest.prompt_types == ("p0", "p1", "p2", "p7")
