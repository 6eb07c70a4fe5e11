"""Data as the study had it: exact duplicate entries of a released split are all kept, under ids of
their own, and listed in the manifest (or dropped on request); content two datasets share is found
by ingest and by validate, from hashes ingest records or, for older datasets, from the rows."""

import io
import json

from datasets.overlap import Overlap, content_indexes, shared_content
from datasets.shards import ShardStore
from datasets.validate import validate
from tests.layouts import image_for, make_layout, polyp_entry, run_ingest, save
from tests.test_validate import run_validate


def ids(store: ShardStore, dataset: str, split: str) -> list[str]:
    return [row["sample_id"] for row in store.iter_rows(dataset, split, ["sample_id"])]


def report_of(root, dataset: str) -> dict:
    return json.loads((root / dataset / "quarantine.json").read_text())


def test_exact_duplicates_are_all_kept_under_their_own_ids(tmp_path):
    train = [polyp_entry(f"a{i}") for i in range(3)]
    train += [dict(train[1]), dict(train[1], prompts={"p0": "", "p1": "polyp", "p2": "other", "p7": ["x"]})]
    val = [polyp_entry("v0"), polyp_entry("v0")]
    folder = make_layout(tmp_path / "data", "dup", {"train": train, "val": val})
    expected = {"train": {"a1#2": "a1", "a1#3": "a1"}, "val": {"v0#2": "v0"}}

    for flags in ((), ("--strict",)):  # kept as released, so --strict has nothing to object to
        root = tmp_path / ("shards" + "".join(flags))
        result = run_ingest("medvlsm", str(folder), "--to", str(root), *flags)
        assert result.returncode == 0, result.stderr
        assert "wrote 7 rows (train 5, val 2); quarantined 0; notes 0; duplicates kept 3" in result.stdout
        assert ("warning: dup: 2 exact duplicate row(s) in split 'train' (same image and mask as an earlier "
                "row) kept as released, each under its own id, e.g. 'a1#2' repeats 'a1'") in result.stderr
        assert "1 exact duplicate row(s) in split 'val'" in result.stderr
        store = ShardStore(str(root))
        assert ids(store, "dup", "train") == ["a0", "a1", "a2", "a1#2", "a1#3"]
        assert ids(store, "dup", "val") == ["v0", "v0#2"]
        assert store.manifest("dup").duplicates == expected
        assert report_of(root, "dup")["duplicates"] == expected
    rows = {row["sample_id"]: row for row in store.iter_rows("dup", "train")}
    assert rows["a1#2"]["image"] == rows["a1"]["image"] and rows["a1#3"]["mask"] == rows["a1"]["mask"]
    assert rows["a1#3"]["p2"] == ["other"]  # each row keeps its own entry's prompts
    [check] = validate(str(root), out=io.StringIO())
    assert check.ok, check.problems

    for flags in (("--drop-duplicates",), ("--drop-duplicates", "--strict")):
        root = tmp_path / "dropped"
        result = run_ingest("medvlsm", str(folder), "--to", str(root), *flags)
        assert result.returncode == 0, result.stderr  # dropping on request is no reason to stop
        assert "wrote 4 rows (train 3, val 1); quarantined 3" in result.stdout
        assert "warning" not in result.stderr
        store = ShardStore(str(root))
        assert ids(store, "dup", "train") == ["a0", "a1", "a2"] and ids(store, "dup", "val") == ["v0"]
        assert store.manifest("dup").duplicates == {}
        dropped = report_of(root, "dup")["quarantined"]
        assert [p["source"].split(" (")[0] for p in dropped] == [
            "anns/train.json entry 3", "anns/train.json entry 4", "anns/val.json entry 1"]
        assert all("same image and mask in split" in p["reason"] and "--drop-duplicates" in p["reason"]
                   for p in dropped)
        assert "duplicate of anns/train.json entry 1 ('a1.png') (a1)" in dropped[0]["reason"]


def test_old_manifests_without_the_new_fields_still_load(tmp_path):
    folder = make_layout(tmp_path / "data", "dup", {"train": [polyp_entry("a0"), polyp_entry("a0")]})
    assert run_ingest("medvlsm", str(folder), "--to", str(tmp_path / "shards")).returncode == 0
    path = tmp_path / "shards/dup/manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["duplicates"] == {"train": {"a0#2": "a0"}} and manifest["content"]["rows"] == 2
    path.write_text(json.dumps({k: v for k, v in manifest.items() if k not in ("duplicates", "content")}))
    store = ShardStore(str(tmp_path / "shards"))
    loaded = store.manifest("dup")
    assert loaded.duplicates is None and loaded.content is None and loaded.rows("train") == 2
    assert shared_content(store) == [] and content_indexes(store) == ({}, ["dup"])
    assert "duplicates" not in loaded.to_json()


def test_content_shared_across_datasets_is_found_by_ingest_and_validate(tmp_path):
    # ColonDB and a CVC-300 whose annotations copy three of ColonDB's (the same image and mask files),
    # plus one whose mask is ColonDB's but whose image was re-encoded; Kvasir shares nothing.
    colondb = make_layout(tmp_path / "data", "colondb_polyp", {"test": [polyp_entry(f"c{i}") for i in range(1, 6)]})
    cvc300 = make_layout(tmp_path / "data", "cvc300_polyp",
                         {"test": [polyp_entry(n) for n in ("d0", "c2", "c3", "c4", "c5", "d1")]})
    save(image_for("re-encoded"), cvc300 / "images/c5.png")
    kvasir = make_layout(tmp_path / "data", "kvasir_polyp", {"train": [polyp_entry("k0")], "test": [polyp_entry("k1")]})
    root = tmp_path / "shards"
    first = run_ingest("medvlsm", str(colondb), "--to", str(root), "--test-only")
    assert first.returncode == 0 and "warning" not in first.stderr, first.stderr

    second = run_ingest("medvlsm", str(cvc300), "--to", str(root), "--test-only")
    assert second.returncode == 0, second.stderr  # a finding, not a failure
    assert ("warning: colondb_polyp and cvc300_polyp share 3 image(s) and 4 mask(s) by content, "
            "e.g. c2 = c2, c3 = c3, c4 = c4") in second.stderr
    store = ShardStore(str(root))
    overlap = Overlap("colondb_polyp", "cvc300_polyp", 3, 4, (("c2", "c2"), ("c3", "c3"), ("c4", "c4")))
    assert shared_content(store) == [overlap]
    assert run_ingest("medvlsm", str(kvasir), "--to", str(root)).stderr == ""  # shares nothing

    result = run_validate(str(root))
    assert result.returncode == 0, result.stdout
    assert f"OVERLAP {overlap.describe()}" in result.stdout.splitlines()
    assert json.loads((root / "overlap.json").read_text()) == {
        "compared": ["colondb_polyp", "cvc300_polyp", "kvasir_polyp"], "overlaps": [overlap.to_dict()]}
    strict = run_validate(str(root), "--strict-overlap")
    assert strict.returncode == 1 and "OVERLAP colondb_polyp and cvc300_polyp" in strict.stdout

    # A dataset ingested before hashes were recorded: validate hashes its rows, ingest says it could not.
    manifest = json.loads((root / "cvc300_polyp/manifest.json").read_text())
    del manifest["content"]
    (root / "cvc300_polyp/manifest.json").write_text(json.dumps(manifest))
    assert content_indexes(store)[1] == ["cvc300_polyp"]
    # What validate recorded over the whole root still names the pair (the report reads it too).
    assert shared_content(store) == [overlap]
    (root / "overlap.json").unlink()
    assert shared_content(store) == []
    checks = validate(str(root), ["colondb_polyp", "cvc300_polyp"], out=io.StringIO())
    assert [c.overlaps for c in checks] == [[overlap], [overlap]] and all(c.ok for c in checks)
    again = run_ingest("medvlsm", str(colondb), "--to", str(root), "--test-only")
    assert again.returncode == 0 and "not compared with colondb_polyp" in again.stderr
    assert "no content hashes recorded (ingested before they were): cvc300_polyp" in again.stderr
