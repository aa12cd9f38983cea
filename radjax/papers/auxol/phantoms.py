"""Phantoms in AuxOL's layout: ``<root>/<dataset>/<part>/{images,masks}/<name>.png``.

Three datasets of 2D RGB images with lesions drawn by the shared phantom anatomy
(``radjax.data.phantoms.anatomy.draw_lesion``), one look each, and two parts a dataset whose
lesions look different (the domain shift an online learner has to follow):

* ``Polyp`` (endoscopy-like, 160 x 128): pink mucosa with vignetting and folds; polyps are
  raised, redder domes with a specular highlight. Parts ``ClinicDB`` (smooth nodules) and
  ``ColonDB`` (striped, flatter ones on darker mucosa).
* ``BUSI`` (ultrasound-like, 128 x 128, grey): speckle over layered tissue; ``benign`` lesions
  are dark oval cysts, ``malignant`` ones rings with a bright rim and posterior shadow.
* ``GlaS`` (histology-like, 144 x 112): pink stroma speckled with purple nuclei; glands are
  white lumens in a purple epithelium, two to three an image; ``benign`` round, ``malignant``
  eccentric and with nuclei in the lumen.

Masks are single-channel PNGs, 255 inside a lesion, 0 elsewhere, named as their image.
Every lesion's box is at least 16 px a side, so AuxOL prompts each one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image
from scipy import ndimage

from radjax.data.phantoms.anatomy import draw_lesion

MIN_RADIUS_PX = 10  # a 20 px box: above AuxOL's 16 px minimum


@dataclasses.dataclass(frozen=True)
class PartLook:
    """How one part's images and lesions look."""

    lesion: str  # the anatomy's lesion kind that shapes the mask
    radius: tuple[float, float]  # lesion radius as a fraction of the shorter side
    count: tuple[int, int]  # lesions an image, inclusive range


@dataclasses.dataclass(frozen=True)
class DatasetLook:
    modality: str  # 'endoscopy' | 'ultrasound' | 'histology'
    size: tuple[int, int]  # written (W, H)
    parts: dict[str, PartLook]


DATASETS = {
    "Polyp": DatasetLook(
        "endoscopy",
        (160, 128),
        {
            "ClinicDB": PartLook("nodule", (0.16, 0.26), (1, 1)),
            "ColonDB": PartLook("striped", (0.14, 0.22), (1, 2)),
        },
    ),
    "BUSI": DatasetLook(
        "ultrasound",
        (128, 128),
        {
            "benign": PartLook("cyst", (0.14, 0.24), (1, 1)),
            "malignant": PartLook("ring", (0.16, 0.26), (1, 1)),
        },
    ),
    "GlaS": DatasetLook(
        "histology",
        (144, 112),
        {
            "benign": PartLook("cyst", (0.12, 0.17), (2, 3)),
            "malignant": PartLook("ring", (0.12, 0.18), (2, 3)),
        },
    ),
}


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-spread low-frequency noise (H, W)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (field / (field.std() + 1e-8)).astype(np.float32)


def _place(
    look: PartLook, hw: tuple[int, int], rng: np.random.Generator
) -> list[tuple[float, float, float]]:
    """Lesion (cy, cx, r) in pixels, fully inside the image and not overlapping."""
    h, w = hw
    placed: list[tuple[float, float, float]] = []
    want = int(rng.integers(look.count[0], look.count[1] + 1))
    for _ in range(200):
        if len(placed) == want:
            break
        r = max(MIN_RADIUS_PX, rng.uniform(*look.radius) * min(h, w))
        cy, cx = rng.uniform(r + 2, h - r - 2), rng.uniform(r + 2, w - r - 2)
        if all(np.hypot(cy - y, cx - x) > r + q + 4 for y, x, q in placed):
            placed.append((cy, cx, r))
    return placed


def _lesion_masks(
    look: PartLook, hw: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """-> (field: f32 (H, W) the anatomy's intensity change, mask: bool (H, W))."""
    h, w = hw
    field = np.zeros((h, w, 1), np.float32)
    mask = np.zeros((h, w), bool)
    ys = np.arange(h, dtype=np.float32)[:, None, None]
    xs = np.arange(w, dtype=np.float32)[None, :, None]
    dz = np.zeros((1, 1, 1), np.float32)
    for cy, cx, r in _place(look, hw, rng):
        ry = r * rng.uniform(0.8, 1.0)  # slightly oval: vertical radius shorter
        drawn = draw_lesion(field, look.lesion, (ys - cy) * r / ry, xs - cx, dz, r, 1.0, rng)
        mask |= drawn[:, :, 0]
    return field[:, :, 0], mask


def _endoscopy(field, mask, part, rng, hw):
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    radial = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    light = np.clip(1.1 - 0.55 * radial**2, 0.2, 1.0)
    folds = 0.06 * np.sin(2 * np.pi * (yy * 0.7 + xx * 0.3) / rng.uniform(18, 30))
    base = 0.62 + 0.08 * _smooth_noise(hw, 6, rng) + folds
    if part == "ColonDB":
        base -= 0.12
    dome = ndimage.gaussian_filter(mask.astype(np.float32), 3.0)
    shade = base + 0.14 * dome + 0.3 * field * mask
    r = shade * 1.05
    g = shade * 0.55 - 0.12 * dome
    b = shade * 0.5 - 0.08 * dome
    rgb = np.stack([r, g, b], -1) * light[..., None]
    spots = ndimage.gaussian_filter((rng.random(hw) < 0.004) & mask, 1.0) > 0.05
    rgb[spots] = 0.97
    return rgb


def _ultrasound(field, mask, part, rng, hw):
    h, w = hw
    yy = np.mgrid[0:h, 0:w][0].astype(np.float32)
    layers = (
        0.45 + 0.1 * np.sin(2 * np.pi * yy / rng.uniform(25, 40)) + 0.06 * _smooth_noise(hw, 4, rng)
    )
    echo = np.where(mask, 0.08 + 1.5 * np.clip(field, 0, None), layers)
    if part == "malignant":  # posterior acoustic shadow under the lesion
        below = np.maximum.accumulate(mask, axis=0) & ~mask
        echo = np.where(below, echo * 0.55, echo)
    speckle = rng.rayleigh(0.8, hw).astype(np.float32)
    grey = np.clip(echo * speckle, 0, 1)
    grey = ndimage.gaussian_filter(grey, 0.7)
    return np.repeat(grey[..., None], 3, axis=-1)


def _histology(field, mask, part, rng, hw):
    stroma = np.array([0.93, 0.62, 0.78], np.float32)
    nucleus = np.array([0.35, 0.2, 0.55], np.float32)
    lumen = np.array([0.97, 0.95, 0.97], np.float32)
    rgb = stroma * (1 + 0.05 * _smooth_noise(hw, 3, rng)[..., None])
    nuclei = ndimage.gaussian_filter((rng.random(hw) < 0.03).astype(np.float32), 0.8) > 0.08
    rim = mask & ~ndimage.binary_erosion(mask, iterations=3)
    inside = mask & ~rim
    rgb = np.where(nuclei[..., None] & ~mask[..., None], nucleus, rgb)
    rgb = np.where(rim[..., None], nucleus * 1.1, rgb)
    rgb = np.where(inside[..., None], lumen, rgb)
    if part == "malignant":
        rgb = np.where((inside & nuclei)[..., None], nucleus, rgb)
    return rgb


_LOOKS = {"endoscopy": _endoscopy, "ultrasound": _ultrasound, "histology": _histology}


def draw_image(dataset: str, part: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: (uint8 (H, W, 3) RGB image, uint8 (H, W) mask in {0, 255})."""
    look = DATASETS[dataset]
    w, h = look.size
    field, mask = _lesion_masks(look.parts[part], (h, w), rng)
    rgb = _LOOKS[look.modality](field, mask, part, rng, (h, w))
    image = np.round(255 * np.clip(rgb, 0, 1)).astype(np.uint8)
    return image, mask.astype(np.uint8) * 255


def write_auxol_phantoms(root: Path, phantoms: ml_collections.ConfigDict) -> None:
    """Writes ``phantoms.images_per_part`` images a part of every dataset in
    ``phantoms.datasets`` (default all) under ``root``, seeded by ``phantoms.seed``."""
    names = tuple(phantoms.get("datasets", None) or DATASETS)
    for d, dataset in enumerate(names):
        for p, part in enumerate(DATASETS[dataset].parts):
            rng = np.random.default_rng([phantoms.seed, d, p])
            for kind in ("images", "masks"):
                (root / dataset / part / kind).mkdir(parents=True, exist_ok=True)
            for i in range(phantoms.images_per_part):
                image, mask = draw_image(dataset, part, rng)
                name = f"{part}_{i:04d}.png"
                Image.fromarray(image).save(root / dataset / part / "images" / name)
                Image.fromarray(mask).save(root / dataset / part / "masks" / name)
