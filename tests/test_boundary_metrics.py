"""NSD and HD95 per image, as MONAI computes them: the project's own implementation (no MONAI at run
time) against monai.metrics on masks of the shapes the study scores, empty ones included."""

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice

from trainables.metrics import NSD_TOLERANCE_PX, boundary_metrics, scores_per_image


def monai_metrics(pred: np.ndarray, target: np.ndarray, tolerance: float) -> tuple[float, float]:
    p, t = (torch.from_numpy(m)[None, None].float() for m in (pred, target))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on empty masks, which are among the cases
        nsd = compute_surface_dice(p, t, [tolerance], include_background=True)[0, 0]
        hd95 = compute_hausdorff_distance(p, t, include_background=True, percentile=95)[0, 0]
    return float(nsd), float(hd95)


def ellipse(shape, center, axes) -> np.ndarray:
    y, x = np.ogrid[:shape[0], :shape[1]]
    return ((y - center[0]) / axes[0]) ** 2 + ((x - center[1]) / axes[1]) ** 2 <= 1


def cases():
    shape, rng = (300, 400), np.random.default_rng(7)
    empty = np.zeros(shape, bool)
    polyp = ellipse(shape, (150, 200), (60, 90))
    yield "both empty", empty, empty
    yield "empty prediction", empty, polyp
    yield "false positive on an empty mask", polyp, empty
    yield "perfect", polyp, polyp
    yield "shifted by 3 px", np.roll(polyp, 3, axis=1), polyp
    yield "grown by 1 px", ellipse(shape, (150, 200), (61, 91)), polyp
    yield "touching the image border", ellipse(shape, (10, 10), (40, 60)), ellipse(shape, (0, 0), (45, 55))
    yield "two blobs against one", polyp | ellipse(shape, (40, 350), (20, 20)), polyp
    for i in range(4):
        yield f"noise {i}", rng.random((64, 48)) > 0.7, rng.random((64, 48)) > 0.6


@pytest.mark.parametrize("tolerance", [NSD_TOLERANCE_PX, 1.0, 5.0])
@pytest.mark.parametrize("name, pred, target", list(cases()), ids=[c[0] for c in cases()])
def test_nsd_and_hd95_equal_monai(name, pred, target, tolerance):
    ours, theirs = boundary_metrics(pred, target, tolerance), monai_metrics(pred, target, tolerance)
    for a, b in zip(ours, theirs):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-5), (name, ours, theirs)


def test_known_values_by_hand():
    target = np.zeros((20, 20), bool)
    target[5:15, 5:15] = True
    shifted = np.roll(target, 4, axis=1)  # every boundary pixel moved 4 px right
    nsd, hd95 = boundary_metrics(shifted, target, tolerance=2.0)
    assert hd95 == pytest.approx(4.0) and 0 < nsd < 1  # the top and bottom rows overlap, the sides do not
    assert boundary_metrics(target, target) == (1.0, 0.0)


def test_scores_per_image_resizes_to_the_original_size():
    logits = torch.full((1, 1, 8, 8), -10.0)
    logits[0, 0, 2:6, 2:6] = 10.0  # a square in the middle at the model's size
    mask = torch.zeros(32, 32)
    mask[8:24, 8:24] = 1  # the same square at the original size
    (scores,) = scores_per_image(logits, [mask])
    assert scores["dice"] > 0.95 and scores["nsd"] > 0.95 and scores["hd95"] <= 2.0
