"""AuxOL's adaptive fusion of SAM and the auxiliary U-Net (``main.py:predict_with_prompt``,
after the online step), host-side numpy in f32 like the original, one crop (h, w) at a time.

Per crop, in the stream's order:

1. ``best_alpha``: grid search of alpha in ``alpha_grid()`` for the fused map
   ``sigmoid(alpha * sam + (1 - alpha) * aux)`` (logits), scored by the soft Dice
   (``metric.calc_dice``, smooth 1) of that CONTINUOUS map against the rectified crop mask;
   strict ``>``, so ties keep the smallest alpha. The search starts from alpha 1, Dice 0,
   which never survives (smooth 1 makes every Dice > 0) unless every Dice is NaN.
2. The best alpha is appended to the history (every crop, with or without feedback: it
   reads the rectified mask).
3. ``fused``: while the history holds at most ``alpha_num`` alphas, SAM's probabilities
   alone; afterwards the mean of the ``alpha_num`` alphas BEFORE the current crop's
   (``alphas[-1 - alpha_num:-1]``) fuses the logits.
4. ``merge_crops``: each fused crop binarised (> 0.5) and added into its box on a zero
   canvas, binarised again: the union over the objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from radjax.metrics.segmentation import dice


def alpha_grid(alpha_max: float = 1.0, step: float = 0.05) -> tuple[float, ...]:
    """``[round(g, 2) for g in np.arange(0, alpha_max + 0.01, step)]`` (``--alpha_percent``
    = alpha_max): 0, 0.05, ..., 1.0 (21 values) by default."""
    return tuple(round(g, 2) for g in np.arange(0, alpha_max + 0.01, step).tolist())


def sigmoid(x: np.ndarray) -> np.ndarray:
    """f32 logistic (``torch.sigmoid`` of an f32 array)."""
    x = np.asarray(x, np.float32)
    return (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32)


def _mix(alpha: float, sam_logits: np.ndarray, aux_logits: np.ndarray) -> np.ndarray:
    """alpha * sam + (1 - alpha) * aux with a Python float alpha on f32 arrays (f32 result)."""
    return alpha * np.asarray(sam_logits, np.float32) + (1 - alpha) * np.asarray(
        aux_logits, np.float32
    )


def best_alpha(
    sam_logits: np.ndarray,
    aux_logits: np.ndarray,
    target: np.ndarray,
    grid: Sequence[float],
) -> tuple[float, float]:
    """-> (best alpha, its soft Dice) for one crop.

    Args:
      sam_logits, aux_logits: f32 (h, w) logits of SAM and of the U-Net (resized to the crop).
      target: (h, w) {0, 1}, the rectified crop mask.
      grid: ``alpha_grid(...)``.
    """
    if np.shape(sam_logits) != np.shape(aux_logits) or np.shape(sam_logits) != np.shape(target):
        raise ValueError(
            f"best_alpha: shapes differ: sam {np.shape(sam_logits)}, aux "
            f"{np.shape(aux_logits)}, target {np.shape(target)}"
        )
    best, best_dice = 1.0, 0.0
    for alpha in grid:
        score = dice(sigmoid(_mix(alpha, sam_logits, aux_logits)), target)
        if score > best_dice:
            best, best_dice = float(alpha), score
    return best, best_dice


def fused(
    sam_logits: np.ndarray,
    aux_logits: np.ndarray,
    history: Sequence[float],
    alpha_num: int = 5,
) -> tuple[np.ndarray, float]:
    """-> (f32 (h, w) fused probabilities, the alpha used) for the current crop.

    ``history``: every crop's best alpha so far, the CURRENT crop's last (the code appends
    it before fusing). With ``len(history) <= alpha_num``: SAM's probabilities, alpha 1;
    else alpha = mean of ``history[-1 - alpha_num:-1]``.
    """
    if len(history) <= alpha_num:
        return sigmoid(sam_logits), 1.0
    alpha = sum(history[-1 - alpha_num : -1]) / alpha_num
    return sigmoid(_mix(alpha, sam_logits, aux_logits)), float(alpha)


def merge_crops(
    shape: tuple[int, int],
    boxes: Sequence[tuple[int, int, int, int]],
    crop_probs: Sequence[np.ndarray],
) -> np.ndarray:
    """The image's prediction: uint8 (H, W) {0, 1}, the union of the crops' ``probs > 0.5``
    placed at their boxes (x1, y1, x2, y2), as the code's ``binary(sum of binary(crop))``."""
    canvas = np.zeros(tuple(shape), np.float32)
    for (x1, y1, x2, y2), probs in zip(boxes, crop_probs, strict=True):
        probs = np.asarray(probs)
        if probs.shape != (y2 - y1, x2 - x1):
            raise ValueError(
                f"merge_crops: crop of shape {probs.shape} does not fit its box {(x1, y1, x2, y2)}"
            )
        canvas[y1:y2, x1:x2] += (probs > 0.5).astype(np.float32)
    return (canvas > 0.5).astype(np.uint8)
