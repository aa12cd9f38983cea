"""radjax.metrics.segmentation against monai.metrics (the ``monai`` fixture) and by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from radjax.metrics.segmentation import dice, edges, hausdorff


def _masks(rng: np.random.Generator, shape: tuple[int, ...], kind: int) -> np.ndarray:
    if kind == 0:  # sparse noise
        return (rng.random(shape) > 0.8).astype(np.float32)
    if kind == 1:  # one pixel anywhere (often on the border of a small image)
        m = np.zeros(shape, np.float32)
        m[tuple(rng.integers(0, s) for s in shape)] = 1
        return m
    if kind == 2:  # empty half the time
        return np.zeros(shape, np.float32) if rng.random() < 0.5 else _masks(rng, shape, 0)
    if kind == 3:  # a box touching the top-left border
        m = np.zeros(shape, np.float32)
        m[tuple(slice(0, rng.integers(1, s + 1)) for s in shape)] = 1
        return m
    if kind == 4:  # everything
        return np.ones(shape, np.float32)
    return (rng.random(shape) > 0.97).astype(np.float32)  # a few scattered pixels


def _monai_hd(monai, torch, pred, gt, **kw) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on empty masks
        value = monai.metrics.compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None], **kw
        )
    return float(value.item())


def _same(got: float, want: float) -> bool:
    return got == want or (np.isnan(got) and np.isnan(want))


@pytest.mark.parametrize("percentile", [None, 95])
def test_hausdorff_matches_monai_2d(monai, torch, percentile):
    rng = np.random.default_rng(0)
    kinds = set()
    for trial in range(240):
        shape = tuple(int(s) for s in rng.integers(1, 40, 2))
        kind = trial % 6
        pred, gt = _masks(rng, shape, kind), _masks(rng, shape, (kind + trial // 6) % 6)
        want = _monai_hd(monai, torch, pred, gt, percentile=percentile)
        got = hausdorff(pred, gt, percentile=percentile, clamp_to_diagonal=False)
        assert _same(got, want), (trial, shape, got, want)
        kinds.add("nan" if np.isnan(want) else "inf" if np.isinf(want) else "finite")
    # both empty (NaN), one empty (inf; for HD95 NaN: torch.lerp(inf, inf, w)) both met
    assert kinds == ({"nan", "inf", "finite"} if percentile is None else {"nan", "finite"})


def test_hausdorff_matches_monai_3d_and_spacing(monai, torch):
    rng = np.random.default_rng(1)
    for trial in range(40):
        shape = tuple(int(s) for s in rng.integers(2, 14, 3))
        pred, gt = _masks(rng, shape, trial % 4), _masks(rng, shape, (trial + 1) % 4)
        spacing = (1.0, 0.5, 2.5) if trial % 2 else None
        for percentile in (None, 95):
            want = _monai_hd(monai, torch, pred, gt, percentile=percentile, spacing=spacing)
            got = hausdorff(
                pred, gt, percentile=percentile, spacing=spacing, clamp_to_diagonal=False
            )
            assert _same(got, want), (trial, shape, percentile, got, want)


def test_hausdorff_by_hand():
    a = np.zeros((10, 10), np.uint8)
    b = np.zeros((10, 10), np.uint8)
    a[2, 2] = 1
    b[2, 6] = 1
    assert hausdorff(a, b) == 4.0
    b[9, 9] = 1
    assert hausdorff(a, b) == pytest.approx(np.hypot(7, 7))
    filled = np.zeros((10, 10), bool)
    filled[2:8, 2:8] = True  # interior pixels are no edges: HD to its own rim is 0
    rim = edges(filled)
    assert rim.sum() == 20 and hausdorff(filled, rim) == 0.0
    assert hausdorff(a, np.zeros_like(a)) == float(np.float32(np.hypot(10, 10)))  # clamped
    assert hausdorff(a, np.zeros_like(a), clamp_to_diagonal=False) == np.inf
    assert np.isnan(hausdorff(np.zeros_like(a), np.zeros_like(a)))  # MONAI: both empty


def test_percentile_zero_is_the_maximum(monai, torch):
    """MONAI's ``if not percentile``: percentile 0 is the full Hausdorff distance."""
    rng = np.random.default_rng(2)
    pred, gt = _masks(rng, (20, 20), 0), _masks(rng, (20, 20), 0)
    assert hausdorff(pred, gt, percentile=0) == hausdorff(pred, gt)
    assert hausdorff(pred, gt, percentile=0) == _monai_hd(monai, torch, pred, gt, percentile=0)
    assert hausdorff(pred, gt, percentile=50) < hausdorff(pred, gt)


def test_dice():
    a = np.array([[1, 1, 0, 0]], np.uint8)
    b = np.array([[1, 0, 1, 0]], np.uint8)
    assert dice(a, b) == pytest.approx((2 * 1 + 1) / (2 + 2 + 1))
    assert dice(a, b, smooth=0) == 0.5
    assert dice(np.zeros(4), np.zeros(4)) == 1.0  # smooth 1: two empty masks agree
    soft = np.array([0.5, 0.25], np.float32)
    assert dice(soft, np.array([1, 0], np.uint8)) == pytest.approx((2 * 0.5 + 1) / (0.75 + 1 + 1))
    assert dice(a.astype(bool), b.astype(bool)) == dice(a, b)
    with pytest.raises(ValueError, match="shapes differ"):
        dice(a, b[:, :3])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dice(a * 255, b)


def test_dice_matches_monai(monai, torch):
    """On binary masks with smooth 0 (where both define it) Dice = MONAI's DiceMetric."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        pred, gt = (rng.random((2, 16, 16)) > 0.5).astype(np.float32)
        want = monai.metrics.compute_dice(
            torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None]
        )
        assert dice(pred, gt, smooth=0) == pytest.approx(float(want.item()), rel=1e-6)


def test_hausdorff_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        hausdorff(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="percentile"):
        hausdorff(np.ones((3, 3)), np.ones((3, 3)), percentile=120)
