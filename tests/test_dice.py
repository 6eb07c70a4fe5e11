"""Dice per image agrees with an independent computation, empty masks included."""

import numpy as np
import torch

from trainables.metrics import dice_per_image, dice_score


def reference_dice(pred: np.ndarray, target: np.ndarray) -> float:
    # Set arithmetic on pixel coordinates, deliberately unlike the tensor code under test.
    p = set(zip(*np.nonzero(pred)))
    t = set(zip(*np.nonzero(target)))
    if not p and not t:
        return 1.0
    return 2 * len(p & t) / (len(p) + len(t))


def test_dice_matches_reference_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(1, 40, size=2)
        density_p, density_t = rng.choice([0.0, 0.05, 0.5, 1.0], size=2)
        pred = rng.random((h, w)) < density_p
        target = rng.random((h, w)) < density_t
        assert dice_score(torch.from_numpy(pred), torch.from_numpy(target)) == reference_dice(pred, target)


def test_empty_prediction_of_empty_mask_is_one_and_of_nonempty_is_zero():
    empty = torch.zeros(5, 5, dtype=torch.bool)
    full = torch.ones(5, 5, dtype=torch.bool)
    assert dice_score(empty, empty) == 1.0
    assert dice_score(empty, full) == 0.0
    assert dice_score(full, empty) == 0.0


def test_dice_per_image_scores_at_original_resolution():
    # Logits at 8x8 that are positive on the left half; masks at other sizes, left half set.
    logits = torch.full((2, 1, 8, 8), -5.0)
    logits[:, :, :, :4] = 5.0
    masks = [torch.zeros(6, 10, dtype=torch.bool), torch.zeros(20, 4, dtype=torch.bool)]
    masks[0][:, :5] = True
    masks[1][:, :2] = True
    scores = dice_per_image(logits, masks, threshold=0.5)
    assert scores == [1.0, 1.0]
    # Thresholding happens on the sigmoid: logits of 0 are exactly 0.5, not above it.
    assert dice_per_image(torch.zeros(1, 1, 4, 4), [torch.zeros(4, 4, dtype=torch.bool)]) == [1.0]
