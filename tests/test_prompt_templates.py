"""Every family's templates reproduce the study's prompts; metadata becomes the study's words."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli import require_reference

from prompts.generate import row_prompts
from prompts.metadata import (
    CHEXPERT_OBSERVATIONS,
    age_in_words,
    busi_attributes,
    camus_attributes,
    chexlocalize_attributes,
    metadata_attributes,
    mimic_attributes,
    number_in_words,
)
from prompts.templates import (
    CLASS_DESCRIPTIONS,
    FAMILIES,
    NON_RADIOLOGY_PROMPT_TYPES,
    PROMPT_TYPES,
    TEMPLATE_ATTRIBUTES,
    render,
    render_non_radiology,
)

RELEASED = Path(__file__).resolve().parents[2] / "shared/reference/medvlsm_anns"


def released_records(dataset: str, splits: tuple[str, ...]) -> list[dict]:
    folder = RELEASED / dataset
    require_reference(folder)
    return [record for split in splits for record in json.loads((folder / f"{split}.json").read_text())]


def as_lists(prompts: dict) -> dict[str, list[str]]:
    """Released prompts are a string or a list per type; `render` always gives lists."""
    return {key: value if isinstance(value, list) else [value] for key, value in prompts.items()}


# --- the tables -------------------------------------------------------------------------------

ATTRIBUTE_NAMES = {
    "class_name", "shape", "color", "size", "number", "location", "description", "view", "cycle", "sex",
    "age", "quality", "tumor_type", "regularity", "findings", "report",
}


def test_prompt_types_per_family():
    assert PROMPT_TYPES == {
        "non_radiology": ("p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9"),
        "busi": ("p0", "p1", "p2", "p3", "p4", "p5", "p6"),
        "camus": ("p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"),
        "chexlocalize": ("p0", "p1", "p2", "p3", "p4", "p5", "p6"),
        "mimic": ("p0", "p1"),
    }
    assert FAMILIES == tuple(PROMPT_TYPES)
    assert NON_RADIOLOGY_PROMPT_TYPES == PROMPT_TYPES["non_radiology"]
    for family, types in PROMPT_TYPES.items():
        assert tuple(TEMPLATE_ATTRIBUTES[family]) == types
        assert TEMPLATE_ATTRIBUTES[family]["p0"] == ()
        for names in TEMPLATE_ATTRIBUTES[family].values():
            assert set(names) <= ATTRIBUTE_NAMES and len(set(names)) == len(names)


# Table 9 of the paper, attribute codes per prompt type, and the names they have here.
TABLE_9 = {
    "non_radiology": ["a1", "a1a2", "a1a2a3", "a1a2a3a4", "a1a2a3a4a5", "a1a2a3a4a6", "a1a7", "a1a2a3a4a5a7",
                      "a1a2a3a4a5a6a7"],
    "chexlocalize": ["a1", "a1a8", "a1a2a8", "a1a2a6a8", "a1a2a6a8a9", "a1a9"],
    "camus": ["a1", "a1a8", "a1a8a10", "a1a8a10a11", "a1a8a10a11a12", "a1a8a10a11a12a13", "a1a8a10a11a12a13a2"],
    "busi": ["a1", "a1a14", "a1a14a5", "a1a14a5a4", "a1a14a5a4a6", "a1a14a5a4a6a2"],
}
TABLE_9_CODES = {
    "a1": "class_name", "a2": "shape", "a3": "color", "a4": "size", "a5": "number", "a6": "location",
    "a7": "description", "a8": "view", "a9": "findings", "a10": "cycle", "a11": "sex", "a12": "age",
    "a13": "quality", "a14": "tumor_type",
}


def test_template_attributes_follow_table_9():
    for family, rows in TABLE_9.items():
        for level, codes in enumerate(rows, start=1):
            expected = {TABLE_9_CODES[code] for code in re.findall(r"a\d+", codes)}
            if family == "non_radiology" and level == 6:
                expected.add("number")  # Table 9 drops a5 here; Appendix G.1 and the release have it
            if family == "busi" and level >= 2:
                expected.add("regularity")  # the second BUSI alternative words a14 this way
            assert set(TEMPLATE_ATTRIBUTES[family][f"p{level}"]) == expected, (family, level)
    assert TEMPLATE_ATTRIBUTES["mimic"]["p1"] == ("report",)


# One tumour-image sample per family, every attribute given (description too, so that a changed
# class name does not change which descriptions are used).
FULL_ATTRIBUTES = {
    "non_radiology": {"class_name": "polyp", "shape": "round", "color": "pink", "size": "small", "number": "one",
                      "location": "top left", "description": "a projecting growth of tissue"},
    "busi": {"class_name": "tumor", "tumor_type": "benign", "regularity": "regular", "number": "two",
             "size": "medium", "location": "center, left", "shape": "square"},
    "camus": {"class_name": "Myocardium", "view": "two-chamber", "cycle": "diastole", "sex": "female",
              "age": "forty-year-old", "quality": "poor", "shape": "triangular"},
    "chexlocalize": {"class_name": "Airspace Opacity", "view": "frontal", "shape": "rectangle",
                     "location": "right", "findings": "Cardiomegaly"},
    "mimic": {"report": "The lungs are clear."},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_prompt_type_shows_exactly_its_attributes(family):
    # What a perturbation relies on: replacing a listed value changes the prompt, replacing any
    # other leaves it as it was.
    attributes = FULL_ATTRIBUTES[family]
    assert set(attributes) == set().union(*TEMPLATE_ATTRIBUTES[family].values())
    original = render(family, attributes)
    for name in attributes:
        changed = render(family, {**attributes, name: "quux"})
        for prompt_type, shown in TEMPLATE_ATTRIBUTES[family].items():
            if name in shown:
                assert changed[prompt_type] != original[prompt_type], (prompt_type, name)
                assert len(changed[prompt_type]) == len(original[prompt_type])
                assert any("quux" in text.lower() for text in changed[prompt_type]), (prompt_type, name)
            else:
                assert changed[prompt_type] == original[prompt_type], (prompt_type, name)


# A non-radiology class has its five descriptions without a "description"; every BUSI type reads
# the tumour type, since "normal" turns every prompt into the no-tumour sentence.
OPTIONAL = {("non_radiology", "description")}
READ_THOUGH_NOT_SHOWN = {("busi", "tumor_type")}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_missing_attribute_names_family_prompt_type_and_attribute(family):
    attributes = FULL_ATTRIBUTES[family]
    for name in attributes:
        without = {key: value for key, value in attributes.items() if key != name}
        for prompt_type, shown in TEMPLATE_ATTRIBUTES[family].items():
            needed = (name in shown and (family, name) not in OPTIONAL) or (
                (family, name) in READ_THOUGH_NOT_SHOWN and prompt_type != "p0"
            )
            if needed:
                with pytest.raises(KeyError) as error:
                    render(family, without, prompt_types=[prompt_type])
                assert f"{family} prompt type {prompt_type} needs attribute {name!r}" in str(error.value)
            else:
                render(family, without, prompt_types=[prompt_type])


def test_unknown_family_or_prompt_type():
    with pytest.raises(KeyError, match="unknown prompt family 'isic'"):
        render("isic", {})
    with pytest.raises(KeyError, match="camus has no prompt type p8"):
        render("camus", FULL_ATTRIBUTES["camus"], prompt_types=["p8"])


def test_rendering_only_some_prompt_types():
    rendered = render("camus", {"class_name": "Myocardium"}, prompt_types=["p0", "p1"])
    assert rendered == {"p0": [""], "p1": ["Myocardium of the heart.", "Myocardium in the cardiac ultrasound."]}


# --- non-radiology ----------------------------------------------------------------------------


def kvasir_attributes(prompts: dict) -> dict[str, str]:
    """Undo the templates: each of P2-P5 puts one word group in front of the last, P6 adds a place."""
    shape = prompts["p2"].removesuffix(" polyp")
    color = prompts["p3"].removesuffix(" " + prompts["p2"])
    size = prompts["p4"].removesuffix(" " + prompts["p3"])
    number = prompts["p5"].removesuffix(" " + prompts["p4"])
    location = prompts["p6"].removeprefix(prompts["p5"] + ", located in ").removesuffix(" of the image")
    return {"class_name": "polyp", "shape": shape, "color": color, "size": size, "number": number,
            "location": location}


def test_generic_render_reproduces_every_released_kvasir_prompt():
    records = released_records("kvasir_polyp", ("train", "val", "test"))
    assert len(records) == 1000
    for record in records:
        attributes = kvasir_attributes(record["prompts"])
        assert render("non_radiology", attributes) == as_lists(record["prompts"]), record["img_name"]


def test_render_non_radiology_is_the_generic_render():
    args = ("skin melanoma", "irregular", "brown", "small, medium", "two", "left, center")
    keys = ("class_name", "shape", "color", "size", "number", "location")
    assert render_non_radiology(*args) == render("non_radiology", dict(zip(keys, args)))


def test_one_given_description_replaces_the_five():
    attributes = {**FULL_ATTRIBUTES["non_radiology"], "description": "often a bumpy flesh in rectum"}
    rendered = render("non_radiology", attributes)
    assert rendered["p7"] == ["polyp which is often a bumpy flesh in rectum"]
    assert rendered["p9"] == [
        "one small pink round polyp which is often a bumpy flesh in rectum located in top left of the image"
    ]
    del attributes["description"]
    assert render("non_radiology", attributes)["p8"] == [
        f"one small pink round polyp which is {d}" for d in CLASS_DESCRIPTIONS["polyp"]
    ]


def test_a_class_without_descriptions_needs_one_for_p7_to_p9_only():
    attributes = {**FULL_ATTRIBUTES["non_radiology"], "class_name": "tumour"}
    del attributes["description"]
    assert render("non_radiology", attributes, prompt_types=["p6"]) == {
        "p6": ["one small pink round tumour, located in top left of the image"]
    }
    with pytest.raises(KeyError, match="p7 needs attribute 'description': no descriptions for class 'tumour'"):
        render("non_radiology", attributes)


def test_non_radiology_appendix_examples_up_to_the_released_wording():
    # Appendix G.1 writes "located in the top left" and "polyp, which is"; the released prompts
    # (what the models saw) have neither "the" nor the comma.
    attributes = {"class_name": "polyp", "shape": "round", "color": "pink", "size": "medium", "number": "one",
                  "location": "top left", "description": "a small lump in the lining of colon"}
    rendered = render("non_radiology", attributes)
    appendix = {
        "p1": "polyp",
        "p2": "round polyp",
        "p3": "pink round polyp",
        "p4": "medium pink round polyp",
        "p5": "one medium pink round polyp",
        "p6": "one medium pink round polyp, located in the top left of the image",
        "p7": "polyp, which is a small lump in the lining of colon",
        "p8": "one medium pink round polyp, which is a small lump in the lining of colon",
        "p9": "one medium pink round polyp, which is a small lump in the lining of colon located in the top left"
              " of the image",
    }
    for prompt_type, text in appendix.items():
        released_wording = text.replace("in the top left", "in top left").replace(", which is", " which is")
        assert rendered[prompt_type] == [released_wording]
    table_9 = {**attributes, "size": "small", "location": "center", "description": "often a bumpy flesh in rectum"}
    assert render("non_radiology", table_9)["p9"] == [
        "one small pink round polyp which is often a bumpy flesh in rectum located in center of the image"
    ]


# --- CAMUS ------------------------------------------------------------------------------------

CAMUS_P7 = re.compile(
    r"(?P<class_name>.+?) of (?P<shape>.+?) shape in (?P<view>\S+) view of the heart"
    r" at end of the (?P<cycle>\w+) cycle of a (?P<age>\S+-year-old) (?P<sex>\w+)"
    r" with (?P<quality>\w+) image quality\."
)


def test_render_reproduces_every_released_camus_prompt():
    records = released_records("camus", ("val", "test"))
    assert len(records) == 1200
    for record in records:
        attributes = CAMUS_P7.fullmatch(record["prompts"]["p7"][0]).groupdict()
        assert render("camus", attributes) == as_lists(record["prompts"]), record["mask_name"]


AGE_BY_WORDS = {age_in_words(age): str(age) for age in range(120)}


def test_camus_metadata_gives_the_released_words():
    # Structure, view and phase are in the file names; sex, age and quality are turned back into
    # the codes of CAMUS's Info_*.cfg, so the whole conversion runs on every released record.
    for record in released_records("camus", ("val", "test")):
        attributes = CAMUS_P7.fullmatch(record["prompts"]["p7"][0]).groupdict()
        _, view, phase = Path(record["img_name"]).stem.split("_")
        metadata = {
            "label": record["mask_name"].split("/")[0].removeprefix("mask_"),
            "view": view,
            "phase": phase,
            "sex": attributes["sex"][0].upper(),
            "age": AGE_BY_WORDS[attributes["age"]],
            "image_quality": attributes["quality"].capitalize(),
        }
        shape = attributes.pop("shape")
        assert camus_attributes(metadata) == attributes, record["mask_name"]
        assert render("camus", {**camus_attributes(metadata), "shape": shape}) == as_lists(record["prompts"])


def test_camus_appendix_examples_up_to_the_released_wording():
    # Appendix G.2.2 writes "at the end of the"; its P6 and P7 examples give the age as "40-year-old".
    # The released prompts say "at end of the" and always spell the age out.
    attributes = {"class_name": "Left ventricular cavity", "view": "two-chamber", "cycle": "diastole",
                  "sex": "female", "age": "forty-six-year-old", "quality": "poor", "shape": "triangular"}
    rendered = render("camus", attributes)
    assert rendered["p5"] == [
        "Left ventricular cavity in two-chamber view of the heart at end of the diastole cycle"
        " of a forty-six-year-old female.",
        "Left ventricular cavity in two-chamber view in the cardiac ultrasound at end of the diastole cycle"
        " of a forty-six-year-old female.",
    ]
    appendix_p7 = (
        "Left ventricular cavity of triangular shape in two-chamber view in the cardiac ultrasound at the end"
        " of the diastole cycle of a 40-year-old female with poor image quality."
    )
    forty = render("camus", {**attributes, "age": age_in_words(40)})
    assert forty["p7"][1] == appendix_p7.replace("at the end", "at end").replace("40-year-old", "forty-year-old")


# --- BUSI -------------------------------------------------------------------------------------

BUSI_P6_EXAMPLE = {"class_name": "tumor", "tumor_type": "benign", "regularity": "regular", "number": "two",
                   "size": "medium", "location": "center, left", "shape": "square"}


def test_busi_appendix_examples():
    # Appendix G.2.3, each with the full stop that the study's released BUSI prompts end with.
    rendered = render("busi", BUSI_P6_EXAMPLE)
    assert rendered["p1"] == ["Tumor in the breast ultrasound image."]
    assert rendered["p2"] == ["Benign tumor in the breast ultrasound image.",
                              "Regular-shaped tumor in the breast ultrasound image."]
    assert rendered["p3"] == ["Two benign tumors in the breast ultrasound image.",
                              "Two regular-shaped tumors in the breast ultrasound image."]
    assert rendered["p4"] == ["Two medium benign tumors in the breast ultrasound image.",
                              "Two medium regular-shaped tumors in the breast ultrasound image."]
    assert rendered["p5"] == ["Two medium benign tumors at the center, left in the breast ultrasound image.",
                              "Two medium regular-shaped tumors at the center, left in the breast ultrasound image."]
    # The appendix prints only the first P6 alternative; in the second the shape already says
    # "-shaped", so the regularity word stands alone (as in the study's released BUSI prompts).
    assert rendered["p6"] == [
        "Two medium square-shaped benign tumors at the center, left in the breast ultrasound image.",
        "Two medium square-shaped regular tumors at the center, left in the breast ultrasound image.",
    ]
    assert rendered["p0"] == [""]


def test_busi_released_records():
    # Records 145_benign and 121_malignant of the study's released BUSI val.json (naamiinepal/medvlsm,
    # bus_json_outputs/val.json, CC BY 4.0): one tumour is singular, several per-tumour places are listed.
    two = render("busi", {**BUSI_P6_EXAMPLE, "size": "small", "location": "right, right", "shape": "circle"})
    assert two["p6"] == [
        "Two small circle-shaped benign tumors at the right, right in the breast ultrasound image.",
        "Two small circle-shaped regular tumors at the right, right in the breast ultrasound image.",
    ]
    one = render("busi", {**BUSI_P6_EXAMPLE, **busi_attributes({"tumor_type": "malignant"}), "number": "one",
                          "size": "small", "location": "top right"})
    assert one["p3"] == ["One malignant tumor in the breast ultrasound image.",
                         "One irregular-shaped tumor in the breast ultrasound image."]
    assert one["p6"] == [
        "One small square-shaped malignant tumor at the top right in the breast ultrasound image.",
        "One small square-shaped irregular tumor at the top right in the breast ultrasound image.",
    ]


def test_busi_normal_image_has_one_sentence_for_every_type():
    attributes = busi_attributes({"tumor_type": "normal"})  # no mask attributes: the mask is empty
    rendered = render("busi", attributes)
    assert rendered.pop("p0") == [""]
    assert rendered == {t: ["No tumor in the breast ultrasound image."] for t in PROMPT_TYPES["busi"][1:]}
    # row_prompts, which drops types whose attributes a row lacks, still gives a normal image all of them
    assert row_prompts("busi", attributes) == render("busi", attributes)


# --- CheXlocalize and MIMIC-CXR ---------------------------------------------------------------

CHEXLOCALIZE_EXAMPLE = {
    "class_name": "Airspace Opacity", "view": "frontal", "shape": "rectangle", "location": "right",
    "findings": "Enlarged Cardiomediastinum, Cardiomegaly, Lung Opacity, Consolidation, Atelectasis, Pleural Effusion",
}


def test_chexlocalize_appendix_examples():
    # Appendix G.2.1, word for word; its P5 is also Table 9's example prompt.
    present = ("Enlarged Cardiomediastinum, Cardiomegaly, Lung Opacity, Consolidation, Atelectasis, Pleural Effusion"
               " are present.")
    assert render("chexlocalize", CHEXLOCALIZE_EXAMPLE) == {
        "p0": [""],
        "p1": ["Airspace Opacity in a chest Xray."],
        "p2": ["Airspace Opacity in the frontal view of a Chest Xray."],
        "p3": ["Airspace Opacity of shape rectangle in the frontal view of a Chest Xray."],
        "p4": ["Airspace Opacity of shape rectangle, and located in right of the frontal view of a Chest Xray."],
        "p5": ["Airspace Opacity of shape rectangle, and located in right of the frontal view of a Chest Xray. "
               + present],
        "p6": ["Airspace Opacity in a Chest Xray. " + present],
    }


def test_chexlocalize_from_metadata():
    # Stored in any order and spelling, the positive findings come out as the paper lists them.
    metadata = {
        "finding": "airspace_opacity",
        "view": "Frontal",
        "positive_findings": "Pleural Effusion; atelectasis, Lung Opacity|Cardiomegaly,Consolidation,"
                             " Enlarged Cardiomediastinum",
    }
    attributes = chexlocalize_attributes(metadata)
    assert attributes == {key: CHEXLOCALIZE_EXAMPLE[key] for key in ("class_name", "view", "findings")}
    # The finding itself is not one of the "other" findings.
    cardiomegaly = chexlocalize_attributes({**metadata, "finding": "cardiomegaly"})
    assert cardiomegaly["class_name"] == "Cardiomegaly"
    assert "Cardiomegaly" not in cardiomegaly["findings"].split(", ")
    assert cardiomegaly["findings"].split(", ") == [
        name for name in CHEXPERT_OBSERVATIONS if name in CHEXLOCALIZE_EXAMPLE["findings"] and name != "Cardiomegaly"
    ]


def test_chexlocalize_without_other_findings_drops_the_sentence():
    alone = chexlocalize_attributes({"finding": "Edema", "view": "lateral", "positive_findings": "Edema"})
    assert alone == {"class_name": "Edema", "view": "lateral", "findings": ""}
    rendered = render("chexlocalize", {**alone, "shape": "oval", "location": "bottom"})
    assert rendered["p5"] == rendered["p4"] == [
        "Edema of shape oval, and located in bottom of the lateral view of a Chest Xray."
    ]
    assert rendered["p6"] == ["Edema in a Chest Xray."]


def test_chexlocalize_bad_metadata():
    good = {"finding": "Edema", "view": "frontal", "positive_findings": ""}
    with pytest.raises(ValueError, match="'finding' is 'Lung Opacity'"):
        chexlocalize_attributes({**good, "finding": "Lung Opacity"})  # a CheXpert label, not segmented
    with pytest.raises(ValueError, match="'view' is 'AP'"):
        chexlocalize_attributes({**good, "view": "AP"})
    with pytest.raises(ValueError, match="'positive_findings' names 'Oedema'"):
        chexlocalize_attributes({**good, "positive_findings": "Cardiomegaly, Oedema"})
    with pytest.raises(KeyError, match="no 'positive_findings'"):
        chexlocalize_attributes({"finding": "Edema", "view": "frontal"})


def test_mimic_report_is_p1_verbatim():
    report = "FINDINGS:  Heart size is normal.\nNo focal consolidation, effusion, or pneumothorax.\n"
    rendered = render("mimic", mimic_attributes({"report": report, "study_id": "s123"}))
    assert rendered == {"p0": [""], "p1": [report]}
    with pytest.raises(KeyError, match="MIMIC-CXR metadata has no 'report'"):
        mimic_attributes({"study_id": "s123"})
    with pytest.raises(ValueError, match="'report' is empty"):
        mimic_attributes({"report": " \n"})


# --- metadata conversions ---------------------------------------------------------------------


def test_numbers_and_ages_in_words():
    assert [number_in_words(n) for n in (0, 7, 13, 20, 21, 40, 56, 99)] == [
        "zero", "seven", "thirteen", "twenty", "twenty-one", "forty", "fifty-six", "ninety-nine"
    ]
    assert number_in_words(100) == "one hundred"
    assert number_in_words(105) == "one hundred and five"
    assert age_in_words(40) == "forty-year-old"
    assert age_in_words("56") == "fifty-six-year-old"
    assert age_in_words(" 18 ") == "eighteen-year-old"
    assert age_in_words(84) == "eighty-four-year-old"
    for bad in ("56.5", "-3", "", "fifty"):
        with pytest.raises(ValueError):
            age_in_words(bad)


CAMUS_METADATA = {"label": "1", "view": "2CH", "phase": "ED", "sex": "F", "age": "56", "image_quality": "Good"}


def test_camus_metadata():
    assert camus_attributes(CAMUS_METADATA) == {
        "class_name": "Left ventricular cavity", "view": "two-chamber", "cycle": "diastole", "sex": "female",
        "age": "fifty-six-year-old", "quality": "good",
    }
    other = {"label": "3", "view": "4ch", "phase": "ES", "sex": "M", "age": "73", "image_quality": "Poor"}
    assert camus_attributes(other) == {
        "class_name": "Left atrium cavity", "view": "four-chamber", "cycle": "systole", "sex": "male",
        "age": "seventy-three-year-old", "quality": "poor",
    }
    assert camus_attributes({**CAMUS_METADATA, "label": "2"})["class_name"] == "Myocardium"


def test_camus_bad_metadata_names_the_key():
    with pytest.raises(ValueError, match="CAMUS metadata 'label' is '4'; expected one of 1, 2, 3"):
        camus_attributes({**CAMUS_METADATA, "label": "4"})
    with pytest.raises(ValueError, match="'phase' is 'MID'"):
        camus_attributes({**CAMUS_METADATA, "phase": "MID"})
    with pytest.raises(ValueError, match="'age' is 'unknown'"):
        camus_attributes({**CAMUS_METADATA, "age": "unknown"})
    with pytest.raises(ValueError, match="'image_quality' is 'Excellent'"):
        camus_attributes({**CAMUS_METADATA, "image_quality": "Excellent"})
    without_sex = {key: value for key, value in CAMUS_METADATA.items() if key != "sex"}
    with pytest.raises(KeyError, match="CAMUS metadata has no 'sex'"):
        camus_attributes(without_sex)


def test_busi_metadata():
    assert busi_attributes({"tumor_type": "benign"}) == {
        "class_name": "tumor", "tumor_type": "benign", "regularity": "regular"
    }
    assert busi_attributes({"tumor_type": "Malignant"})["regularity"] == "irregular"
    assert busi_attributes({"tumor_type": "normal"}) == {"class_name": "tumor", "tumor_type": "normal"}
    with pytest.raises(ValueError, match="'tumor_type' is 'cyst'"):
        busi_attributes({"tumor_type": "cyst"})
    with pytest.raises(KeyError, match="BUSI metadata has no 'tumor_type'"):
        busi_attributes({})


def test_metadata_attributes_dispatches_by_family():
    assert metadata_attributes("camus", CAMUS_METADATA) == camus_attributes(CAMUS_METADATA)
    assert metadata_attributes("busi", {"tumor_type": "benign"})["regularity"] == "regular"
    assert metadata_attributes("non_radiology", {"objects": "2"}) == {}
    with pytest.raises(KeyError, match="unknown prompt family"):
        metadata_attributes("kvasir", {})
