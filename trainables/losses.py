"""The study's training loss, as stated in the paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH = 1e-5


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits) per sample, averaged over the batch."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    dice = (2 * inter + SMOOTH) / (prob.sum(1) + target.sum(1) + SMOOTH)
    return (1 - dice).mean()


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 0.2) -> torch.Tensor:
    """``dice(sigmoid(z)) + 0.2 * BCEWithLogits(z)``; target holds 0/1 floats shaped like logits."""
    return soft_dice_loss(logits, target) + bce_weight * F.binary_cross_entropy_with_logits(logits, target)
