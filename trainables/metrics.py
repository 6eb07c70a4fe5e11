"""Dice as the study reports it: per image, at the image's original resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_score(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Dice of two boolean masks of the same shape; an empty prediction of an empty mask is 1."""
    pred, target = pred.bool(), target.bool()
    total = int(pred.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((pred & target).sum()) / total


def dice_per_image(logits: torch.Tensor, masks: list[torch.Tensor], threshold: float = 0.5) -> list[float]:
    """Resize each image's logits (1, h, w) to its original mask size, threshold the sigmoid, score."""
    scores = []
    for logit, mask in zip(logits, masks):
        full = F.interpolate(logit[None].float(), size=tuple(mask.shape), mode="bilinear", align_corners=False)[0, 0]
        scores.append(dice_score(torch.sigmoid(full) > threshold, mask.to(full.device)))
    return scores
