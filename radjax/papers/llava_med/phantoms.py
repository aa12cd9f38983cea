"""Synthetic LLaVA-Med data in the original formats: alignment captions, multi-turn instructions
and a VQA-RAD-like ``test.json``, all about 2D images drawn from the shared phantom anatomy.

``write_llava_med_phantoms(root, num_train, num_test)`` writes, under ``root``:

  images/{train,test}/img_XXXXX.png   uint8 RGB (H, W, 3), three identical channels
  alignment.json     stage 1 (``llava_med_alignment_500k.json``): one record a train image,
                     ``{"id", "image", "conversations": [human "<image>\\n{instruction}",
                     gpt "{caption}"]}`` (the caption says modality, body part and lesion)
  instruct.json      stage 2 (``llava_med_instruct_60k_inline_mention.json``): one record a
                     train image, 2-3 question / answer rounds (human, gpt, human, gpt, ...;
                     ``<image>`` in the first question; one round asks whether there is a
                     lesion), answers in short sentences
  vqa/train.json     VQA items (``data_RAD/train.json``) about the train images: two OPEN and
                     two CLOSED (lesion presence, "is this a <modality> image?") an image
  vqa/test.json      the same about the held-out test images (``data_RAD/test.json``):
                     ``{"id", "image", "conversations": [human "<image>\\n{question}", gpt
                     "{answer}"], "answer_type": "OPEN" | "CLOSED"}``

Image paths are relative to ``root/images`` (the ``--image_folder`` of the original).

Each image is one 2D study: a modality (CT, MRI, X-ray, ultrasound: each with its own look), a
body part (chest, abdomen, head: the anatomy's organ layout) and, in half of the studies, one
lesion of a phantom disorder of that body part (``anatomy.DISORDERS``: its lesion kind at its
patient-side location; the patient's right is on the image's left). Every question is
answerable from the pixels: modality, body part, whether there is a lesion, on which side,
of which kind. Closed questions are answered ``yes`` / ``no`` (half of each by design: a
"no"-heavy set would let "always no" look like reading the image) and their instruction
answers are the bare ``"Yes."`` / ``"No."`` (LLaVA-Med's closed metric is a substring test, and
"no" hides in "nodule", "normal", "abnormality"). Open answers in the VQA files are the short
VQA-RAD-style phrase (``"ultrasound"``, ``"left"``); the instruction set answers the same
questions in a sentence that contains that phrase.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from radjax.data.phantoms.anatomy import DISORDERS, LESIONS, LOCATIONS, background, lesion_phrase

SPLITS = ("train", "test")
MODALITIES = ("CT", "MRI", "X-ray", "Ultrasound")
# anatomy.background region -> the word the texts use
REGIONS = {"Chest": "chest", "Abdomen and Pelvis": "abdomen", "Head and Neck": "head"}
# anatomy disorder -> region, by the organ word its name starts with (Bone metastasis: spine,
# not drawn here)
_ORGAN_REGION = {
    "Pulmonary": "Chest",
    "Rib": "Chest",
    "Renal": "Abdomen and Pelvis",
    "Hepatic": "Abdomen and Pelvis",
    "Splenic": "Abdomen and Pelvis",
    "Brain": "Head and Neck",
}
LESION_NOUNS = {
    "nodule": "nodule",
    "cyst": "cyst",
    "ring": "ring-enhancing lesion",
    "specks": "calcification",
    "line": "fracture",
    "wedge": "wedge-shaped opacity",
    "striped": "striped mass",
}
FILES = {
    "alignment": "alignment.json",
    "instruct": "instruct.json",
    "vqa_train": "vqa/train.json",
    "vqa_test": "vqa/test.json",
}
IMAGE_FOLDER = "images"

_P_LESION = 0.5
# Lesion radius as a fraction of the image size (5-7 px at 32 px). The tiny model learns to
# read lesion presence from its captions sooner with these than with 0.11-0.16 (whole-model
# caption training, 3000 images: held-out presence 0.61 / 0.81 after 600 / 900 steps, against
# 0.53 / 0.60, and 0.80 only after 1200; package README, "The tiny recipe").
_RADIUS_RANGE = (0.16, 0.22)
CAPTION_INSTRUCTIONS = (
    "Describe the image concisely.",
    "Give a short caption of the figure.",
    "What does the image show?",
)
# Question pools (the first phrasing is the VQA one; instructions draw any).
Q_MODALITY = ("What imaging modality is used?", "Which modality is this image?")
Q_REGION = ("Which part of the body is shown?", "What body region is imaged?")
Q_LESION = ("Is there a lesion?", "Is a lesion visible?")
Q_IS_MODALITY = "Is this {article} {modality} image?"
Q_SIDE = ("Which side is the lesion on?",)
Q_KIND = ("What kind of lesion is seen?",)
Q_IS_SIDE = "Is the lesion on the {side} side?"


def _disorders_by_region() -> dict[str, list[int]]:
    out = {region: [] for region in REGIONS}
    for i, d in enumerate(DISORDERS):
        region = _ORGAN_REGION.get(d.name.split()[0]) if d.lesion else None
        if region:
            out[region].append(i)
    return out


DISORDERS_BY_REGION = _disorders_by_region()


@dataclasses.dataclass(frozen=True)
class Study:
    """One drawn image: ``disorder`` indexes ``DISORDERS`` (0 = no lesion); ``radius`` is the
    lesion radius as a fraction of the image size (0 without a lesion)."""

    modality: str
    region: str
    disorder: int
    radius: float

    @property
    def has_lesion(self) -> bool:
        return self.disorder > 0

    @property
    def kind(self) -> str | None:
        return DISORDERS[self.disorder].lesion if self.disorder else None

    @property
    def side(self) -> str | None:
        """``"right"`` / ``"left"`` (patient side: image left / right), None without a lesion."""
        return DISORDERS[self.disorder].location.split()[0] if self.disorder else None


def draw_study(rng: np.random.Generator) -> Study:
    modality = str(rng.choice(MODALITIES))
    region = str(rng.choice(list(REGIONS)))
    disorder = 0
    if rng.random() < _P_LESION:
        disorder = int(rng.choice(DISORDERS_BY_REGION[region]))
    radius = float(rng.uniform(*_RADIUS_RANGE)) if disorder else 0.0
    return Study(modality, region, disorder, radius)


# ---------------------------------------------------------------------------------------
# Rendering: the anatomy's relative units (air 0, soft tissue ~0.4, bone ~0.85) -> uint8.
# ---------------------------------------------------------------------------------------


def _section(study: Study, size: int, rng: np.random.Generator) -> np.ndarray:
    """f32 (H, W): the body section with the lesion drawn in."""
    vol = background(study.region, size, rng)[:, :, None]
    if study.has_lesion:
        d = DISORDERS[study.disorder]
        cy, cx = (size * c for c in LOCATIONS[d.location])
        grid = np.arange(size, dtype=np.float32)
        LESIONS[d.lesion](
            vol,
            grid[:, None, None] - cy,
            grid[None, :, None] - cx,
            np.zeros((1, 1, 1), np.float32),
            size * study.radius,
            1.0,
            rng,
        )
    return vol[:, :, 0]


def _ct(img: np.ndarray, rng) -> np.ndarray:
    """Linear window, sharp, with the patient table as a band under the body."""
    size = img.shape[0]
    out = img.copy()
    top, margin = int(0.93 * size), size // 10
    band = out[top : top + max(1, size // 24), margin : size - margin]
    band[...] = np.maximum(band, 0.65)
    return out + 0.02 * rng.standard_normal(img.shape, dtype=np.float32)


def _mri(img: np.ndarray, rng) -> np.ndarray:
    """T1-like: signal-void bone, bright subcutaneous rim, radial coil bias."""
    body = img > 0.05
    inner = body.copy()
    for shift in range(1, max(1, img.shape[0] // 16) + 1):
        for axis in (0, 1):
            for sign in (-1, 1):
                inner &= np.roll(body, sign * shift, axis=axis)
    t1 = np.where(body & ~inner, 0.95, 1.5 * img)
    t1 = np.where(img > 0.75, 0.05, t1)
    y, x = np.mgrid[-1 : 1 : img.shape[0] * 1j, -1 : 1 : img.shape[1] * 1j]
    bias = 1.1 - 0.3 * (x**2 + y**2)
    return t1 * bias + 0.03 * rng.standard_normal(img.shape, dtype=np.float32)


def _xray(img: np.ndarray, rng) -> np.ndarray:
    """Projection look: 3x3 box blur inside a white collimator frame."""
    h, w = img.shape
    padded = np.pad(img, 1, mode="edge")
    blurred = sum(padded[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0
    frame = max(2, h // 12)
    out = np.ones_like(img)
    out[frame:-frame, frame:-frame] = blurred[frame:-frame, frame:-frame]
    return out


def _ultrasound(img: np.ndarray, rng) -> np.ndarray:
    """Multiplicative speckle inside a fan-shaped sector opening downwards."""
    size = img.shape[0]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    apex_y, apex_x = -0.15 * size, (size - 1) / 2
    angle = np.arctan2(x - apex_x, y - apex_y)
    sector = (np.abs(angle) < 0.65) & (np.hypot(y - apex_y, x - apex_x) < 1.12 * size)
    speckle = 1.0 + 0.35 * rng.standard_normal(img.shape, dtype=np.float32)
    return img * speckle * sector


_LOOKS = {"CT": _ct, "MRI": _mri, "X-ray": _xray, "Ultrasound": _ultrasound}


def render(study: Study, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W): the study's section in its modality's look."""
    img = _LOOKS[study.modality](_section(study, size, rng), rng)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Texts: everything stated is what the image shows.
# ---------------------------------------------------------------------------------------


def modality_word(study: Study) -> str:
    """The VQA answer for the modality: ``"ct"``, ``"mri"``, ``"x-ray"``, ``"ultrasound"``."""
    return study.modality.lower()


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" or word in ("MRI", "X-ray") else "a"


def _in_text(modality: str) -> str:
    """The modality inside a sentence: ``ultrasound`` lower case, the others as named."""
    return modality.lower() if modality == "Ultrasound" else modality


def caption(study: Study, size: int) -> str:
    """Stage-1 caption: ``"X-ray of the chest: A 27 mm bright round nodule in the right upper
    region."`` or ``"... : no lesion."``."""
    scope = f"{study.modality} of the {REGIONS[study.region]}"
    if not study.has_lesion:
        return f"{scope}: no lesion."
    return f"{scope}: " + lesion_phrase(DISORDERS[study.disorder], study.radius * size, size)


def _qa_pairs(study: Study, rng: np.random.Generator) -> list[tuple[str, str, str, str]]:
    """Every (question kind, answer type, VQA answer, instruction answer) about ``study``;
    kinds ``modality, region, lesion, is_modality`` (+ ``side, kind, is_side`` with a lesion)."""
    region = REGIONS[study.region]
    others = [m for m in MODALITIES if m != study.modality]
    shown = study.modality if rng.random() < 0.5 else str(rng.choice(others))
    yes = lambda ok: ("yes", "Yes.") if ok else ("no", "No.")
    said_modality = f"This is {_article(study.modality)} {_in_text(study.modality)} image"
    pairs = [
        ("modality", "OPEN", modality_word(study), said_modality + "."),
        ("region", "OPEN", region, f"The image shows the {region}."),
        ("lesion", "CLOSED", *yes(study.has_lesion)),
        (
            f"is_modality:{shown}",
            "CLOSED",
            "yes" if shown == study.modality else "no",
            f"{said_modality}, so {'yes' if shown == study.modality else 'no'}.",
        ),
    ]
    if study.has_lesion:
        noun = LESION_NOUNS[study.kind]
        asked = study.side if rng.random() < 0.5 else ("left" if study.side == "right" else "right")
        pairs += [
            ("side", "OPEN", study.side, f"The lesion is on the {study.side} side."),
            ("kind", "OPEN", noun, f"It is {_article(noun)} {noun}."),
            (
                f"is_side:{asked}",
                "CLOSED",
                "yes" if asked == study.side else "no",
                f"The lesion is on the {study.side} side, so "
                f"{'yes' if asked == study.side else 'no'}.",
            ),
        ]
    return pairs


def question_text(kind: str, rng: np.random.Generator | None = None) -> str:
    """The question of a kind (``is_modality:<m>`` / ``is_side:<s>`` carry their subject);
    ``rng`` None: the first phrasing (the VQA files'), else a random one."""
    name, _, subject = kind.partition(":")
    if name == "is_modality":
        return Q_IS_MODALITY.format(article=_article(subject), modality=_in_text(subject))
    if name == "is_side":
        return Q_IS_SIDE.format(side=subject)
    pool = {"modality": Q_MODALITY, "region": Q_REGION, "lesion": Q_LESION}.get(name)
    pool = pool or {"side": Q_SIDE, "kind": Q_KIND}[name]
    return pool[0] if rng is None else pool[int(rng.integers(len(pool)))]


def _turns(pairs: list[tuple[str, str]]) -> list[dict]:
    turns = []
    for j, (question, answer) in enumerate(pairs):
        value = f"<image>\n{question}" if j == 0 else question
        turns += [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]
    return turns


def alignment_record(i: int, image: str, study: Study, size: int, rng) -> dict:
    instruction = CAPTION_INSTRUCTIONS[int(rng.integers(len(CAPTION_INSTRUCTIONS)))]
    turns = _turns([(instruction, caption(study, size))])
    return {"id": f"align_{i:05d}", "image": image, "conversations": turns}


def instruct_record(i: int, image: str, study: Study, rng) -> dict:
    """2-3 rounds about the study, questions in random order and phrasing; whether there is
    a lesion is always one of them (asked in ~45% of the records when drawn like the others,
    the tiny model did not learn it: package README, "The tiny recipe")."""
    pairs = _qa_pairs(study, rng)
    lesion = [k for k, p in enumerate(pairs) if p[0] == "lesion"]
    others = [int(k) for k in rng.permutation(len(pairs)) if k not in lesion]
    order = rng.permutation(lesion + others[: int(rng.integers(1, 3))])
    rounds = [(question_text(pairs[k][0], rng), pairs[k][3]) for k in order]
    return {"id": f"instruct_{i:05d}", "image": image, "conversations": _turns(rounds)}


VQA_CLOSED = ("lesion", "is_modality")  # asked about every image
# (kind, regex on the VQA question) for the evaluation's per-kind scores (eval.question_kinds)
VQA_QUESTION_KINDS = (
    ("lesion", "^" + re.escape(Q_LESION[0]) + "$"),
    ("is_modality", r"^Is this an? .+ image\?$"),
    ("modality", "^" + re.escape(Q_MODALITY[0]) + "$"),
    ("region", "^" + re.escape(Q_REGION[0]) + "$"),
    ("side", "^" + re.escape(Q_SIDE[0]) + "$"),
    ("kind", "^" + re.escape(Q_KIND[0]) + "$"),
)


def vqa_records(first_id: int, image: str, study: Study, rng, open_per_image: int) -> list[dict]:
    """VQA items about the study in the fixed VQA phrasing: the CLOSED questions of
    ``VQA_CLOSED`` (is there a lesion; is this a <modality> image, the true one half of the
    time) and ``open_per_image`` OPEN ones drawn from modality, body part and, with a lesion,
    side and kind. (The side yes / no question stays in the instructions only: the tiny
    model does not learn to compare the asked side with the one it reads.)"""
    pairs = _qa_pairs(study, rng)
    closed = [p for p in pairs if p[0].split(":")[0] in VQA_CLOSED]
    opened = [p for p in pairs if p[1] == "OPEN"]
    picks = rng.permutation(len(opened))[:open_per_image]
    items = [opened[k] for k in sorted(picks)] + closed
    return [
        {
            "id": first_id + j,
            "image": image,
            "conversations": _turns([(question_text(kind), answer)]),
            "answer_type": answer_type,
        }
        for j, (kind, answer_type, answer, _) in enumerate(items)
    ]


# ---------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def write_llava_med_phantoms(
    root: str | os.PathLike[str],
    num_train: int,
    num_test: int,
    *,
    seed: int = 0,
    image_size: int = 32,
    vqa_open_per_image: int = 2,
) -> dict:
    """Writes the deterministic synthetic LLaVA-Med files under ``root`` (module docstring).

    Args:
      num_train, num_test: images of each split (alignment and instruction records: one a
        train image; VQA items: ``vqa_open_per_image`` OPEN and the ``VQA_CLOSED`` items an
        image of each split).
      seed: the same seed writes byte-identical files.
      image_size: H = W of every PNG.
    Returns:
      ``{"root", "images": {split: n}, "counts": {file key: records}, "files": [relative
      paths of the JSON files]}``.
    """
    root = Path(root)
    out = {key: [] for key in FILES}
    for split, n in zip(SPLITS, (num_train, num_test)):
        (root / IMAGE_FOLDER / split).mkdir(parents=True, exist_ok=True)
        split_id = SPLITS.index(split)
        for i in range(n):
            rng_img, rng_text, rng_vqa = (
                np.random.default_rng([seed, split_id, i, k]) for k in range(3)
            )
            study = draw_study(rng_img)
            image = f"{split}/img_{i:05d}.png"
            gray = render(study, image_size, rng_img)
            Image.fromarray(np.stack([gray] * 3, axis=-1)).save(root / IMAGE_FOLDER / image)
            vqa = out["vqa_train" if split == "train" else "vqa_test"]
            vqa += vqa_records(len(vqa), image, study, rng_vqa, vqa_open_per_image)
            if split == "train":
                out["alignment"].append(alignment_record(i, image, study, image_size, rng_text))
                out["instruct"].append(instruct_record(i, image, study, rng_text))
    for key, name in FILES.items():
        _write_json(root / name, out[key])
    return dict(
        root=str(root),
        images=dict(zip(SPLITS, (num_train, num_test))),
        counts={key: len(records) for key, records in out.items()},
        files=sorted(FILES.values()),
    )
