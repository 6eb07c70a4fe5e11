"""Shape and colour words of a segmented object: stand-ins for the study's VQA answers.

The study asked a visual question-answering model for the shape and colour of each polyp; these
are deterministic replacements with the study's vocabulary: `shape_word` from mask geometry,
`color_word` from the named colour of the image under the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

FOUR_CONNECTIVITY = ndimage.generate_binary_structure(2, 1)

# --- shape ------------------------------------------------------------------------------------

SHAPE_WORDS = ("round", "oval", "triangular", "rectangular", "irregular")

# Thresholds of `shape_word`, in the order it applies them. Each sits between the values measured
# on clean shapes drawn 15..150 px across at any rotation (tests/test_shape_color.py draws them).
# Fewer pixels than this cannot tell a triangle from a disk: call them round, as specks look.
MIN_SHAPE_PIXELS = 20
# Outlines are smoothed first by a Gaussian of this fraction of sqrt(area) (about 4% of a disk's
# diameter): pixel-level jaggies of lossy masks vanish, lobes and arms of real size stay.
SMOOTHING_PER_SQRT_AREA = 0.05
# Bigger components are measured on a block-averaged copy of about this sqrt(area): the ratios
# do not depend on scale, and 200 px is past the sizes the thresholds were set on.
MEASURE_SQRT_AREA = 200
# Convex shapes fill their digital hull (1.00); stars, lobed and merged blobs fill 0.58-0.92.
IRREGULAR_BELOW_SOLIDITY = 0.90
# A polygon word needs a nearly convex outline: blobs of 0.90-0.95 can fill a square's hull.
POLYGON_FROM_SOLIDITY = 0.95
# The largest triangle on hull vertices covers ~1 of a triangle's hull (0.76-0.98 when drawn),
# 0.5 of any parallelogram's, 0.41 of any ellipse's and 0.64 of a half disk's.
TRIANGULAR_FROM_FIT = 0.70
# The hull fills ~1 of its minimum-area enclosing rectangle for rectangles (>= 0.91 when drawn),
# pi/4 for ellipses (<= 0.89 when drawn), 0.83 for a regular octagon, 0.5 for triangles.
RECTANGULAR_FROM_FIT = 0.90
# Circularity over that of the ellipse with the same axis ratio: 0.92-1.13 for drawn disks and
# ellipses, <= 0.75 for stars and lobed blobs, whose outline is longer than their ellipse's.
IRREGULAR_BELOW_ELLIPSE_CIRCULARITY = 0.80
# Principal-axis ratio from which a smooth outline is an oval (drawn disks measure 1.00, ellipses
# of axis ratio 1.5 at least 1.40); `datasets.synthetic` uses the same boundary.
OVAL_FROM_ASPECT = 1.3


@dataclass(frozen=True)
class ShapeMeasures:
    """Unitless geometry of a (smoothed) component, as `shape_word` reads it."""

    circularity: float  # 4 pi area / perimeter^2: 1 for a disk, pi/4 for a square
    ellipse_circularity: float  # circularity over that of an ellipse with the same aspect
    aspect: float  # ratio of the principal axes from second moments, >= 1
    solidity: float  # pixels over the pixels whose centres lie in the hull of pixel centres
    triangle_fit: float  # largest triangle on hull vertices over hull area
    rectangle_fit: float  # hull area over its minimum-area enclosing rectangle


def _reduced(inside: np.ndarray) -> np.ndarray:
    """`inside` shrunk by an integer factor to at most ~MEASURE_SQRT_AREA^2 pixels of area.

    Every measure is a ratio, so scale does not change it; big masks only cost time.
    """
    factor = int(np.sqrt(inside.sum()) // MEASURE_SQRT_AREA)
    if factor < 2:
        return inside
    height, width = -(-inside.shape[0] // factor) * factor, -(-inside.shape[1] // factor) * factor
    padded = np.pad(inside, ((0, height - inside.shape[0]), (0, width - inside.shape[1])))
    blocks = padded.reshape(height // factor, factor, width // factor, factor)
    return blocks.mean(axis=(1, 3)) >= 0.5


def _smoothed(inside: np.ndarray) -> np.ndarray:
    """`inside` (cropped to its box) blurred and re-thresholded at one half, with a margin."""
    sigma = SMOOTHING_PER_SQRT_AREA * np.sqrt(inside.sum())
    margin = int(np.ceil(3 * sigma)) + 1
    smooth = ndimage.gaussian_filter(np.pad(inside, margin).astype(float), sigma) > 0.5
    return smooth if smooth.any() else np.pad(inside, margin)  # a thin sliver can blur away


def _crofton_perimeter(inside: np.ndarray) -> float:
    """Outline length from boundary crossings along four families of lines (Cauchy-Crofton).

    Counting pixel edges measures a 45-degree staircase sqrt(2) times too long (a disk's outline
    4/pi times); lines at 0, 45, 90 and 135 degrees cross an edge of any direction about equally
    often, so this estimate is exact for disks and within ~5% for polygons at any rotation.
    """
    padded = np.pad(inside, 1)
    straight = (padded[:, 1:] != padded[:, :-1]).sum() + (padded[1:, :] != padded[:-1, :]).sum()
    diagonal = (padded[1:, 1:] != padded[:-1, :-1]).sum() + (padded[1:, :-1] != padded[:-1, 1:]).sum()
    # Crofton: length = 1/2 of crossings integrated over direction (pi) and offset; four families
    # share pi, and diagonal lines through pixel centres lie 1/sqrt(2) apart, not 1.
    return float(np.pi / 8 * (straight + diagonal / np.sqrt(2)))


def _principal_aspect(rows: np.ndarray, columns: np.ndarray) -> float:
    """Ratio of the principal axes: sqrt of the eigenvalue ratio of the coordinate covariance."""
    coordinates = np.stack([rows, columns]).astype(float)
    # Each pixel is a unit square, not a point: its own variance 1/12 per axis keeps bars finite.
    covariance = np.cov(coordinates, bias=True) + np.eye(2) / 12
    smaller, larger = np.linalg.eigvalsh(covariance)
    return float(np.sqrt(larger / smaller))


def _ellipse_circularity(aspect: float) -> float:
    """Circularity of an ellipse with semi-axes `aspect` and 1 (Ramanujan's perimeter)."""
    a, b = aspect, 1.0
    perimeter = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))
    return float(4 * np.pi * np.pi * a * b / perimeter**2)


def _hull(inside: np.ndarray) -> ConvexHull | None:
    """Convex hull of the pixel centres (of the outline pixels: same hull, fewer points)."""
    outline = inside & ~ndimage.binary_erosion(inside, structure=FOUR_CONNECTIVITY)
    try:
        return ConvexHull(np.argwhere(outline).astype(float))
    except QhullError:  # centres all on one line: a straight bar one pixel wide
        return None


def _digital_solidity(inside: np.ndarray, hull: ConvexHull) -> float:
    """Pixels of `inside` over the pixels whose centres lie in `hull`: exactly 1 when convex.

    The area of the hull itself would not do: at 15 px across, staircase outlines make convex
    shapes fill only ~0.93 of it.
    """
    # Facet i holds points with normal_row * row + normal_column * column + offset <= 0: per row
    # that bounds the column from one side, so every row of the hull is one interval of columns.
    normal_rows, normal_columns, offsets = hull.equations.T
    tolerance = 1e-9
    rows = np.arange(inside.shape[0], dtype=float)[:, None]
    limits = -(normal_rows * rows + offsets)  # normal_column * column <= limit
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = limits / normal_columns
    upper = np.where(normal_columns > tolerance, bound, np.inf).min(axis=1)
    lower = np.where(normal_columns < -tolerance, bound, -np.inf).max(axis=1)
    flat_facets_hold = np.where(np.abs(normal_columns) <= tolerance, limits >= -tolerance, True)
    count = np.floor(upper + tolerance) - np.ceil(lower - tolerance) + 1
    count = np.where(flat_facets_hold.all(axis=1), np.maximum(count, 0), 0)
    return float(inside.sum() / count.sum())


def _largest_triangle(vertices: np.ndarray, max_vertices: int = 160) -> float:
    """Area of the largest triangle with corners among `vertices` (in hull order)."""
    if len(vertices) > max_vertices:
        # Evenly spaced vertices of a big hull lose only slivers of the best triangle.
        vertices = vertices[np.linspace(0, len(vertices) - 1, max_vertices).astype(int)]
    best = 0.0
    for i, apex in enumerate(vertices[:-2]):
        sides = vertices[i + 1 :] - apex
        cross = sides[:, None, 0] * sides[None, :, 1] - sides[:, None, 1] * sides[None, :, 0]
        best = max(best, float(np.abs(cross).max()) / 2)
    return best


def _smallest_rectangle(vertices: np.ndarray) -> float:
    """Area of the minimum-area enclosing rectangle, which has a side along a hull edge."""
    edges = np.roll(vertices, -1, axis=0) - vertices
    directions = edges / np.linalg.norm(edges, axis=1, keepdims=True)
    normals = np.stack([-directions[:, 1], directions[:, 0]], axis=1)
    lengths = np.ptp(vertices @ directions.T, axis=0)
    widths = np.ptp(vertices @ normals.T, axis=0)
    return float((lengths * widths).min())


def shape_measures(component: np.ndarray) -> ShapeMeasures:
    """The geometry behind `shape_word`, of the non-zero pixels of a 2-D mask, after smoothing.

    Raises ValueError for a mask that is not 2-D or has no non-zero pixel.
    """
    inside = np.asarray(component) != 0
    if inside.ndim != 2:
        raise ValueError(f"shape needs a 2-D mask (H x W), got shape {inside.shape}")
    if not inside.any():
        raise ValueError("shape needs a component with at least one pixel; the mask is empty")
    rows, columns = np.nonzero(inside)
    inside = _reduced(inside[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1])
    inside = _smoothed(inside)
    rows, columns = np.nonzero(inside)
    circularity = 4 * np.pi * rows.size / _crofton_perimeter(inside) ** 2
    aspect = _principal_aspect(rows, columns)
    hull = _hull(inside)
    if hull is None:  # a straight bar one pixel wide: convex, and a (thin) rectangle
        return ShapeMeasures(circularity, circularity / _ellipse_circularity(aspect), aspect,
                             solidity=1.0, triangle_fit=0.5, rectangle_fit=1.0)
    vertices = hull.points[hull.vertices]
    hull_area = hull.volume  # qhull calls a 2-D area "volume"
    return ShapeMeasures(
        circularity=circularity,
        ellipse_circularity=circularity / _ellipse_circularity(aspect),
        aspect=aspect,
        solidity=_digital_solidity(inside, hull),
        triangle_fit=_largest_triangle(vertices) / hull_area,
        rectangle_fit=hull_area / _smallest_rectangle(vertices),
    )


def shape_word(component: np.ndarray) -> str:
    """Shape of one component: "round", "oval", "triangular", "rectangular" or "irregular".

    `component` is a 2-D mask whose non-zero pixels form one component (given several, their
    union is described). Components under MIN_SHAPE_PIXELS pixels are "round". Raises ValueError
    for a mask that is not 2-D or is empty.
    """
    inside = np.asarray(component) != 0
    if inside.ndim == 2 and 0 < inside.sum() < MIN_SHAPE_PIXELS:
        return "round"
    measures = shape_measures(inside)
    if measures.solidity < IRREGULAR_BELOW_SOLIDITY:
        return "irregular"
    if measures.solidity >= POLYGON_FROM_SOLIDITY:
        if measures.triangle_fit >= TRIANGULAR_FROM_FIT:
            return "triangular"
        if measures.rectangle_fit >= RECTANGULAR_FROM_FIT:
            return "rectangular"
    if measures.ellipse_circularity < IRREGULAR_BELOW_ELLIPSE_CIRCULARITY:
        return "irregular"
    return "oval" if measures.aspect >= OVAL_FROM_ASPECT else "round"


# --- colour -----------------------------------------------------------------------------------

# Reference sRGB of each colour word: the study's words (white, yellow, brown, pink, orange, tan,
# red, black) plus gray and purple. Muted, as the words are said of lit tissue, not primaries; gray
# is a dim gray so that a white surface in shadow (down to ~0.75 of its brightness) stays white.
COLOR_PALETTE: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 235),
    "gray": (105, 105, 105),
    "black": (25, 25, 25),
    "red": (190, 35, 35),
    "pink": (240, 160, 185),
    "orange": (240, 140, 40),
    "brown": (130, 80, 45),
    "tan": (210, 180, 140),
    "yellow": (222, 192, 64),
    "purple": (120, 60, 140),
}

# Lightness counts half in the colour distance (as in CMC l:c = 2:1): light and shading change the
# lightness of a surface far more than its hue and chroma.
LIGHTNESS_WEIGHT = 0.5

# Linear sRGB to CIE XYZ (IEC 61966-2-1), and the D65 reference white.
_SRGB_TO_XYZ = np.array([
    [0.4124564, 0.3575761, 0.1804375],
    [0.2126729, 0.7151522, 0.0721750],
    [0.0193339, 0.1191920, 0.9503041],
])
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) of sRGB values in 0..255, shape (..., 3) to (..., 3)."""
    encoded = np.asarray(rgb, dtype=float) / 255
    linear = np.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65_WHITE
    epsilon, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > epsilon, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    return np.stack([
        116 * f[..., 1] - 16,
        500 * (f[..., 0] - f[..., 1]),
        200 * (f[..., 1] - f[..., 2]),
    ], axis=-1)


_PALETTE_LAB = srgb_to_lab(np.array(list(COLOR_PALETTE.values())))


def check_image_and_mask(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as arrays; ValueError unless the image is H x W x 3 uint8 and the mask H x W."""
    image, mask = np.asarray(image), np.asarray(mask)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an H x W x 3 uint8 RGB image, got shape {image.shape} and dtype {image.dtype}"
        )
    if mask.shape != image.shape[:2]:
        raise ValueError(
            f"expected an H x W mask the size of the image, {image.shape[:2]}, got shape {mask.shape}"
        )
    return image, mask


def color_word(image: np.ndarray, mask: np.ndarray) -> str:
    """Name from COLOR_PALETTE nearest the median CIELAB colour of `image` where `mask` is non-zero.

    `image` is H x W x 3 uint8 sRGB and `mask` H x W; only pixels under the mask count. The median,
    not the mean, so specular highlights and specks do not tint the answer. Raises ValueError for
    other shapes or dtypes and for an empty mask.
    """
    image, mask = check_image_and_mask(image, mask)
    pixels = image[mask != 0]
    if len(pixels) == 0:
        raise ValueError("color_word needs a mask with at least one non-zero pixel; it is empty")
    centre = np.median(srgb_to_lab(pixels), axis=0)
    difference = (_PALETTE_LAB - centre) * np.array([LIGHTNESS_WEIGHT, 1.0, 1.0])
    return list(COLOR_PALETTE)[int(np.argmin((difference**2).sum(axis=1)))]
