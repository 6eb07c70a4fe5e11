"""Bad input never loses data (issue 16, cases 3, 8, 9 and 12's dataset errors).

Every write of a dataset is build-new-then-swap: new shards under new names, strings checked before
anything is removed, the manifest switched last (the commit point), old shards removed after it. A
kill at any moment leaves the old version or the new one, whole; a lone surrogate in a prompt leaves
the old dataset as it was, with an error naming the file, row and field."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from datasets import shards
from datasets.cache import NodeCache
from datasets.ingest.__main__ import main as ingest_main
from datasets.ingest.medvlsm import medvlsm_records
from datasets.ingest.rows import ingest
from datasets.prompts import main as prompts_main
from datasets.segmentation import SegmentationSplit
from datasets.shards import ShardError, ShardStore
from datasets.storage import StorageUnavailable, is_infrastructure
from datasets.synthetic import NON_RADIOLOGY_PROMPT_TYPES, split_rows
from datasets.validate import validate
from tests.cli import REPO
from tests.layouts import make_layout, polyp_entry

NAMES = [f"s{i}" for i in range(6)]


def snapshot(store: ShardStore, dataset: str) -> dict:
    """Every row of every split, read through the manifest (so sha256 and row counts are checked)."""
    manifest = store.manifest(dataset)
    return {split: store.read_split(dataset, split).to_pylist() for split in manifest.splits}


def listing(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def polyp_layout(root: Path, prompt_suffix: str = "") -> Path:
    entries = [polyp_entry(n) for n in NAMES]
    for entry in entries:
        entry["prompts"]["p2"] += prompt_suffix
    return make_layout(root, "polyps", {"train": entries[:4], "test": entries[4:]})


def set_prompt(folder: Path, split: str, index: int, field: str, text: str) -> None:
    path = folder / "anns" / f"{split}.json"
    entries = json.loads(path.read_text())
    entries[index]["prompts"][field] = text
    path.write_text(json.dumps(entries))  # ensure_ascii: a lone surrogate is written as \ud800


def test_reingest_with_a_lone_surrogate_keeps_the_old_dataset_and_names_file_row_field(tmp_path, capsys):
    shards = tmp_path / "shards"
    folder = polyp_layout(tmp_path / "v1")
    assert ingest_main(["medvlsm", str(folder), "--to", str(shards), "--quiet"]) == 0
    store = ShardStore(str(shards), cache=False)
    old = snapshot(store, "polyps")

    folder = polyp_layout(tmp_path / "v2", " (v2)")
    set_prompt(folder, "train", 2, "p2", "polyp \ud800 here")
    capsys.readouterr()
    assert ingest_main(["medvlsm", str(folder), "--to", str(shards), "--strict", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "anns/train.json entry 2" in err and "'p2'" in err and "UTF-8" in err, err
    assert snapshot(store, "polyps") == old  # the old version, whole

    # Without --strict the row is quarantined, the rest is the new version, and the old shards go.
    assert ingest_main(["medvlsm", str(folder), "--to", str(shards), "--quiet"]) == 0
    new = snapshot(store, "polyps")
    assert [r["sample_id"] for r in new["train"]] == ["s0", "s1", "s3"]
    assert all(p.endswith("(v2)") for r in new["train"] for p in r["p2"])
    report = json.loads((shards / "polyps" / "quarantine.json").read_text())
    assert "'p2'" in report["quarantined"][0]["reason"] and "entry 2" in report["quarantined"][0]["source"]
    listed = set(store.manifest("polyps").files()) | {"manifest.json", "quarantine.json"}
    assert {p.name for p in (shards / "polyps").iterdir()} == listed  # the old version's files went after the switch
    assert validate(str(shards))[0].ok


def test_python_writer_checks_every_string_before_anything_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "ROWS_PER_FILE", 2)  # train's files are finished before the bad row
    store = ShardStore(str(tmp_path), cache=False)
    store.write_dataset("tiny", split_rows("tiny", (("train", 5), ("test", 3))), NON_RADIOLOGY_PROMPT_TYPES)
    old, before = snapshot(store, "tiny"), listing(tmp_path)
    rows = list(split_rows("tiny", (("train", 5), ("test", 3)), seed=4))
    rows[6]["metadata"] = {**rows[6]["metadata"], "note": "bad \udcff byte"}
    with pytest.raises(ShardError, match=r"dataset 'tiny' split 'test' row 1 \(sample_id 'tiny-test-00001'\), "
                                         r"field 'metadata\.note': .*UTF-8"):
        store.write_dataset("tiny", rows, NON_RADIOLOGY_PROMPT_TYPES)
    assert snapshot(store, "tiny") == old
    assert listing(tmp_path) == before  # the failed write's finished files and its open ones are gone


def test_a_split_name_that_is_not_a_plain_name_writes_nothing_anywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "ROWS_PER_FILE", 2)
    root = tmp_path / "a" / "b"
    store = ShardStore(str(root), cache=False)
    store.write_dataset("tiny", split_rows("tiny", (("train", 5), ("test", 3))), NON_RADIOLOGY_PROMPT_TYPES)
    old, before = snapshot(store, "tiny"), listing(tmp_path)
    rows = list(split_rows("tiny", (("train", 5), ("test", 3)), seed=4))
    for row in rows[5:]:
        row["split"] = "../../escaped"
    with pytest.raises(ShardError, match=r"row 'tiny-test-00000': split name '\.\./\.\./escaped' is not usable: "
                                         r"it names the split's shard files.*nothing of 'tiny' was replaced"):
        store.write_dataset("tiny", rows, NON_RADIOLOGY_PROMPT_TYPES)
    assert snapshot(store, "tiny") == old and listing(tmp_path) == before
    # A manifest written elsewhere: a split or a file that would reach outside the folder, or name the
    # manifest itself (a rewrite removes the old version's files), is refused when read.
    path = root / "tiny" / "manifest.json"
    good = path.read_text()
    raw = json.loads(good)
    raw["splits"]["../x"] = raw["splits"].pop("test")
    path.write_text(json.dumps(raw))
    with pytest.raises(ShardError, match=r"manifest.json: split name '\.\./x' is not usable.*Re-ingest 'tiny'"):
        store.manifest("tiny")
    raw = json.loads(good)
    raw["splits"]["test"]["files"][0]["path"] = "manifest.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ShardError, match=r"field 'splits.test.files\[0\].path' is 'manifest.json'"):
        store.manifest("tiny")


def test_a_write_with_no_rows_replaces_nothing(tmp_path):
    store = ShardStore(str(tmp_path), cache=False)
    store.write_dataset("tiny", split_rows("tiny", (("train", 3), ("test", 2))), NON_RADIOLOGY_PROMPT_TYPES)
    old, before = snapshot(store, "tiny"), listing(tmp_path)
    with pytest.raises(ShardError, match=r"no rows: nothing of 'tiny' was replaced"):
        store.write_dataset("tiny", iter([]), NON_RADIOLOGY_PROMPT_TYPES)
    assert snapshot(store, "tiny") == old and listing(tmp_path) == before
    with pytest.raises(ShardError, match=r"no rows: nothing of 'other' was replaced"):
        store.write_dataset("other", [], NON_RADIOLOGY_PROMPT_TYPES)
    assert store.datasets() == ["tiny"]


@pytest.mark.parametrize("cached", [False, True], ids=["direct", "node-cache"])
def test_a_shard_removed_by_a_rewrite_during_a_read_is_infrastructure_not_bad_input(tmp_path, cached):
    root = tmp_path / "shards"
    store = ShardStore(str(root), cache=NodeCache(str(tmp_path / "cache")) if cached else False)
    store.write_dataset("tiny", split_rows("tiny", (("train", 3), ("test", 2))), NON_RADIOLOGY_PROMPT_TYPES)
    read_before = store.manifest("tiny")  # a trial read the manifest, then the dataset was rewritten
    store.write_dataset("tiny", split_rows("tiny", (("train", 3), ("test", 2)), seed=7), NON_RADIOLOGY_PROMPT_TYPES)
    with pytest.raises(StorageUnavailable, match=r"dataset 'tiny' was rewritten while it was read .*runs again on "
                                                 r"the next launch") as error:
        store.read_split("tiny", "train", manifest=read_before)
    assert is_infrastructure(error.value)
    # A file the current manifest lists and storage lacks is still bad data.
    (root / "tiny" / store.manifest("tiny").splits["test"]["files"][0]["path"]).unlink()
    with pytest.raises(ShardError, match=r"missing shard .*: the manifest lists it"):
        store.read_split("tiny", "test")


def _changed(folder: Path, before: dict[str, int]) -> bool:
    """Whether a file of the dataset folder (not a temporary one) is new or was replaced (another inode)."""
    try:
        now = {p.name: p.stat().st_ino for p in folder.iterdir() if ".tmp-" not in p.name}
    except FileNotFoundError:
        return True
    return any(before.get(name) != inode for name, inode in now.items())


def _kill_when(args: list[str], folder: Path, condition) -> int:
    """Start ``python -m datasets.prompts ARGS``; SIGKILL it as soon as ``condition()`` holds."""
    proc = subprocess.Popen([sys.executable, "-m", "datasets.prompts", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if condition():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    return proc.returncode


def test_killed_prompt_generation_leaves_the_old_or_the_new_dataset_whole(tmp_path):
    pristine = tmp_path / "pristine"
    store = ShardStore(str(pristine), cache=False)
    # Three splits, three files: the write renames a shard into place, then more, then the manifest.
    store.write_dataset("tiny", split_rows("tiny", (("train", 300), ("val", 100), ("test", 20))),
                        NON_RADIOLOGY_PROMPT_TYPES, "non_radiology")
    old = snapshot(store, "tiny")
    root = tmp_path / "root"
    folder = root / "tiny"
    args = ["generate", str(root), "--name", "tiny", "--overwrite"]
    seen = []

    def shard_in_place():  # a whole shard file renamed into place (new, or replacing one)
        return _changed(folder, before)

    def manifest_switched():
        try:
            return (folder / "manifest.json").stat().st_ino != before["manifest.json"]
        except FileNotFoundError:
            return True

    for condition in (shard_in_place, manifest_switched):
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(pristine, root)
        before = {p.name: p.stat().st_ino for p in folder.iterdir()}
        rc = _kill_when(args, folder, condition)
        # After the switch only the old files' removal and the exit are left: the kill may come late.
        ended = (-signal.SIGKILL, 0) if condition is manifest_switched else (-signal.SIGKILL,)
        assert rc in ended, f"{condition.__name__}: the command ended by itself ({rc})"
        seen.append(snapshot(ShardStore(str(root), cache=False), "tiny"))
    assert subprocess.run([sys.executable, "-m", "datasets.prompts", *args], cwd=REPO).returncode == 0
    new = snapshot(ShardStore(str(root), cache=False), "tiny")
    assert new != old
    for state in seen:
        assert state in (old, new)


def test_rewrite_on_s3_switches_the_manifest_and_removes_the_old_shards_after(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "ROWS_PER_FILE", 2)  # train's first file is finished before the bad row
    root = f"{s3_bucket}/shards"
    store = ShardStore(root, cache=False)

    def objects() -> set[str]:
        return {o.base_name for o in store.fs.get_file_info(pafs.FileSelector(store.path + "/tiny"))}

    store.write_dataset("tiny", split_rows("tiny", (("train", 3), ("test", 2))), NON_RADIOLOGY_PROMPT_TYPES)
    old, before = snapshot(store, "tiny"), objects()
    read_before = store.manifest("tiny")
    bad = list(split_rows("tiny", (("train", 3), ("test", 2)), seed=5))
    bad[4]["p3"] = ["x\ud800"]
    with pytest.raises(ShardError, match=r"row 1 \(sample_id 'tiny-test-00001'\), field 'p3'"):
        store.write_dataset("tiny", bad, NON_RADIOLOGY_PROMPT_TYPES)
    assert snapshot(store, "tiny") == old and objects() == before
    store.write_dataset("tiny", split_rows("tiny", (("train", 3), ("test", 2)), seed=5), NON_RADIOLOGY_PROMPT_TYPES)
    assert snapshot(store, "tiny") != old
    assert objects() == set(store.manifest("tiny").files()) | {"manifest.json"}
    # A node that read the old manifest downloads one of its files after the rewrite removed it.
    cached = ShardStore(root, cache=NodeCache(str(tmp_path / "cache")))
    with pytest.raises(StorageUnavailable, match=r"dataset 'tiny' was rewritten while it was read"):
        cached.read_split("tiny", "train", manifest=read_before)


def test_duplicate_sample_ids_are_refused_by_the_writer_and_by_validate(tmp_path):
    store = ShardStore(str(tmp_path), cache=False)
    rows = list(split_rows("dup", (("train", 4),)))
    rows[3]["sample_id"] = rows[1]["sample_id"]
    with pytest.raises(ShardError, match=r"dataset 'dup' split 'train' row 3: sample_id 'dup-train-00001' is "
                                         r"already used by row 1"):
        store.write_dataset("dup", rows, NON_RADIOLOGY_PROMPT_TYPES)
    assert store.datasets() == []
    # A dataset written elsewhere with a collision: validate names both rows and the id.
    store.write_dataset("dup", split_rows("dup", (("train", 4),)), NON_RADIOLOGY_PROMPT_TYPES)
    path = tmp_path / "dup" / store.manifest("dup").splits["train"]["files"][0]["path"]
    table = pq.read_table(path)
    ids = table["sample_id"].to_pylist()
    ids[3] = ids[1]
    pq.write_table(table.set_column(0, "sample_id", [ids]), path)
    found = [p for c in validate(str(tmp_path), ["dup"]) for p in c.problems]
    assert any("duplicate sample_id 'dup-train-00001'" in p and "row 3" in p and "row 1" in p for p in found), found


def test_ingest_of_duplicated_content_gives_each_row_its_own_id(tmp_path):
    entries = [polyp_entry("a"), polyp_entry("b"), polyp_entry("a")]
    folder = make_layout(tmp_path / "data", "polyps", {"train": entries})
    store = ShardStore(str(tmp_path / "shards"), cache=False)
    manifest, _ = ingest(lambda: medvlsm_records(folder, "polyps"), store, "polyps", None, str(folder),
                         progress=False)
    assert [r["sample_id"] for r in store.iter_rows("polyps", "train")] == ["a", "b", "a#2"]
    assert manifest.duplicates == {"train": {"a#2": "a"}}


def test_unsafe_dataset_names_are_refused_before_anything_is_written(tmp_path, capsys):
    folder = polyp_layout(tmp_path / "data")
    shards = tmp_path / "root" / "shards"
    with pytest.raises(SystemExit) as exit_:
        ingest_main(["medvlsm", str(folder), "--name", "../x", "--to", str(shards), "--quiet"])
    assert exit_.value.code == 2 and "'../x' is not a usable name" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        prompts_main(["generate", str(shards), "--name", "../x"])
    assert exit_.value.code == 2 and "'../x' is not a usable name" in capsys.readouterr().err
    with pytest.raises(ShardError, match=r"dataset name '\.\./x'"):
        ingest(lambda: medvlsm_records(folder, "x"), ShardStore(str(shards)), "../x", None, str(folder),
               progress=False)
    with pytest.raises(ShardError, match=r"dataset name 'a/b'"):
        ShardStore(str(shards)).write_dataset("a/b", [], ["p0"])
    assert not (tmp_path / "root" / "x").exists() and not shards.exists()
    # A folder whose own name is not usable needs --name.
    odd = tmp_path / "data" / "my polyps"
    shutil.copytree(folder, odd)
    assert ingest_main(["medvlsm", str(odd), "--to", str(shards), "--quiet"]) == 2
    assert "--name" in capsys.readouterr().err


def test_a_manifest_missing_a_key_or_an_empty_split_is_a_clear_error(tmp_path):
    store = ShardStore(str(tmp_path), cache=False)
    store.write_dataset("tiny", split_rows("tiny", (("train", 3), ("test", 2))), NON_RADIOLOGY_PROMPT_TYPES)
    path = tmp_path / "tiny" / "manifest.json"
    good = json.loads(path.read_text())

    def with_manifest(change) -> None:
        raw = json.loads(json.dumps(good))
        change(raw)
        path.write_text(json.dumps(raw))

    with_manifest(lambda raw: raw.pop("prompt_types"))
    with pytest.raises(ShardError, match=rf"{path}: field 'prompt_types' is missing; expected a list of prompt "
                                         r"types .*Re-ingest 'tiny'"):
        store.manifest("tiny")
    with_manifest(lambda raw: raw["splits"]["test"]["files"][0].pop("sha256"))
    with pytest.raises(ShardError, match=r"field 'splits.test.files\[0\].sha256' is missing; expected"):
        store.manifest("tiny")
    with_manifest(lambda raw: raw["splits"]["test"]["files"][0].update(path="../other/x.parquet"))
    with pytest.raises(ShardError, match=r"field 'splits.test.files\[0\].path' is '../other/x.parquet'; expected "
                                         r"a file name in the dataset's folder"):
        store.manifest("tiny")
    # A split with no rows: a ShardError naming it, not pyarrow's "Must pass at least one table".
    with_manifest(lambda raw: raw["splits"].update(val={"rows": 0, "files": []}))
    with pytest.raises(ShardError, match=r"dataset 'tiny' split 'val' is empty \(0 rows in .*manifest.json\)"):
        SegmentationSplit(store, "tiny", "val", "p1", 32, train=False)
    with pytest.raises(ShardError, match=r"split 'val' is empty"):
        store.read_split("tiny", "val")
    found = [p for c in validate(str(tmp_path)) for p in c.problems]
    assert any("split 'val' is empty" in p for p in found), found
