"""SAM's pre- and post-processing (segment_anything ``utils/transforms.py:ResizeLongestSide``,
``modeling/sam.py:Sam.preprocess / postprocess_masks``, ``predictor.py:SamPredictor``).

Pre-processing (host, numpy): the uint8 (H, W, 3) RGB image is resized so its longest side is
``image_size`` (``ResizeLongestSide.apply_image``: torchvision's ``resize`` of a PIL image,
i.e. PIL's bilinear resize, to ``int(side * scale + 0.5)``), normalised with the pixel mean and
std, and zero-padded at the bottom and right to ``image_size`` square. Prompts are scaled the
same way (``apply_coords``: x by new_w / old_w, y by new_h / old_h; boxes as two corners).

Post-processing (device): the decoder's low-resolution logits are resized bilinearly
(``align_corners=False``, no antialiasing: torch's ``F.interpolate``) to ``image_size``, the
padding is cut off, and the rest is resized to the original image size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

PIXEL_MEAN = (123.675, 116.28, 103.53)  # Sam's pixel_mean (RGB, 0..255)
PIXEL_STD = (58.395, 57.12, 57.375)


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """``ResizeLongestSide.get_preprocess_shape``: (new_h, new_w), rounded half up."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess(image: np.ndarray, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 (H, W, 3) RGB -> (f32 (image_size, image_size, 3) normalised and padded pixels,
    the resized (h, w) before padding)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"SAM expects a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}"
        )
    new_h, new_w = preprocess_shape(*image.shape[:2], image_size)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    pixels = (resized.astype(np.float32) - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)
    padded = np.zeros((image_size, image_size, 3), np.float32)
    padded[:new_h, :new_w] = pixels
    return padded, (new_h, new_w)


def scale_coords(coords: np.ndarray, original_hw: tuple[int, int], image_size: int) -> np.ndarray:
    """(..., 2) (x, y) pixels of the original image -> of the resized one (f64, as the
    original's ``astype(float)``)."""
    old_h, old_w = original_hw
    new_h, new_w = preprocess_shape(old_h, old_w, image_size)
    coords = np.array(coords, dtype=np.float64)
    coords[..., 0] *= new_w / old_w
    coords[..., 1] *= new_h / old_h
    return coords


def scale_boxes(boxes: np.ndarray, original_hw: tuple[int, int], image_size: int) -> np.ndarray:
    """(B, 4) x1, y1, x2, y2 of the original image -> of the resized one."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return scale_coords(boxes.reshape(-1, 2, 2), original_hw, image_size).reshape(-1, 4)


def _bilinear(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """(B, h, w, C) -> (B, *hw, C), torch's bilinear with align_corners=False."""
    shape = (x.shape[0], *hw, x.shape[-1])
    return jax.image.resize(x, shape, "linear", antialias=False)


@functools.partial(jax.jit, static_argnames=("input_hw", "original_hw", "image_size"))
def postprocess_masks(
    low_res: jax.Array, *, input_hw: tuple[int, int], original_hw: tuple[int, int], image_size: int
) -> jax.Array:
    """Low-res logits (B, h, w, M) -> logits at the original size (B, H, W, M)."""
    full = _bilinear(low_res.astype(jnp.float32), (image_size, image_size))
    return _bilinear(full[:, : input_hw[0], : input_hw[1]], original_hw)
