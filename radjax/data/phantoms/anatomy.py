"""Shared phantom anatomy: disorders, lesion drawing (with masks and boxes), body sections and
report sentences.

Used by every paper's phantom writer (``radjax.papers.<paper>.phantoms``). Volumes are f32
(H, W, D) in relative intensity units (air 0, soft tissue ~0.4, bone ~0.85). Each disorder is
one lesion kind at one patient-side location (radiological convention: the patient's right is
on the image's left). Report sentences state what, where and how big.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

# Patient-side location -> lesion centre as (row, column) fractions of the image.
LOCATIONS = {
    "right upper": (0.32, 0.32),
    "left upper": (0.32, 0.68),
    "right lower": (0.68, 0.32),
    "left lower": (0.68, 0.68),
}


@dataclasses.dataclass(frozen=True)
class Disorder:
    """One label: its names, the lesion that shows it, and its relative frequency."""

    name: str
    icd10: str
    icd10_description: str
    lesion: str | None  # key of LESIONS; None for "Normal"
    location: str | None  # key of LOCATIONS; None for "Normal"
    weight: float  # relative frequency among abnormal draws


DISORDERS: tuple[Disorder, ...] = (
    Disorder(
        "Normal",
        "Z03",
        "Encounter for medical observation for suspected diseases and conditions ruled out",
        None,
        None,
        0.0,
    ),
    # head
    Disorder(
        "Pulmonary nodule",
        "R91",
        "Abnormal findings on diagnostic imaging of lung",
        "nodule",
        "right upper",
        24.0,
    ),
    Disorder(
        "Renal cyst",
        "N28",
        "Other disorders of kidney and ureter, not elsewhere classified",
        "cyst",
        "left lower",
        18.0,
    ),
    Disorder(
        "Brain abscess",
        "G06",
        "Intracranial and intraspinal abscess and granuloma",
        "ring",
        "left upper",
        14.0,
    ),
    # medium
    Disorder("Hepatic cyst", "K76", "Other diseases of liver", "cyst", "right lower", 8.0),
    Disorder(
        "Rib fracture",
        "S22",
        "Fracture of rib(s), sternum and thoracic spine",
        "line",
        "left upper",
        6.5,
    ),
    Disorder("Pulmonary infarction", "I26", "Pulmonary embolism", "wedge", "right lower", 5.0),
    Disorder(
        "Pulmonary tuberculosis", "A15", "Respiratory tuberculosis", "specks", "right upper", 4.0
    ),
    # tail
    Disorder(
        "Hepatic haemangioma",
        "D18",
        "Haemangioma and lymphangioma, any site",
        "striped",
        "right lower",
        2.0,
    ),
    Disorder(
        "Renal cell carcinoma",
        "C64",
        "Malignant neoplasm of kidney, except renal pelvis",
        "nodule",
        "left lower",
        1.6,
    ),
    Disorder("Splenic infarction", "D73", "Diseases of spleen", "wedge", "left upper", 1.3),
    Disorder(
        "Bone metastasis",
        "C79",
        "Secondary malignant neoplasm of other and unspecified sites",
        "specks",
        "left lower",
        1.0,
    ),
)

FIELD_OF_VIEW_MM = 200.0
LESION_WORDS = {
    "nodule": "bright round nodule",
    "cyst": "dark well-defined cyst",
    "ring": "ring-enhancing lesion with a dark centre",
    "specks": "cluster of calcified specks",
    "line": "linear fracture line through a bright cortical band",
    "wedge": "wedge-shaped bright opacity",
    "striped": "striped heterogeneous mass",
}


# ---------------------------------------------------------------------------------------
# Drawing. Volumes are f32 (H, W, D) in relative intensity units (air 0, bone ~0.85);
# ``dy, dx, dz`` are offsets from the lesion centre in pixels, shaped (H,1,1), (1,W,1),
# (1,1,D); ``r`` is the in-plane radius in pixels and ``rz`` the half-extent in slices.
# ---------------------------------------------------------------------------------------


def _ball(dy, dx, dz, r, rz):
    """Boolean (H, W, D) ellipsoid of in-plane radius ``r`` and depth half-extent ``rz``."""
    return (dy**2 + dx**2) / r**2 + (dz / rz) ** 2 <= 1.0


def _rotated(dy, dx, angle):
    """Offsets in a frame turned by ``angle``: (along, across), both (H, W, 1)."""
    c, s = np.cos(angle), np.sin(angle)
    return dx * c + dy * s, dy * c - dx * s


def _draw_nodule(vol, dy, dx, dz, r, rz, rng):
    vol[_ball(dy, dx, dz, r, rz)] += 0.35


def _draw_cyst(vol, dy, dx, dz, r, rz, rng):
    vol[_ball(dy, dx, dz, r, rz)] = 0.06


def _draw_ring(vol, dy, dx, dz, r, rz, rng):
    rho = (dy**2 + dx**2) / r**2 + (dz / rz) ** 2
    vol[(rho <= 1.0) & (rho > 0.4)] += 0.4
    vol[rho <= 0.4] = 0.1


def _draw_specks(vol, dy, dx, dz, r, rz, rng):
    speck_r = max(1.3, 0.3 * r)
    for oy, ox in rng.uniform(-0.8 * r, 0.8 * r, size=(5, 2)):
        vol[_ball(dy - oy, dx - ox, dz, speck_r, max(rz * 0.6, 0.6))] = 0.95


def _draw_line(vol, dy, dx, dz, r, rz, rng):
    along, across = _rotated(dy, dx, rng.uniform(-0.5, 0.5))
    in_depth = np.abs(dz) <= rz
    band = (np.abs(along) <= 1.2 * r) & (np.abs(across) <= 0.4 * r) & in_depth
    vol[band] = 0.85
    vol[band & (np.abs(along) <= max(1.0, 0.15 * r))] = 0.08


def _draw_wedge(vol, dy, dx, dz, r, rz, rng):
    along, across = _rotated(dy + r, dx, rng.uniform(1.2, 1.9))  # apex above the centre
    wedge = (along >= 0) & (along <= 2 * r) & (np.abs(across) <= 0.55 * along)
    vol[wedge & (np.abs(dz) <= rz)] += 0.3


def _draw_striped(vol, dy, dx, dz, r, rz, rng):
    period = max(3.0, r / 1.5)
    stripes = np.sign(np.sin(2 * np.pi * (dx + dy) / period))
    ball = _ball(dy, dx, dz, r, rz)
    vol[ball] += np.broadcast_to(0.15 + 0.25 * stripes, ball.shape)[ball]


LESIONS: dict[str, Callable] = {
    "nodule": _draw_nodule,
    "cyst": _draw_cyst,
    "ring": _draw_ring,
    "specks": _draw_specks,
    "line": _draw_line,
    "wedge": _draw_wedge,
    "striped": _draw_striped,
}


def draw_lesion(vol: np.ndarray, kind: str, dy, dx, dz, r, rz, rng) -> np.ndarray:
    """Draws a ``kind`` lesion into ``vol`` (f32 (H, W, D), in place, offsets as above) and
    returns its segmentation mask: bool (H, W, D), the voxels the lesion changed."""
    before = vol.copy()
    LESIONS[kind](vol, dy, dx, dz, r, rz, rng)
    return vol != before


def bounding_box(mask: np.ndarray) -> tuple[int, ...] | None:
    """The tightest box around a mask of any rank: (start_0, ..., stop_0, ...) with exclusive
    stops, e.g. (y0, x0, z0, y1, x1, z1) for (H, W, D); None when the mask is empty."""
    hits = np.argwhere(mask)
    if not len(hits):
        return None
    return tuple(int(v) for v in (*hits.min(axis=0), *(hits.max(axis=0) + 1)))


def _ellipse(y, x, cy, cx, ry, rx):
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def background(anatomy: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """An f32 (H, W) body section with organs, in relative units, jittered per scan."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j].astype(np.float32)
    j = lambda v, spread=0.05: v + rng.uniform(-spread, spread)
    img = np.zeros((size, size), np.float32)
    img[_ellipse(y, x, j(0.0), j(0.0), j(0.8), j(0.9))] = rng.uniform(0.38, 0.48)
    if anatomy == "Chest":
        for side in (-1, 1):
            img[_ellipse(y, x, j(-0.05), j(0.4 * side), j(0.5), j(0.3))] = rng.uniform(0.12, 0.22)
    elif anatomy == "Abdomen and Pelvis":
        img[_ellipse(y, x, j(-0.2), j(-0.35), j(0.3), j(0.35))] = rng.uniform(0.52, 0.6)
        for side in (-1, 1):
            img[_ellipse(y, x, j(0.4), j(0.4 * side), j(0.15), j(0.1))] = rng.uniform(0.5, 0.58)
    elif anatomy == "Head and Neck":
        inner = _ellipse(y, x, 0.0, 0.0, 0.7, 0.8)
        img[_ellipse(y, x, 0.0, 0.0, 0.8, 0.9) & ~inner] = 0.9
        img[_ellipse(y, x, j(0.0), j(-0.1), j(0.2), j(0.06))] = rng.uniform(0.15, 0.25)
        img[_ellipse(y, x, j(0.0), j(0.1), j(0.2), j(0.06))] = rng.uniform(0.15, 0.25)
    else:  # spine and limbs: a bone with marrow in soft tissue
        img[_ellipse(y, x, j(0.0), j(0.0), j(0.3), j(0.25))] = 0.85
        img[_ellipse(y, x, j(0.0), j(0.0), j(0.15), j(0.12))] = rng.uniform(0.5, 0.6)
    if anatomy in ("Chest", "Abdomen and Pelvis"):
        img[_ellipse(y, x, j(0.6), j(0.0), j(0.12), j(0.12))] = 0.85  # vertebra
    return img


@dataclasses.dataclass(frozen=True)
class Lesion:
    """A disorder's lesion in one case: kind, centre (fractions) and radius (fraction)."""

    kind: str
    centre: tuple[float, float]
    radius: float


def lesion_phrase(disorder: Disorder, radius_px: float, size: int) -> str:
    mm = round(2 * radius_px * FIELD_OF_VIEW_MM / size)
    return f"A {mm} mm {LESION_WORDS[disorder.lesion]} in the {disorder.location} region."


def report_texts(
    disorders: list[int], lesions: list[Lesion], size: int, modality: str
) -> dict[str, str]:
    """finding / impression / caption / title texts stating what, where and how big."""
    if not disorders:
        return dict(
            finding="No focal lesion is seen.",
            impression="Normal study.",
            image_caption=f"{modality}: no abnormality.",
            title="Normal study",
        )
    phrases = [
        lesion_phrase(DISORDERS[d], l.radius * size, size) for d, l in zip(disorders, lesions)
    ]
    names = [f"{DISORDERS[d].name} ({DISORDERS[d].location})" for d in disorders]
    return dict(
        finding=" ".join(phrases),
        impression="Findings consistent with " + " and ".join(names) + ".",
        image_caption=f"{modality}: " + " ".join(phrases),
        title=" and ".join(DISORDERS[d].name for d in disorders),
    )
