"""RP3D-Diag's evaluation (``src/Train/train.py:compute_metrics``): per-class metrics from
``radjax.metrics.classification``, macro over all classes and over the frequency-sorted splits
head ``[0, head_cut)``, medium ``[head_cut, medium_cut)`` (the original's "body") and tail
``[medium_cut, C)``. A split without a scorable class gives NaN values and
``num_classes_scored`` 0.
"""

from __future__ import annotations

import numpy as np

from radjax.metrics.classification import METRICS, per_class_metrics

SPLITS = ("head", "medium", "tail")


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
