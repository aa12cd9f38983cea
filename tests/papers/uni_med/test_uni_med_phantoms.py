"""Synthetic Uni-Med datasets: the original layouts (SLAKE, MIMIC-CXR captions, MedMNIST),
determinism, a held-out split, and answers that follow from the pixels."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radjax.papers.uni_med import phantoms as P

N_TRAIN, N_TEST = 24, 8


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("uni_med")
    return root, P.write_uni_med_phantoms(root, N_TRAIN, N_TEST, seed=0)


def _json(path: Path):
    return json.loads(path.read_text())


def _slake(root: Path, split: str) -> list[str]:
    return (root / "Slake" / f"{split}.txt").read_text().split()


def test_layout_and_held_out_split(written):
    root, info = written
    for rel in info["files"]:
        assert (root / rel).is_file(), rel
    train, test = _slake(root, "train"), _slake(root, "test")
    assert len(train) == N_TRAIN and len(test) == N_TEST and not set(train) & set(test)
    for image_id in train + test:
        folder = root / "Slake" / "imgs" / image_id
        assert {p.name for p in folder.iterdir()} == {
            "source.jpg",
            "detection.json",
            "question.json",
        }
        for q in _json(folder / "question.json"):
            assert q["img_name"] == f"{image_id}/source.jpg"
            assert q["answer_type"] in ("OPEN", "CLOSED") and q["q_lang"] in ("en", "zh")
    mimic = _json(root / "MIMIC" / "annotation.json")
    assert [len(mimic[s]) for s in ("train", "test")] == [N_TRAIN, N_TEST]
    row = mimic["train"][0]
    assert set(row) >= {"image_path", "report", "study_id", "subject_id"}
    assert (root / "MIMIC-CXR-JPG" / "files" / row["image_path"][0]).is_file()
    with np.load(root / "MedMNIST" / f"{P.MEDMNIST_FLAG}_64.npz") as z:
        assert z["train_images"].shape == (N_TRAIN, 64, 64) and z["train_images"].dtype == np.uint8
        assert z["test_labels"].shape == (N_TEST, 1)
        assert set(np.unique(z["train_labels"])) <= set(range(len(P.MEDMNIST_LABELS)))
    info_file = _json(root / "MedMNIST" / f"{P.MEDMNIST_FLAG}_info.json")
    assert list(info_file["label"].values()) == list(P.MEDMNIST_LABELS)


def test_deterministic(written, tmp_path):
    root, _ = written
    P.write_uni_med_phantoms(tmp_path, N_TRAIN, N_TEST, seed=0)
    for rel in (
        "Slake/imgs/xmlab3/source.jpg",
        "Slake/imgs/xmlab3/question.json",
        "MIMIC/annotation.json",
    ):
        digest = [hashlib.sha256((r / rel).read_bytes()).hexdigest() for r in (root, tmp_path)]
        assert digest[0] == digest[1], rel


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), np.float32)


def test_boxes_mark_the_lesion_and_answers_follow(written):
    """The box covers pixels that differ from the body around it; the questions' answers agree
    with the detections (kind, quadrant)."""
    root, _ = written
    contrasts, kinds = [], Counter()
    for image_id in _slake(root, "train"):
        folder = root / "Slake" / "imgs" / image_id
        image = _grey(folder / "source.jpg")
        h, w = image.shape
        detections = _json(folder / "detection.json")
        questions = {q["question"]: q["answer"] for q in _json(folder / "question.json")}
        assert (questions["Is there a lesion in this image?"] == "Yes") == bool(detections)
        if not detections:
            assert not any(q.startswith("Where is") for q in questions)
            continue
        ((name, (x, y, bw, bh)),) = detections[0].items()
        assert name in P.KINDS.values() and 0 <= x and x + bw <= w and 0 <= y and y + bh <= h
        kinds[name] += 1
        where = questions[f"Where is the {name}?"]
        vertical, horizontal = ("upper" in where, "right" in where)  # patient right: image left
        assert (y + bh / 2 < h / 2) == vertical and (x + bw / 2 < w / 2) == horizontal
        inside = image[int(y) : int(y + bh), int(x) : int(x + bw)]
        ring = image[max(0, int(y) - 4) : int(y + bh) + 4, max(0, int(x) - 4) : int(x + bw) + 4]
        contrasts.append(abs(inside.mean() - ring.mean()) + inside.std())
    assert len(kinds) >= 3  # several lesion kinds drawn
    assert np.median(contrasts) > 10  # the box holds visible structure


def test_closed_questions_are_balanced(written):
    root, _ = written
    answers = Counter(
        q["answer"]
        for image_id in _slake(root, "train")
        for q in _json(root / "Slake" / "imgs" / image_id / "question.json")
        if q["answer_type"] == "CLOSED" and q["q_lang"] == "en"
    )
    assert set(answers) == {"Yes", "No"}
    assert answers["Yes"] == answers["No"]  # every other SLAKE image is normal


def test_reports_state_the_lesion(written):
    root, _ = written
    rows = _json(root / "MIMIC" / "annotation.json")["train"]
    abnormal = [r for r in rows if "No focal lesion" not in r["report"]]
    assert abnormal and len(abnormal) < len(rows)
    for r in abnormal:
        assert any(k in r["report"] for k in P.KINDS.values())
        assert any(
            loc in r["report"] for loc in ("right upper", "left upper", "right lower", "left lower")
        )
