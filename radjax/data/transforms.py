"""Array transforms named after MONAI's, with MONAI's semantics, on channels-last numpy arrays.

MONAI (and PyTorch) put the channel axis first: ``(C, H, W)`` / ``(C, D, H, W)``. radjax is
channels-last throughout, so every function here that takes a channel axis expects it LAST:
``(H, W, C)`` / ``(D, H, W, C)``, and ``spatial_size`` lists the leading (spatial) axes only.
Apart from the axis order the results equal MONAI's (tests check parity with MONAI 1.6).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_LINEAR_MODES = ("bilinear", "trilinear", "linear")


def scale_intensity_range(
    x: np.ndarray,
    a_min: float,
    a_max: float,
    b_min: float | None = None,
    b_max: float | None = None,
    clip: bool = False,
) -> np.ndarray:
    """MONAI ``ScaleIntensityRange``: maps ``[a_min, a_max]`` linearly onto ``[b_min, b_max]``.

    Any shape. With ``b_min``/``b_max`` None the output is ``(x - a_min) / (a_max - a_min)``;
    ``clip`` clips to ``[b_min, b_max]``. If ``a_min == a_max`` the result is
    ``x - a_min (+ b_min)``, as in MONAI. Returns f32.
    """
    x = np.asarray(x, dtype=np.float32)
    if a_max - a_min == 0.0:
        return x - a_min if b_min is None else x - a_min + b_min
    x = (x - a_min) / (a_max - a_min)
    if b_min is not None and b_max is not None:
        x = x * (b_max - b_min) + b_min
    if clip:
        x = np.clip(x, b_min, b_max)
    return x.astype(np.float32)


def scale_intensity(
    x: np.ndarray, minv: float = 0.0, maxv: float = 1.0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """MONAI ``ScaleIntensity`` (global min-max) onto ``[minv, maxv]``; any shape, f32 out.

    Constant input: MONAI returns ``x * minv``; RP3D's dataset code instead replaces the
    array by standard-normal noise (``torch.randn_like``) before the min-max. radjax follows
    RP3D: the noise comes from ``rng``, or from a generator seeded with 0 when ``rng`` is
    None, so the deterministic path stays deterministic.
    """
    x = np.asarray(x, dtype=np.float32)
    lo, hi = (x.min(), x.max()) if x.size else (0.0, 0.0)
    if lo == hi:
        rng = np.random.default_rng(0) if rng is None else rng
        x = rng.standard_normal(x.shape, dtype=np.float32)
        lo, hi = x.min(), x.max()
        if lo == hi:  # a single voxel stays constant whatever the noise
            return np.full_like(x, minv)
    return ((x - lo) / (hi - lo) * (maxv - minv) + minv).astype(np.float32)


def _spatial_size(shape: Sequence[int], spatial_size: Sequence[int] | int) -> tuple[int, ...]:
    """MONAI's ``fall_back_tuple``: an int repeats; entries <= 0 keep the input size."""
    if isinstance(spatial_size, int):
        spatial_size = (spatial_size,) * len(shape)
    if len(spatial_size) != len(shape):
        raise ValueError(
            f"spatial_size {tuple(spatial_size)} does not match spatial shape {tuple(shape)}"
        )
    return tuple(int(s) if s and s > 0 else int(n) for s, n in zip(spatial_size, shape))


def _linear_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Linear interpolation along one axis, PyTorch ``align_corners=False`` sampling.

    Output index ``o`` samples the input at ``(o + 0.5) * n_in / n_out - 0.5``, clamped at 0,
    between its two neighbours (the upper clamped to ``n_in - 1``).
    """
    n_in = x.shape[axis]
    if n_in == size:
        return x
    scale = np.float32(n_in / size)
    src = np.maximum((np.arange(size, dtype=np.float32) + 0.5) * scale - 0.5, 0.0)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    weight = (src - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = size
    weight = weight.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - weight) + np.take(x, hi, axis=axis) * weight


def _nearest_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """PyTorch ``nearest`` (legacy, not ``nearest-exact``): input ``floor(o * n_in / n_out)``."""
    n_in = x.shape[axis]
    if n_in == size:
        return x
    scale = np.float32(n_in / size)
    src = np.minimum(np.floor(np.arange(size, dtype=np.float32) * scale).astype(np.int64), n_in - 1)
    return np.take(x, src, axis=axis)


def resize(x: np.ndarray, spatial_size: Sequence[int] | int, mode: str = "bilinear") -> np.ndarray:
    """MONAI ``Resize`` (``size_mode='all'``, ``align_corners=False``, no anti-aliasing).

    Args:
      x: channels-last ``(*spatial, C)``, e.g. ``(H, W, C)`` or ``(D, H, W, C)``.
      spatial_size: output size of the spatial axes; an entry <= 0 keeps that axis.
      mode: ``'bilinear'``/``'trilinear'`` (separable linear interpolation on every spatial
        axis, as ``torch.nn.functional.interpolate`` with ``align_corners=False``) or
        ``'nearest'`` (PyTorch's legacy nearest). MONAI's default ``'area'`` is not offered.

    Returns:
      f32 ``(*spatial_size, C)``.
    """
    x = np.asarray(x, dtype=np.float32)
    size = _spatial_size(x.shape[:-1], spatial_size)
    if mode in _LINEAR_MODES:
        resample_axis = _linear_axis
    elif mode == "nearest":
        resample_axis = _nearest_axis
    else:
        raise ValueError(f"resize mode {mode!r} not supported; use bilinear, trilinear or nearest")
    for axis, n in enumerate(size):
        x = resample_axis(x, axis, n)
    return x.astype(np.float32, copy=False)


def spatial_pad(
    x: np.ndarray,
    spatial_size: Sequence[int] | int,
    method: str = "symmetric",
    mode: str = "constant",
    **np_pad_kwargs,
) -> np.ndarray:
    """MONAI ``SpatialPad``: pads the spatial axes of channels-last ``x`` up to ``spatial_size``.

    Axes already at least as large are left alone. ``method='symmetric'`` splits the padding
    ``(w // 2, w - w // 2)``; ``'end'`` pads after. ``mode`` and extra keywords go to ``np.pad``.
    """
    x = np.asarray(x)
    size = _spatial_size(x.shape[:-1], spatial_size)
    widths = [max(s - n, 0) for s, n in zip(size, x.shape[:-1])]
    if method == "symmetric":
        pad = [(w // 2, w - w // 2) for w in widths]
    elif method == "end":
        pad = [(0, w) for w in widths]
    else:
        raise ValueError(f"spatial_pad method {method!r} not supported; use symmetric or end")
    if not any(widths):
        return x
    return np.pad(x, pad + [(0, 0)], mode=mode, **np_pad_kwargs)


def center_spatial_crop(x: np.ndarray, roi_size: Sequence[int] | int) -> np.ndarray:
    """MONAI ``CenterSpatialCrop`` on channels-last ``x``.

    The ROI starts at ``max(n // 2 - roi // 2, 0)``; axes smaller than the ROI are kept whole.
    """
    x = np.asarray(x)
    size = _spatial_size(x.shape[:-1], roi_size)
    starts = [max(n // 2 - s // 2, 0) for s, n in zip(size, x.shape[:-1])]
    return x[tuple(slice(b, b + s) for b, s in zip(starts, size))]


def resize_with_pad_or_crop(
    x: np.ndarray,
    spatial_size: Sequence[int] | int,
    method: str = "symmetric",
    mode: str = "constant",
    **np_pad_kwargs,
) -> np.ndarray:
    """MONAI ``ResizeWithPadOrCrop``: center-crops, then pads, to exactly ``spatial_size``."""
    return spatial_pad(
        center_spatial_crop(x, spatial_size), spatial_size, method, mode, **np_pad_kwargs
    )


def repeat_slices(image2d: np.ndarray, depth: int) -> np.ndarray:
    """Turns a 2-D image into a volume by stacking ``depth`` copies along a new leading axis.

    ``(H, W)`` -> ``(depth, H, W)``; ``(H, W, C)`` -> ``(depth, H, W, C)``.
    """
    image2d = np.asarray(image2d)
    if image2d.ndim not in (2, 3):
        raise ValueError(f"repeat_slices expects (H, W) or (H, W, C), got {image2d.shape}")
    return np.repeat(image2d[None], depth, axis=0)
