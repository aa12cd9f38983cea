"""radjax.metrics.classification against a direct scikit-learn computation (RP3D-Diag protocol)."""

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    matthews_corrcoef,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from radjax.metrics import classification as cls
from radjax.papers.rp3d_diag.metrics import ROC_GRID, macro_roc, rp3d_metrics

FPRS = (0.01, 0.05, 0.1, 0.2, 0.5)


def _data(n=80, c=14, seed=0):
    """Long-tailed labels with single-valued classes 3, 9, 12, 13 and tied scores."""
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.5, 0.03, c)
    labels = (rng.random((n, c)) < prevalence).astype(np.int64)
    labels[:, 3] = 0  # head class never present: skipped
    labels[:, 9] = 1  # always present: skipped
    labels[:, 12:] = 0  # the whole tail slice [12, 14) is unscorable
    logits = 1.5 * labels + rng.normal(size=(n, c))
    scores = np.round(1 / (1 + np.exp(-logits)), 1)  # coarse scores -> tied thresholds
    return labels, scores


def _reference(labels, scores):
    """One split, written as the original evaluates it, straight from scikit-learn."""
    rows = []
    for i in range(labels.shape[1]):
        y, s = labels[:, i], scores[:, i]
        if len(np.unique(y)) < 2:
            continue
        p, r, t = precision_recall_curve(y, s)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = 2 * p * r / (p + r)
        f1[np.isnan(f1)] = 0
        k = np.argmax(f1)
        fpr, tpr, _ = roc_curve(y, s)
        rows.append(
            [
                roc_auc_score(y, s),
                average_precision_score(y, s),
                f1[k],
                matthews_corrcoef(y, (s >= t[k]).astype(int)),
                *[tpr[np.abs(fpr - q).argmin()] for q in FPRS],
            ]
        )
    return np.mean(rows, axis=0) if rows else np.full(9, np.nan), len(rows)


def _check_split(got, prefix, labels, scores):
    want, count = _reference(labels, scores)
    assert got[prefix + "num_classes_scored"] == count
    names = ["auc", "ap", "f1", "mcc"] + [f"recall@fpr{q}" for q in FPRS]
    np.testing.assert_allclose([got[prefix + k] for k in names], want, rtol=1e-12, atol=0)


def test_matches_scikit_learn_per_split():
    labels, scores = _data()
    got = rp3d_metrics(labels, scores, head_cut=5, medium_cut=12)
    _check_split(got, "", labels, scores)
    _check_split(got, "head/", labels[:, :5], scores[:, :5])
    _check_split(got, "medium/", labels[:, 5:12], scores[:, 5:12])
    assert got["num_classes_scored"] == 10 and got["head/num_classes_scored"] == 4
    assert got["medium/num_classes_scored"] == 6


def test_unscorable_and_empty_splits_are_nan_not_zero():
    labels, scores = _data()
    got = rp3d_metrics(labels, scores, head_cut=0, medium_cut=12)
    assert got["tail/num_classes_scored"] == 0 and np.isnan(got["tail/auc"])
    assert got["head/num_classes_scored"] == 0 and np.isnan(got["head/recall@fpr0.01"])
    assert all(np.isfinite(v) for k, v in got.items() if k.startswith("medium/"))
    assert len([k for k in got if not k.startswith("roc/")]) == 4 * 10
    assert {"roc/all", "roc/medium"} <= set(got) and "roc/head" not in got  # none scorable


def test_scores_from_logits_clips_like_the_original():
    logits = np.array([[-100.0, 0.0, 100.0]], np.float32)
    want = 1 / (1 + np.exp(-np.clip(logits, -60, 60)))
    np.testing.assert_array_equal(cls.scores_from_logits(logits), want)


def test_bad_inputs():
    labels, scores = _data()
    with pytest.raises(ValueError, match="both be"):
        rp3d_metrics(labels, scores[:, :3], 1, 2)
    with pytest.raises(ValueError, match="head_cut"):
        rp3d_metrics(labels, scores, 3, 2)
    with pytest.raises(ValueError, match="0/1"):
        rp3d_metrics(labels * 2, scores, 1, 2)
    with pytest.raises(ValueError, match="non-finite"):
        rp3d_metrics(labels, np.where(scores > 0.5, np.nan, scores), 1, 2)


# Two scorable classes and one constant: class 0's ROC passes (0, 0), (0, .5), (.5, .5),
# (.5, 1), (1, 1); class 1 is separated perfectly; class 2 has no positive.
ROC_LABELS = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0], [1, 1, 0]])
ROC_SCORES = np.array([[0.1, 0.9, 0.5], [0.4, 0.2, 0.5], [0.35, 0.3, 0.5], [0.8, 0.7, 0.5]])


def test_macro_roc_by_hand():
    grid = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    class0 = [0.5, 0.5, 1.0, 1.0, 1.0]  # the vertical step at FPR 0.5 counts its top
    np.testing.assert_allclose(macro_roc(ROC_LABELS[:, :1], ROC_SCORES[:, :1], grid), class0)
    np.testing.assert_allclose(macro_roc(ROC_LABELS, ROC_SCORES, grid), [0.75, 0.75, 1.0, 1.0, 1.0])
    assert macro_roc(ROC_LABELS[:, 2:], ROC_SCORES[:, 2:], grid) is None


def test_rp3d_metrics_give_roc_curves_per_split():
    got = rp3d_metrics(ROC_LABELS, ROC_SCORES, head_cut=1, medium_cut=2)
    assert got["roc/fpr"] == ROC_GRID.tolist() and len(got["roc/fpr"]) == 51
    np.testing.assert_allclose(got["roc/head"], macro_roc(ROC_LABELS[:, :1], ROC_SCORES[:, :1]))
    np.testing.assert_allclose(got["roc/medium"], np.ones(51))
    np.testing.assert_allclose(got["roc/all"], (np.ones(51) + got["roc/head"]) / 2)
    assert "roc/tail" not in got  # its only class never occurs
