"""AuxOL's prompts and crops (radjax.papers.auxol.prompts) on hand-made masks whose answer
follows from the released code's rules (cv2 and skimage are not dependencies; the expected
values are worked out from their documented semantics)."""

import numpy as np
import pytest

from radjax.papers.auxol import prompts


def _square(mask, y, x, h, w):
    mask[y : y + h, x : x + w] = 1


def test_components_list_the_background_first_then_8_connected_objects_in_raster_order():
    mask = np.zeros((40, 50), np.uint8)
    _square(mask, 2, 30, 5, 5)  # first in raster order
    _square(mask, 10, 2, 3, 3)
    mask[13, 5] = 1  # touches the second square diagonally only: 8-connected to it
    found = prompts.components(mask)
    assert len(found) == 3
    background, first, second = found
    assert background.area == 40 * 50 - 25 - 9 - 1
    assert background.box == (0, 0, 50, 40)
    assert first.box == (30, 2, 35, 7) and first.area == 25
    assert second.box == (2, 10, 6, 14) and second.area == 10
    assert first.centroid == pytest.approx((32.0, 4.0))


def test_objects_drop_the_largest_component_and_boxes_under_16_px_smallest_first():
    mask = np.zeros((100, 100), np.uint8)
    _square(mask, 5, 5, 30, 30)  # 900 px
    _square(mask, 50, 50, 20, 16)  # 320 px, 16 px wide: kept
    _square(mask, 80, 5, 15, 40)  # 15 px high: dropped
    found = prompts.objects(mask)
    assert [c.box for c in found] == [(50, 50, 66, 70), (5, 5, 35, 35)]


def test_an_object_larger_than_the_background_is_the_one_dropped():
    """The code's quirk: the largest entry is taken for the background."""
    mask = np.zeros((40, 60), np.uint8)
    _square(mask, 0, 0, 40, 40)  # 1600 px object, background 800 px
    found = prompts.objects(mask)
    assert len(found) == 1 and found[0].box == (40, 0, 60, 40)  # the background's box
    assert prompts.objects(np.zeros((40, 40), np.uint8)) == []


def test_convex_hull_fills_the_notch_of_an_l_shape_and_keeps_the_box():
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:9] = True  # vertical bar
    mask[21:25, 5:25] = True  # horizontal bar
    hull = prompts.convex_hull_image(mask)
    assert hull[mask].all()
    assert hull[15, 12] and not hull[8, 20]  # below the diagonal filled, above not
    ys, xs = np.nonzero(hull)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (5, 5, 25, 25)
    single = np.zeros((5, 5), bool)
    single[2, 3] = True
    np.testing.assert_array_equal(prompts.convex_hull_image(single), single)
    assert not prompts.convex_hull_image(np.zeros((5, 5))).any()


def test_point_crop_grows_the_hull_box_by_a_tenth_per_side_and_falls_back_to_the_image():
    probs = np.zeros((100, 120), np.float32)
    probs[20:60, 30:80] = 0.9  # box (30, 20, 80, 60): 50 x 40
    assert prompts.point_crop(probs) == (25, 16, 85, 64)
    probs[:] = 0.0
    probs[0:30, 0:30] = 0.9  # grown at the image corner: clipped at 0
    assert prompts.point_crop(probs) == (0, 0, 33, 33)
    assert prompts.point_crop(np.zeros((50, 60), np.float32)) == (0, 0, 60, 50)
    tiny = np.zeros((50, 60), np.float32)
    tiny[10:20, 10:20] = 0.9  # 10 px: no object -> the whole image
    assert prompts.point_crop(tiny) == (0, 0, 60, 50)


class _Draws:
    """A generator stand-in returning given draws in order."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def random(self):
        return self.draws.pop(0)


def test_shift_box_moves_left_or_right_and_up_or_down_keeping_the_size():
    box = (20, 30, 60, 50)  # 40 x 20
    assert prompts.shift_box(box, 0.1, (100, 100), _Draws(0.2, 0.7)) == (16, 32, 56, 52)
    assert prompts.shift_box(box, 0.1, (100, 100), _Draws(0.9, 0.1)) == (24, 28, 64, 48)
    # clipped at the border, the size kept
    assert prompts.shift_box((0, 0, 40, 20), 0.5, (100, 100), _Draws(0.1, 0.1)) == (0, 0, 40, 20)
    assert prompts.shift_box((70, 90, 100, 100), 0.5, (100, 100), _Draws(0.9, 0.9)) == (
        70,
        90,
        100,
        100,
    )


def test_noisy_mask_dilates_and_erodes_with_a_centred_square_kernel():
    mask = np.zeros((20, 20), np.uint8)
    mask[8:12, 8:12] = 1
    grown = prompts.noisy_mask(mask, 0.15, "dilation", np.random.default_rng(0))  # kernel 3
    expected = np.zeros_like(mask)
    expected[7:13, 7:13] = 1
    np.testing.assert_array_equal(grown, expected)
    # an even kernel (4) is anchored at 4 // 2: it reaches 2 px up/left and 1 px down/right
    grown = prompts.noisy_mask(mask, 0.2, "dilation", np.random.default_rng(0))
    expected = np.zeros_like(mask)
    expected[7:14, 7:14] = 1
    np.testing.assert_array_equal(grown, expected)
    shrunk = prompts.noisy_mask(mask, 0.15, "erosion", np.random.default_rng(0))
    expected = np.zeros_like(mask)
    expected[9:11, 9:11] = 1
    np.testing.assert_array_equal(shrunk, expected)
    full = np.ones((10, 10), np.uint8)  # the border never erodes
    np.testing.assert_array_equal(prompts.noisy_mask(full, 0.3, "erosion", None), full)
    # a kernel of 0 px is cv2's default 3 x 3
    np.testing.assert_array_equal(
        prompts.noisy_mask(mask[6:14, 6:14], 0.05, "dilation", None),
        np.pad(np.ones((6, 6), np.uint8), 1),
    )
    with pytest.raises(ValueError, match="online.noise_type"):
        prompts.noisy_mask(mask, 0.1, "blur", None)


def test_noisy_mask_both_picks_erosion_or_dilation_by_one_draw():
    mask = np.zeros((20, 20), np.uint8)
    mask[8:12, 8:12] = 1
    eroded = prompts.noisy_mask(mask, 0.15, "both", _Draws(0.3))
    dilated = prompts.noisy_mask(mask, 0.15, "both", _Draws(0.7))
    assert eroded.sum() == 4 and dilated.sum() == 36


def test_component_at_picks_the_object_a_box_names_not_its_neighbour():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:25, 5:9] = 1  # an L: its box (5, 5, 25, 25) is empty at the upper right
    mask[21:25, 5:25] = 1
    _square(mask, 8, 14, 6, 6)  # a separate object inside the L's box
    (large,) = prompts.objects(mask)
    assert large.box == (5, 5, 25, 25)
    only = prompts.component_at(mask, large.box)
    assert only.sum() == large.area == 144 and only[10, 16] == 0
    assert prompts.component_at(mask, (14, 8, 20, 14)).sum() == 36
    assert not prompts.component_at(mask, (30, 0, 40, 10)).any()
