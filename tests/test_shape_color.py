"""Shape words from mask geometry and colour words from the image under a mask.

Shapes are drawn with numpy at 15..150 px across and several rotations; colours are painted under
a mask on a noisy background.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from cli import require_reference
from PIL import Image
from scipy import ndimage

from datasets.synthetic import draw_scene
from prompts.appearance import (
    COLOR_PALETTE,
    MIN_SHAPE_PIXELS,
    SHAPE_WORDS,
    color_word,
    shape_measures,
    shape_word,
    srgb_to_lab,
)
from prompts.attributes import mask_attributes

KVASIR_ANNOTATIONS = (
    Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "medvlsm_anns" / "kvasir_polyp"
)

SIZES = (15, 24, 40, 70, 110, 150)  # px across
ANGLES = np.deg2rad((0, 17, 30, 45, 62, 80))

# --- drawing ----------------------------------------------------------------------------------


def canvas(across: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets from the centre of a square canvas with room around `across`."""
    side = int(across * 1.3) + 8
    rows, columns = np.mgrid[0:side, 0:side].astype(float)
    return rows - (side - 1) / 2, columns - (side - 1) / 2


def ellipse(across: float, aspect: float, angle: float) -> np.ndarray:
    """Filled ellipse `across` px along its major axis, tilted by `angle`."""
    rows, columns = canvas(across)
    along = columns * np.cos(angle) + rows * np.sin(angle)
    athwart = rows * np.cos(angle) - columns * np.sin(angle)
    semi_major = across / 2
    return (along / semi_major) ** 2 + (athwart * aspect / semi_major) ** 2 <= 1


def convex_polygon(points: list[tuple[float, float]], across: float) -> np.ndarray:
    """Pixels whose centres lie inside the convex polygon of (x, y) `points`, in either order."""
    rows, columns = canvas(across)
    sides = []
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
        sides.append((x1 - x0) * (rows - y0) - (y1 - y0) * (columns - x0))
    sides = np.stack(sides)
    return (sides >= 0).all(axis=0) | (sides <= 0).all(axis=0)


def rotated(points: list[tuple[float, float]], angle: float) -> list[tuple[float, float]]:
    cos, sin = np.cos(angle), np.sin(angle)
    return [(x * cos - y * sin, x * sin + y * cos) for x, y in points]


def rectangle(across: float, aspect: float, angle: float) -> np.ndarray:
    half_long, half_short = across / 2, across / 2 / aspect
    corners = [(half_long, half_short), (-half_long, half_short), (-half_long, -half_short),
               (half_long, -half_short)]
    return convex_polygon(rotated(corners, angle), across)


TRIANGLES = {  # corners in units of half the size across
    "equilateral": [(np.cos(t), np.sin(t)) for t in (0, 2 * np.pi / 3, 4 * np.pi / 3)],
    "right": [(-1, -0.8), (1, -0.8), (-1, 0.8)],
    "obtuse": [(-1, -0.3), (1, -0.4), (-0.2, 0.6)],
}


def triangle(across: float, kind: str, angle: float) -> np.ndarray:
    corners = [(across / 2 * x, across / 2 * y) for x, y in TRIANGLES[kind]]
    return convex_polygon(rotated(corners, angle), across)


def star(across: float, points: int, inner: float, angle: float) -> np.ndarray:
    """A `points`-pointed star, inner radius `inner` of the outer: a fan of triangles."""
    radii = [across / 2 if i % 2 == 0 else across / 2 * inner for i in range(2 * points)]
    tips = [(r * np.cos(angle + np.pi * i / points), r * np.sin(angle + np.pi * i / points))
            for i, r in enumerate(radii)]
    fan = [convex_polygon([(0.0, 0.0), tips[i], tips[(i + 1) % len(tips)]], across)
           for i in range(len(tips))]
    return np.logical_or.reduce(fan)


def lobed(across: float, lobes: int, depth: float, angle: float) -> np.ndarray:
    """A disk whose radius swings by +-`depth` of itself `lobes` times around."""
    rows, columns = canvas(across)
    radius = across / 2 / (1 + depth)
    theta = np.arctan2(rows, columns) - angle
    return np.hypot(rows, columns) <= radius * (1 + depth * np.cos(lobes * theta))


def merged_disks(across: float, angle: float) -> np.ndarray:
    """Four overlapping disks around a smaller central one: a lumpy blob."""
    rows, columns = canvas(across)
    radius = across / 2
    blob = np.hypot(rows, columns) <= 0.3 * radius
    for k, size in enumerate((0.45, 0.35, 0.42, 0.3)):
        theta = angle + k * np.pi / 2
        centre_y, centre_x = 0.55 * radius * np.sin(theta), 0.55 * radius * np.cos(theta)
        blob |= np.hypot(rows - centre_y, columns - centre_x) <= size * radius
    return blob


DRAWN_SHAPES = {
    "disk": ("round", lambda s, a: ellipse(s, 1.0, a)),
    "ellipse 1.15": ("round", lambda s, a: ellipse(s, 1.15, a)),
    "ellipse 1.5": ("oval", lambda s, a: ellipse(s, 1.5, a)),
    "ellipse 2": ("oval", lambda s, a: ellipse(s, 2.0, a)),
    "equilateral triangle": ("triangular", lambda s, a: triangle(s, "equilateral", a)),
    "right triangle": ("triangular", lambda s, a: triangle(s, "right", a)),
    "obtuse triangle": ("triangular", lambda s, a: triangle(s, "obtuse", a)),
    "square": ("rectangular", lambda s, a: rectangle(s, 1.0, a)),
    "rectangle 1.6": ("rectangular", lambda s, a: rectangle(s, 1.6, a)),
    "rectangle 3": ("rectangular", lambda s, a: rectangle(s, 3.0, a)),
    "five-pointed star": ("irregular", lambda s, a: star(s, 5, 0.45, a)),
    "four-pointed star": ("irregular", lambda s, a: star(s, 4, 0.5, a)),
    "six-lobed blob": ("irregular", lambda s, a: lobed(s, 6, 0.2, a)),
    "merged disks": ("irregular", merged_disks),
}


def jpeg_round_trip(mask: np.ndarray, quality: int = 60) -> np.ndarray:
    """The mask as Kvasir ships masks: JPEG-compressed, then thresholded at 127."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue()))) > 127


# --- shape words ------------------------------------------------------------------------------


def test_shape_vocabulary_holds_the_studys_main_words():
    assert set(SHAPE_WORDS) == {"round", "oval", "triangular", "rectangular", "irregular"}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", DRAWN_SHAPES)
def test_drawn_shape_gets_its_word_at_every_rotation(name, size):
    expected, draw = DRAWN_SHAPES[name]
    words = {round(float(np.rad2deg(angle))): shape_word(draw(size, angle)) for angle in ANGLES}
    assert all(word == expected for word in words.values()), (name, size, words)


@pytest.mark.parametrize("size", (24, 40, 70, 150))
def test_elongated_ellipse_is_oval(size):
    # Aspect 3 at 15 px across is a 5-px-high sliver, too coarse to tell from a bar.
    assert {shape_word(ellipse(size, 3.0, angle)) for angle in ANGLES} == {"oval"}


@pytest.mark.parametrize("name", ["disk", "ellipse 2", "equilateral triangle", "rectangle 1.6",
                                  "five-pointed star", "merged disks"])
def test_jpeg_compressed_masks_keep_their_word(name):
    expected, draw = DRAWN_SHAPES[name]
    for size in (30, 70, 150):
        for angle in ANGLES[::2]:
            assert shape_word(jpeg_round_trip(draw(size, angle))) == expected, (name, size, angle)


def ragged(mask: np.ndarray, seed: int) -> np.ndarray:
    """`mask` with a pixel-level ragged outline: blurred, noised, re-thresholded, holes filled."""
    noise = np.random.default_rng(seed).normal(0, 0.15, mask.shape)
    rough = ndimage.gaussian_filter(mask.astype(float), 1.0) + noise > 0.5
    labels, _ = ndimage.label(rough)
    largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(largest)


@pytest.mark.parametrize("name", ["disk", "ellipse 2", "equilateral triangle", "square",
                                  "five-pointed star"])
def test_ragged_outlines_keep_their_word(name):
    # Hand-drawn or lossy masks wobble pixel by pixel; that must not read as "irregular".
    expected, draw = DRAWN_SHAPES[name]
    for size in (70, 110, 150):
        for seed, angle in enumerate(ANGLES):
            assert shape_word(ragged(draw(size, angle), seed)) == expected, (name, size, seed)


def test_word_does_not_depend_on_position_dtype_or_frame():
    disk = ellipse(40, 1.0, 0.0)
    big = np.zeros((300, 400), dtype=np.uint8)
    big[200 : 200 + disk.shape[0], 10 : 10 + disk.shape[1]] = disk * 255
    assert shape_word(disk) == shape_word(big) == shape_word(big > 0) == shape_word(big // 255)
    triangle_mask = triangle(60, "equilateral", 0.3)
    assert shape_word(np.pad(triangle_mask, ((0, 50), (120, 0)))) == "triangular"


def test_an_ellipse_cut_by_the_frame_is_still_oval():
    # Polyps run off the image edge; a flat side from the frame must not make the ellipse a polygon.
    assert shape_word(ellipse(80, 2.0, 0.4)[:, 10:]) == "oval"


def test_circularity_is_not_fooled_by_pixel_staircases():
    # Counting pixel edges would measure the 45-degree square's outline sqrt(2) times too long
    # (circularity ~0.39 instead of pi/4) and a disk's 4/pi too long (~0.62 instead of 1). Here a
    # square reads 0.8-0.95 at any rotation (smoothing rounds its corners a little).
    squares = [shape_measures(rectangle(100, 1.0, angle)).circularity for angle in ANGLES]
    assert all(0.75 < circularity < 0.97 for circularity in squares), squares
    assert max(squares) - min(squares) < 0.15
    for size in (40, 150):
        assert shape_measures(ellipse(size, 1.0, 0.0)).circularity == pytest.approx(1.0, abs=0.05)


def test_principal_axes_and_fits_measure_what_they_say():
    measures = shape_measures(ellipse(120, 2.0, np.deg2rad(33)))
    assert measures.aspect == pytest.approx(2.0, rel=0.05)
    assert measures.solidity == pytest.approx(1.0, abs=0.01)
    assert measures.triangle_fit == pytest.approx(0.413, abs=0.02)  # 3 sqrt(3) / (4 pi)
    assert measures.rectangle_fit == pytest.approx(np.pi / 4, abs=0.03)
    square = shape_measures(rectangle(120, 1.0, np.deg2rad(20)))
    assert square.rectangle_fit > 0.97 and square.triangle_fit == pytest.approx(0.5, abs=0.03)
    assert shape_measures(triangle(120, "equilateral", 0.7)).triangle_fit > 0.8  # corners smoothed
    assert shape_measures(star(120, 5, 0.45, 0.0)).solidity < 0.8


def test_round_and_oval_split_at_axis_ratio_1_3():
    assert shape_word(ellipse(100, 1.2, 0.5)) == "round"
    assert shape_word(ellipse(100, 1.4, 0.5)) == "oval"


def test_specks_are_round_and_thin_bars_rectangular():
    speck = np.zeros((10, 10), dtype=bool)
    speck[4:7, 3:7] = True  # 12 px < MIN_SHAPE_PIXELS
    assert speck.sum() < MIN_SHAPE_PIXELS
    assert shape_word(speck) == "round"
    bar = np.zeros((12, 60), dtype=bool)
    bar[6, 5:55] = True  # one pixel wide: the hull of its pixel centres is a line
    assert shape_word(bar) == "rectangular"
    assert shape_word(bar.T) == "rectangular"


def test_shape_of_empty_or_non_2d_mask_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        shape_word(np.zeros((20, 20), dtype=bool))
    with pytest.raises(ValueError, match="2-D"):
        shape_word(np.ones((20, 20, 3), dtype=bool))


# --- colour words -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rgb", "lab"),
    [
        ((255, 255, 255), (100.0, 0.0, 0.0)),
        ((0, 0, 0), (0.0, 0.0, 0.0)),
        ((128, 128, 128), (53.585, 0.0, 0.0)),
        ((255, 0, 0), (53.241, 80.092, 67.203)),
        ((0, 255, 0), (87.735, -86.183, 83.179)),
        ((0, 0, 255), (32.297, 79.188, -107.860)),
    ],
)
def test_srgb_to_lab_matches_reference_values(rgb, lab):
    assert srgb_to_lab(np.array(rgb)) == pytest.approx(lab, abs=0.02)


def test_srgb_to_lab_keeps_leading_dimensions():
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    assert srgb_to_lab(image).shape == (4, 5, 3)


def test_palette_covers_the_studys_colour_words():
    assert {"white", "yellow", "brown", "pink", "orange", "tan", "red", "black"} <= set(COLOR_PALETTE)


def test_palette_covers_every_colour_word_the_released_kvasir_prompts_repeat():
    require_reference(KVASIR_ANNOTATIONS, "released Kvasir annotations")
    counts: dict[str, int] = {}
    for split in ("train", "val", "test"):
        for record in json.loads((KVASIR_ANNOTATIONS / f"{split}.json").read_text()):
            prompts = record["prompts"]
            colour = prompts["p3"].removesuffix(" " + prompts["p2"])
            counts[colour] = counts.get(colour, 0) + 1
    repeated = {colour for colour, count in counts.items() if count >= 2}
    assert repeated and repeated <= set(COLOR_PALETTE)


def painted(rgb: tuple[int, int, int], seed: int, background: str = "noise") -> tuple[np.ndarray, np.ndarray]:
    """A 90 x 120 image: `rgb` with +-12 noise inside a disk mask; outside, `background`."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:90, 0:120]
    mask = np.hypot(rows - 40, columns - 70) <= 25
    if background == "noise":
        image = rng.integers(0, 256, size=(90, 120, 3))
    else:
        image = np.broadcast_to(np.array(COLOR_PALETTE[background]), (90, 120, 3)).copy()
    inside = np.array(rgb) + rng.integers(-12, 13, size=(int(mask.sum()), 3))
    image[mask] = inside
    return np.clip(image, 0, 255).astype(np.uint8), mask


@pytest.mark.parametrize("name", COLOR_PALETTE)
def test_painted_palette_colour_gets_its_name(name):
    for seed in range(3):
        image, mask = painted(COLOR_PALETTE[name], seed)
        assert color_word(image, mask) == name
        assert color_word(image, mask.astype(np.uint8) * 255) == name


@pytest.mark.parametrize("name", COLOR_PALETTE)
def test_background_outside_the_mask_does_not_change_the_answer(name):
    answers = set()
    for background in ["noise", *COLOR_PALETTE]:
        image, mask = painted(COLOR_PALETTE[name], seed=7, background=background)
        answers.add(color_word(image, mask))
    assert answers == {name}
    # Flooding everything outside the mask with another palette colour changes nothing.
    image, mask = painted(COLOR_PALETTE[name], seed=7)
    rival = "white" if name != "white" else "gray"
    image[~mask] = COLOR_PALETTE[rival]
    assert color_word(image, mask) == name


@pytest.mark.parametrize("name", COLOR_PALETTE)
@pytest.mark.parametrize("brightness", (0.8, 1.15))
def test_shading_keeps_the_name(name, brightness):
    # Endoscope light falls off: the same surface is seen darker or brighter.
    shaded = tuple(min(255, round(channel * brightness)) for channel in COLOR_PALETTE[name])
    image, mask = painted(shaded, seed=3)
    assert color_word(image, mask) == name


def test_specular_highlights_do_not_tint_the_colour():
    image, mask = painted(COLOR_PALETTE["red"], seed=5)
    rows, columns = np.nonzero(mask)
    glare = np.random.default_rng(0).random(rows.size) < 0.3  # 30% blown-out white pixels
    image[rows[glare], columns[glare]] = 255
    assert color_word(image, mask) == "red"


def test_colour_of_a_bad_image_or_mask_is_an_error():
    image, mask = painted(COLOR_PALETTE["pink"], seed=0)
    with pytest.raises(ValueError, match="empty"):
        color_word(image, np.zeros_like(mask))
    with pytest.raises(ValueError, match="uint8"):
        color_word(image.astype(np.float32), mask)
    with pytest.raises(ValueError, match="H x W x 3"):
        color_word(image[:, :, 0], mask)
    with pytest.raises(ValueError, match="H x W x 3"):
        color_word(np.dstack([image, image[:, :, :1]]), mask)
    with pytest.raises(ValueError, match="mask"):
        color_word(image, mask[:, :-1])


# --- both, on whole masks ---------------------------------------------------------------------


def test_mask_attributes_add_shape_and_colour_only_when_given_the_image():
    image, disk = painted(COLOR_PALETTE["yellow"], seed=2)
    mask = disk.astype(np.uint8) * 255
    mask[75:85, 5:17] = 255  # a small square: fewer pixels than the disk
    image[75:85, 5:17] = COLOR_PALETTE["yellow"]
    without = mask_attributes(mask)
    with_image = mask_attributes(mask, image)
    assert (without.shape, without.color) == (None, None)
    assert (with_image.number, with_image.sizes, with_image.locations) == (
        without.number, without.sizes, without.locations,
    )
    assert (with_image.shape, with_image.color) == ("round", "yellow")


def test_mask_attributes_of_an_empty_mask_with_an_image():
    image, mask = painted(COLOR_PALETTE["tan"], seed=1)
    attributes = mask_attributes(np.zeros_like(mask), image)
    assert (attributes.number, attributes.shape, attributes.color) == ("zero", "", "")
    with pytest.raises(ValueError, match="mask"):
        mask_attributes(np.zeros((10, 10), dtype=bool), image)


def test_stand_ins_agree_with_the_synthetic_generator():
    # The generator knows each lump's colour and shape (round or oval); lumps are shaded, blended
    # with the wall and carry a specular spot, as polyps do.
    for index in range(40):
        scene = draw_scene(np.random.default_rng([17, index]), two_objects=index % 2 == 1)
        for lump in scene.objects:
            assert shape_word(lump.mask) == lump.shape, index
            assert color_word(scene.image, lump.mask) == lump.color, index
