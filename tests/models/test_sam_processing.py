"""SAM's pre- and post-processing (radjax.models.sam.processing) against the original's
formulas: the resize shape, normalisation and padding, prompt scaling, and the logits'
upsampling against torch's F.interpolate."""

import numpy as np
import pytest

from radjax.models.sam import processing


def test_preprocess_shape_rounds_half_up_on_the_short_side():
    assert processing.preprocess_shape(480, 640, 1024) == (768, 1024)
    assert processing.preprocess_shape(333, 500, 1024) == (682, 1024)  # 682.0 exactly
    assert processing.preprocess_shape(101, 200, 64) == (32, 64)  # 32.32
    assert processing.preprocess_shape(103, 200, 64) == (33, 64)  # 32.96


def test_preprocess_resizes_with_pil_normalises_and_pads_bottom_right():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    pixels, (h, w) = processing.preprocess(image, 64)
    assert (h, w) == (38, 64) and pixels.shape == (64, 64, 3)
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((64, 38), Image.Resampling.BILINEAR))
    expected = (resized - np.array(processing.PIXEL_MEAN)) / np.array(processing.PIXEL_STD)
    np.testing.assert_allclose(pixels[:38], expected, rtol=1e-6, atol=1e-6)
    assert not pixels[38:].any()
    with pytest.raises(ValueError, match="uint8"):
        processing.preprocess(image.astype(np.float32), 64)


def test_prompts_scale_by_each_axis_ratio():
    coords = processing.scale_coords(np.array([[10.0, 20.0]]), (30, 50), 64)
    np.testing.assert_allclose(coords, [[10 * 64 / 50, 20 * 38 / 30]])
    boxes = processing.scale_boxes(np.array([[5, 6, 25, 16]]), (30, 50), 64)
    np.testing.assert_allclose(boxes, [[5 * 1.28, 6 * 38 / 30, 25 * 1.28, 16 * 38 / 30]])


@pytest.mark.parametrize("original", [(30, 50), (77, 41), (130, 90)])
def test_postprocess_matches_torch_interpolate(torch, original):
    F = torch.nn.functional
    image_size = 64
    input_hw = processing.preprocess_shape(*original, image_size)
    low = np.random.default_rng(1).standard_normal((2, 16, 16, 3)).astype(np.float32)
    got = np.asarray(
        processing.postprocess_masks(
            low, input_hw=input_hw, original_hw=original, image_size=image_size
        )
    )
    t = torch.from_numpy(low).permute(0, 3, 1, 2)
    t = F.interpolate(t, (image_size, image_size), mode="bilinear", align_corners=False)
    t = t[..., : input_hw[0], : input_hw[1]]
    t = F.interpolate(t, original, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(got, t.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
