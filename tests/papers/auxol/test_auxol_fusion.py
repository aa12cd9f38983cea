"""AuxOL's crop processing and adaptive fusion against the ORIGINAL code.

``tests/golden/data/auxol_{crops,fusion}.npz`` come from ``tests/golden/make_auxol_golden.py``
(qianxihaoyue/AuxOL at 3bc80097): main.py's torchvision ``ToPILImage + Resize + ToTensor``
(torchvision 0.28), ``cv2.resize`` (opencv 4.14) and ``F.interpolate`` of one crop each, the
fusion loop over a stream of nine crops with the original ``calc_dice`` / ``binary``, and
``metric.calc_dice`` / ``calc_hf`` on masks incl. empty ones. numpy only; the resize checks
against torch on more sizes use the ``torch`` fixture.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from radjax.metrics.segmentation import dice, hausdorff
from radjax.papers.auxol import crops, fusion
from tests.parity import assert_close

DATA = pathlib.Path(__file__).parents[2] / "golden" / "data"
COMMIT = "3bc80097153d3be5ac54dae8932aef6af16cfb5e"


@pytest.fixture(scope="module")
def crops_golden():
    return np.load(DATA / "auxol_crops.npz")


@pytest.fixture(scope="module")
def fusion_golden():
    return np.load(DATA / "auxol_fusion.npz")


def test_golden_files(crops_golden, fusion_golden):
    for data in (crops_golden, fusion_golden):
        assert str(data["meta/commit"]) == COMMIT
    versions = json.loads(str(crops_golden["meta/config"]))["versions"]
    assert versions["torchvision"].startswith("0.28") and versions["cv2"].startswith("4.")


@pytest.mark.parametrize("case", range(4))
def test_crop_processing_matches_original(crops_golden, case):
    g = {k.split("/", 2)[-1]: crops_golden[k] for k in crops_golden.files if f"/{case}/" in k}
    image, sam = g["image"], g["sam"]
    four = crops.unet_input(image, sam, 128)
    three = crops.unet_input(image, sam, 128, four_channel=False)
    # bit-exact: PIL's resize is what torchvision calls, ToTensor is uint8 / 255
    np.testing.assert_array_equal(four, g["four_u8"].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(three, g["three_u8"].astype(np.float32) / np.float32(255))
    assert four.dtype == np.float32 and four.shape == (128, 128, 4)
    np.testing.assert_array_equal(crops.unet_target(g["mask"], 128), g["target"])
    np.testing.assert_array_equal(crops.unet_target(g["mask"][:, :, None], 128), g["target"])
    back = crops.resize_logits(g["logits"], image.shape[:2])
    assert back.shape == image.shape[:2]
    assert_close(back, g["logits_back"], 1e-6, "resize_logits")


def test_rgba_resize_is_premultiplied(crops_golden):
    """The quirk the original inherits from PIL: RGB is black where SAM's mask is 0."""
    image, sam = crops_golden["in/0/image"], crops_golden["in/0/sam"]
    four = crops.unet_input(image, sam, 128)
    assert four[..., 3].min() == 0 and four[..., 3].max() == 1
    assert np.all(four[four[..., 3] == 0][:, :3] == 0)
    three = crops.unet_input(image, sam, 128, four_channel=False)
    assert np.abs(three[four[..., 3] == 0]).max() > 0.5


@pytest.mark.parametrize("case", range(3))
def test_cv2_fixed_point_resize_is_bit_exact(crops_golden, case):
    image = crops_golden[f"in/cv2/{case}/image"]
    want = crops_golden[f"out/cv2/{case}/resized"]
    np.testing.assert_array_equal(crops.cv2_resize_linear_u8(image, want.shape[0]), want)


def test_resize_logits_matches_torch(torch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 128)).astype(np.float32)
    for shape in ((300, 17), (129, 127), (5, 3), (128, 128), (16, 200), (1, 1)):
        want = torch.nn.functional.interpolate(
            torch.from_numpy(x)[None, None], mode="bilinear", size=shape
        )[0, 0].numpy()
        assert_close(crops.resize_logits(x, shape), want, 1e-6, str(shape))


def test_bad_inputs():
    with pytest.raises(ValueError, match="uint8"):
        crops.unet_input(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="sam_binary"):
        crops.unet_input(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="mask_crop"):
        crops.unet_target(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="shapes differ"):
        fusion.best_alpha(np.zeros((3, 3)), np.zeros((3, 3)), np.zeros((3, 4)), (0.0,))
    with pytest.raises(ValueError, match="does not fit"):
        fusion.merge_crops((8, 8), [(0, 0, 4, 4)], [np.zeros((4, 5))])


def test_alpha_grid():
    grid = fusion.alpha_grid()
    assert len(grid) == 21 and grid[0] == 0 and grid[-1] == 1.0 and grid[1] == 0.05
    assert fusion.alpha_grid(0.5) == tuple(round(0.05 * i, 2) for i in range(11))


def _split(flat, shapes):
    out, start = [], 0
    for h, w in shapes:
        out.append(flat[start : start + h * w].reshape(h, w))
        start += h * w
    return out


def test_fusion_stream_matches_original(fusion_golden):
    g = fusion_golden
    boxes = [tuple(int(v) for v in b) for b in g["in/boxes"]]
    shapes = [(y2 - y1, x2 - x1) for x1, y1, x2, y2 in boxes]
    sam = _split(g["in/sam_logits"], shapes)
    aux = _split(g["in/aux_logits"], shapes)
    masks = _split(g["in/masks"], shapes)
    want_fused = _split(g["out/fused"], shapes)
    grid = fusion.alpha_grid()
    history, used, fused_maps = [], [], []
    for i in range(len(boxes)):
        best, score = fusion.best_alpha(sam[i], aux[i], masks[i], grid)
        history.append(best)
        probs, alpha = fusion.fused(sam[i], aux[i], history, alpha_num=5)
        used.append(alpha)
        fused_maps.append(probs)
        assert probs.dtype == np.float32
        assert_close(probs, want_fused[i], 1e-6, f"fused crop {i}")
        np.testing.assert_allclose(score, g["out/best_dices"][i], rtol=1e-6)
    assert history == list(g["out/best_alphas"])
    assert history[4] == 0.0  # the tied crop (aux == sam): the first alpha wins
    np.testing.assert_allclose(used, g["out/mean_alphas"], rtol=1e-12)
    assert used[:5] == [1.0] * 5 and used[5] != 1.0
    for image, shape in enumerate(g["in/image_shapes"]):
        index = [i for i, j in enumerate(g["in/image_index"]) if j == image]
        merged = fusion.merge_crops(
            tuple(shape), [boxes[i] for i in index], [fused_maps[i] for i in index]
        )
        assert merged.dtype == np.uint8
        np.testing.assert_array_equal(merged, g[f"out/merged/{image}"])


@pytest.mark.parametrize(
    "name", ["blobs", "pred_empty", "gt_empty", "both_empty", "dot", "same"]
)  # fmt: skip
def test_metrics_match_original(fusion_golden, name):
    pred = fusion_golden[f"metric/in/{name}/pred"]
    gt = fusion_golden[f"metric/in/{name}/gt"]
    want_hd = float(fusion_golden[f"metric/out/{name}/hd"])
    np.testing.assert_allclose(dice(pred, gt), fusion_golden[f"metric/out/{name}/dice"], rtol=1e-12)
    got_hd = hausdorff(pred, gt)
    if np.isnan(want_hd):  # both empty: MONAI's NaN, not clamped by calc_hf
        assert np.isnan(got_hd)
    else:
        assert got_hd == want_hd
    if name in ("pred_empty", "gt_empty"):  # inf clamped to the f32 diagonal
        assert got_hd == float(np.float32(np.hypot(*pred.shape)))


def test_merge_is_a_union():
    a = np.full((4, 4), 0.9, np.float32)
    b = np.full((4, 4), 0.2, np.float32)
    b[0, 0] = 0.6
    merged = fusion.merge_crops((6, 6), [(0, 0, 4, 4), (2, 2, 6, 6)], [a, b])
    want = np.zeros((6, 6), np.uint8)
    want[:4, :4] = 1
    want[2, 2] = 1
    np.testing.assert_array_equal(merged, want)
