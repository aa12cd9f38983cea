"""Synthetic RP3D-DiagDS: on-disk schema, determinism, long tail, and learnability."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from radjax.papers.rp3d_diag.phantoms import (
    DISORDERS,
    LOCATIONS,
    _pick_disorders,
    write_rp3d_phantoms,
)

SIZE = 32
SAMPLE_FIELDS = {
    "image_data_path",
    "image_key_path",
    "image_modality",
    "plane_projection",
    "aux_modality",
    "articles",
    "icd10s",
    "finding",
    "impression",
    "image_caption",
    "anatomy",
    "link",
    "title",
    "qa_list",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_rp3d_phantoms(
        tmp_path_factory.mktemp("rp3d"), num_train=200, num_test=80, size=SIZE, seed=0
    )


def _cases(root: Path, split: str) -> dict:
    return json.loads((root / f"{split}.json").read_text())


def test_label_dicts_normal_first_and_icd10_consistent(root):
    disorders = json.loads((root / "disorder_label_dict.json").read_text())
    icd = json.loads((root / "icd10_label_dict.json").read_text())
    descriptions = json.loads((root / "icd10_desription.json").read_text())
    assert disorders["Normal"] == 0 and len(disorders) == 12
    assert sorted(disorders.values()) == list(range(12)) == sorted(icd.values())
    assert set(descriptions) == set(icd) and all(descriptions.values())


def test_cases_follow_the_rp3d_schema(root):
    cases = _cases(root, "train")
    assert len(cases) == 200 and len(_cases(root, "test")) == 80
    for link, case in cases.items():
        assert link.startswith("https://radiopaedia.org/cases/")
        assert {"Modalities", "Anatomy", "Anatomies", "Samples", "key_slice"} <= set(case)
        assert len(case["Modalities"]) == len(case["Samples"]) == len(case["key_slice"])
        for modality, sample, keys in zip(case["Modalities"], case["Samples"], case["key_slice"]):
            assert SAMPLE_FIELDS <= set(sample) and sample["link"] == link
            assert len(sample["image_data_path"]) == len(sample["image_key_path"]) == len(keys)
            assert sample["image_modality"] == [modality] * len(sample["image_data_path"])
            for p, (data, key) in enumerate(
                zip(sample["image_data_path"], sample["image_key_path"])
            ):
                assert not Path(data).is_absolute()
                volume, key_array = np.load(root / data), np.load(root / key)
                assert volume.dtype == np.float32 and volume.shape[:2] == (SIZE, SIZE)
                assert key_array.dtype == np.int64 and key_array.shape == (1,)
                assert keys[f"image_{p}"] == key_array[0] < volume.shape[-1]
                if modality in ("CT", "MRI"):
                    assert 3 <= volume.shape[-1] <= 40
                else:
                    assert volume.shape[-1] in (1, 3)


def test_modalities_planes_and_depths_vary(root):
    cases = _cases(root, "train").values()
    assert set(Counter(m for c in cases for m in c["Modalities"])) == {
        "CT",
        "MRI",
        "X-ray",
        "Ultrasound",
    }
    assert max(len(c["Samples"]) for c in cases) == 3
    assert max(len(s["image_data_path"]) for c in cases for s in c["Samples"]) == 3
    depths = [
        np.load(root / s["image_data_path"][0], mmap_mode="r").shape[-1]
        for c in cases
        for s in c["Samples"]
    ]
    assert min(depths) == 1 and max(depths) > 16
    assert {c["Dim"] for c in cases} == {"2D", "3D"}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_rp3d_phantoms(tmp_path / "a", 4, 2, size=16, seed=3)
    b = write_rp3d_phantoms(tmp_path / "b", 4, 2, size=16, seed=3)
    c = write_rp3d_phantoms(tmp_path / "c", 4, 2, size=16, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "train.json").read_text() != (c / "train.json").read_text()


def test_disorder_frequencies_are_long_tailed():
    rng = np.random.default_rng(0)
    draws = [_pick_disorders(rng) for _ in range(4000)]
    counts = np.bincount([d for case in draws for d in case], minlength=len(DISORDERS))
    counts[0] = sum(not case for case in draws)
    head, medium, tail = counts[1:4].mean(), counts[4:8].mean(), counts[8:].mean()
    assert counts[0] == counts.max() and head > 2 * medium > 4 * tail > 0
    assert all(len({DISORDERS[d].location for d in case}) == len(case) for case in draws)


def test_texts_state_what_where_and_size(root):
    for case in _cases(root, "train").values():
        sample = case["Samples"][0]
        if sample["articles"] == ["Normal"]:
            assert "No focal lesion" in sample["finding"]
            continue
        by_name = {d.name: d for d in DISORDERS}
        for name in sample["articles"]:
            assert by_name[name].location in sample["finding"]
            assert name in sample["impression"]
        assert " mm " in sample["finding"]


def _key_slices(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Min-max key slice of each case's first scan, 2x2-pooled.

    Returns features (cases, 256) and boolean labels (cases, 12).
    """
    features, labels = [], []
    for case in _cases(root, split).values():
        sample = case["Samples"][0]
        volume = np.load(root / sample["image_data_path"][0])
        key = int(np.load(root / sample["image_key_path"][0])[0])
        image = volume[:, :, min(key, volume.shape[-1] - 1)]
        image = (image - image.min()) / np.ptp(image)
        features.append(image.reshape(SIZE // 2, 2, SIZE // 2, 2).mean((1, 3)).ravel())
        labels.append([d.name in sample["articles"] for d in DISORDERS])
    return np.array(features), np.array(labels)


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (scores are continuous: no ties)."""
    ranks = np.argsort(np.argsort(score)) + 1
    pos, neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def test_labels_are_learnable_from_pixels(root):
    """A ridge-regression read-out of the key slice separates held-out cases."""
    x_train, y_train = _key_slices(root, "train")
    x_test, y_test = _key_slices(root, "test")
    mean = x_train.mean(0)
    gram = (x_train - mean).T @ (x_train - mean) + np.eye(x_train.shape[1])
    for k in (1, 2, 4, 5):  # bright nodule, dark cysts at two locations, fracture line
        target = y_train[:, k] - y_train[:, k].mean()
        weights = np.linalg.solve(gram, (x_train - mean).T @ target)
        auc = _auc((x_test - mean) @ weights, y_test[:, k])
        assert auc > 0.9, (DISORDERS[k].name, auc)


def test_cyst_darkens_its_location(root):
    x, y = _key_slices(root, "train")
    images = x.reshape(-1, SIZE // 2, SIZE // 2)
    row, col = (int(f * SIZE // 2) for f in LOCATIONS["left lower"])
    patch = images[:, row - 1 : row + 2, col - 1 : col + 2].min(axis=(1, 2))
    renal_cyst = y[:, 2]
    assert patch[renal_cyst].mean() < patch[~renal_cyst].mean() - 0.1
