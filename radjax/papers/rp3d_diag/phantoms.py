"""Synthetic RP3D-DiagDS: multi-scan radiology cases with long-tailed, learnable disorders.

``write_rp3d_phantoms(root, num_train, num_test)`` writes, under ``root``:

  train.json, test.json        case dicts keyed by a fake Radiopaedia URL, RP3D schema
  disorder_label_dict.json     disorder name -> index (index 0 = "Normal", then by frequency)
  icd10_label_dict.json        ICD-10 code -> index (same order: one code per disorder)
  icd10_desription.json        ICD-10 code -> description (the original's spelling)
  data/<split>/*.npy           one f32 (H, W, D) array per scan plane
  key/<split>/*.npy            one i64 (1,) key-slice index per scan plane

Each disorder is one lesion type (bright nodule, dark cyst, ring-enhancing lesion, speck
cluster, fracture line, wedge, striped mass) at one location (patient's right/left, upper/
lower; radiological convention, so the patient's right is on the image's left). A case has
0 (-> "Normal"), 1 or 2 disorders at different locations, and every scan of the case shows
all of them: CT and MRI as 3-D stacks of 3-40 slices (each plane drawn independently),
X-ray and ultrasound as 2-D images (some X-rays stored as 3 identical RGB channels, as in
the real dataset). The key slice passes through the lesion centre; findings and impressions
state what, where and how big. Sizes, positions, backgrounds and noise are jittered.

Disorder frequencies are long-tailed by design: indices 1-3 are head classes, 4-7 medium and
8-11 tail (the tiny config's ``head_cut=4, medium_cut=8``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from radjax.data.phantoms.anatomy import (
    DISORDERS,
    LESIONS,
    LOCATIONS,
    Lesion,
    background,
    report_texts,
)

# How many disorders a case carries: P(0), P(1), P(2).
_NUM_DISORDERS_P = (0.3, 0.45, 0.25)
_ANATOMIES = ("Chest", "Abdomen and Pelvis", "Head and Neck", "Spine", "Lower Limb", "Upper Limb")
_MODALITIES = ("CT", "MRI", "X-ray", "Ultrasound")
_MODALITY_P = (0.35, 0.2, 0.3, 0.15)
_NUM_SAMPLES_P = (0.45, 0.35, 0.2)  # 1, 2 or 3 scans per case
_PLANES = {
    "CT": ("Axial", "Coronal", "Sagittal"),
    "MRI": ("Axial", "Sagittal"),
    "X-ray": ("Frontal", "Lateral"),
    "Ultrasound": ("Transverse", "Longitudinal"),
}
_PLANE_COUNT_P = {
    "CT": (0.65, 0.2, 0.15),
    "MRI": (0.75, 0.25),
    "X-ray": (0.6, 0.4),
    "Ultrasound": (0.7, 0.3),
}
_AUX = {
    "CT": ("non-contrast", "arterial phase", "portal venous phase"),
    "MRI": ("T1", "T2", "FLAIR", "T1 C+"),
    "X-ray": (None,),
    "Ultrasound": (None,),
}


def _to_modality(vol: np.ndarray, modality: str, rng: np.random.Generator) -> np.ndarray:
    """Relative units -> the modality's value range (CT in HU, MRI arbitrary, 8-bit X-ray/US)."""
    if modality == "CT":
        return vol * 2000.0 - 1000.0
    if modality == "MRI":
        bias = 1.0 + 0.15 * np.linspace(-1, 1, vol.shape[1], dtype=np.float32)[None, :, None]
        return np.abs(vol * bias) * rng.uniform(800.0, 1200.0)
    if modality == "Ultrasound":
        speckle = 1.0 + 0.2 * rng.standard_normal(vol.shape, dtype=np.float32)
        return np.clip(vol * speckle * 255.0, 0.0, 255.0)
    return np.clip(vol * 255.0, 0.0, 255.0)


def _scan(
    modality: str, anatomy: str, lesions: list[Lesion], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """One plane of one scan: f32 (H, W, D) in modality units and its key slice."""
    if modality in ("CT", "MRI"):
        depth = int(rng.integers(3, 7) if rng.random() < 0.9 else rng.integers(7, 41))
        key = int(rng.integers(depth // 4, depth - depth // 4))
    else:
        depth, key = 1, 0
    vol = np.repeat(background(anatomy, size, rng)[:, :, None], depth, axis=2)
    rows = np.arange(size, dtype=np.float32)
    for lesion in lesions:
        cy, cx = (size * (c + rng.uniform(-0.06, 0.06)) for c in lesion.centre)
        r = size * lesion.radius * rng.uniform(0.85, 1.15)
        rz = 0.35 * depth + 1.0  # the lesion spans ~70% of the slices
        dz = np.arange(depth, dtype=np.float32)[None, None, :] - key
        LESIONS[lesion.kind](
            vol, rows[:, None, None] - cy, rows[None, :, None] - cx, dz, r, rz, rng
        )
    vol += rng.uniform(0.02, 0.045) * rng.standard_normal(vol.shape, dtype=np.float32)
    return _to_modality(vol, modality, rng).astype(np.float32), key


def _pick_disorders(rng: np.random.Generator) -> list[int]:
    """0, 1 or 2 disorder indices (never two at one location); [] means Normal."""
    weights = np.array([d.weight for d in DISORDERS])
    chosen: list[int] = []
    for _ in range(rng.choice(3, p=_NUM_DISORDERS_P)):
        allowed = weights * np.array(
            [d.location not in {DISORDERS[c].location for c in chosen} for d in DISORDERS]
        )
        chosen.append(int(rng.choice(len(DISORDERS), p=allowed / allowed.sum())))
    return sorted(chosen)


def _case(
    split: str, index: int, size: int, rng: np.random.Generator, root: Path
) -> tuple[str, dict]:
    """Draws one case, saves its scans under ``root`` and returns (URL key, case dict)."""
    link = f"https://radiopaedia.org/cases/radjax-phantom-{split}-{index:05d}?lang=us"
    disorders = _pick_disorders(rng)
    lesions = [
        Lesion(DISORDERS[d].lesion, LOCATIONS[DISORDERS[d].location], rng.uniform(0.07, 0.12))
        for d in disorders
    ]
    articles = [DISORDERS[d].name for d in disorders] or [DISORDERS[0].name]
    icd10s = [DISORDERS[d].icd10 for d in disorders] or [DISORDERS[0].icd10]
    anatomy = str(rng.choice(_ANATOMIES))
    modalities, samples, key_slices, is_3d = [], [], [], False
    for s in range(int(rng.choice(3, p=_NUM_SAMPLES_P)) + 1):
        modality = str(rng.choice(_MODALITIES, p=_MODALITY_P))
        num_planes = int(rng.choice(len(_PLANE_COUNT_P[modality]), p=_PLANE_COUNT_P[modality])) + 1
        planes = list(_PLANES[modality][:num_planes])
        data_paths, key_paths, keys = [], [], {}
        for p in range(num_planes):
            volume, key = _scan(modality, anatomy, lesions, size, rng)
            is_3d |= volume.shape[-1] > 1
            if modality == "X-ray" and rng.random() < 0.3:
                volume = np.repeat(volume, 3, axis=-1)  # RGB export with identical channels
            stem = f"{index:05d}_{s}_{p}.npy"
            data_paths.append(f"data/{split}/{stem}")
            key_paths.append(f"key/{split}/{stem}")
            np.save(root / data_paths[-1], volume)
            np.save(root / key_paths[-1], np.array([key], np.int64))
            keys[f"image_{p}"] = key
        aux = str(rng.choice(_AUX[modality])) if modality in ("CT", "MRI") else None
        texts = report_texts(disorders, lesions, size, modality)
        samples.append(
            dict(
                image_data_path=data_paths,
                image_key_path=key_paths,
                image_path=data_paths,
                image_modality=[modality] * num_planes,
                plane_projection=planes,
                aux_modality=[aux] * num_planes,
                articles=articles,
                icd10s=icd10s,
                icd10news=icd10s,
                finding=texts["finding"],
                impression=texts["impression"],
                image_caption=texts["image_caption"],
                title=texts["title"],
                anatomy=anatomy,
                link=link,
                pat="Patient Data  Age: phantom  Gender: phantom",
                pre="Synthetic phantom case.",
                case_discussion="",
                qa_list=[dict(question="What is the diagnosis?", answer=texts["impression"])],
            )
        )
        modalities.append(modality)
        key_slices.append(keys)
    return link, dict(
        Modalities=modalities,
        Anatomy=anatomy,
        Anatomies=[anatomy] * len(samples),
        Samples=samples,
        key_slice=key_slices,
        Dim="3D" if is_3d else "2D",
    )


def _write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def write_rp3d_phantoms(
    root: str | os.PathLike[str], num_train: int, num_test: int, size: int = 64, seed: int = 0
) -> Path:
    """Writes a deterministic synthetic RP3D-DiagDS under ``root`` (see module docstring).

    Args:
      root: output directory (created; existing files with the same names are replaced).
      num_train, num_test: number of cases in ``train.json`` / ``test.json``.
      size: in-plane size H = W of every scan.
      seed: the same seed writes byte-identical files.

    Returns:
      ``root`` as a Path.
    """
    root = Path(root)
    for split, count in (("train", num_train), ("test", num_test)):
        (root / "data" / split).mkdir(parents=True, exist_ok=True)
        (root / "key" / split).mkdir(parents=True, exist_ok=True)
        split_id = 0 if split == "train" else 1
        cases = dict(
            _case(split, i, size, np.random.default_rng([seed, split_id, i]), root)
            for i in range(count)
        )
        _write_json(root / f"{split}.json", cases)
    _write_json(root / "disorder_label_dict.json", {d.name: i for i, d in enumerate(DISORDERS)})
    _write_json(root / "icd10_label_dict.json", {d.icd10: i for i, d in enumerate(DISORDERS)})
    _write_json(root / "icd10_desription.json", {d.icd10: d.icd10_description for d in DISORDERS})
    return root
