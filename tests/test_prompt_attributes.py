"""Mask attributes follow the study's rules; templates reproduce the released Kvasir prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli import require_reference

from prompts.attributes import (
    GRID_CELL_NAMES,
    components,
    location_word,
    mask_attributes,
    number_word,
    size_word,
)
from prompts.templates import (
    CLASS_DESCRIPTIONS,
    NON_RADIOLOGY_PROMPT_TYPES,
    render_non_radiology,
)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
KVASIR_ANNOTATIONS = REFERENCE / "medvlsm_anns" / "kvasir_polyp"


def blank(height: int = 90, width: int = 120) -> np.ndarray:
    return np.zeros((height, width), dtype=np.uint8)


def with_box(mask: np.ndarray, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """`mask` with rows top..bottom-1 and columns left..right-1 set to 255."""
    mask = mask.copy()
    mask[top:bottom, left:right] = 255
    return mask


# --- components -------------------------------------------------------------------------------


def test_components_are_four_connected_and_in_label_order():
    mask = blank(10, 10)
    mask[0, 0] = mask[1, 1] = 255  # touch only at a corner: two components
    mask = with_box(mask, 5, 2, 8, 9)
    parts = components(mask)
    assert len(parts) == 3
    assert [int(part.sum()) for part in parts] == [1, 1, 21]
    assert parts[0][0, 0] and parts[1][1, 1] and parts[2][6, 5]
    assert not np.logical_and(parts[0], parts[1]).any()


def test_components_accept_boolean_and_zero_one_masks():
    mask = with_box(blank(20, 20), 2, 2, 6, 6)
    assert len(components(mask > 0)) == 1
    assert len(components((mask > 0).astype(np.uint8))) == 1
    assert components(blank()) == []


# --- number and size words --------------------------------------------------------------------


def test_number_words():
    assert number_word(1) == "one"
    assert number_word(2) == "two"
    assert number_word(10) == "ten"
    assert number_word(19) == "nineteen"
    assert number_word(20) == "20"
    assert number_word(0) == "zero"


@pytest.mark.parametrize(
    ("ratio", "word"),
    [
        (0.5, "large"),
        (0.3000001, "large"),
        (0.30, "medium"),
        (0.0800001, "medium"),
        (0.08, "small"),
        (0.001, "small"),
        (0.000999, "tiny"),
        (0.00011, "tiny"),
        (0.0001, None),
        (0.0, None),
    ],
)
def test_size_word_thresholds(ratio, word):
    assert size_word(ratio) == word


# --- location words ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", range(9))
def test_component_inside_one_cell_takes_that_cell(cell):
    # 90 x 120 image: cells are 30 rows x 40 columns.
    row, column = divmod(cell, 3)
    mask = with_box(blank(), 30 * row + 5, 40 * column + 5, 30 * row + 25, 40 * column + 35)
    assert location_word(mask > 0) == GRID_CELL_NAMES[cell]


def test_grid_cell_names_are_the_studys():
    assert GRID_CELL_NAMES == (
        "top left", "top", "top right", "left", "center", "right",
        "bottom left", "bottom", "bottom right",
    )


def test_cell_edges_are_integer_thirds():
    # 100 rows: bands are rows 0-32, 33-65, 66-99 (edges int(100/3)=33 and int(200/3)=66).
    mask = with_box(blank(100, 99), 33, 40, 66, 60)
    assert location_word(mask > 0) == "center"
    assert location_word(with_box(blank(100, 99), 32, 40, 33, 60) > 0) == "top"
    assert location_word(with_box(blank(100, 99), 66, 40, 67, 60) > 0) == "bottom"


def test_spread_component_with_one_significant_cell_takes_it():
    # 600 pixels in "center" (rows 35-54, columns 45-74) and a 3 x 10 tail whose last 15 pixels
    # reach "right": 15 / 630 < 10%, so only "center" is significant.
    mask = with_box(blank(), 35, 45, 55, 75)
    mask = with_box(mask, 40, 75, 43, 85)
    assert location_word(mask > 0) == "center"


def test_spread_component_with_several_significant_cells_takes_bounding_box_centre():
    # Rows 10-49 span "top" and "center" bands about equally; columns 45-74 are in "center".
    # Both cells hold >= 10%, the box centre (row 29.5, column 59.5) is in "top".
    mask = with_box(blank(), 10, 45, 50, 75)
    assert location_word(mask > 0) == "top"
    # An L shape whose bulk sits in "top left" but whose box centre falls in "center".
    mask = with_box(blank(), 2, 2, 28, 38)
    mask = with_box(mask, 28, 30, 70, 38)
    mask = with_box(mask, 62, 38, 70, 86)
    rows, columns = np.nonzero(mask)
    shares = np.bincount(3 * (rows // 30) + columns // 40, minlength=9) / rows.size
    assert shares[0] > 0.5 and (shares >= 0.1).sum() > 1
    assert location_word(mask > 0) == "center"


def test_study_quirk_splits_bounding_box_columns_by_height():
    # Wide image 90 x 300: the component straddles "left" (columns 80-99) and "center"
    # (100-139), both >= 10%; its box centre column 109.5 is in the middle third of the width
    # (100-200) but beyond two thirds of the height (60).
    mask = with_box(blank(90, 300), 35, 80, 55, 140)
    assert location_word(mask > 0) == "center"
    assert location_word(mask > 0, height_thirds_for_columns=True) == "right"


def test_location_of_empty_component_is_an_error():
    with pytest.raises(ValueError):
        location_word(blank() > 0)


# --- whole-mask attributes --------------------------------------------------------------------


def test_single_blob_attributes():
    # 20 x 30 = 600 pixels of 10800: ratio 0.056 -> small, inside the "top right" cell.
    attributes = mask_attributes(with_box(blank(), 5, 85, 25, 115))
    assert (attributes.number, attributes.sizes, attributes.locations) == (
        "one", "small", "top right",
    )


def test_several_components_with_a_speck():
    mask = with_box(blank(), 60, 0, 90, 40)  # 1200 px = 0.111: medium, "bottom left"
    mask = with_box(mask, 5, 85, 15, 95)  # 100 px = 0.0093: small, "top right"
    mask[45, 60] = 255  # 1 px = 0.000093 <= 0.0001: no size, still counted and located
    mask = with_box(mask, 50, 100, 53, 104)  # 12 px = 0.0011: small, "right"
    attributes = mask_attributes(mask)
    assert attributes.number == "four"
    assert attributes.sizes == "small, medium"
    # Label order is raster order of each component's first pixel.
    assert attributes.locations == "top right, center, right, bottom left"


def test_tiny_components_and_size_order():
    mask = with_box(blank(), 0, 0, 60, 120)  # 7200 px = 0.667: large
    mask = with_box(mask, 80, 10, 82, 13)  # 6 px = 0.00056: tiny
    attributes = mask_attributes(mask)
    assert attributes.number == "two"
    assert attributes.sizes == "tiny, large"
    assert attributes.locations == "top, bottom left"


def test_repeated_sizes_are_listed_once():
    mask = with_box(blank(), 5, 5, 15, 15)
    mask = with_box(mask, 70, 100, 80, 110)
    attributes = mask_attributes(mask)
    assert (attributes.number, attributes.sizes, attributes.locations) == (
        "two", "small", "top left, bottom right",
    )


def test_empty_mask_attributes():
    attributes = mask_attributes(blank())
    assert (attributes.number, attributes.sizes, attributes.locations) == ("zero", "", "")


# --- templates --------------------------------------------------------------------------------


def test_every_class_has_five_descriptions():
    assert set(CLASS_DESCRIPTIONS) == {"polyp", "skin melanoma", "foot ulcer"}
    assert all(len(descriptions) == 5 for descriptions in CLASS_DESCRIPTIONS.values())


def test_render_shapes_and_examples():
    prompts = render_non_radiology("polyp", "round", "yellow", "medium", "one", "right")
    assert tuple(prompts) == NON_RADIOLOGY_PROMPT_TYPES
    assert prompts["p0"] == [""]
    assert all(len(prompts[f"p{i}"]) == 1 for i in range(1, 7))
    assert all(len(prompts[f"p{i}"]) == 5 for i in range(7, 10))
    assert prompts["p6"] == ["one medium yellow round polyp, located in right of the image"]
    assert prompts["p7"][0] == "polyp which is a projecting growth of tissue"
    white_top = render_non_radiology("polyp", "round", "white", "medium", "one", "top")
    assert white_top["p9"][0] == (
        "one medium white round polyp which is a projecting growth of tissue"
        " located in top of the image"
    )


def test_render_other_classes_and_empty_size():
    prompts = render_non_radiology("foot ulcer", "oval", "red", "", "one", "center")
    assert prompts["p5"] == ["one red oval foot ulcer"]
    assert prompts["p8"][0] == "one red oval foot ulcer which is a wound in foot and toes"
    with pytest.raises(KeyError):
        render_non_radiology("tumour", "round", "white", "small", "one", "top")


def load_kvasir_records() -> list[dict]:
    require_reference(KVASIR_ANNOTATIONS, "released Kvasir annotations")
    records = []
    for split in ("train", "val", "test"):
        records += json.loads((KVASIR_ANNOTATIONS / f"{split}.json").read_text())
    return records


def attributes_from_released(prompts: dict) -> dict[str, str]:
    """Undo the templates: each of P2-P6 adds one word group in front of (or after) the last."""
    shape = prompts["p2"].removesuffix(" polyp")
    color = prompts["p3"].removesuffix(" " + prompts["p2"])
    size = prompts["p4"].removesuffix(" " + prompts["p3"])
    number = prompts["p5"].removesuffix(" " + prompts["p4"])
    location = prompts["p6"].removeprefix(prompts["p5"] + ", located in ")
    location = location.removesuffix(" of the image")
    return {"shape": shape, "color": color, "size": size, "number": number, "location": location}


def test_released_polyp_descriptions_are_kept_verbatim():
    records = load_kvasir_records()
    released = [text.removeprefix("polyp which is ") for text in records[0]["prompts"]["p7"]]
    assert list(CLASS_DESCRIPTIONS["polyp"]) == released


def test_rendering_reproduces_every_released_kvasir_prompt():
    records = load_kvasir_records()
    assert len(records) == 1000
    for record in records:
        released = record["prompts"]
        rendered = render_non_radiology("polyp", **attributes_from_released(released))
        as_lists = {
            key: value if isinstance(value, list) else [value] for key, value in released.items()
        }
        assert rendered == as_lists, record["img_name"]


def test_released_attribute_words_match_the_rules_vocabulary():
    # The released number, size and location words are ones this module can produce (colour and
    # shape came from a VQA model and are free text).
    records = load_kvasir_records()
    size_words = {"tiny", "small", "medium", "large"}
    for record in records:
        attributes = attributes_from_released(record["prompts"])
        assert attributes["number"] in {number_word(n) for n in range(1, 20)}
        assert set(attributes["size"].split(", ")) <= size_words
        assert set(attributes["location"].split(", ")) <= set(GRID_CELL_NAMES)
