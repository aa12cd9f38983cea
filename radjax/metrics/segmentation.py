"""Segmentation metrics on host-side numpy masks: Dice and the Hausdorff distance.

* ``dice``: ``(2 * sum(p * g) + smooth) / (sum(p) + sum(g) + smooth)`` over the whole array
  (AuxOL's ``metric.calc_dice``, smooth 1), for binary masks or soft predictions in [0, 1];
  sums in the inputs' own dtypes, as numpy does for the original's expression.
* ``hausdorff``: ``monai.metrics.compute_hausdorff_distance`` for one pair of masks with its
  defaults (Euclidean, symmetric, full Hausdorff = 100th percentile; ``percentile=95`` for
  HD95), optionally clamped to the image diagonal (AuxOL's ``metric.calc_hf``).

MONAI semantics kept (checked against monai 1.6 in ``tests/metrics/
test_segmentation_metrics.py``): a mask is ``m == 1`` unless it is boolean; the distances are
between EDGE pixels, edge = mask XOR its binary erosion (3^n cross, outside the image counts
as background, so pixels on the image border are edges: MONAI crops the union's box with a
1-pixel margin, padding where the image ends); distances are f32; HD95 is ``torch.quantile``'s
linear interpolation per direction, then the max of the two directions; ``percentile=0``
means the maximum (``if not percentile``). Empty masks: one empty -> inf (HD95 of the all-inf
distances can be NaN: ``lerp(inf, inf, w)``), both empty -> NaN. The diagonal clamp
(``hd > diagonal``) leaves NaN as NaN, like ``calc_hf``; the clamped value is the diagonal
in f32 (``torch.tensor(thres)``). scipy only: monai is a test dependency.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage, spatial


def dice(pred: np.ndarray, gt: np.ndarray, smooth: float = 1.0) -> float:
    """Soft / binary Dice of two arrays of one shape with values in [0, 1] -> float.

    Computed as ``calc_dice``: flattened, ``(2. * (pred * gt).sum() + smooth) /
    (pred.sum() + gt.sum() + smooth)`` in numpy with the inputs' dtypes (f32 predictions
    against a uint8 mask as in AuxOL's fusion search); bool arrays count as uint8.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"dice: shapes differ: pred {pred.shape}, gt {gt.shape}")
    pred = pred.astype(np.uint8) if pred.dtype == bool else pred
    gt = gt.astype(np.uint8) if gt.dtype == bool else gt
    if pred.size and (pred.max() > 1 or gt.max() > 1):
        raise ValueError(
            f"dice: values must be in [0, 1] (binary masks or probabilities), got max "
            f"{pred.max()} (pred) / {gt.max()} (gt)"
        )
    pred, gt = pred.reshape(-1), gt.reshape(-1)
    intersection = (pred * gt).sum()
    return float((2.0 * intersection + smooth) / (pred.sum() + gt.sum() + smooth))


def edges(mask: np.ndarray) -> np.ndarray:
    """Boolean edge pixels of a boolean mask (any rank): mask XOR binary_erosion(mask), the
    outside of the array counting as background."""
    return mask ^ ndimage.binary_erosion(mask)


def _spacing(spacing, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    s = np.broadcast_to(np.asarray(spacing, np.float64), (ndim,))
    return np.array(s)


def _directed(from_edges: np.ndarray, to_edges: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """f32 distances from each ``from`` edge pixel to the nearest ``to`` edge pixel (MONAI's
    get_surface_distance: inf for every pixel when one side is empty)."""
    if not to_edges.any():
        return np.full(int(from_edges.sum()), np.inf, np.float32)
    if not from_edges.any():
        return np.full(int(to_edges.sum()), np.inf, np.float32)
    to_coords = np.argwhere(to_edges).astype(np.float64) * scale
    from_coords = np.argwhere(from_edges).astype(np.float64) * scale
    return spatial.KDTree(to_coords).query(from_coords, k=1)[0].astype(np.float32)


def _statistic(distances: np.ndarray, percentile: float | None) -> np.float32:
    """max, or ``torch.quantile(d, percentile / 100)`` (linear, f32, torch.lerp's two
    branches, each one fused multiply-add); NaN for no distances."""
    if distances.size == 0:
        return np.float32(np.nan)
    if not percentile:
        return distances.max()
    if not 0 <= percentile <= 100:
        raise ValueError(f"hausdorff: percentile must be in [0, 100], got {percentile}")
    ordered = np.sort(distances)
    rank = np.float32(percentile / 100) * np.float32(ordered.size - 1)
    below, above = int(rank), int(np.ceil(rank))
    weight = rank - np.float32(below)
    lo, hi = ordered[below], ordered[above]
    with np.errstate(invalid="ignore"):
        diff = np.float64(hi - lo)  # f32 difference; the product and sum fused (FMA) as torch
        if weight < 0.5:
            return np.float32(np.float64(lo) + np.float64(weight) * diff)
        return np.float32(np.float64(hi) - diff * np.float64(np.float32(1) - weight))


def hausdorff(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    percentile: float | None = None,
    clamp_to_diagonal: bool = True,
    spacing: float | Sequence[float] | None = None,
) -> float:
    """Symmetric Hausdorff distance between two masks of one shape (2D or 3D) -> float.

    Args:
      pred, gt: masks ({0, 1} or bool), e.g. (H, W).
      percentile: None = the maximum (full HD, MONAI's and AuxOL's default), 95 = HD95.
      clamp_to_diagonal: values above the image diagonal sqrt(sum(n_i^2)) (in ``spacing``
        units) become it, as AuxOL's ``calc_hf`` (so an empty mask scores the diagonal).
      spacing: pixel size per axis (MONAI's ``spacing``); None = 1.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"hausdorff: shapes differ: pred {pred.shape}, gt {gt.shape}")
    pred = pred if pred.dtype == bool else pred == 1
    gt = gt if gt.dtype == bool else gt == 1
    scale = _spacing(spacing, pred.ndim)
    pred_edges, gt_edges = edges(pred), edges(gt)
    both = (
        _statistic(_directed(pred_edges, gt_edges, scale), percentile),
        _statistic(_directed(gt_edges, pred_edges, scale), percentile),
    )
    hd = np.float32(np.nan) if np.isnan(both).any() else max(both)
    if clamp_to_diagonal:
        diagonal = float(np.sqrt(np.sum((np.asarray(pred.shape) * scale) ** 2)))
        if hd > diagonal:
            hd = np.float32(diagonal)
    return float(hd)
