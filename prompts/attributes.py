"""Number, size and location attributes of a binary mask, by the study's rules.

The study wrote these attributes into its non-radiology prompts (P2-P6, P8, P9), following its
rules (`shared/reference/DATA-FACTS.md`, "Attributes from masks"). Shape and colour, which came
from a VQA model, have stand-ins in `prompts.appearance`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from prompts.appearance import FOUR_CONNECTIVITY, check_image_and_mask, color_word, shape_word

# Edge-sharing neighbours only: diagonal contact does not join two components.

NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)

# Row-major, so index = 3 * grid_row + grid_column.
GRID_CELL_NAMES = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)

SIZE_ORDER = ("tiny", "small", "medium", "large")

# A cell "holds" a spread-out component when it has at least this share of the component's pixels.
SIGNIFICANT_CELL_SHARE = 0.10


@dataclass(frozen=True)
class MaskAttributes:
    """The words a prompt template takes from a mask."""

    number: str  # "one", "two", ...: count of components, specks included
    sizes: str  # distinct size words in SIZE_ORDER, ", "-joined; "" when none qualifies
    locations: str  # one grid-cell name per component in label order, ", "-joined
    # Only when `mask_attributes` is given the image; "" when the mask is empty.
    shape: str | None = None  # `shape_word` of the largest component
    color: str | None = None  # `color_word` of the image under the whole mask


def components(mask: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of the 4-connected foreground components, in label (raster-scan) order.

    Foreground is every non-zero pixel: threshold lossy (JPEG) masks before calling.
    """
    labels, count = ndimage.label(np.asarray(mask) != 0, structure=FOUR_CONNECTIVITY)
    return [labels == label for label in range(1, count + 1)]


def number_word(n: int) -> str:
    """English word for 0..19 ("one" ... "nineteen"); digits beyond."""
    if 0 <= n < len(NUMBER_WORDS):
        return NUMBER_WORDS[n]
    return str(n)


def size_word(area_ratio: float) -> str | None:
    """Size of one component from its area over the image area; None for specks (<= 0.0001)."""
    if area_ratio <= 0.0001:
        return None
    if area_ratio > 0.30:
        return "large"
    if area_ratio > 0.08:
        return "medium"
    if area_ratio < 0.001:
        return "tiny"
    return "small"


def _grid_index(coordinate: np.ndarray | float, extent: int) -> np.ndarray:
    """Row or column band (0, 1, 2) of pixel coordinates, band edges at int(extent / 3)."""
    edges = (int(extent / 3), int(2 * extent / 3))
    return np.searchsorted(edges, coordinate, side="right")


def _band_of_centre(centre: float, extent: int) -> int:
    """Band of a bounding-box centre; the study used float thirds here, the centre band closed."""
    if centre < extent / 3:
        return 0
    if centre <= 2 * extent / 3:
        return 1
    return 2


def location_word(component: np.ndarray, *, height_thirds_for_columns: bool = False) -> str:
    """Grid-cell name of one component (a boolean mask the size of the image).

    The cell that holds the whole component; if it spreads over several, the only cell with at
    least 10% of its pixels; if several cells have that much, the cell of its bounding-box centre.
    """
    height, width = component.shape
    rows, columns = np.nonzero(component)
    if rows.size == 0:
        raise ValueError("location_word needs a component with at least one pixel")
    cells = 3 * _grid_index(rows, height) + _grid_index(columns, width)
    pixels_per_cell = np.bincount(cells, minlength=9)
    occupied = np.flatnonzero(pixels_per_cell)
    if occupied.size == 1:
        return GRID_CELL_NAMES[occupied[0]]
    significant = np.flatnonzero(pixels_per_cell >= SIGNIFICANT_CELL_SHARE * rows.size)
    if significant.size == 1:
        return GRID_CELL_NAMES[significant[0]]
    # Several cells hold >= 10% each (one always does, 9 cells x 10% < 100%), so the bounding-box
    # centre decides. The study's code split this centre's column by thirds of the image HEIGHT,
    # not width: that is why released Kvasir prompts (wide images) say "right" eight times as often
    # as "left". The default uses the width, as the written rule says; pass
    # height_thirds_for_columns=True to reproduce the released prompts exactly.
    row_centre = (rows.min() + rows.max()) / 2
    column_centre = (columns.min() + columns.max()) / 2
    column_extent = height if height_thirds_for_columns else width
    cell = 3 * _band_of_centre(row_centre, height) + _band_of_centre(column_centre, column_extent)
    return GRID_CELL_NAMES[cell]


def mask_attributes(
    mask: np.ndarray, image: np.ndarray | None = None, *, height_thirds_for_columns: bool = False
) -> MaskAttributes:
    """Number, size and location words of a binary mask (see `location_word` for the flag).

    Given the image (H x W x 3 uint8, as `color_word` takes it), also the shape of the largest
    component (the first in label order on a tie) and the colour under the whole mask.
    """
    parts = components(mask)
    image_area = mask.shape[0] * mask.shape[1]
    sizes_present = {size_word(int(part.sum()) / image_area) for part in parts}
    locations = [
        location_word(part, height_thirds_for_columns=height_thirds_for_columns) for part in parts
    ]
    shape = color = None
    if image is not None:
        check_image_and_mask(image, mask)
        shape = shape_word(max(parts, key=np.sum)) if parts else ""
        color = color_word(image, mask) if parts else ""
    return MaskAttributes(
        number=number_word(len(parts)),
        sizes=", ".join(size for size in SIZE_ORDER if size in sizes_present),
        locations=", ".join(locations),
        shape=shape,
        color=color,
    )
