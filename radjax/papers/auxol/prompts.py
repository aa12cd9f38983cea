"""Prompts and crops from masks, as AuxOL's ``tool.calc_information`` /
``calc_predict_information`` and the prompt branch of ``main.py:predict_with_prompt``.

Images are (H, W) arrays; boxes are ``(x1, y1, x2, y2)`` in pixels with exclusive ends
(``x2 = x1 + width``, cv2's stats), points ``(x, y)``. The released code's order and quirks are
kept:

* components are 8-connected (``cv2.connectedComponentsWithStats``), listed with the background
  (every zero pixel, label 0) first, then sorted by area (``np.argsort``, smallest first), and
  the LARGEST entry is dropped as "the background": an object larger than the background is
  the one dropped. Components whose box is under 16 px wide or high are dropped. Prompts are
  visited smallest first.
* the point-prompt crop is the box of the convex hull of SAM's binarised prediction
  (``skimage.morphology.convex_hull_image``), found by the same component rule, falling back
  to the whole image when nothing is left, enlarged by 10 % of its width / height per side
  (``int`` truncation) and clipped to the image.
* box-shift noise moves the box left or right (1/2 each) by ``p * width`` and up or down by
  ``p * height`` keeping its size; mask noise dilates or erodes the crop's mask with a square
  kernel of ``int(r * min(h, w))`` px (cv2's ``dilate`` / ``erode``: an empty kernel is 3 x 3,
  the image border never adds or removes pixels).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage, spatial

MIN_SIDE = 16  # px: components with a narrower or lower box are no prompt
CROP_MARGIN = 0.1  # point prompts: the hull's box grows by this fraction per side
_EIGHT_CONNECTED = np.ones((3, 3), bool)


@dataclasses.dataclass(frozen=True)
class Component:
    """One connected component: box (x1, y1, x2, y2) exclusive, centroid (x, y), pixel count."""

    box: tuple[int, int, int, int]
    centroid: tuple[float, float]
    area: int


def components(binary: np.ndarray) -> list[Component]:
    """cv2.connectedComponentsWithStats(binary, connectivity=8): the background (label 0: all
    zero pixels) first, then the 8-connected components in raster order of their first pixel.
    binary: (H, W), nonzero = foreground."""
    foreground = np.asarray(binary) != 0
    labels, count = ndimage.label(foreground, structure=_EIGHT_CONNECTED)
    found = []
    for label in range(count + 1):
        ys, xs = np.nonzero(labels == label)
        if not len(ys):  # an all-foreground image has an empty background
            found.append(Component((0, 0, 0, 0), (0.0, 0.0), 0))
            continue
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        found.append(Component(box, (float(xs.mean()), float(ys.mean())), len(ys)))
    return found


def objects(binary: np.ndarray) -> list[Component]:
    """The components AuxOL prompts: sorted by area, the largest (taken for the background)
    dropped, then those whose box is at least ``MIN_SIDE`` px wide and high; smallest first."""
    found = components(binary)
    areas = np.array([c.area for c in found], np.int32)  # cv2's stats are int32
    ranked = [found[i] for i in np.argsort(areas)][:-1]
    return [
        c for c in ranked if c.box[2] - c.box[0] >= MIN_SIDE and c.box[3] - c.box[1] >= MIN_SIDE
    ]


def component_at(binary: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The 8-connected component with the most pixels inside ``box`` (the object a box
    prompt names), uint8 (H, W) {0, 1}; all zero when the box holds no foreground."""
    labels, _ = ndimage.label(np.asarray(binary) != 0, structure=_EIGHT_CONNECTED)
    x1, y1, x2, y2 = box
    inside = labels[y1:y2, x1:x2]
    counts = np.bincount(inside.ravel())
    counts[0] = 0
    if not counts.any():
        return np.zeros(labels.shape, np.uint8)
    return (labels == counts.argmax()).astype(np.uint8)


def convex_hull_image(binary: np.ndarray) -> np.ndarray:
    """skimage.morphology.convex_hull_image(binary) (offset_coordinates, include_borders,
    tolerance 1e-10): each foreground pixel contributes the four points half a pixel from its
    centre along the axes; a pixel is in the hull when its centre is. (H, W) bool; all False
    for an empty input."""
    binary = np.asarray(binary) != 0
    ys, xs = np.nonzero(binary)
    if not len(ys):
        return np.zeros(binary.shape, bool)
    centres = np.stack([ys, xs], axis=1).astype(np.float64)
    offsets = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]])
    points = (centres[:, None, :] + offsets[None]).reshape(-1, 2)
    hull = spatial.ConvexHull(points)
    y0, x0 = ys.min(), xs.min()
    gy, gx = np.mgrid[y0 : ys.max() + 1, x0 : xs.max() + 1]
    grid = np.stack([gy.ravel(), gx.ravel()], axis=1).astype(np.float64)
    inside = np.all(grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-10, axis=1)
    out = np.zeros(binary.shape, bool)
    out[gy.ravel()[inside], gx.ravel()[inside]] = True
    return out


def point_crop(sam_probabilities: np.ndarray) -> tuple[int, int, int, int]:
    """The crop of a point prompt: the box of the convex hull of SAM's prediction (> 0.5),
    by ``objects``' rule (the first, i.e. smallest, left; the whole image when none is),
    enlarged by ``CROP_MARGIN`` per side and clipped. sam_probabilities: (H, W) in [0, 1]."""
    h, w = sam_probabilities.shape
    found = objects(convex_hull_image(sam_probabilities > 0.5))
    x1, y1, x2, y2 = found[0].box if found else (0, 0, w, h)
    bw, bh = x2 - x1, y2 - y1
    return (
        max(0, int(x1 - bw * CROP_MARGIN)),
        max(0, int(y1 - bh * CROP_MARGIN)),
        min(w, int(x2 + bw * CROP_MARGIN)),
        min(h, int(y2 + bh * CROP_MARGIN)),
    )


def shift_box(
    box: tuple[int, int, int, int],
    fraction: float,
    image_hw: tuple[int, int],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """Box-prompt noise ('lrud'): left or right by ``fraction * width`` and up or down by
    ``fraction * height`` (each 1/2), size kept; the moved side is clipped to the image."""
    x1, y1, x2, y2 = box
    h, w = image_hw
    bw, bh = x2 - x1, y2 - y1
    if rng.random() < 0.5:
        x1 = max(0, int(x1 - fraction * bw))
        x2 = x1 + bw
    else:
        x2 = min(w, int(x2 + fraction * bw))
        x1 = x2 - bw
    if rng.random() < 0.5:
        y1 = max(0, int(y1 - fraction * bh))
        y2 = y1 + bh
    else:
        y2 = min(h, int(y2 + fraction * bh))
        y1 = y2 - bh
    return x1, y1, x2, y2


NOISE_TYPES = ("dilation", "erosion", "both")


def _square_filter(mask: np.ndarray, size: int, erode: bool) -> np.ndarray:
    """cv2.dilate / cv2.erode with an all-ones size x size kernel anchored at its centre
    (size // 2): out[y, x] = max (min) of mask[y - size//2 + i, x - size//2 + j]; pixels
    outside the image never count (cv2's default border value)."""
    lo = size // 2
    pad = ((lo, size - 1 - lo), (lo, size - 1 - lo))
    padded = np.pad(mask, pad, constant_values=1 if erode else 0)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size))
    return (windows.min(axis=(2, 3)) if erode else windows.max(axis=(2, 3))).astype(mask.dtype)


def noisy_mask(
    mask: np.ndarray, fraction: float, noise_type: str, rng: np.random.Generator
) -> np.ndarray:
    """The simulated clinician's mask of a crop: ``mask`` (h, w) {0, 1} dilated, eroded, or
    either (1/2 each, 'both') with a square kernel of ``int(fraction * min(h, w))`` px
    (0 -> cv2's 3 x 3 default)."""
    if noise_type not in NOISE_TYPES:
        raise ValueError(
            f"noise_type {noise_type!r} (config field online.noise_type): one of {NOISE_TYPES}"
        )
    size = int(min(mask.shape) * fraction) or 3
    erode = noise_type == "erosion" or (noise_type == "both" and rng.random() < 0.5)
    return _square_filter(mask, size, erode)
