"""Synthetic RadFM task files: modality, VQA, report, rationale and diagnosis, 2D and 3D.

``write_radfm_phantoms(root, num_train, num_test)`` writes, under ``root`` (every path in a
task file is relative to ``root``), for each split in ``train``, ``test``:

  modality_{split}.csv          image_path, answer            (Radio_Modality_Dataset)
  vqa_{split}.csv               image_path, question, answer  (RadioVQA_Dataset)
  caption_{split}.json          [{pre, pat, npy_path, finding, impression}]  (RadioCaption_Dataset)
  rationale_{split}.json        [{pre, pat, npy_path, finding, impression, radiographic_features,
                                  articles, title}]            (Radiofeatures_Dataset)
  diagnosis_open_{split}.csv    image_path, label             (ChestXray_Dataset)
  diagnosis_closed_{split}.csv  image_path, disease, label    (Binary_Dataset, label 0/1)
  images/{split}/vol_XXXXX.npy  f32 (1, 3, H, W, D): S=1 image, 3 identical channels, depth last
  images/{split}/img_XXXXX.png  uint8 RGB (H, W, 3), 3 identical channels

and once: ``modality_set.json`` (``{"modality": [...]}``, as the original reads it) and
``articles.json`` (article title -> ICD-10 description; the rationale yes/no branch draws
negative titles from its keys).

Each split holds ``n`` 3D studies (CT or MRI, depth a multiple of 4 in [4, max_depth]) and ``n``
2D studies (X-ray or ultrasound). Row ``i`` of every task file is built from study ``i``:
report, rationale and VQA from the 3D study; open and closed diagnosis from the 2D study;
modality from the 3D study for even ``i`` and the 2D study for odd ``i``. A study is normal or
shows one lesion of an RP3D phantom disorder (``anatomy.DISORDERS``: lesion kind and location);
texts state modality, anatomy, lesion kind, size in mm and side. Sides follow the
radiological convention of the shared anatomy: the patient's right is on the image's left (columns < W/2).

npy arrays hold modality units (CT in HU, MRI arbitrary); the RadFM readers min-max normalise
each array, so only relative contrast matters. Modalities look different by design: CT is
linear (bone bright) with the patient table under the body; T1 MRI has signal-void bone, a
bright subcutaneous fat rim and a radial coil bias; X-ray is blurred with a white collimator
frame; ultrasound is a speckled fan-shaped sector.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from radjax.data.phantoms.anatomy import (
    DISORDERS,
    LESIONS,
    LOCATIONS,
    Lesion,
    background,
    report_texts,
)

MODALITIES_3D = ("CT", "MRI")
MODALITIES_2D = ("X-ray", "Ultrasound")
MODALITY_SET = MODALITIES_3D + MODALITIES_2D
SPLITS = ("train", "test")
# Task -> csv header, or None for a json list of dicts. Files are ``{task}_{split}.{csv|json}``.
TASKS = {
    "modality": ("image_path", "answer"),
    "vqa": ("image_path", "question", "answer"),
    "caption": None,
    "rationale": None,
    "diagnosis_open": ("image_path", "label"),
    "diagnosis_closed": ("image_path", "disease", "label"),
}
PATIENT = "Phantom patient."
PRESENTATION = "Synthetic phantom case."

_P_NORMAL = 0.25
_P_ASK_TRUE = 0.5 / (1 - _P_NORMAL)  # closed diagnosis: P(yes) = 0.5
_DEPTH_STEP = 4  # RadFM's frame patch size: depths are multiples of it
_RADIUS_RANGE = (0.07, 0.12)  # lesion radius as a fraction of the image size
# anatomy background region of a disorder, by the first word of its name (the organ).
_ORGAN_REGION = {
    "Pulmonary": "Chest",
    "Rib": "Chest",
    "Renal": "Abdomen and Pelvis",
    "Hepatic": "Abdomen and Pelvis",
    "Splenic": "Abdomen and Pelvis",
    "Brain": "Head and Neck",
    "Bone": "Spine",
}
# The word the texts use for a region.
_REGION_WORD = {
    "Chest": "chest",
    "Abdomen and Pelvis": "abdomen",
    "Head and Neck": "head",
    "Spine": "spine",
}
# Noun for "Is there a ...?" per lesion kind.
_LESION_NOUN = {
    "nodule": "nodule",
    "cyst": "cyst",
    "ring": "ring-enhancing lesion",
    "specks": "calcification",
    "line": "fracture",
    "wedge": "wedge-shaped opacity",
    "striped": "mass",
}


@dataclasses.dataclass(frozen=True)
class Study:
    """One drawn image: what it shows. ``disorder`` indexes ``DISORDERS`` (0 = Normal);
    ``radius`` is the lesion radius as a fraction of the image size (0 when normal);
    ``depth`` is 1 for 2D studies."""

    modality: str
    region: str
    disorder: int
    radius: float
    depth: int

    @property
    def lesion(self) -> Lesion | None:
        d = DISORDERS[self.disorder]
        return Lesion(d.lesion, LOCATIONS[d.location], self.radius) if self.disorder else None


def _draw_study(modalities: tuple[str, ...], max_depth: int, rng: np.random.Generator) -> Study:
    """A study of one of ``modalities``: normal with ``_P_NORMAL``, else a uniform disorder."""
    modality = str(rng.choice(modalities))
    disorder = 0 if rng.random() < _P_NORMAL else int(rng.integers(1, len(DISORDERS)))
    region = (
        _ORGAN_REGION[DISORDERS[disorder].name.split()[0]]
        if disorder
        else str(rng.choice(list(_REGION_WORD)))
    )
    radius = float(rng.uniform(*_RADIUS_RANGE)) if disorder else 0.0
    depth = (
        int(rng.choice(np.arange(_DEPTH_STEP, max_depth + 1, _DEPTH_STEP)))
        if modality in MODALITIES_3D
        else 1
    )
    return Study(modality, region, disorder, radius, depth)


# ---------------------------------------------------------------------------------------
# Rendering: f32 (H, W, D) in the anatomy's relative units (air 0, bone ~0.85), then modality look.
# ---------------------------------------------------------------------------------------


def _body_rim(img: np.ndarray) -> np.ndarray:
    """bool (H, W): the outer layer of the body (non-air pixels), ~1/16 of the image thick."""
    body = img > 0.05
    inner = body.copy()
    for shift in range(1, max(1, img.shape[0] // 16) + 1):
        for axis in (0, 1):
            for sign in (-1, 1):
                inner &= np.roll(body, sign * shift, axis=axis)
    return body & ~inner


def _mri_tissue(img: np.ndarray) -> np.ndarray:
    """T1 MRI tissue contrast on an anatomy (H, W) section: signal-void bone (the skull too),
    bright soft tissue and the brightest signal in the subcutaneous fat rim outside bone (on
    CT fat is darker than muscle)."""
    bone = img > 0.75
    t1 = np.where(_body_rim(img), 1.5, 1.6 * img)
    return np.where(bone, 0.1, t1).astype(np.float32)


def _ct_table(img: np.ndarray) -> np.ndarray:
    """The CT patient table on an anatomy (H, W) section: a band under the body, 80% of the
    width (an MRI table gives no signal)."""
    size = img.shape[0]
    out = img.copy()
    top, margin = int(0.94 * size), size // 10
    band = out[top : top + max(1, size // 32), margin : size - margin]
    band[...] = np.maximum(band, 0.6)
    return out


def _render(study: Study, size: int, rng: np.random.Generator) -> np.ndarray:
    """f32 (H, W, D) body section repeated over depth (MRI tissue contrast for MRI, the table
    for CT), the lesion centred at slice D // 2 spanning ~60% of the slices (all of a 2D
    image), plus noise."""
    section = background(study.region, size, rng)
    if study.modality == "MRI":
        section = _mri_tissue(section)
    elif study.modality == "CT":
        section = _ct_table(section)
    vol = np.repeat(section[:, :, None], study.depth, axis=2)
    lesion = study.lesion
    if lesion is not None:
        cy, cx = (size * c for c in lesion.centre)
        grid = np.arange(size, dtype=np.float32)
        dz = np.arange(study.depth, dtype=np.float32)[None, None, :] - study.depth // 2
        LESIONS[lesion.kind](
            vol,
            grid[:, None, None] - cy,
            grid[None, :, None] - cx,
            dz,
            size * lesion.radius,
            0.3 * study.depth + 0.5,
            rng,
        )
    return vol + rng.uniform(0.02, 0.04) * rng.standard_normal(vol.shape, dtype=np.float32)


def _radius_map(size: int) -> np.ndarray:
    """f32 (H, W, 1) distance from the image centre, 1 at the middle of an edge."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j].astype(np.float32)
    return np.sqrt(y**2 + x**2)[:, :, None]


def _ct(vol: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hounsfield units: linear, air -1000, bone ~700."""
    return vol * 2000.0 - 1000.0


def _mri(vol: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Radial (left-right symmetric) coil bias, arbitrary scale (tissue contrast: _mri_tissue)."""
    bias = 1.2 - 0.3 * _radius_map(vol.shape[0]) ** 2
    return vol * bias * rng.uniform(800.0, 1200.0)


def _xray(vol: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0-255: 3x3 box blur (projection look) inside a white collimator frame."""
    padded = np.pad(vol, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = vol.shape[:2]
    blurred = sum(padded[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0
    frame = max(2, h // 12)
    inside = np.zeros((h, w, 1), bool)
    inside[frame:-frame, frame:-frame] = True
    return np.clip(np.where(inside, blurred, 1.0) * 255.0, 0.0, 255.0)


def _ultrasound(vol: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0-255: strong multiplicative speckle inside a fan-shaped sector opening downwards."""
    size = vol.shape[0]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    apex_y, apex_x = -0.15 * size, (size - 1) / 2
    angle = np.arctan2(x - apex_x, y - apex_y)
    sector = (np.abs(angle) < 0.65) & (np.hypot(y - apex_y, x - apex_x) < 1.12 * size)
    speckle = 1.0 + 0.4 * rng.standard_normal(vol.shape, dtype=np.float32)
    return np.clip(vol * speckle * sector[:, :, None] * 255.0, 0.0, 255.0)


_APPEARANCE = {"CT": _ct, "MRI": _mri, "X-ray": _xray, "Ultrasound": _ultrasound}


def render_study(study: Study, size: int, rng: np.random.Generator) -> np.ndarray:
    """f32 (H, W, D) in the study's modality units (D = 1 for 2D studies)."""
    return _APPEARANCE[study.modality](_render(study, size, rng), rng).astype(np.float32)


def _save_volume(path: Path, vol: np.ndarray) -> None:
    """(H, W, D) -> f32 (1, 3, H, W, D): one image, three identical channels, depth last."""
    np.save(path, np.ascontiguousarray(np.broadcast_to(vol[None, None], (1, 3, *vol.shape))))


def _save_png(path: Path, img: np.ndarray) -> None:
    """(H, W, 1) in 0-255 -> uint8 RGB PNG with three identical channels."""
    gray = np.round(img[:, :, 0]).astype(np.uint8)
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(path)


# ---------------------------------------------------------------------------------------
# Texts: all stated from the study (what the image shows).
# ---------------------------------------------------------------------------------------


def diagnosis_name(study: Study) -> str:
    """The disorder name, ``"Normal"`` for a normal study."""
    return DISORDERS[study.disorder].name


def lesion_side(study: Study) -> str | None:
    """``"right"`` / ``"left"`` (patient side, image left / right), None when normal."""
    return DISORDERS[study.disorder].location.split()[0] if study.disorder else None


def _report(study: Study, size: int) -> dict[str, str]:
    lesion = study.lesion
    return report_texts(
        [study.disorder] if lesion else [], [lesion] if lesion else [], size, study.modality
    )


def report(study: Study, size: int) -> tuple[str, str]:
    """(finding, impression): modality and anatomy, then lesion kind, size, location."""
    texts = _report(study, size)
    scope = f"{study.modality} of the {_REGION_WORD[study.region]}."
    return f"{scope} {texts['finding']}", texts["impression"]


def _rationale(study: Study, size: int) -> dict:
    """Rationale keys: feature sentences, article titles and the case title."""
    finding, impression = report(study, size)
    return dict(
        radiographic_features=[finding, impression],
        articles=[diagnosis_name(study)],
        title=_report(study, size)["title"],
    )


def _vqa(study: Study, rng: np.random.Generator) -> tuple[str, str]:
    """One (question, answer) answerable from the image."""
    d = DISORDERS[study.disorder]
    noun = _LESION_NOUN[str(rng.choice(list(_LESION_NOUN)))]
    if study.disorder and rng.random() < 0.5:
        noun = _LESION_NOUN[d.lesion]
    has_noun = bool(study.disorder) and noun == _LESION_NOUN[d.lesion]
    pairs = [
        ("What is the diagnosis?", d.name),
        ("What imaging modality is used?", study.modality),
        ("Is this a normal study?", "no" if study.disorder else "yes"),
        (f"Is there a {noun}?", "yes" if has_noun else "no"),
    ]
    if study.disorder:
        pairs += [
            ("Which side is the lesion on?", lesion_side(study)),
            ("Is the lesion in the upper or lower region?", d.location.split()[1]),
        ]
    return pairs[int(rng.integers(len(pairs)))]


def _closed_diagnosis(study: Study, rng: np.random.Generator) -> tuple[str, int]:
    """(disease, 0/1): the true disorder with ``_P_ASK_TRUE`` when abnormal, else another one,
    so that about half of the questions are answered "yes" (a "no"-heavy set would let
    "always no" look like reading the image)."""
    if study.disorder and rng.random() < _P_ASK_TRUE:
        return diagnosis_name(study), 1
    others = [i for i in range(1, len(DISORDERS)) if i != study.disorder]
    return DISORDERS[int(rng.choice(others))].name, 0


# ---------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def task_file(task: str, split: str) -> str:
    """File name of ``task``'s ``split``, e.g. ``vqa_train.csv``, ``caption_test.json``."""
    return f"{task}_{split}.{'json' if TASKS[task] is None else 'csv'}"


def _write_split(root: Path, split: str, n: int, seed: int, size: int, max_depth: int) -> None:
    """Draws and saves ``n`` 3D and ``n`` 2D studies and writes the split's six task files."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    split_id = SPLITS.index(split)
    rows = {task: [] for task in TASKS}
    for i in range(n):
        rng3, rng2, rng_q = (np.random.default_rng([seed, split_id, i, s]) for s in range(3))
        s3 = _draw_study(MODALITIES_3D, max_depth, rng3)
        s2 = _draw_study(MODALITIES_2D, max_depth, rng2)
        npy, png = f"images/{split}/vol_{i:05d}.npy", f"images/{split}/img_{i:05d}.png"
        _save_volume(root / npy, render_study(s3, size, rng3))
        _save_png(root / png, render_study(s2, size, rng2))
        finding, impression = report(s3, size)
        caption = dict(
            pre=PRESENTATION, pat=PATIENT, npy_path=npy, finding=finding, impression=impression
        )
        rows["modality"].append((npy, s3.modality) if i % 2 == 0 else (png, s2.modality))
        rows["vqa"].append((npy, *_vqa(s3, rng_q)))
        rows["caption"].append(caption)
        rows["rationale"].append({**caption, **_rationale(s3, size)})
        rows["diagnosis_open"].append((png, diagnosis_name(s2)))
        rows["diagnosis_closed"].append((png, *_closed_diagnosis(s2, rng_q)))
    for task, header in TASKS.items():
        path = root / task_file(task, split)
        if header is None:
            _write_json(path, rows[task])
        else:
            _write_csv(path, header, rows[task])


def write_radfm_phantoms(
    root: str | os.PathLike[str],
    num_train: int,
    num_test: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    max_depth: int = 16,
) -> dict:
    """Writes deterministic synthetic RadFM task files under ``root`` (see module docstring).

    Args:
      root: output directory (created; files with the same names are replaced).
      num_train, num_test: rows in every task file of the split (= 3D and 2D studies each).
      seed: the same seed writes byte-identical files.
      image_size: H = W of every image.
      max_depth: largest depth D of a 3D study (depths are multiples of 4 from 4).

    Returns:
      ``{"root": str, "counts": {task: {split: rows}}, "images": {split: {"3d": n,
      "2d": n}}, "files": [relative paths of the task and metadata files]}``.
    """
    if max_depth < _DEPTH_STEP:
        raise ValueError(f"max_depth must be at least {_DEPTH_STEP}, got {max_depth}")
    root = Path(root)
    sizes = dict(zip(SPLITS, (num_train, num_test)))
    for split, n in sizes.items():
        _write_split(root, split, n, seed, image_size, max_depth)
    _write_json(root / "modality_set.json", {"modality": list(MODALITY_SET)})
    _write_json(root / "articles.json", {d.name: d.icd10_description for d in DISORDERS[1:]})
    files = [task_file(task, split) for split in SPLITS for task in TASKS]
    return dict(
        root=str(root),
        counts={task: dict(sizes) for task in TASKS},
        images={split: {"3d": n, "2d": n} for split, n in sizes.items()},
        files=sorted(files + ["modality_set.json", "articles.json"]),
    )
