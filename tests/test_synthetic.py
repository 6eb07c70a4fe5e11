"""The synthetic polyp generator: deterministic, well-formed rows whose prompts tell the truth."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from datasets.synthetic import (
    MUCOSA_RGB,
    PALETTE,
    SIDE_RANGE,
    SYNTHETIC_DATASETS,
    draw_scene,
    synthetic_rows,
)
from prompts.templates import CLASS_DESCRIPTIONS

ROW_KEYS = {
    "sample_id", "dataset", "split", "image", "mask", "height", "width", "class_name",
    "p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "metadata",
}
CELL_NAMES = (
    "top left", "top", "top right", "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)


def rows_of(dataset: str, split: str = "train", n: int = 40, seed: int = 0) -> list[dict]:
    fraction = SYNTHETIC_DATASETS[dataset]["two_object_fraction"]
    return list(synthetic_rows(dataset, split, n, fraction, seed))


def decode_image(row: dict) -> np.ndarray:
    image = Image.open(io.BytesIO(row["image"]))
    assert image.format == "JPEG" and image.mode == "RGB"
    return np.asarray(image)


def decode_mask(row: dict) -> np.ndarray:
    mask = Image.open(io.BytesIO(row["mask"]))
    assert mask.format == "PNG" and mask.mode == "L"
    return np.asarray(mask)


def colour_classes(image: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Nearest named colour per pixel by chromaticity (r, g, b over their sum), blind to shading."""
    names = [*PALETTE, "mucosa"]
    references = np.array([*PALETTE.values(), MUCOSA_RGB], dtype=float)
    references /= references.sum(axis=1, keepdims=True)
    pixels = image.astype(float)
    chroma = pixels / np.maximum(pixels.sum(axis=2, keepdims=True), 1)
    distances = ((chroma[:, :, None, :] - references[None, None]) ** 2).sum(axis=-1)
    return distances.argmin(axis=-1), names


def cell_pixel_counts(mask: np.ndarray) -> np.ndarray:
    height, width = mask.shape
    rows, columns = np.nonzero(mask)
    row_band = (rows >= height // 3).astype(int) + (rows >= 2 * height // 3)
    column_band = (columns >= width // 3).astype(int) + (columns >= 2 * width // 3)
    return np.bincount(3 * row_band + column_band, minlength=9)


def test_dataset_specs():
    assert set(SYNTHETIC_DATASETS) == {"synth_polyp", "synth_pairs"}
    assert SYNTHETIC_DATASETS["synth_polyp"]["two_object_fraction"] == 0.25
    assert SYNTHETIC_DATASETS["synth_pairs"]["two_object_fraction"] == 1.0
    for spec in SYNTHETIC_DATASETS.values():
        assert spec["split_sizes"] == {"train": 160, "val": 40, "test": 40}


@pytest.mark.parametrize("dataset", sorted(SYNTHETIC_DATASETS))
def test_rows_have_exact_keys_and_types(dataset):
    rows = rows_of(dataset, "val", n=12)
    assert len(rows) == 12
    assert [row["sample_id"] for row in rows] == [f"{dataset}-val-{i:05d}" for i in range(12)]
    for row in rows:
        assert set(row) == ROW_KEYS
        assert (row["dataset"], row["split"], row["class_name"]) == (dataset, "val", "polyp")
        assert isinstance(row["image"], bytes) and isinstance(row["mask"], bytes)
        assert type(row["height"]) is int and type(row["width"]) is int
        for prompt_type in (f"p{i}" for i in range(10)):
            assert isinstance(row[prompt_type], list)
            assert all(isinstance(text, str) for text in row[prompt_type])
        assert row["p0"] == [""] and row["p1"] == ["polyp"]
        assert [len(row[f"p{i}"]) for i in range(1, 10)] == [1] * 6 + [5] * 3
        assert isinstance(row["metadata"], dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in row["metadata"].items())


def test_rows_are_deterministic_and_seeded():
    first = rows_of("synth_polyp", "train", n=8, seed=3)
    again = rows_of("synth_polyp", "train", n=8, seed=3)
    assert first == again
    other_seed = rows_of("synth_polyp", "train", n=8, seed=4)
    other_split = rows_of("synth_polyp", "test", n=8, seed=3)
    assert all(a["image"] != b["image"] for a, b in zip(first, other_seed, strict=True))
    assert all(a["image"] != b["image"] for a, b in zip(first, other_split, strict=True))
    # Row i depends on its index only, so a shorter run is a prefix of a longer one.
    assert rows_of("synth_polyp", "train", n=3, seed=3) == first[:3]


@pytest.mark.parametrize("dataset", sorted(SYNTHETIC_DATASETS))
def test_images_and_masks_agree_in_size_and_masks_are_binary(dataset):
    for row in rows_of(dataset, n=30):
        image, mask = decode_image(row), decode_mask(row)
        assert image.shape == (row["height"], row["width"], 3)
        assert mask.shape == (row["height"], row["width"])
        assert row["height"] != row["width"]
        assert SIDE_RANGE[0] <= min(mask.shape) and max(mask.shape) <= SIDE_RANGE[1]
        assert set(np.unique(mask)) == {0, 255}


def test_two_object_fraction_and_target_choice():
    polyp_rows = rows_of("synth_polyp", n=160)
    pairs = sum(row["metadata"]["objects"] == "2" for row in polyp_rows)
    assert 20 <= pairs <= 60  # 25% of 160 is 40
    pair_rows = rows_of("synth_pairs", n=160)
    assert all(row["metadata"]["objects"] == "2" for row in pair_rows)
    # The target is the larger ("medium") lump about half the time, the smaller one otherwise.
    larger = sum(row["p4"][0].startswith("medium ") for row in pair_rows)
    smaller = sum(row["p4"][0].startswith("small ") for row in pair_rows)
    assert larger + smaller == 160
    assert 55 <= larger <= 105


def test_pair_images_show_two_lumps_with_only_the_target_in_the_mask():
    for row in rows_of("synth_pairs", "test", n=40, seed=11):
        image, mask = decode_image(row), decode_mask(row) > 0
        height, width = mask.shape
        metadata = row["metadata"]
        classes, names = colour_classes(image)

        # The mask is one lump, of the target's colour, on the side the metadata names.
        assert ndimage.label(mask)[1] == 1
        inside = np.bincount(classes[mask], minlength=len(names))
        assert names[inside.argmax()] == metadata["target_color"]
        mask_side = "left" if np.nonzero(mask)[1].mean() < width / 2 else "right"
        assert mask_side == metadata["target"]

        # The image holds a second lump outside the mask: a sizeable patch of the distractor's
        # colour on the other side.
        distractor = (classes == names.index(metadata["distractor_color"])) & ~mask
        labels, count = ndimage.label(distractor)
        assert count > 0
        sizes = np.bincount(labels.ravel())[1:]
        patch = labels == 1 + sizes.argmax()
        assert sizes.max() >= 0.006 * height * width
        patch_side = "left" if np.nonzero(patch)[1].mean() < width / 2 else "right"
        assert patch_side != metadata["target"]


def test_scenes_hold_distinct_lumps():
    for index in range(60):
        scene = draw_scene(np.random.default_rng(index), two_objects=index % 3 != 0)
        height, width, _ = scene.image.shape
        for lump in scene.objects:
            assert lump.mask.shape == (height, width) and lump.mask.any()
            rows, columns = np.nonzero(lump.mask)
            spread = np.cov(np.stack([rows, columns]).astype(float))
            aspect = np.sqrt(np.linalg.eigvalsh(spread)[::-1])
            assert lump.shape == ("oval" if aspect[0] / aspect[1] >= 1.3 else "round")
        if len(scene.objects) == 1:
            assert scene.objects[0].side == "whole" and scene.target == 0
            continue
        first, second = scene.objects
        assert not (first.mask & second.mask).any()
        assert first.color != second.color
        assert {first.side, second.side} == {"left", "right"}
        ratios = sorted(lump.mask.mean() for lump in scene.objects)
        assert ratios[0] <= 0.08 < ratios[1]  # "small" against "medium": sizes always differ
        for lump in scene.objects:
            centre_column = np.nonzero(lump.mask)[1].mean()
            assert (centre_column < width / 2) == (lump.side == "left")


@pytest.mark.parametrize("dataset", sorted(SYNTHETIC_DATASETS))
def test_prompts_describe_the_mask(dataset):
    for row in rows_of(dataset, "train", n=40, seed=5):
        mask = decode_mask(row) > 0
        metadata = row["metadata"]
        ratio = mask.mean()
        size = "large" if ratio > 0.30 else "medium" if ratio > 0.08 else "small"
        assert ratio >= 0.001  # never "tiny": the generator draws no specks
        location = row["p6"][0].partition(", located in ")[2].removesuffix(" of the image")
        assert location in CELL_NAMES
        counts = cell_pixel_counts(mask)
        assert counts[CELL_NAMES.index(location)] > 0
        if np.count_nonzero(counts) == 1:
            assert counts[CELL_NAMES.index(location)] == counts.sum()
        shape, colour = metadata["target_shape"], metadata["target_color"]
        p5 = f"one {size} {colour} {shape} polyp"
        assert row["p5"] == [p5]
        assert row["p6"] == [f"{p5}, located in {location} of the image"]
        assert row["p9"] == [
            f"{p5} which is {d} located in {location} of the image"
            for d in CLASS_DESCRIPTIONS["polyp"]
        ]


def test_generation_is_fast():
    start = time.perf_counter()
    rows = rows_of("synth_pairs", n=50)
    elapsed = time.perf_counter() - start
    assert len(rows) == 50
    assert elapsed < 1.0  # about 2.5 ms a row here; the bound leaves room for slow machines
