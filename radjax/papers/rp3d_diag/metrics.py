"""RP3D-Diag's evaluation (``src/Train/train.py:compute_metrics``): per-class metrics from
``radjax.metrics.classification``, macro over all classes and over the frequency-sorted splits
head ``[0, head_cut)``, medium ``[head_cut, medium_cut)`` (the original's "body") and tail
``[medium_cut, C)``. A split without a scorable class gives NaN values and
``num_classes_scored`` 0. ``macro_roc`` adds the report's curves: per split the mean over its
scored classes of each class's ROC TPR interpolated on a common FPR grid.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from radjax.metrics.classification import METRICS, per_class_metrics

SPLITS = ("head", "medium", "tail")
ROC_GRID = np.linspace(0.0, 1.0, 51)


def _macro(per_class: np.ndarray, prefix: str) -> dict[str, float]:
    """Means over the scored rows of (K, len(METRICS)); NaN when none is scored."""
    scored = per_class[~np.isnan(per_class[:, 0])]
    means = scored.mean(axis=0) if len(scored) else np.full(len(METRICS), np.nan)
    out = {prefix + name: float(v) for name, v in zip(METRICS, means)}
    out[prefix + "num_classes_scored"] = len(scored)
    return out


def _check(labels: np.ndarray, scores: np.ndarray, head_cut: int, medium_cut: int) -> None:
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(
            f"rp3d_metrics: labels {labels.shape} and scores {scores.shape} must both be (N, C)"
        )
    if not 0 <= head_cut <= medium_cut <= labels.shape[1]:
        raise ValueError(
            f"rp3d_metrics: need 0 <= head_cut ({head_cut}) <= medium_cut "
            f"({medium_cut}) <= C ({labels.shape[1]})"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("rp3d_metrics: labels must be 0/1")
    if not np.isfinite(scores).all():
        raise ValueError(
            f"rp3d_metrics: scores hold {int((~np.isfinite(scores)).sum())} non-finite values"
        )


def macro_roc(labels: np.ndarray, scores: np.ndarray, grid: np.ndarray = ROC_GRID) -> list | None:
    """Macro-averaged ROC of (N, K) labels and scores: mean over the K' classes with both
    label values of ``np.interp(grid, fpr, tpr)`` (each class's step curve, its TPR maximal
    at each FPR); ``len(grid)`` TPR values, None when no class is scorable."""
    curves = []
    for y, s in zip(labels.T, scores.T):
        if len(np.unique(y)) == 2:
            fpr, tpr, _ = roc_curve(y, s)
            curves.append(np.interp(grid, fpr, tpr))
    return np.mean(curves, axis=0).tolist() if curves else None


def _roc_curves(labels: np.ndarray, scores: np.ndarray, bounds: tuple[int, ...]) -> dict:
    """``roc/fpr`` (the grid) and ``roc/<split>`` macro TPRs for ``all`` and each scorable
    split of ``SPLITS`` (bounds: 0, head_cut, medium_cut, C)."""
    out = {"roc/fpr": ROC_GRID.tolist()}
    for split, lo, hi in (("all", 0, bounds[-1]), *zip(SPLITS, bounds[:-1], bounds[1:])):
        tpr = macro_roc(labels[:, lo:hi], scores[:, lo:hi])
        if tpr is not None:
            out[f"roc/{split}"] = tpr
    return out


def rp3d_metrics(
    labels: np.ndarray, scores: np.ndarray, head_cut: int, medium_cut: int
) -> dict[str, float]:
    """RP3D-Diag metrics, macro over all classes and over head / medium / tail.

    Args:
      labels: (N, C) multi-hot 0/1 labels, classes sorted by frequency.
      scores: (N, C) probabilities (use ``scores_from_logits`` on logits).
      head_cut: first medium class (85 for disorders, 165 for ICD-10).
      medium_cut: first tail class (555 for disorders, 395 for ICD-10).

    Returns:
      Flat dict: ``auc, ap, f1, mcc, recall@fpr{0.01,0.05,0.1,0.2,0.5},
      num_classes_scored`` and the same under ``head/``, ``medium/``, ``tail/``; the curves
      ``roc/fpr`` and ``roc/{all,head,medium,tail}`` (lists, ``macro_roc``; a split without
      a scorable class has none).
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    _check(labels, scores, head_cut, medium_cut)
    per_class = per_class_metrics(labels, scores)
    out = _macro(per_class, "")
    bounds = (0, head_cut, medium_cut, labels.shape[1])
    for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
        out.update(_macro(per_class[lo:hi], f"{split}/"))
    out.update(_roc_curves(labels, scores, bounds))
    return out
