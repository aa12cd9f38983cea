"""Synthetic RadFM task files: schemas, image layouts, determinism, and texts that say what the
pixels show."""

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from radjax.data.readers import read_image, read_npy, resolve_path
from radjax.papers.radfm.phantoms import DISORDERS, MODALITY_SET, write_radfm_phantoms

N_TRAIN, N_TEST, SIZE, MAX_DEPTH = 48, 16, 32, 16
CSV_COLUMNS = {
    "modality": ["image_path", "answer"],
    "vqa": ["image_path", "question", "answer"],
    "diagnosis_open": ["image_path", "label"],
    "diagnosis_closed": ["image_path", "disease", "label"],
}
CAPTION_KEYS = {"pre", "pat", "npy_path", "finding", "impression"}
RATIONALE_KEYS = CAPTION_KEYS | {"radiographic_features", "articles", "title"}
NAMES = {d.name for d in DISORDERS}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("radfm")
    return root, write_radfm_phantoms(
        root, N_TRAIN, N_TEST, seed=0, image_size=SIZE, max_depth=MAX_DEPTH
    )


@pytest.fixture(scope="module")
def root(written) -> Path:
    return written[0]


def _csv(root: Path, name: str) -> tuple[list[str], list[dict]]:
    with open(root / name, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _json(root: Path, name: str):
    return json.loads((root / name).read_text())


def _volume(root: Path, rel: str) -> np.ndarray:
    """A task file's npy through radjax's reader: rank 5 (S, C, H, W, D), finite."""
    return read_npy(resolve_path(root, rel), ndim=5)


def _png(root: Path, rel: str) -> np.ndarray:
    return read_image(resolve_path(root, rel))


def _side_of_lesion(vol: np.ndarray) -> str:
    """Patient side of the strongest blob in (middle slice - first slice) of a (1, 3, H, W, D)
    array, 3x3 box-blurred against noise. The background repeats over slices, the lesion is
    centred on the middle slice and misses the first; image left = patient right."""
    grey = vol[0, 0]
    change = np.pad(grey[:, :, grey.shape[2] // 2] - grey[:, :, 0], 1)
    h, w = grey.shape[:2]
    blurred = sum(change[i : i + h, j : j + w] for i in range(3) for j in range(3))
    column = np.unravel_index(np.argmax(np.abs(blurred)), blurred.shape)[1]
    return "right" if column < w / 2 else "left"


def test_summary_lists_every_file_with_the_split_sizes(written):
    root, summary = written
    assert set(summary["counts"]) == set(CSV_COLUMNS) | {"caption", "rationale"}
    assert all(c == {"train": N_TRAIN, "test": N_TEST} for c in summary["counts"].values())
    assert len(summary["files"]) == 14 and all((root / f).is_file() for f in summary["files"])


@pytest.mark.parametrize("task", sorted(CSV_COLUMNS))
def test_csv_task_files_have_the_original_columns_and_sizes(root, task):
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        columns, rows = _csv(root, f"{task}_{split}.csv")
        assert columns == CSV_COLUMNS[task] and len(rows) == n
        assert all((root / r["image_path"]).is_file() for r in rows)


def test_json_task_files_have_the_original_keys(root):
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        captions = _json(root, f"caption_{split}.json")
        rationales = _json(root, f"rationale_{split}.json")
        assert len(captions) == len(rationales) == n
        assert all(set(c) == CAPTION_KEYS for c in captions)
        assert all(set(r) == RATIONALE_KEYS for r in rationales)
        for r in rationales:
            assert isinstance(r["radiographic_features"], list) and r["articles"][0] in NAMES
            assert (root / r["npy_path"]).is_file()


def test_modality_set_and_articles_match_the_rows(root):
    assert _json(root, "modality_set.json") == {"modality": ["CT", "MRI", "X-ray", "Ultrasound"]}
    answers = Counter(r["answer"] for r in _csv(root, "modality_train.csv")[1])
    assert set(answers) == set(MODALITY_SET)
    articles = _json(root, "articles.json")
    assert set(articles) == NAMES - {"Normal"} and all(articles.values())
    titles = {r["title"] for r in _json(root, "rationale_train.json")}
    assert titles - {"Normal study"} <= set(articles)


def test_volumes_are_s3hwd_float32_depth_last_with_several_depths(root):
    depths = set()
    for c in _json(root, "caption_train.json"):
        vol = _volume(root, c["npy_path"])
        assert vol.dtype == np.float32 and vol.shape[:4] == (1, 3, SIZE, SIZE)
        assert vol.shape[4] % 4 == 0 and 4 <= vol.shape[4] <= MAX_DEPTH
        assert np.isfinite(vol).all() and vol.max() > vol.min()
        assert (vol[:, 1:] == vol[:, :1]).all()  # channels repeat one grey volume
        depths.add(vol.shape[4])
    assert len(depths) >= 3


def test_2d_images_are_rgb_png_and_both_2d_and_3d_appear(root):
    rows = _csv(root, "modality_train.csv")[1]
    kinds = Counter(Path(r["image_path"]).suffix for r in rows)
    assert kinds[".npy"] > 0 and kinds[".png"] > 0
    png_modalities = {r["answer"] for r in rows if r["image_path"].endswith(".png")}
    assert png_modalities == {"X-ray", "Ultrasound"}
    for r in _csv(root, "diagnosis_open_train.csv")[1][:10]:
        img = _png(root, r["image_path"])
        assert img.dtype == np.uint8 and img.shape == (SIZE, SIZE, 3)
        assert (img == img[:, :, :1]).all() and img.max() > img.min()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b, c = (
        write_radfm_phantoms(tmp_path / name, 3, 1, seed=seed, image_size=16, max_depth=8)
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    )
    files = a["files"] + ["images/train/vol_00002.npy", "images/test/img_00000.png"]
    read = lambda s, f: (Path(s["root"]) / f).read_bytes()
    assert all(read(a, f) == read(b, f) for f in files)
    assert read(a, "images/train/vol_00002.npy") != read(c, "images/train/vol_00002.npy")
    assert read(a, "caption_train.json") != read(c, "caption_train.json")


def test_report_side_is_the_side_of_the_lesion_in_the_volume(root):
    checked = 0
    for c in _json(root, "caption_train.json") + _json(root, "caption_test.json"):
        if c["impression"] == "Normal study.":
            continue
        side = "right" if "(right " in c["impression"] else "left"
        assert f" {side} " in c["finding"]
        assert _side_of_lesion(_volume(root, c["npy_path"])) == side, c
        checked += 1
    assert checked >= 20


def test_reports_state_modality_and_normal_studies_say_so(root):
    for c in _json(root, "caption_train.json"):
        vol = _volume(root, c["npy_path"])
        depth_change = np.abs(np.diff(vol[0, 0], axis=-1)).mean() / np.ptp(vol)
        modality = c["finding"].split(" of the ")[0]
        assert modality in ("CT", "MRI")
        if c["impression"] == "Normal study.":
            assert "No focal lesion" in c["finding"]
        else:
            assert any(f"with {name} (" in c["impression"] for name in NAMES)
        assert depth_change > 0  # noise at least


def test_vqa_answers_agree_with_the_report_of_the_same_volume(root):
    reports = {c["npy_path"]: c for c in _json(root, "caption_train.json")}
    questions = Counter()
    for r in _csv(root, "vqa_train.csv")[1]:
        rep = reports[r["image_path"]]
        normal = rep["impression"] == "Normal study."
        q, a = r["question"], r["answer"]
        questions[q.split(" a ")[0]] += 1
        if q == "What imaging modality is used?":
            assert rep["finding"].startswith(a + " of the ")
        elif q == "Is this a normal study?":
            assert a == ("yes" if normal else "no")
        elif q == "What is the diagnosis?":
            assert (a == "Normal") if normal else f"with {a} (" in rep["impression"]
        elif q == "Which side is the lesion on?":
            assert f"({a} " in rep["impression"]
            assert _side_of_lesion(_volume(root, r["image_path"])) == a
        elif q == "Is the lesion in the upper or lower region?":
            assert f" {a})" in rep["impression"]
        else:
            assert q.startswith("Is there a ") and a in ("yes", "no")
            assert a == "no" or not normal
    assert len(questions) >= 5


def test_diagnosis_labels_are_disorder_names_and_closed_labels_agree(root):
    open_rows = {r["image_path"]: r["label"] for r in _csv(root, "diagnosis_open_train.csv")[1]}
    assert set(open_rows.values()) <= NAMES and "Normal" in open_rows.values()
    closed = _csv(root, "diagnosis_closed_train.csv")[1]
    assert {r["label"] for r in closed} == {"0", "1"}
    positives = sum(r["label"] == "1" for r in closed) / len(closed)
    assert 0.3 < positives < 0.7, positives  # about half "yes": "always no" is no baseline
    for r in closed:
        assert r["disease"] in NAMES - {"Normal"}
        assert r["label"] == str(int(r["disease"] == open_rows[r["image_path"]]))


def _features(root: Path, rel: str) -> np.ndarray:
    """Min-max normalised (as RadFM's readers do) first slice: 8-bin histogram, frame mean,
    mean horizontal gradient (texture), how much brighter the body's outer layer is than its
    inside (T1 fat rim) and the band under the body (CT table)."""
    img = (
        _volume(root, rel)[0, 0, :, :, 0]
        if rel.endswith(".npy")
        else _png(root, rel)[:, :, 0].astype(np.float32)
    )
    img = (img - img.min()) / (img.max() - img.min())
    frame = np.concatenate([img[:2].ravel(), img[-2:].ravel(), img[:, :2].ravel()])
    texture = np.abs(np.diff(img, axis=1)).mean()
    body = np.pad(img > 0.15, 1)
    inside = body[1:-1, 1:-1] & body[:-2, 1:-1] & body[2:, 1:-1] & body[1:-1, :-2] & body[1:-1, 2:]
    rim = body[1:-1, 1:-1] & ~inside
    rim_contrast = img[rim].mean() - img[inside].mean() if rim.any() and inside.any() else 0.0
    return np.append(
        np.histogram(img, bins=8, range=(0, 1))[0] / img.size,
        [frame.mean(), 4 * texture, rim_contrast, img[int(0.94 * len(img)), 4:-4].mean()],
    )


def test_modalities_are_separable_from_pixels(root):
    """A nearest-centroid classifier on crude intensity features tells the 4 modalities apart."""

    def data(split):
        rows = _csv(root, f"modality_{split}.csv")[1]
        features = np.stack([_features(root, r["image_path"]) for r in rows])
        return features, [r["answer"] for r in rows]

    x, y = data("train")
    centroids = {m: x[[a == m for a in y]].mean(0) for m in MODALITY_SET}
    xt, yt = data("test")
    pred = [min(centroids, key=lambda m: np.linalg.norm(f - centroids[m])) for f in xt]
    assert np.mean([p == t for p, t in zip(pred, yt)]) >= 0.9


def test_reports_vary_with_the_image(root):
    reports = [c["finding"] + c["impression"] for c in _json(root, "caption_train.json")]
    top = Counter(reports).most_common(1)[0][1]
    assert top / len(reports) <= 0.15 and len(set(reports)) >= len(reports) // 2


def test_phantom_tokenizer_covers_reports_compactly_and_entities_are_found(root):
    from radjax.data.tokenizers import phantom_tokenizer
    from radjax.metrics.entities import EntityMatcher, radiology_terms

    tok, matcher = phantom_tokenizer(), EntityMatcher(radiology_terms())  # ICD-10 part is slow
    for c in _json(root, "caption_train.json"):
        text = f"{c['finding']} {c['impression']}"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids and len(ids) <= 2 * len(text.split())
        if c["impression"] != "Normal study.":
            assert matcher.entities(c["impression"] + " " + c["finding"]) - {"focal lesion"}


def test_max_depth_below_one_patch_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="max_depth"):
        write_radfm_phantoms(tmp_path, 1, 1, max_depth=3)
