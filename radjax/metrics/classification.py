"""Multi-label classification metrics of RP3D-Diag (``src/Train/train.py:compute_metrics``).

Per class, on scores (sigmoid probabilities), with scikit-learn:
  auc    ``roc_auc_score``
  ap     ``average_precision_score``
  f1     max F1 over ``precision_recall_curve`` (0/0 -> 0); first maximum wins
  mcc    ``matthews_corrcoef`` of ``score >= t``, t = threshold of that max F1
  recall@fprX  TPR at the ``roc_curve`` point whose FPR is nearest X (first on ties)
Classes whose labels take a single value are skipped. Values are macro means over
the scored classes of all classes and of the frequency-sorted splits head
``[0, head_cut)``, medium ``[head_cut, medium_cut)`` (the original's "body") and
tail ``[medium_cut, C)``. A split without a scorable class gives NaN values and
``num_classes_scored`` 0.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (average_precision_score, matthews_corrcoef,
                             precision_recall_curve, roc_auc_score, roc_curve)

FPR_POINTS = (0.01, 0.05, 0.1, 0.2, 0.5)
METRICS = ("auc", "ap", "f1", "mcc") + tuple(f"recall@fpr{p}" for p in FPR_POINTS)
SPLITS = ("head", "medium", "tail")
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
        out[c] = [roc_auc_score(y, s), average_precision_score(y, s), f1, mcc,
                  *_recall_at_fpr(y, s)]
    return out


def _macro(per_class: np.ndarray, prefix: str) -> dict[str, float]:
    """Means over the scored rows of (K, len(METRICS)); NaN when none is scored."""
    scored = per_class[~np.isnan(per_class[:, 0])]
    means = scored.mean(axis=0) if len(scored) else np.full(len(METRICS), np.nan)
    out = {prefix + name: float(v) for name, v in zip(METRICS, means)}
    out[prefix + "num_classes_scored"] = len(scored)
    return out


def _check(labels: np.ndarray, scores: np.ndarray, head_cut: int, medium_cut: int) -> None:
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(f"rp3d_metrics: labels {labels.shape} and scores {scores.shape} "
                         "must both be (N, C)")
    if not 0 <= head_cut <= medium_cut <= labels.shape[1]:
        raise ValueError(f"rp3d_metrics: need 0 <= head_cut ({head_cut}) <= medium_cut "
                         f"({medium_cut}) <= C ({labels.shape[1]})")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("rp3d_metrics: labels must be 0/1")
    if not np.isfinite(scores).all():
        raise ValueError(f"rp3d_metrics: scores hold {int((~np.isfinite(scores)).sum())} "
                         "non-finite values")


def rp3d_metrics(labels: np.ndarray, scores: np.ndarray, head_cut: int,
                 medium_cut: int) -> dict[str, float]:
    """RP3D-Diag metrics, macro over all classes and over head / medium / tail.

    Args:
      labels: (N, C) multi-hot 0/1 labels, classes sorted by frequency.
      scores: (N, C) probabilities (use ``scores_from_logits`` on logits).
      head_cut: first medium class (85 for disorders, 165 for ICD-10).
      medium_cut: first tail class (555 for disorders, 395 for ICD-10).

    Returns:
      Flat dict: ``auc, ap, f1, mcc, recall@fpr{0.01,0.05,0.1,0.2,0.5},
      num_classes_scored`` and the same under ``head/``, ``medium/``, ``tail/``.
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    _check(labels, scores, head_cut, medium_cut)
    per_class = per_class_metrics(labels, scores)
    out = _macro(per_class, "")
    bounds = (0, head_cut, medium_cut, labels.shape[1])
    for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
        out.update(_macro(per_class[lo:hi], f"{split}/"))
    return out
