"""Template attributes read back from released prompts: every released record re-renders exactly, odd
prompts are refused with a reason, and medvlsm-imported datasets take the perturbation ablation."""

from __future__ import annotations

import json
import re

import pytest

from datasets.catalogue import DATASETS
from datasets.ingest.medvlsm import FAMILIES, medvlsm_records
from datasets.ingest.rows import REPORT_NAME, ingest
from datasets.segmentation import SegmentationSplit
from datasets.shards import ShardStore
from prompts.metadata import stored_attributes
from prompts.parse import PromptParseError, parse_attributes
from prompts.perturb import UNCOMMON_WORDS, Perturbation, PerturbationError, opposite, perturb
from prompts.templates import render
from tests.layouts import make_layout, released, run_ingest


def as_lists(prompts: dict) -> dict[str, list[str]]:
    return {k: v if isinstance(v, list) else [v] for k, v in prompts.items()}


def nested_kvasir_attributes(prompts: dict) -> dict[str, str]:
    """An independent reading: each of P2-P5 puts one word group in front of the one before."""
    p = as_lists(prompts)
    shape = p["p2"][0].removesuffix(" polyp")
    color = p["p3"][0].removesuffix(" " + p["p2"][0])
    size = p["p4"][0].removesuffix(" " + p["p3"][0])
    number = p["p5"][0].removesuffix(" " + p["p4"][0])
    location = p["p6"][0].removeprefix(p["p5"][0] + ", located in ").removesuffix(" of the image")
    return {"class_name": "polyp", "shape": shape, "color": color, "size": size, "number": number,
            "location": location}


CAMUS_P7 = re.compile(r"(?P<class_name>.+?) of (?P<shape>.+?) shape in (?P<view>\S+) view of the heart"
                      r" at end of the (?P<cycle>\w+) cycle of a (?P<age>\S+-year-old) (?P<sex>\w+)"
                      r" with (?P<quality>\w+) image quality\.")


def test_every_released_kvasir_record_reads_back_exactly():
    records = [r for split in ("train", "val", "test") for r in released("kvasir_polyp", split)]
    assert len(records) == 1000
    multi_word_shapes = 0
    for record in records:
        prompts = as_lists(record["prompts"])
        attributes = parse_attributes("non_radiology", prompts)
        assert render("non_radiology", attributes) == prompts, record["img_name"]
        assert attributes == nested_kvasir_attributes(prompts), record["img_name"]
        multi_word_shapes += " " in attributes["shape"]
    assert multi_word_shapes > 10  # "it is a round shape", "middle of donut": only P2-P4 pin these down


def test_every_released_camus_record_reads_back_exactly():
    records = released("camus", "val") + released("camus", "test")
    assert len(records) == 1200
    for record in records:
        prompts = as_lists(record["prompts"])
        attributes = parse_attributes("camus", prompts, class_name=CAMUS_P7.fullmatch(prompts["p7"][0])["class_name"])
        assert render("camus", attributes) == prompts, record["mask_name"]
        assert attributes == CAMUS_P7.fullmatch(prompts["p7"][0]).groupdict(), record["mask_name"]


POLYP = {"class_name": "polyp", "shape": "round", "color": "pink", "size": "small, medium", "number": "two",
         "location": "top left, right"}
BUSI = {"class_name": "tumor", "tumor_type": "malignant", "regularity": "irregular", "number": "two",
        "size": "small", "location": "right, right", "shape": "circle"}
CHEX = {"class_name": "Edema", "view": "frontal", "shape": "oval", "location": "bottom",
        "findings": "Cardiomegaly, Lung Opacity"}


@pytest.mark.parametrize("family,attributes", [
    ("non_radiology", POLYP),
    ("non_radiology", {**POLYP, "size": ""}),  # only specks: no size word
    ("non_radiology", {**POLYP, "class_name": "tumour", "description": "a lump"}),  # one own description
    ("busi", BUSI),
    ("busi", {**BUSI, "number": "one"}),  # singular "tumor"
    ("busi", {**BUSI, "shape": ""}),  # P6 then keeps "irregular-shaped"
    ("busi", {"class_name": "tumor", "tumor_type": "normal"}),  # one sentence for every type
    ("chexlocalize", CHEX),
    ("chexlocalize", {**CHEX, "findings": ""}),  # no "... are present." sentence
    ("mimic", {"report": "FINDINGS: Heart size is normal.\nNo pneumothorax.\n"}),
])
def test_every_family_reads_back_its_own_renderings(family, attributes):
    assert parse_attributes(family, render(family, attributes)) == attributes


def test_a_lone_prompt_type_that_leaves_words_ambiguous_is_refused():
    attributes = {**POLYP, "shape": "it is a round shape"}
    with pytest.raises(PromptParseError, match="leave number ambiguous: 'two' or 'two small, medium pink it is'"):
        parse_attributes("non_radiology", render("non_radiology", attributes, ["p5"]))
    # P2-P4 settle it; a row of fewer types gets only the attributes its types show.
    assert parse_attributes("non_radiology", render("non_radiology", attributes, ["p1", "p2", "p3", "p4", "p5"])) == {
        k: v for k, v in attributes.items() if k != "location"}
    assert parse_attributes("non_radiology", {"p0": [""], "p1": ["polyp"]}) == {"class_name": "polyp"}


def test_prompts_that_are_not_the_templates_are_refused_with_the_reason():
    prompts = render("non_radiology", POLYP)
    moved = {**prompts, "p6": ["two small, medium pink round polyp, located at top left, right of the image"]}
    with pytest.raises(PromptParseError, match=r"p6 \[.*located at.*\] does not read as the non_radiology template "
                                               r"'<number> <size> <color> <shape> <class_name>, located in <location>"):
        parse_attributes("non_radiology", moved)
    with pytest.raises(PromptParseError, match="p1 \\['polyp'\\] does not read as the non_radiology template 'Polyp'"):
        parse_attributes("non_radiology", prompts, class_name="Polyp")
    with pytest.raises(PromptParseError, match="renders"):  # three of the class's five descriptions
        parse_attributes("non_radiology", {**prompts, "p7": prompts["p7"][:3]})
    melanoma = render("non_radiology", {**POLYP, "class_name": "skin melanoma"})
    misspelt = {t: [s.replace("speckles", "specks") for s in strings] for t, strings in melanoma.items()}
    with pytest.raises(PromptParseError, match="descriptions .* are not the five of class 'skin melanoma'"):
        parse_attributes("non_radiology", misspelt)  # render could not give them back
    with pytest.raises(PromptParseError, match="p1 is 'polyp'; expected a non-empty list of strings"):
        parse_attributes("non_radiology", {"p1": "polyp"})  # a bare string would read as its letters
    with pytest.raises(PromptParseError, match="has no prompt type p10"):
        parse_attributes("non_radiology", {**prompts, "p10": ["x"]})
    with pytest.raises(PromptParseError, match="'tumor_type'"):  # P1 alone does not say it is not normal
        parse_attributes("busi", {"p1": ["Tumor in the breast ultrasound image."]})
    made_up = {"p0": [""], "p1": ["polyp"], "p2": ["round polyp a"], "p7": ["polyp a a", "polyp a b"]}
    with pytest.raises(PromptParseError, match="p2 \\['round polyp a'\\] does not read"):
        parse_attributes("non_radiology", made_up)


def replacements(before: str, after: str, value: str) -> set[str]:
    """What `after` puts in place of one appearance of `value`'s words in `before`, all else kept."""
    old, new, words = before.split(), after.split(), value.split()
    found = set()
    for i in range(len(old) - len(words) + 1):
        rest = len(old) - i - len(words)
        if old[i:i + len(words)] == words and new[:i] == old[:i] and new[len(new) - rest:] == old[len(old) - rest:]:
            found.add(" ".join(new[i:len(new) - rest]))
    return found


def test_perturbing_a_parsed_released_row_changes_only_that_attributes_words():
    records = released("kvasir_polyp", "train")
    picked = [r for r in records if " " in r["prompts"]["p2"].removesuffix(" polyp")][:3]  # multi-word shapes
    picked += [r for r in records if ", " in r["prompts"]["p6"].split("located in")[1]][:3]  # several places
    assert len(picked) == 6
    for record in picked:
        prompts = as_lists(record["prompts"])
        attributes = parse_attributes("non_radiology", prompts)
        for prompt_type in ("p6", "p9"):
            for kind, name in [("random_word", n) for n in ("number", "size", "color", "shape", "location")] + [
                    ("opposite", "size"), ("opposite", "location")]:
                perturbed = perturb("non_radiology", prompt_type, attributes, Perturbation(kind, name),
                                    record["segment_id"])
                assert len(perturbed) == len(prompts[prompt_type])
                for before, after in zip(prompts[prompt_type], perturbed):
                    replaced = replacements(before, after, attributes[name])
                    if kind == "opposite":
                        assert opposite(name, attributes[name]) in replaced, (before, after)
                    else:
                        assert replaced & set(UNCOMMON_WORDS), (before, after)


def test_study_folder_names_have_the_grid_families():
    # The importer picks the family from the folder name; the grid's table must agree where both name one.
    shared = set(FAMILIES) & set(DATASETS)
    assert len(shared) >= 10
    assert all(FAMILIES[name] == DATASETS[name].prompt_family for name in shared)


def test_imported_released_rows_take_the_perturbation_ablation(tmp_path):
    test = released("kvasir_polyp", "test")[:5]
    odd = json.loads(json.dumps(released("kvasir_polyp", "val")[0]))
    odd["prompts"]["p6"] = odd["prompts"]["p6"].replace("located in", "located at")  # not the template
    folder = make_layout(tmp_path / "data", "kvasir_polyp", {"val": [odd], "test": test})
    result = run_ingest("medvlsm", str(folder), "--to", str(tmp_path / "shards"))  # family from the name
    assert result.returncode == 0, result.stderr
    assert "wrote 6 rows (val 1, test 5); quarantined 0; notes 1" in result.stdout

    [note] = json.loads((tmp_path / "shards/kvasir_polyp" / REPORT_NAME).read_text())["notes"]
    odd_id = odd["mask_name"].rsplit(".", 1)[0]
    assert note["sample_id"] == odd_id and note["split"] == "val"
    assert "no template attributes stored" in note["reason"] and "p6" in note["reason"]

    store = ShardStore(str(tmp_path / "shards"), cache=False)
    rows = {r["sample_id"]: r for split in ("val", "test") for r in store.iter_rows("kvasir_polyp", split)}
    assert stored_attributes(rows[odd_id]["metadata"]) == {}
    for entry in test:
        row = rows[entry["mask_name"].rsplit(".", 1)[0]]
        assert stored_attributes(row["metadata"]) == nested_kvasir_attributes(entry["prompts"])
        assert row["metadata"]["img_name"] == entry["img_name"]  # the importer's own metadata stays

    plain = SegmentationSplit(store, "kvasir_polyp", "test", "p6", 32, train=False)
    flipped = SegmentationSplit(store, "kvasir_polyp", "test", "p6", 32, train=False,
                                perturbation=Perturbation("opposite", "location"))
    assert len(plain) == 5 and plain.sample_ids == flipped.sample_ids
    for i in range(len(plain)):
        before, after = plain[i]["text"], flipped[i]["text"]
        described, where = before.removesuffix(" of the image").split(", located in ")
        assert after == f"{described}, located in {opposite('location', where)} of the image"
    with pytest.raises(PerturbationError, match=f"sample '{odd_id}'.*no value for attribute 'location'"):
        SegmentationSplit(store, "kvasir_polyp", "val", "p6", 32, train=False,
                          perturbation=Perturbation("opposite", "location"))

    # --strict does not fail on the note: the row is written exactly as released either way.
    _, report = ingest(lambda: medvlsm_records(folder, "kvasir_polyp", "non_radiology"),
                       ShardStore(str(tmp_path / "strict"), cache=False), "kvasir_polyp", "non_radiology",
                       str(folder), strict=True, progress=False)
    assert report.rows == {"val": 1, "test": 5} and len(report.notes) == 1
