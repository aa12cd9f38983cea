"""AuxOL's crop pre- and post-processing around the auxiliary U-Net (``main.py:
predict_with_prompt``), host-side numpy, one crop at a time. Crops are (h, w[, C]), channels
last, at the object's box in the full image.

* ``unet_input``: the crop and SAM's binary mask -> the U-Net's (S, S, 4) input in [0, 1];
* ``unet_target``: the rectified crop mask -> the (S, S) training target in {0, 1};
* ``resize_logits``: the U-Net's (S, S) logits -> (h, w) at the crop's size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_COEF_BITS = 11  # cv2 INTER_RESIZE_COEF_BITS: fixed-point weights of 8-bit bilinear resizes
_COEF_SCALE = 1 << _COEF_BITS


def unet_input(
    image_crop: np.ndarray, sam_binary: np.ndarray, size: int = 128, *, four_channel: bool = True
) -> np.ndarray:
    """``transforms.Compose([ToPILImage(), Resize((size, size)), ToTensor()])`` of the crop.

    Args:
      image_crop: uint8 (h, w, 3) RGB.
      sam_binary: (h, w) {0, 1}, SAM's thresholded prediction on the crop; with
        ``four_channel`` it is the 4th channel, ``mask * 255`` as uint8 (the code's
        ``--four_channel 1``, run.sh's default).

    Returns:
      f32 (size, size, 4) (or 3) in [0, 1].

    What torchvision does, reproduced on PIL: ``ToPILImage`` makes an ``RGBA`` (``RGB``) image
    of the uint8 array, ``Resize`` calls ``Image.resize((size, size), BILINEAR)`` (PIL's
    bilinear with its antialiasing support on downscaling), ``ToTensor`` divides by 255 in
    f32. Quirk: PIL resizes ``RGBA`` images with premultiplied alpha (``RGBa``), so the RGB
    channels come back black wherever the resized SAM mask is 0 and un-premultiplied
    (colour / alpha) near its edge: the U-Net sees the image only inside SAM's mask.
    Checked against torchvision 0.28 (``tests/golden/make_auxol_golden.py``).
    """
    image_crop = np.asarray(image_crop)
    if image_crop.dtype != np.uint8 or image_crop.ndim != 3 or image_crop.shape[-1] != 3:
        raise ValueError(f"unet_input: image_crop must be uint8 (h, w, 3), got "
                         f"{image_crop.dtype} {image_crop.shape}")  # fmt: skip
    if four_channel:
        sam_binary = np.asarray(sam_binary)
        if sam_binary.shape != image_crop.shape[:2]:
            raise ValueError(
                f"unet_input: sam_binary {sam_binary.shape} must be the crop's (h, w) "
                f"{image_crop.shape[:2]}"
            )
        alpha = sam_binary.astype(np.uint8) * np.uint8(255)
        image_crop = np.concatenate([image_crop, alpha[:, :, None]], axis=2)
    pil = Image.fromarray(np.ascontiguousarray(image_crop))
    resized = pil.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, np.uint8).astype(np.float32) / np.float32(255)


def _cv2_linear_taps(
    n_in: int, n_out: int, *, horizontal: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cv2's INTER_LINEAR source taps for one axis: (i0, i1, w0, w1) with int weights summing
    to 2048. src = (o + 0.5) * scale - 0.5 in f32 (scale = 1 / (n_out / n_in) in double),
    i0 = floor(src), fraction f = src - i0. Horizontally, a tap outside the row is moved to
    the edge with f = 0; vertically the fraction stays and both rows are clipped to the
    image (so an edge row is read twice, with weights that still sum to 2048)."""
    scale = 1.0 / (n_out / n_in)
    f = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    frac = (f - i0.astype(np.float32)).astype(np.float32)
    if horizontal:
        frac[(i0 < 0) | (i0 >= n_in - 1)] = 0
    i1 = np.clip(i0 + 1, 0, n_in - 1)
    i0 = np.clip(i0, 0, n_in - 1)
    w0 = np.rint((np.float32(1) - frac) * np.float32(_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(frac * np.float32(_COEF_SCALE)).astype(np.int64)
    return i0, i1, w0, w1


def unet_target(mask_crop: np.ndarray, size: int = 128) -> np.ndarray:
    """``(cv2.resize(mask_crop, (size, size)) >= 0.5).astype(float32)``: the training target.

    Args:
      mask_crop: (h, w) (or (h, w, 1)) {0, 1} uint8, the rectified crop mask.

    Returns:
      f32 (size, size) in {0, 1}.

    cv2.resize of a uint8 image with INTER_LINEAR (no antialiasing) is fixed-point, and its
    uint8 output of a {0, 1} mask is already 0 or 1 (rounded), which ``>= 0.5`` keeps. Written
    as cv2 4.x computes it on x86 (``resizeGeneric_`` with ``HResizeLinearVec_8u32s`` /
    ``VResizeLinearVec_32s8u``): weights round(2048 (1 - f)), round(2048 f) per axis on
    cv2's half-pixel grid; the horizontal pass in int; the vertical pass
    ``(((s0 >> 4) * b0) >> 16) + (((s1 >> 4) * b1) >> 16)``, then ``(v + 2) >> 2``. The
    truncations make it differ from float bilinear (and from cv2's own scalar formula
    ``(s0 b0 + s1 b1 + 2^21) >> 22``, which it does not use here) on pixels within ~2^-7 of
    1/2; against cv2 4.14 (opencv-python-headless) it is bit-exact on random uint8 images and
    masks of every size tried (``tests/golden/data/auxol_crops.npz``). Other builds (ARM's
    carotene / NEON paths) may round differently.
    """
    mask = np.asarray(mask_crop)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2:
        raise ValueError(f"unet_target: mask_crop must be (h, w), got shape {mask.shape}")
    return (cv2_resize_linear_u8(mask.astype(np.uint8), size) >= 0.5).astype(np.float32)


def cv2_resize_linear_u8(image: np.ndarray, size: int) -> np.ndarray:
    """``cv2.resize(image, (size, size))`` (INTER_LINEAR) of a uint8 (h, w) image -> uint8
    (size, size), as ``unet_target`` describes."""
    src = image.astype(np.int64)
    h, w = src.shape
    x0, x1, a0, a1 = _cv2_linear_taps(w, size, horizontal=True)
    y0, y1, b0, b1 = _cv2_linear_taps(h, size, horizontal=False)
    rows = src[:, x0] * a0 + src[:, x1] * a1  # (h, size): horizontal pass, weights sum 2048
    v = (((rows[y0] >> 4) * b0[:, None]) >> 16) + (((rows[y1] >> 4) * b1[:, None]) >> 16)
    return np.clip((v + 2) >> 2, 0, 255).astype(np.uint8)


def _torch_linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear (align_corners=False) taps for one axis: (i0, i1, lambda1), f32:
    src = max(scale * (o + 0.5) - 0.5, 0) with the f32 scale n_in / n_out (the product in
    double, as C++ promotes ``o + 0.5``, rounded to f32), i0 = int(src),
    i1 = min(i0 + 1, n_in - 1)."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.float64(scale) * (np.arange(n_out) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    return i0, i1, lam


def resize_logits(logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``F.interpolate(logits[None, None], size=shape, mode='bilinear')`` (align_corners
    False, no antialiasing) of (S, S) logits -> f32 (h, w), computed as torch's CPU kernel:
    ``l0h * (l0w * x00 + l1w * x01) + l1h * (l0w * x10 + l1w * x11)`` in f32."""
    x = np.asarray(logits, np.float32)
    if x.ndim != 2:
        raise ValueError(f"resize_logits: logits must be (S, S), got shape {x.shape}")
    h, w = (int(s) for s in shape)
    y0, y1, ly = _torch_linear_taps(x.shape[0], h)
    x0, x1, lx = _torch_linear_taps(x.shape[1], w)
    one = np.float32(1)
    top = (one - lx) * x[y0][:, x0] + lx * x[y0][:, x1]
    bottom = (one - lx) * x[y1][:, x0] + lx * x[y1][:, x1]
    return ((one - ly)[:, None] * top + ly[:, None] * bottom).astype(np.float32)
