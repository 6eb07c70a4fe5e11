"""Synthetic polyp-like images, masks and prompts: the demo's data and the tests' ground truth.

Each image is a reddish mucosa-like background with one or two coloured lumps. The mask holds
only the target lump and the prompts (P0-P9, class "polyp") describe only the target, so when two
lumps differ in size, colour and side, a model that reads the prompt can beat one that does not.
Number, size and location words come from the target mask by the study's rules; colour and shape
from the generator, which knows them (the study asked a VQA model).
"""

from __future__ import annotations

import io
import itertools
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from datasets.shards import Manifest, ShardStore
from prompts.attributes import mask_attributes
from prompts.metadata import store_attributes
from prompts.templates import NON_RADIOLOGY_PROMPT_TYPES, render

SYNTHETIC_DATASETS: dict[str, dict] = {
    "synth_polyp": {
        "two_object_fraction": 0.25,
        "split_sizes": {"train": 160, "val": 40, "test": 40},
    },
    "synth_pairs": {
        "two_object_fraction": 1.0,
        "split_sizes": {"train": 160, "val": 40, "test": 40},
    },
}

CLASS_NAME = "polyp"
SIDE_RANGE = (96, 160)  # image height and width are drawn independently in this range
JPEG_QUALITY = 90

# Named lump colours (RGB), far from the mucosa's red and from each other, so the colour word in
# a prompt is something a model can see.
PALETTE: dict[str, tuple[int, int, int]] = {
    "white": (240, 236, 226),
    "yellow": (232, 204, 72),
    "pink": (246, 162, 196),
    "orange": (242, 136, 36),
}
MUCOSA_RGB = (176, 74, 64)

# Aspect ratios are drawn away from the round/oval boundary so that the shape word is clear.
ROUND_ASPECT = (1.0, 1.15)
OVAL_ASPECT = (1.5, 1.9)
OVAL_FROM_ASPECT = 1.3

# Target area over image area: single lumps span small..large; in pairs one lump is "medium"
# (> 0.08) and the other "small", so their size words always differ.
SINGLE_AREA_RATIO = (0.012, 0.36)
PAIR_LARGE_AREA_RATIO = (0.10, 0.22)
PAIR_SMALL_AREA_RATIO = (0.012, 0.045)
PAIR_LARGE_MIN_RATIO = 0.085


@dataclass(frozen=True)
class SyntheticObject:
    """One lump drawn into a scene."""

    mask: np.ndarray  # bool, H x W
    color: str  # key of PALETTE
    shape: str  # "round" or "oval"
    side: str  # "left" or "right" half for pairs, "whole" for a single lump


@dataclass(frozen=True)
class SyntheticScene:
    """An image with its lumps; `objects[target]` is the one the mask and prompts describe."""

    image: np.ndarray  # uint8, H x W x 3
    objects: tuple[SyntheticObject, ...]
    target: int


@dataclass(frozen=True)
class _Ellipse:
    centre_y: float
    centre_x: float
    semi_major: float
    semi_minor: float
    angle: float  # radians, of the major axis from the image x axis
    wobble: np.ndarray  # (3, 2): amplitude and phase of boundary harmonics 2, 3, 4

    @property
    def aspect(self) -> float:
        return self.semi_major / self.semi_minor

    def half_extents(self) -> tuple[float, float]:
        """Half-height and half-width of the axis-aligned box around the lump."""
        grow = 1 + float(np.abs(self.wobble[:, 0]).sum())
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        half_width = np.hypot(self.semi_major * cos, self.semi_minor * sin) * grow
        half_height = np.hypot(self.semi_major * sin, self.semi_minor * cos) * grow
        return float(half_height), float(half_width)


def _stable_id(text: str) -> int:
    # crc32, not hash(): Python salts str hashes per process, which would break determinism.
    return zlib.crc32(text.encode("utf-8"))


def _interpolation_weights(coarse_size: int, size: int) -> np.ndarray:
    """(size, coarse_size) weights spreading `size` pixels smoothly over `coarse_size` knots."""
    positions = np.linspace(0, coarse_size - 1, size)
    left = np.minimum(positions.astype(int), coarse_size - 2)
    offset = positions - left
    # Smoothstep, not linear, weights: plain bilinear interpolation shows the grid's creases.
    offset = offset * offset * (3 - 2 * offset)
    weights = np.zeros((size, coarse_size), dtype=np.float32)
    weights[np.arange(size), left] = 1 - offset
    weights[np.arange(size), left + 1] = offset
    return weights


def _smooth_field(rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
    """Low-frequency noise in about [-2, 2]: a coarse random grid, smoothly interpolated."""
    coarse = rng.standard_normal(size=(4, 5, channels), dtype=np.float32)
    along_rows = np.tensordot(_interpolation_weights(5, width), coarse, axes=([1], [1]))
    return np.tensordot(_interpolation_weights(4, height), along_rows, axes=([1], [1]))


def _mucosa(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float RGB background: tinted red wall, soft light falloff, a dark lumen patch."""
    field = _smooth_field(rng, height, width, channels=3)
    tint = (np.asarray(MUCOSA_RGB) * rng.uniform(0.9, 1.1, size=3)).astype(np.float32)
    brightness = 1 + 0.10 * field.mean(axis=2, keepdims=True) + 0.04 * field
    ys = ((np.arange(height, dtype=np.float32) - height / 2) / (height / 2))[:, None]
    xs = ((np.arange(width, dtype=np.float32) - width / 2) / (width / 2))[None, :]
    # Endoscope light fades towards the frame edges.
    vignette = 1 - 0.22 * (ys**2 + xs**2)
    lumen_y, lumen_x = rng.uniform(-0.9, 0.9, size=2)
    lumen_radius = rng.uniform(0.25, 0.45)
    lumen = 1 - 0.45 * np.exp(-((ys - lumen_y) ** 2 + (xs - lumen_x) ** 2) / lumen_radius**2)
    return tint * brightness * (vignette * lumen)[:, :, None]


def _random_ellipse(rng: np.random.Generator, area: float, oval: bool) -> _Ellipse:
    aspect = rng.uniform(*(OVAL_ASPECT if oval else ROUND_ASPECT))
    semi_minor = np.sqrt(area / (np.pi * aspect))
    wobble = np.stack([rng.uniform(0.01, 0.04, size=3), rng.uniform(0, 2 * np.pi, size=3)], 1)
    return _Ellipse(0.0, 0.0, semi_minor * aspect, semi_minor, rng.uniform(0, np.pi), wobble)


def _normalised_radius(ellipse: _Ellipse, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Per pixel of the rows x columns window: < 1 inside the lump, 1 on its wobbly boundary."""
    dy = rows[:, None] - ellipse.centre_y
    dx = columns[None, :] - ellipse.centre_x
    cos, sin = np.cos(ellipse.angle), np.sin(ellipse.angle)
    along = (dx * cos + dy * sin) / ellipse.semi_major
    across = (dy * cos - dx * sin) / ellipse.semi_minor
    angle = np.arctan2(across, along)
    boundary = np.ones_like(angle)
    for harmonic, (amplitude, phase) in enumerate(ellipse.wobble, start=2):
        boundary += amplitude * np.cos(harmonic * angle + phase)
    return np.hypot(along, across) / boundary


def _paint_lump(
    canvas: np.ndarray, ellipse: _Ellipse, rgb: tuple[int, int, int], texture: np.ndarray
) -> np.ndarray:
    """Blend a shaded lump into `canvas` in place; return its full-size mask (radius < 1)."""
    height, width, _ = canvas.shape
    half_h, half_w = ellipse.half_extents()
    # Work only in the lump's bounding window (plus the soft edge): most of the frame is outside.
    top = max(0, int(ellipse.centre_y - half_h) - 2)
    bottom = min(height, int(ellipse.centre_y + half_h) + 3)
    left = max(0, int(ellipse.centre_x - half_w) - 2)
    right = min(width, int(ellipse.centre_x + half_w) + 3)
    rows = np.arange(top, bottom, dtype=np.float32)
    columns = np.arange(left, right, dtype=np.float32)
    radius = _normalised_radius(ellipse, rows, columns)
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = radius < 1
    # A one-pixel soft edge, half-blended exactly on the mask boundary.
    alpha = np.clip((1 - radius) * ellipse.semi_minor + 0.5, 0, 1)[:, :, None]
    # Treat the lump as a dome lit from the upper left: brighter top, darker rim, a specular spot.
    dome = np.sqrt(np.clip(1 - radius**2, 0, 1))
    scale = np.sqrt(ellipse.semi_major * ellipse.semi_minor)
    slope_y = (rows[:, None] - ellipse.centre_y) / scale
    slope_x = (columns[None, :] - ellipse.centre_x) / scale
    light = np.clip(-0.35 * slope_x - 0.45 * slope_y + 0.82 * dome, 0, 1)
    window = canvas[top:bottom, left:right]
    shade = (0.62 + 0.45 * light)[:, :, None] * (1 + 0.06 * texture[top:bottom, left:right])
    specular = (0.45 * light**24)[:, :, None] * 255
    # A little of the wall shows through, so the lump sits in the scene rather than on it.
    lump = (0.85 * np.asarray(rgb, dtype=np.float32) + 0.15 * window) * shade + specular
    window *= 1 - alpha
    window += alpha * lump
    return mask


def _place(
    rng: np.random.Generator, ellipse: _Ellipse, y_range: tuple[float, float],
    x_range: tuple[float, float], clip_allowed: bool,
) -> _Ellipse:
    """Centre `ellipse` at random in the box, shrinking it to fit unless clipping is allowed."""
    half_h, half_w = ellipse.half_extents()
    box_h, box_w = (y_range[1] - y_range[0]) / 2, (x_range[1] - x_range[0]) / 2
    shrink = 1.0 if clip_allowed else min(1.0, (box_h - 1) / half_h, (box_w - 1) / half_w)
    half_h, half_w = half_h * shrink, half_w * shrink
    # A single lump may run off the frame by up to a fifth of its half-extent, as polyps do.
    slack = 0.2 if clip_allowed else 0.0
    centre_y = rng.uniform(y_range[0] + half_h * (1 - slack), y_range[1] - half_h * (1 - slack))
    centre_x = rng.uniform(x_range[0] + half_w * (1 - slack), x_range[1] - half_w * (1 - slack))
    if y_range[1] - y_range[0] < 2 * half_h * (1 - slack):
        centre_y = sum(y_range) / 2
    if x_range[1] - x_range[0] < 2 * half_w * (1 - slack):
        centre_x = sum(x_range) / 2
    return _Ellipse(
        centre_y, centre_x, ellipse.semi_major * shrink, ellipse.semi_minor * shrink,
        ellipse.angle, ellipse.wobble,
    )


def _shape_word(ellipse: _Ellipse) -> str:
    return "oval" if ellipse.aspect >= OVAL_FROM_ASPECT else "round"


def draw_scene(rng: np.random.Generator, two_objects: bool) -> SyntheticScene:
    """A non-square image with one lump, or two differing in size, colour and side."""
    height, width = rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, size=2)
    while width == height:  # keep every image non-square, as real frames are
        width = rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1)
    height, width = int(height), int(width)
    canvas = _mucosa(rng, height, width)
    texture = _smooth_field(rng, height, width, channels=1)
    colours = [str(name) for name in rng.permutation(list(PALETTE))[:2]]
    image_area = height * width

    if not two_objects:
        area = np.exp(rng.uniform(*np.log(SINGLE_AREA_RATIO))) * image_area
        ellipse = _random_ellipse(rng, area, oval=bool(rng.random() < 0.5))
        ellipse = _place(rng, ellipse, (0, height), (0, width), clip_allowed=True)
        mask = _paint_lump(canvas, ellipse, PALETTE[colours[0]], texture)
        lump = SyntheticObject(mask, colours[0], _shape_word(ellipse), "whole")
        return SyntheticScene(_finish(rng, canvas), (lump,), target=0)

    large_side, small_side = ("left", "right") if rng.random() < 0.5 else ("right", "left")
    halves = {"left": (0.0, width / 2), "right": (width / 2, float(width))}
    # A narrow half can squeeze the large lump below "medium"; redraw until it stays above.
    for _ in range(20):
        area = rng.uniform(*PAIR_LARGE_AREA_RATIO) * image_area
        large = _random_ellipse(rng, area, oval=bool(rng.random() < 0.5))
        large = _place(rng, large, (0, height), halves[large_side], clip_allowed=False)
        if np.pi * large.semi_major * large.semi_minor > PAIR_LARGE_MIN_RATIO * image_area:
            break
    area = rng.uniform(*PAIR_SMALL_AREA_RATIO) * image_area
    small = _random_ellipse(rng, area, oval=bool(rng.random() < 0.5))
    small = _place(rng, small, (0, height), halves[small_side], clip_allowed=False)

    lumps = []
    for ellipse, side, colour in ((large, large_side, colours[0]), (small, small_side, colours[1])):
        mask = _paint_lump(canvas, ellipse, PALETTE[colour], texture)
        lumps.append(SyntheticObject(mask, colour, _shape_word(ellipse), side))
    return SyntheticScene(_finish(rng, canvas), tuple(lumps), target=int(rng.integers(2)))


def _finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Add mild sensor noise and quantise to uint8."""
    noisy = canvas + 3.5 * rng.standard_normal(size=canvas.shape, dtype=np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _encode(array: np.ndarray, image_format: str, **options: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def synthetic_rows(
    dataset: str, split: str, n: int, two_object_fraction: float, seed: int
) -> Iterator[dict]:
    """Yield `n` rows of a synthetic split, identical for identical arguments (seed >= 0).

    Keys: sample_id, dataset, split, image (JPEG bytes), mask (PNG bytes, mode L, 0/255),
    height, width, class_name, p0..p9 (lists of str), metadata (dict of str). Row i depends only on
    (seed, dataset, split, i), so a smaller n yields a prefix of a larger one.
    """
    stream = [seed, _stable_id(dataset), _stable_id(split)]
    for index in range(n):
        rng = np.random.default_rng([*stream, index])
        scene = draw_scene(rng, two_objects=bool(rng.random() < two_object_fraction))
        target = scene.objects[scene.target]
        from_mask = mask_attributes(target.mask)
        attributes = {"class_name": CLASS_NAME, "shape": target.shape, "color": target.color,
                      "size": from_mask.sizes, "number": from_mask.number, "location": from_mask.locations}
        prompts = render("non_radiology", attributes)
        distractors = [lump.color for i, lump in enumerate(scene.objects) if i != scene.target]
        height, width = target.mask.shape
        yield {
            "sample_id": f"{dataset}-{split}-{index:05d}",
            "dataset": dataset,
            "split": split,
            "image": _encode(scene.image, "JPEG", quality=JPEG_QUALITY),
            "mask": _encode(target.mask.astype(np.uint8) * 255, "PNG"),
            "height": height,
            "width": width,
            "class_name": CLASS_NAME,
            **{prompt_type: prompts[prompt_type] for prompt_type in NON_RADIOLOGY_PROMPT_TYPES},
            "metadata": {
                "objects": str(len(scene.objects)),
                "target": "only" if target.side == "whole" else target.side,
                "target_color": target.color,
                "target_shape": target.shape,
                "distractor_color": distractors[0] if distractors else "none",
                **store_attributes(attributes),
            },
        }


def write_synthetic(store: ShardStore, name: str, seed: int = 0) -> Manifest:
    """Generate one of SYNTHETIC_DATASETS and write it as shards under ``store``."""
    if name not in SYNTHETIC_DATASETS:
        raise ValueError(f"unknown synthetic dataset {name!r} (known: {', '.join(SYNTHETIC_DATASETS)})")
    spec = SYNTHETIC_DATASETS[name]
    rows = split_rows(name, spec["split_sizes"].items(), seed, spec["two_object_fraction"])
    return store.write_dataset(name, rows, NON_RADIOLOGY_PROMPT_TYPES, prompt_family="non_radiology")


def split_rows(dataset: str, sizes, seed: int = 0, two_object_fraction: float = 0.5) -> Iterator[dict]:
    """Rows of every split in ``sizes`` ((split, rows) pairs), one split after another."""
    return itertools.chain.from_iterable(
        synthetic_rows(dataset, split, n, two_object_fraction, seed) for split, n in sizes)
