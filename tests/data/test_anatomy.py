"""Shared phantom anatomy: every lesion kind draws a mask around its centre, in 2D and 3D."""

import numpy as np
import pytest

from radjax.data.phantoms import anatomy


@pytest.mark.parametrize("kind", sorted(anatomy.LESIONS))
@pytest.mark.parametrize("depth", [1, 9])
def test_lesion_mask_and_box_hold_the_lesion(kind, depth):
    size, cy, cx, key = 48, 20.0, 30.0, depth // 2
    vol = np.repeat(
        anatomy.background("Chest", size, np.random.default_rng(0))[:, :, None], depth, 2
    )
    before = vol.copy()
    grid = np.arange(size, dtype=np.float32)
    dz = np.arange(depth, dtype=np.float32)[None, None, :] - key
    mask = anatomy.draw_lesion(
        vol,
        kind,
        grid[:, None, None] - cy,
        grid[None, :, None] - cx,
        dz,
        6.0,
        0.35 * depth + 1,
        np.random.default_rng(1),
    )
    assert mask.shape == vol.shape and mask.dtype == bool
    np.testing.assert_array_equal(mask, vol != before)  # exactly the changed voxels
    assert mask.any() and mask.sum() < 0.2 * mask.size
    y0, x0, z0, y1, x1, z1 = anatomy.bounding_box(mask)
    assert y0 <= cy < y1 and x0 <= cx + 1 and cx - 1 < x1 and z0 <= key < z1
    assert max(y1 - y0, x1 - x0) <= 4 * 6.0 + 2


def test_bounding_box_of_empty_and_known_masks():
    assert anatomy.bounding_box(np.zeros((4, 4), bool)) is None
    mask = np.zeros((5, 6), bool)
    mask[1:3, 2:5] = True
    assert anatomy.bounding_box(mask) == (1, 2, 3, 5)
