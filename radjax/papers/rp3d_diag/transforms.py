"""RP3D-Diag's volume resampling (``resample_image`` in its dataset code), on numpy arrays."""

from __future__ import annotations

import math

import numpy as np

from radjax.data.transforms import resize


def rp3d_slice_indices(num_slices: int, depth: int) -> np.ndarray:
    """Slices RP3D keeps when a scan has more than ``depth`` of them.

    RP3D's ``resample_image`` takes ``torch.arange(0, D, D / depth).long()[:depth]``: a float32
    ramp with a double-precision step, truncated. This reproduces it bit for bit. For
    ``num_slices <= depth`` every slice is kept. Returns i64 ``(min(num_slices, depth),)``.
    """
    if num_slices <= depth:
        return np.arange(num_slices)
    step = num_slices / depth
    ramp = (np.arange(math.ceil(num_slices / step), dtype=np.float64) * step).astype(np.float32)
    return ramp.astype(np.int64)[:depth]


def rp3d_resample(
    volume_hwd: np.ndarray, size: int = 256, depth: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """RP3D's ``resample_image`` plus its zero padding and slice marks.

    Every slice is resized to ``size x size`` (bilinear, ``align_corners=False``); depth is
    never interpolated: if ``D > depth`` the strided subset ``rp3d_slice_indices`` is kept,
    if ``D < depth`` the volume is zero-padded at the end.

    Args:
      volume_hwd: ``(H, W, D)``, RP3D's on-disk layout.
      size: in-plane output size.
      depth: output number of slices.

    Returns:
      ``volume`` f32 ``(depth, size, size)`` and ``marks`` f32 ``(depth,)``: 1 for real
      slices, 0 for padding.
    """
    volume_hwd = np.asarray(volume_hwd, dtype=np.float32)
    if volume_hwd.ndim != 3:
        raise ValueError(f"rp3d_resample expects (H, W, D), got {volume_hwd.shape}")
    kept = volume_hwd[:, :, rp3d_slice_indices(volume_hwd.shape[-1], depth)]
    slices = resize(kept, (size, size), mode="bilinear")  # (size, size, D') as (H, W, C)
    volume = np.zeros((depth, size, size), np.float32)
    volume[: slices.shape[-1]] = np.moveaxis(slices, -1, 0)
    marks = np.zeros((depth,), np.float32)
    marks[: slices.shape[-1]] = 1.0
    return volume, marks
