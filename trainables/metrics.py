"""Dice as the study reports it, per image at the image's original resolution; and, as Metrics
Reloaded (Maier-Hein et al., Nature Methods 2024) recommends beside an overlap metric, two boundary
metrics computed as MONAI computes them (``monai.metrics.compute_surface_dice`` and
``compute_hausdorff_distance(percentile=95)``, pixel spacing 1; tests/test_boundary_metrics.py checks both
against MONAI): the normalized surface distance at a tolerance of ``NSD_TOLERANCE_PX`` pixels and the
95th-percentile Hausdorff distance in pixels."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_erosion
from scipy.spatial import cKDTree

# Boundary tolerance of the NSD, in pixels at the original resolution. Our choice: Metrics Reloaded
# leaves it to the application and the study reports no boundary metric. Stated in every report.
NSD_TOLERANCE_PX = 2.0


def dice_score(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Dice of two boolean masks of the same shape; an empty prediction of an empty mask is 1."""
    pred, target = pred.bool(), target.bool()
    total = int(pred.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((pred & target).sum()) / total


def predicted_masks(logits: torch.Tensor, shapes: list[tuple[int, int]], threshold: float = 0.5
                    ) -> list[torch.Tensor]:
    """Each image's prediction at its original size: its logits (1, h, w) resized bilinearly to
    ``shape``, the sigmoid thresholded. What every score here is computed on."""
    return [torch.sigmoid(F.interpolate(logit[None].float(), size=tuple(shape), mode="bilinear",
                                        align_corners=False)[0, 0]) > threshold
            for logit, shape in zip(logits, shapes)]


def dice_per_image(logits: torch.Tensor, masks: list[torch.Tensor], threshold: float = 0.5) -> list[float]:
    """Dice of each image's prediction at its original mask size."""
    preds = predicted_masks(logits, [m.shape for m in masks], threshold)
    return [dice_score(pred, mask.to(pred.device)) for pred, mask in zip(preds, masks)]


def _edges(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels: the mask less its erosion (cross-shaped, outside the image counts as empty)."""
    return mask ^ binary_erosion(mask)


def _distances(from_edges: np.ndarray, to_edges: np.ndarray) -> np.ndarray:
    """Distance from each pixel of ``from_edges`` to the nearest of ``to_edges`` (MONAI's
    get_surface_distance, including its infinities where one side is empty)."""
    if not to_edges.any():
        return np.full(int(from_edges.sum()), np.inf)
    if not from_edges.any():
        return np.full(int(to_edges.sum()), np.inf)  # MONAI: one infinity per edge pixel of the other
    return cKDTree(np.argwhere(to_edges)).query(np.argwhere(from_edges), k=1)[0]


def boundary_metrics(pred: np.ndarray, target: np.ndarray, tolerance: float = NSD_TOLERANCE_PX
                     ) -> tuple[float, float]:
    """(NSD at ``tolerance`` pixels, HD95 in pixels) of two boolean masks. As MONAI: both empty
    gives (nan, nan); one empty gives NSD 0 and HD95 nan (undefined: no boundary to measure from)."""
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if not (pred | target).any():
        return math.nan, math.nan
    edges_pred, edges_target = _edges(pred), _edges(target)
    there, back = _distances(edges_pred, edges_target), _distances(edges_target, edges_pred)
    nsd = (np.sum(there <= tolerance) + np.sum(back <= tolerance)) / (len(there) + len(back))
    hd95 = max(_percentile(there, 95), _percentile(back, 95))
    return float(nsd), hd95


def _percentile(distances: np.ndarray, q: float) -> float:
    """As MONAI takes it: torch.quantile of float32 distances (linear interpolation; the infinities of
    an empty side interpolate to nan), nan for none."""
    if len(distances) == 0:
        return math.nan
    return float(torch.quantile(torch.from_numpy(distances.astype(np.float32)), q / 100))


def scores_per_image(logits: torch.Tensor, masks: list[torch.Tensor], threshold: float = 0.5
                     ) -> list[dict[str, float]]:
    """Dice, NSD and HD95 of each image at its original size (``dice_per_image``'s resizing)."""
    scores = []
    for pred, mask in zip(predicted_masks(logits, [m.shape for m in masks], threshold), masks):
        nsd, hd95 = boundary_metrics(pred.cpu().numpy(), mask.bool().cpu().numpy())
        scores.append({"dice": dice_score(pred, mask.to(pred.device)), "nsd": nsd, "hd95": hd95})
    return scores
