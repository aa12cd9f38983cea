"""Transforms against MONAI 1.6 (channel-first torch tensors) and RP3D's torch code."""

import numpy as np
import pytest

from radjax.data import transforms as T
from radjax.papers.rp3d_diag import transforms as rp3d_T


@pytest.fixture(scope="module")
def mt():
    return pytest.importorskip("monai.transforms")


def _monai(transform, x_channels_last: np.ndarray) -> np.ndarray:
    """Runs a MONAI array transform on a channels-last array; returns channels-last."""
    import torch

    channel_first = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x_channels_last, -1, 0)))
    out = transform(channel_first)
    return np.moveaxis(np.asarray(out), 0, -1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize(
    "b_min,b_max,clip", [(0.0, 1.0, True), (-1.0, 2.0, False), (None, None, False)]
)
def test_scale_intensity_range_matches_monai(mt, rng, b_min, b_max, clip):
    x = rng.uniform(-1200, 1500, size=(6, 7, 5, 1)).astype(np.float32)
    ours = T.scale_intensity_range(x, -1000, 1000, b_min, b_max, clip)
    ref = _monai(mt.ScaleIntensityRange(-1000, 1000, b_min, b_max, clip), x)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    if clip:
        assert ours.min() == b_min and ours.max() == b_max


def test_scale_intensity_range_degenerate_window_matches_monai(mt, rng):
    x = rng.normal(size=(4, 4, 1)).astype(np.float32)
    with pytest.warns(Warning):
        ref = _monai(mt.ScaleIntensityRange(3.0, 3.0, 1.0, 2.0), x)
    np.testing.assert_allclose(T.scale_intensity_range(x, 3.0, 3.0, 1.0, 2.0), ref, atol=1e-6)


def test_scale_intensity_matches_monai_and_handles_constant_like_rp3d(mt, rng):
    x = rng.normal(5.0, 3.0, size=(5, 9, 2)).astype(np.float32)
    np.testing.assert_allclose(
        T.scale_intensity(x, -1.0, 3.0),
        _monai(mt.ScaleIntensity(-1.0, 3.0), x),
        rtol=1e-6,
        atol=1e-6,
    )
    constant = np.full((8, 8, 3), 7.0, np.float32)
    noise = T.scale_intensity(constant)  # RP3D: randn_like, then min-max
    assert noise.min() == 0.0 and noise.max() == 1.0 and noise.std() > 0.1
    np.testing.assert_array_equal(noise, T.scale_intensity(constant))  # rng=None: seeded
    other = T.scale_intensity(constant, rng=np.random.default_rng(5))
    assert not np.array_equal(noise, other)


@pytest.mark.parametrize(
    "shape,size", [((13, 17, 2), (8, 25)), ((5, 6, 1), (5, 11)), ((32, 32, 3), (7, 7))]
)
def test_resize_bilinear_matches_monai(mt, rng, shape, size):
    x = rng.normal(size=shape).astype(np.float32)
    ref = _monai(mt.Resize(size, mode="bilinear"), x)
    ours = T.resize(x, size, mode="bilinear")
    assert ours.shape == size + shape[-1:]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,size", [((5, 9, 7, 1), (8, 4, 11)), ((4, 6, 6, 2), (4, 3, -1))])
def test_resize_trilinear_matches_monai(mt, rng, shape, size):
    x = rng.normal(size=shape).astype(np.float32)
    ref = _monai(mt.Resize(size, mode="trilinear"), x)
    np.testing.assert_allclose(T.resize(x, size, mode="trilinear"), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape,size", [((13, 17, 1), (8, 25)), ((7, 10, 9, 2), (3, 17, 9)), ((6, 6, 1), (9, 4))]
)
def test_resize_nearest_matches_monai(mt, rng, shape, size):
    x = rng.integers(0, 50, size=shape).astype(np.float32)
    ref = _monai(mt.Resize(size, mode="nearest"), x)
    np.testing.assert_array_equal(T.resize(x, size, mode="nearest"), ref)


def test_resize_rejects_unknown_mode():
    with pytest.raises(ValueError, match="area"):
        T.resize(np.zeros((4, 4, 1)), (2, 2), mode="area")


@pytest.mark.parametrize("method", ["symmetric", "end"])
def test_spatial_pad_matches_monai(mt, rng, method):
    x = rng.normal(size=(5, 8, 3, 2)).astype(np.float32)
    size = (8, 7, 6)  # pad, keep (already larger), pad
    ours = T.spatial_pad(x, size, method=method)
    ref = _monai(mt.SpatialPad(size, method=method), x)
    assert ours.shape == (8, 8, 6, 2)
    np.testing.assert_array_equal(ours, ref)


def test_center_spatial_crop_matches_monai(mt, rng):
    x = rng.normal(size=(9, 8, 5, 1)).astype(np.float32)
    for roi in [(4, 5, 7), (9, 3, 2), (1, 8, -1)]:
        np.testing.assert_array_equal(
            T.center_spatial_crop(x, roi), _monai(mt.CenterSpatialCrop(roi), x)
        )


@pytest.mark.parametrize("size", [(6, 11), (10, 4), (7, 7)])
def test_resize_with_pad_or_crop_matches_monai(mt, rng, size):
    x = rng.normal(size=(9, 6, 2)).astype(np.float32)
    ours = T.resize_with_pad_or_crop(x, size)
    assert ours.shape == size + (2,)
    np.testing.assert_array_equal(ours, _monai(mt.ResizeWithPadOrCrop(size), x))


def test_repeat_slices_makes_identical_leading_slices():
    image = np.arange(12.0).reshape(3, 4)
    vol = T.repeat_slices(image, 5)
    assert vol.shape == (5, 3, 4)
    assert all(np.array_equal(s, image) for s in vol)
    assert T.repeat_slices(np.zeros((3, 4, 2)), 2).shape == (2, 3, 4, 2)


@pytest.mark.parametrize("depth", [4, 16, 32, 7])
def test_rp3d_slice_indices_match_torch_arange(torch, depth):
    for num_slices in range(depth + 1, 130):
        ref = torch.arange(0, num_slices, num_slices / depth).long()[:depth].numpy()
        np.testing.assert_array_equal(
            rp3d_T.rp3d_slice_indices(num_slices, depth),
            ref,
            err_msg=f"D={num_slices}, depth={depth}",
        )
    np.testing.assert_array_equal(rp3d_T.rp3d_slice_indices(3, depth), [0, 1, 2])


def _rp3d_reference(volume_hwd: np.ndarray, size: int, depth: int) -> np.ndarray:
    """RP3D's resample_image on a 'd c h w' tensor, written out with torch ops."""
    import torch

    image = torch.from_numpy(np.moveaxis(volume_hwd, -1, 0)[:, None].copy())
    if not (image.shape[-1] == size and image.shape[0] <= depth):
        image = torch.nn.functional.interpolate(
            image, size=(size, size), mode="bilinear", align_corners=False
        )
        if image.shape[0] > depth:
            image = image[torch.arange(0, image.shape[0], image.shape[0] / depth).long()[:depth]]
    return image[:, 0].numpy()


@pytest.mark.parametrize(
    "shape,size,depth", [((40, 40, 45), 16, 8), ((20, 20, 3), 32, 8), ((24, 24, 10), 24, 10)]
)
def test_rp3d_resample_matches_reference_and_pads(torch, rng, shape, size, depth):
    vol = rng.normal(size=shape).astype(np.float32)
    out, marks = rp3d_T.rp3d_resample(vol, size, depth)
    ref = _rp3d_reference(vol, size, depth)
    kept = ref.shape[0]
    assert out.shape == (depth, size, size) and marks.shape == (depth,)
    np.testing.assert_allclose(out[:kept], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(marks, np.arange(depth) < kept)
    assert not out[kept:].any()
