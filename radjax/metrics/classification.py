"""Per-class multi-label classification metrics (RP3D-Diag's ``compute_metrics`` definitions).

Per class, on scores (sigmoid probabilities), with scikit-learn:
  auc    ``roc_auc_score``
  ap     ``average_precision_score``
  f1     max F1 over ``precision_recall_curve`` (0/0 -> 0); first maximum wins
  mcc    ``matthews_corrcoef`` of ``score >= t``, t = threshold of that max F1
  recall@fprX  TPR at the ``roc_curve`` point whose FPR is nearest X (first on ties)
Classes whose labels take a single value are skipped (NaN rows).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    matthews_corrcoef,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

FPR_POINTS = (0.01, 0.05, 0.1, 0.2, 0.5)
METRICS = ("auc", "ap", "f1", "mcc") + tuple(f"recall@fpr{p}" for p in FPR_POINTS)
LOGIT_CLIP = 60.0


def scores_from_logits(logits: np.ndarray) -> np.ndarray:
    """Sigmoid of logits clipped to [-60, 60], as the original evaluation does. (N, C) -> (N, C)."""
    logits = np.clip(np.asarray(logits), -LOGIT_CLIP, LOGIT_CLIP)
    return 1.0 / (1.0 + np.exp(-logits))


def _max_f1_and_mcc(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Max F1 over the PR curve and MCC at its threshold, for one class. (N,), (N,)."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    f1[np.isnan(f1)] = 0
    best = int(np.argmax(f1))
    mcc = matthews_corrcoef(labels, (scores >= thresholds[best]).astype(int))
    return float(f1[best]), float(mcc)


def _recall_at_fpr(labels: np.ndarray, scores: np.ndarray) -> list[float]:
    """TPR at the ROC point with FPR nearest each of FPR_POINTS, for one class."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return [float(tpr[np.abs(fpr - p).argmin()]) for p in FPR_POINTS]


def per_class_metrics(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Every metric of every class. (N, C), (N, C) -> (C, len(METRICS)); NaN rows = skipped."""
    out = np.full((labels.shape[1], len(METRICS)), np.nan)
    for c in range(labels.shape[1]):
        y, s = labels[:, c], scores[:, c]
        if len(np.unique(y)) < 2:
            continue
        f1, mcc = _max_f1_and_mcc(y, s)
        out[c] = [
            roc_auc_score(y, s),
            average_precision_score(y, s),
            f1,
            mcc,
            *_recall_at_fpr(y, s),
        ]
    return out
