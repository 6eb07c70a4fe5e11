"""Bad input to ingest: each case is a per-row error naming the file and the reason; the default mode
writes every valid row and a quarantine report, --strict stops and writes nothing, and no shard or
manifest is ever visible half-written."""

import json
import os

import numpy as np
import pytest

from datasets.ingest.medvlsm import medvlsm_records
from datasets.ingest.records import Record, RowProblem
from datasets.ingest.rows import REPORT_NAME, IngestReport, ingest, shard_rows
from datasets.shards import ShardStore
from datasets.validate import validate
from tests.layouts import encoded, image_for, make_layout, mask_for, polyp_entry, run_ingest, save

GOOD = [f"good{i}" for i in range(5)]


@pytest.fixture
def bad_layout(tmp_path):
    """Five good entries in train and one of each kind of bad one; val.json is not JSON at all."""
    bad = ["escape", "absolute", "symlink", "no_image", "no_mask", "garbage", "wrong_size", "colour", "grey"]
    folder = make_layout(tmp_path / "data", "polyps", {"train": [polyp_entry(n) for n in GOOD + bad]})
    secret = tmp_path / "data" / "secret.png"  # outside the dataset folder
    save(image_for("secret"), secret)
    entries = json.loads((folder / "anns/train.json").read_text())
    by_name = {e["segment_id"]: e for e in entries}
    by_name["escape"]["img_name"] = "../../secret.png"
    by_name["absolute"]["img_name"] = str(secret)
    (folder / "images/symlink.png").unlink()
    os.symlink(secret, folder / "images/symlink.png")
    (folder / "images/no_image.png").unlink()
    (folder / "masks/no_mask.png").unlink()
    (folder / "images/garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    save(mask_for("wrong_size", (20, 20)), folder / "masks/wrong_size.png")
    save(np.stack([mask_for("c").astype(np.uint8) * 255, np.zeros((32, 40), np.uint8),
                   np.zeros((32, 40), np.uint8)], axis=-1), folder / "masks/colour.png")
    save(image_for("grey")[..., 0], folder / "masks/grey.png")  # a photo, not a 0/255 mask
    (folder / "anns/train.json").write_text(json.dumps(entries))
    (folder / "anns/val.json").write_text('[{"img_name": "good0.png",, }]')
    return folder


EXPECTED = {  # entry -> what its error must say
    "escape": "'../../secret.png' escapes the dataset folder",
    "absolute": "is an absolute path",
    "symlink": "outside",
    "no_image": "no_image.png not found",
    "no_mask": "no_mask.png not found",
    "garbage": "image does not decode",
    "wrong_size": "mask is 20x20 (WxH), image is 40x32",
    "colour": "colour.png is a colour image",
    "grey": "grey.png is not binary",
}


def test_default_mode_quarantines_each_bad_row_and_keeps_every_good_one(bad_layout, tmp_path):
    result = run_ingest("medvlsm", str(bad_layout), "--to", str(tmp_path / "shards"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "shards/polyps" / REPORT_NAME).read_text())
    assert report["rows"] == {"train": len(GOOD)}
    problems = {p["source"]: p["reason"] for p in report["quarantined"]}
    for index, (name, message) in enumerate(EXPECTED.items(), start=len(GOOD)):
        # Each names the annotation entry, its image name and the reason.
        [reason] = [r for s, r in problems.items() if s.startswith(f"anns/train.json entry {index} (")]
        assert message in reason, (name, reason)
    assert any(s == "anns/val.json" and "not valid JSON" in r and "line 1 column" in r for s, r in problems.items())
    assert len(problems) == len(EXPECTED) + 1
    # The summary says how many were written and quarantined, with the first reasons.
    assert f"wrote {len(GOOD)} rows (train {len(GOOD)}); quarantined {len(EXPECTED) + 1}" in result.stdout
    assert "escapes the dataset folder" in result.stdout and "more quarantined" in result.stdout
    # Nothing valid was lost, and what was written is sound.
    store = ShardStore(str(tmp_path / "shards"))
    assert sorted(r["sample_id"] for r in store.iter_rows("polyps", "train")) == GOOD
    assert all(c.ok for c in validate(str(tmp_path / "shards"), out=open(os.devnull, "w")))


def test_strict_stops_at_the_first_problem_and_writes_nothing(bad_layout, tmp_path):
    shards = tmp_path / "shards"
    result = run_ingest("medvlsm", str(bad_layout), "--to", str(shards), "--strict")
    assert result.returncode == 1
    assert "error (--strict): anns/train.json entry 5 ('../../secret.png')" in result.stderr
    assert "escapes the dataset folder" in result.stderr and "nothing was written" in result.stderr
    assert not list(shards.glob("**/*.parquet")) and not list(shards.glob("**/*.json"))


def test_strict_failure_leaves_the_previous_version_intact(bad_layout, tmp_path):
    good = make_layout(tmp_path / "good", "polyps", {"train": [polyp_entry(n) for n in GOOD]})
    assert run_ingest("medvlsm", str(good), "--to", str(tmp_path / "shards")).returncode == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "shards/polyps").iterdir()}
    assert run_ingest("medvlsm", str(bad_layout), "--to", str(tmp_path / "shards"), "--strict").returncode == 1
    assert {p.name: p.read_bytes() for p in (tmp_path / "shards/polyps").iterdir()} == before


def test_a_crash_mid_reingest_leaves_the_old_version_whole(tmp_path):
    """New shards are written beside the old version's and the new manifest comes last: a crash in
    between leaves the old version as it was, and no file of the failed write."""
    store = ShardStore(str(tmp_path / "shards"))

    def records(n: int, crash_at: int | None = None):
        def load_image(i=0):
            if i == crash_at:
                raise RuntimeError("storage went away")
            return encoded(image_for(str(i)))

        return [Record(f"s{i}", "train", f"s{i}", lambda i=i: load_image(i), lambda i=i: mask_for(str(i)),
                       "polyp", prompts={"p0": [""], "p1": ["polyp"]}) for i in range(n)]

    ingest(lambda: records(30), store, "crashy", None, "test", progress=False)
    old = store.read_split("crashy", "train")
    files = sorted(p.name for p in (tmp_path / "shards/crashy").iterdir())
    # 1,000 rows make one shard file; the crash comes after it was written.
    with pytest.raises(RuntimeError, match="storage went away"):
        ingest(lambda: records(1200, crash_at=1100), store, "crashy", None, "test", progress=False)
    assert store.datasets() == ["crashy"] and store.read_split("crashy", "train").equals(old)
    assert sorted(p.name for p in (tmp_path / "shards/crashy").iterdir()) == files


def test_row_checks_on_reader_records():
    """Problems a raw reader's records can have, caught where records become rows."""
    def record(sid, mask, prompts=None, image=None, split="train"):
        return Record(sid, split, f"file-{sid}", lambda: image or encoded(image_for(sid)), lambda: mask,
                      "polyp", prompts=prompts if prompts is not None else {"p0": [""], "p1": ["polyp"]})

    good = mask_for("m")
    items = [
        record("ok", good),
        RowProblem("raw/benign (3).png", "no mask file for this image", "train"),
        record("ok", good),  # the same sample id again
        record("flat", good.astype(np.uint8)),
        record("cube", np.stack([good, good])),
        record("other_types", good, {"p0": [""], "p1": ["polyp"], "p2": ["round polyp"]}),
        record("empty_prompt", good, {"p0": [""], "p1": [""]}),
        record("no_prompts", good, {}),
    ]
    report = IngestReport("raw", "test")
    rows = list(shard_rows(items, "raw", None, report, strict=False))
    assert [r["sample_id"] for r in rows] == ["ok"]
    reasons = {p.source: p.reason for p in report.quarantined}
    assert reasons["raw/benign (3).png"] == "no mask file for this image"
    assert "sample_id 'ok' already used by file-ok" in reasons["file-ok"]
    assert "dtype uint8; expected bool" in reasons["file-flat"]
    assert "shape (2, 32, 40)" in reasons["file-cube"]
    assert "prompt types p0, p1, p2 differ from the dataset's p0, p1" in reasons["file-other_types"]
    assert "prompts.p1 holds an empty string" in reasons["file-empty_prompt"]
    assert "prompt types  differ" in reasons["file-no_prompts"]


def test_generated_prompts_store_their_attributes():
    """Records without prompts get the family's prompts from prompts/ and keep the attributes."""
    mask = mask_for("g")
    tumour = Record("b1", "train", "b1", lambda: encoded(image_for("b1")), lambda: mask, "tumor",
                    metadata={"tumor_type": "benign"})
    normal = Record("n1", "train", "n1", lambda: encoded(image_for("n1")), lambda: np.zeros_like(mask),
                    "tumor", metadata={"tumor_type": "normal"})
    unknown = Record("x1", "train", "x1", lambda: encoded(image_for("x1")), lambda: mask, "tumor",
                     metadata={"tumor_type": "cyst"})
    report = IngestReport("busi", "test")
    rows = {r["sample_id"]: r for r in shard_rows([tumour, normal, unknown], "busi", "busi", report, False)}
    assert set(rows) == {"b1", "n1"}
    assert [f"p{i}" for i in range(7)] == [k for k in rows["n1"] if k.startswith("p")]
    assert rows["n1"]["p4"] == ["No tumor in the breast ultrasound image."]
    assert rows["b1"]["p2"] == ["Benign tumor in the breast ultrasound image.",
                                "Regular-shaped tumor in the breast ultrasound image."]
    assert rows["b1"]["metadata"]["attr.tumor_type"] == "benign" and rows["b1"]["metadata"]["tumor_type"] == "benign"
    [problem] = report.quarantined
    assert problem.source == "x1" and "cannot generate busi prompts" in problem.reason and "'cyst'" in problem.reason


def test_not_a_released_layout(tmp_path):
    result = run_ingest("medvlsm", str(tmp_path), "--to", str(tmp_path / "shards"))
    assert result.returncode == 2
    assert "is not a released-layout dataset: expected" in result.stderr and "anns" in result.stderr
    with pytest.raises(Exception, match="not a released-layout"):
        list(medvlsm_records(tmp_path, "x"))


def test_raw_command_line(tmp_path):
    """`raw <dataset>` dispatches to the raw readers: a tiny Kvasir-SEG download becomes shards with
    generated prompts; an unknown name or a folder of the wrong layout is a clear error."""
    download = tmp_path / "kvasir"
    for i in range(10):
        save(image_for(f"k{i}"), download / "images" / f"k{i}.jpg")
        save(mask_for(f"k{i}"), download / "masks" / f"k{i}.jpg")
    shards = tmp_path / "shards"
    result = run_ingest("raw", "kvasir_polyp", str(download), "--to", str(shards), "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "kvasir_polyp: wrote 10 rows (train 8, val 1, test 1); quarantined 0" in result.stdout
    store = ShardStore(str(shards))
    assert store.manifest("kvasir_polyp").prompt_family == "non_radiology"
    row = next(store.iter_rows("kvasir_polyp", "train"))
    assert row["p1"] == ["polyp"] and row["metadata"]["attr.class_name"] == "polyp"
    assert all(c.ok for c in validate(str(shards), out=open(os.devnull, "w")))

    unknown = run_ingest("raw", "kvasir", str(download), "--to", str(shards))
    assert unknown.returncode == 2 and "no raw reader 'kvasir'; known:" in unknown.stderr
    assert "kvasir_polyp" in unknown.stderr
    wrong = run_ingest("raw", "busi", str(download), "--to", str(shards))
    assert wrong.returncode == 2 and f"error: {download}" in wrong.stderr


def test_no_valid_row_writes_nothing(tmp_path):
    folder = make_layout(tmp_path / "data", "polyps", {"train": [polyp_entry("a")]})
    (folder / "masks/a.png").unlink()
    result = run_ingest("medvlsm", str(folder), "--to", str(tmp_path / "shards"))
    assert result.returncode == 1
    assert "no valid rows for dataset 'polyps'; nothing written" in result.stderr
    assert "masks/a.png not found" in result.stderr
    assert not (tmp_path / "shards").exists() or not list((tmp_path / "shards").rglob("*.*"))
