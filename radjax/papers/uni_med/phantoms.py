"""Synthetic Uni-Med datasets in the original on-disk layouts: SLAKE (VQA, REC, REG), MIMIC-CXR
captions (report generation) and MedMNIST (classification), 2D images from the shared phantom
anatomy (``radjax.data.phantoms.anatomy``: body sections, lesion drawing with masks).

``write_uni_med_phantoms(root, num_train, num_test)`` writes under ``root``:

  Slake/train.txt, Slake/test.txt        image directory names, one per line (SLAKE's lists)
  Slake/imgs/<id>/source.jpg             RGB JPEG, W x H from ``IMAGE_SIZES`` (not square)
  Slake/imgs/<id>/detection.json         ``[{name: [x, y, w, h]}]`` pixel boxes of the objects
  Slake/imgs/<id>/question.json          ``[{img_id, img_name, question, answer, answer_type
                                          (OPEN|CLOSED), q_lang, qid, content_type}]``; every
                                          question is also written once in ``q_lang`` "zh",
                                          which the English datasets leave out, as SLAKE has
  MIMIC/annotation.json                  ``{"train": [...], "test": [...]}``, rows ``{id,
                                          study_id, subject_id, report, image_path: [rel],
                                          split}`` (the original reads ``image_path[0]``)
  MIMIC-CXR-JPG/files/p1X/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg   chest X-ray-like JPEG
  MedMNIST/phantommnist_<size>.npz       MedMNIST+ npz: ``{train,val,test}_images`` uint8
                                          (N, size, size) grey, ``{split}_labels`` (N, 1)
  MedMNIST/phantommnist_info.json        ``{"label": {"0": name, ...}, "question": ...}``
                                          (the medmnist package's ``INFO`` entry of the flag)

Every answer follows from the image: a study is normal or shows one lesion (``KINDS``: nodule,
cyst, ring-enhancing lesion, calcification) in one quadrant (``anatomy.LOCATIONS``, the
patient's right on the image's left), its centre jittered, its box the tight box of the drawn
mask scaled to the written W x H. SLAKE questions: the modality (OPEN: CT / MRI / X-Ray, each
with its own look), whether there is a lesion (CLOSED, asked of every image; every other
SLAKE image is normal, so P(yes) = 1/2) and, for an abnormal study, where the lesion is
(OPEN: "right upper", ...). Detections: the lesion, named by its kind. MIMIC reports state
the lesion kind, its size in mm and its quadrant (or no lesion). MedMNIST labels are the body
section (chest / abdomen / head / spine) of a CT-like slice.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from radjax.data.phantoms.anatomy import FIELD_OF_VIEW_MM, LOCATIONS, background, draw_lesion

SPLITS = ("train", "test")
# lesion kind (anatomy.LESIONS) -> the object name of detections / answers
KINDS = {
    "nodule": "nodule",
    "cyst": "cyst",
    "ring": "ring-enhancing lesion",
    "specks": "calcification",
}
MODALITIES = ("CT", "MRI", "X-Ray")  # SLAKE's three
REGIONS = {
    "Chest": "chest",
    "Abdomen and Pelvis": "abdomen",
    "Head and Neck": "head",
    "Spine": "spine",
}
IMAGE_SIZES = ((64, 64), (80, 64), (64, 80), (96, 72))  # (W, H) of SLAKE / MIMIC images
RENDER_SIZE = 64  # the square section is drawn at this size, then resized to W x H
MEDMNIST_FLAG = "phantommnist"
MEDMNIST_LABELS = ("chest", "abdomen", "head", "spine")
MEDMNIST_QUESTION = "Which category does this CT image belong to: abdomen, chest, head, or spine?"
_P_NORMAL = 0.25  # MIMIC / MedMNIST; SLAKE: every other image is normal (see _write_slake)
_RADIUS = (0.15, 0.21)  # lesion radius, fraction of the render size
_JITTER = 0.06  # centre jitter around the quadrant centre, fraction


@dataclasses.dataclass(frozen=True)
class Study:
    """One drawn 2D image: modality, body section, lesion (None = normal) and written size."""

    modality: str
    region: str
    kind: str | None
    location: str | None  # a key of anatomy.LOCATIONS
    centre: tuple[float, float]  # (row, column) fractions
    radius: float  # fraction of the render size
    size: tuple[int, int]  # (W, H) of the written image


def draw_study(
    rng: np.random.Generator,
    modalities=MODALITIES,
    regions=tuple(REGIONS),
    normal: bool | None = None,
) -> Study:
    """A random study: modality, body section, written size and, unless ``normal`` (None: a
    lesion with probability 3/4), a lesion of a random kind in a random quadrant."""
    modality = str(rng.choice(modalities))
    region = str(rng.choice(regions))
    size = tuple(int(v) for v in IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))])
    drawn_normal = rng.random() < _P_NORMAL  # drawn either way: one random stream for both
    if drawn_normal if normal is None else normal:
        return Study(modality, region, None, None, (0.5, 0.5), 0.0, size)
    kind = str(rng.choice(list(KINDS)))
    location = str(rng.choice(list(LOCATIONS)))
    cy, cx = (c + rng.uniform(-_JITTER, _JITTER) for c in LOCATIONS[location])
    return Study(modality, region, kind, location, (cy, cx), float(rng.uniform(*_RADIUS)), size)


# ----------------------------------------------------------------------------- rendering


def _look(
    section: np.ndarray, modality: str, rng: np.random.Generator, bone: np.ndarray
) -> np.ndarray:
    """Relative units (H, W) -> [0, 1] in the modality's look: CT linear; MRI (T1-like)
    signal-void ``bone`` (bool (H, W)), brighter soft tissue; X-ray a 3 x 3 blur inside a
    white frame."""
    if modality == "MRI":
        out = np.where(bone, 0.08, np.clip(1.5 * section, 0, 1))
    elif modality == "X-Ray":
        pad = np.pad(section, 1, mode="edge")
        h, w = section.shape
        out = sum(pad[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0
        frame = max(2, h // 16)
        out[:frame], out[-frame:], out[:, :frame], out[:, -frame:] = 1.0, 1.0, 1.0, 1.0
    else:
        out = section
    noise = rng.uniform(0.02, 0.04) * rng.standard_normal(section.shape).astype(np.float32)
    return np.clip(out + noise, 0.0, 1.0)


def render(study: Study, rng: np.random.Generator, size: int = RENDER_SIZE):
    """-> (uint8 (H, W) image at ``study.size``, lesion box [x, y, w, h] in the written pixels
    or None). The box is the tight box of the drawn mask, scaled from the render size."""
    section = background(study.region, size, rng)[:, :, None]
    bone = section[:, :, 0] > 0.75  # MRI's signal void: the body's bone, not the lesion
    box = None
    if study.kind is not None:
        grid = np.arange(size, dtype=np.float32)
        cy, cx = (size * c for c in study.centre)
        r = size * study.radius
        mask = draw_lesion(
            section,
            study.kind,
            grid[:, None, None] - cy,
            grid[None, :, None] - cx,
            np.zeros((1, 1, 1), np.float32),
            r,
            1.0,
            rng,
        )[:, :, 0]
        bone &= ~mask
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if len(rows):
            w, h = study.size
            x0, x1 = cols[0] * w / size, (cols[-1] + 1) * w / size
            y0, y1 = rows[0] * h / size, (rows[-1] + 1) * h / size
            box = [round(x0), round(y0), round(x1 - x0), round(y1 - y0)]
    pixels = np.round(255 * _look(section[:, :, 0], study.modality, rng, bone)).astype(np.uint8)
    image = Image.fromarray(pixels).resize(study.size, Image.Resampling.BILINEAR)
    return np.asarray(image), box


def _save_jpeg(path: Path, grey: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(path, quality=95)


def size_mm(study: Study) -> int:
    return round(2 * study.radius * FIELD_OF_VIEW_MM)


# ----------------------------------------------------------------------------- texts


def _questions(study: Study) -> list[tuple[str, str, str]]:
    """(question, answer, answer_type) answerable from the image: the modality (OPEN),
    whether there is a lesion (CLOSED; half the SLAKE images have one) and, for an abnormal
    study, where the lesion is (OPEN: "right upper", ...)."""
    out = [
        ("What modality is used to take this image?", study.modality, "OPEN"),
        ("Is there a lesion in this image?", "No" if study.kind is None else "Yes", "CLOSED"),
    ]
    if study.kind is not None:
        out.append((f"Where is the {KINDS[study.kind]}?", study.location, "OPEN"))
    return out


def report(study: Study) -> str:
    """A MIMIC-style report (findings, impression): the lesion's size, kind and place in the
    lungs, or no lesion. Short, in words the phantom tokenizer has (a normal report is 14
    tokens, an abnormal one 21-29), so that most of the target is what the image shows."""
    if study.kind is None:
        return "No focal lesion. Impression: normal."
    name = KINDS[study.kind]
    return f"A {size_mm(study)} mm {name} in the {study.location} lung. Impression: {name}."


# ----------------------------------------------------------------------------- writing


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def _write_slake(root: Path, split: str, n: int, seed: int, start: int) -> list[str]:
    ids = []
    for i in range(n):
        rng = np.random.default_rng([seed, 0, SPLITS.index(split), i])
        # every other image normal: "Is there a lesion?" (asked of each) is yes for half
        study = draw_study(rng, normal=(start + i) % 2 == 0)
        image_id = f"xmlab{start + i}"
        ids.append(image_id)
        folder = root / "Slake" / "imgs" / image_id
        pixels, box = render(study, rng)
        _save_jpeg(folder / "source.jpg", pixels)
        _write_json(folder / "detection.json", [{KINDS[study.kind]: box}] if box else [])
        questions = []
        for j, (question, answer, kind) in enumerate(_questions(study)):
            for lang in ("en", "zh"):
                questions.append(
                    dict(
                        img_id=start + i,
                        img_name=f"{image_id}/source.jpg",
                        question=question,
                        answer=answer,
                        q_lang=lang,
                        location="Body",
                        modality=study.modality,
                        answer_type=kind,
                        base_type="vqa",
                        content_type="Abnormality",
                        triple=["vhead", "_", "_"],
                        qid=(start + i) * 100 + 2 * j + (lang == "zh"),
                    )
                )
        _write_json(folder / "question.json", questions)
    (root / "Slake" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return ids


def _write_mimic(root: Path, split: str, n: int, seed: int, start: int) -> list[dict]:
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, 1, SPLITS.index(split), i])
        study = draw_study(rng, modalities=("X-Ray",), regions=("Chest",))
        subject, study_id = 10_000_000 + start + i, 50_000_000 + start + i
        rel = f"p{str(subject)[:2]}/p{subject}/s{study_id}/{study_id:08x}-phantom.jpg"
        pixels, _ = render(study, rng)
        _save_jpeg(root / "MIMIC-CXR-JPG" / "files" / rel, pixels)
        rows.append(
            dict(
                id=f"{study_id:08x}-phantom",
                study_id=study_id,
                subject_id=subject,
                report=report(study),
                image_path=[rel],
                split=split,
            )
        )
    return rows


def _medmnist(n: int, seed: int, split_id: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, 2, split_id, i])
        label = int(rng.integers(len(MEDMNIST_LABELS)))
        region = list(REGIONS)[label]
        study = dataclasses.replace(draw_study(rng, ("CT",), (region,)), size=(size, size))
        pixels, _ = render(study, rng, size)
        images.append(pixels)
        labels.append([label])
    return np.asarray(images, np.uint8), np.asarray(labels, np.uint8)


def write_uni_med_phantoms(
    root: str | os.PathLike[str],
    num_train: int,
    num_test: int,
    *,
    seed: int = 0,
    medmnist_size: int = 64,
) -> dict:
    """Writes deterministic Uni-Med phantoms under ``root`` (see the module docstring):
    ``num_train`` / ``num_test`` SLAKE images, MIMIC studies and MedMNIST images per split
    (MedMNIST's ``val`` split has ``num_test`` too). The same arguments write the same files.

    Returns ``{"root": str, "counts": {dataset: {split: n}}, "files": [relative paths of the
    list / annotation files]}``.
    """
    root = Path(root)
    counts = dict(zip(SPLITS, (num_train, num_test)))
    mimic = {}
    slake_count = {}
    for split, n in counts.items():
        start = 0 if split == "train" else num_train
        ids = _write_slake(root, split, n, seed, start)
        slake_count[split] = len(ids)
        mimic[split] = _write_mimic(root, split, n, seed, start)
    _write_json(root / "MIMIC" / "annotation.json", mimic)
    arrays = {}
    for split_id, (split, n) in enumerate(
        (("train", num_train), ("val", num_test), ("test", num_test))
    ):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = _medmnist(
            n, seed, split_id, medmnist_size
        )
    npz = root / "MedMNIST" / f"{MEDMNIST_FLAG}_{medmnist_size}.npz"
    npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(npz, **arrays)
    _write_json(
        root / "MedMNIST" / f"{MEDMNIST_FLAG}_info.json",
        dict(
            task="multi-class",
            label={str(i): name for i, name in enumerate(MEDMNIST_LABELS)},
            question=MEDMNIST_QUESTION,
        ),
    )
    return dict(
        root=str(root),
        counts=dict(slake=slake_count, mimic=dict(counts), medmnist=dict(counts)),
        files=sorted(
            [
                "Slake/train.txt",
                "Slake/test.txt",
                "MIMIC/annotation.json",
                npz.relative_to(root).as_posix(),
                f"MedMNIST/{MEDMNIST_FLAG}_info.json",
            ]
        ),
    )
