"""Synthetic LLaVA-Med files: the original formats (read back by the real readers),
determinism, balanced closed answers, and texts that a pixel classifier can check."""

import json
from pathlib import Path

import numpy as np
import pytest

from radjax.data.readers import read_image
from radjax.papers.llava_med import conversations_json as R
from radjax.papers.llava_med import phantoms as P
from radjax.papers.llava_med.phantoms import FILES, IMAGE_FOLDER, write_llava_med_phantoms

N_TRAIN, N_TEST, SIZE = 160, 48, 32


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava_med")
    return root, write_llava_med_phantoms(root, N_TRAIN, N_TEST, seed=0, image_size=SIZE)


def _json(root: Path, key: str):
    return json.loads((root / FILES[key]).read_text())


def test_summary_counts_and_files(written):
    root, summary = written
    assert summary["images"] == {"train": N_TRAIN, "test": N_TEST}
    assert summary["counts"] == {
        "alignment": N_TRAIN,
        "instruct": N_TRAIN,
        "vqa_train": 4 * N_TRAIN,
        "vqa_test": 4 * N_TEST,
    }
    assert all((root / f).is_file() for f in summary["files"])
    assert len(list((root / IMAGE_FOLDER / "test").glob("*.png"))) == N_TEST


def test_conversation_files_read_with_the_original_schema(written):
    root, _ = written
    folder = root / IMAGE_FOLDER
    align = R.read_conversations(root / FILES["alignment"], image_folder=folder)
    instruct = R.read_conversations(root / FILES["instruct"], image_folder=folder)
    assert len(align) == len(instruct) == N_TRAIN
    assert all(len(r.turns) == 2 and r.has_image for r in align)
    for r in instruct:
        assert 4 <= len(r.turns) <= 6 and len(r.turns) % 2 == 0
        assert [t.speaker for t in r.turns] == ["human", "gpt"] * (len(r.turns) // 2)
        assert r.turns[0].value.startswith("<image>\n")
        assert not any("<image>" in t.value for t in r.turns[1:])
        # whether there is a lesion is asked in every record (the tiny recipe needs it)
        questions = [t.value.split("\n")[-1] for t in r.turns[::2]]
        assert sum(q in P.Q_LESION for q in questions) == 1, questions
    assert {r.image.split("/")[0] for r in instruct} == {"train"}


def test_vqa_files_read_and_hold_balanced_closed_answers(written):
    root, _ = written
    folder = root / IMAGE_FOLDER
    for key, split, n in (("vqa_train", "train", N_TRAIN), ("vqa_test", "test", N_TEST)):
        items = R.read_vqa(root / FILES[key], image_folder=folder)
        assert len(items) == 4 * n and len({i.id for i in items}) == 4 * n
        assert {i.image.split("/")[0] for i in items} == {split}
        closed = [i.answer for i in items if i.answer_type == "CLOSED"]
        opened = [i.answer for i in items if i.answer_type == "OPEN"]
        assert len(closed) == len(opened) == 2 * n  # two of each an image
        assert set(closed) == {"yes", "no"}
        assert 0.35 < np.mean([a == "yes" for a in closed]) < 0.65
        assert all(1 <= len(a.split()) <= 2 for a in opened)  # VQA-RAD-style phrases


def test_closed_instruction_answers_hold_only_their_own_yes_or_no(written):
    """LLaVA-Med's closed metric is a substring test ("no" is in "nodule", "normal"): every
    closed instruction answer holds its own word and not the other one."""
    from radjax.metrics.text import normalize_answer

    root, _ = written
    seen = 0
    for record in _json(root, "instruct"):
        for q, a in zip(record["conversations"][::2], record["conversations"][1::2]):
            if not q["value"].split("\n")[-1].startswith("Is "):
                continue
            answer = normalize_answer(a["value"].lower())
            word = answer.split()[-1]
            assert word in ("yes", "no"), a["value"]
            assert ("no" in answer) != ("yes" in answer), a["value"]
            seen += 1
    assert seen > N_TRAIN / 2


def test_same_seed_same_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        write_llava_med_phantoms(root, 6, 2, seed=3, image_size=SIZE)
    for name in FILES.values():
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for png in sorted((a / IMAGE_FOLDER).rglob("*.png")):
        assert png.read_bytes() == (b / png.relative_to(a)).read_bytes()
    c = tmp_path / "c"
    write_llava_med_phantoms(c, 6, 2, seed=4, image_size=SIZE)
    assert (a / FILES["instruct"]).read_bytes() != (c / FILES["instruct"]).read_bytes()


def _caption_labels(caption: str) -> dict[str, str]:
    """Modality, body part, lesion presence and side as the stage-1 caption states them."""
    scope, finding = caption.split(": ", 1)
    modality, region = scope.split(" of the ")
    side = "right" if " right " in finding else "left" if " left " in finding else "none"
    return dict(modality=modality, region=region, lesion=str(side != "none"), side=side)


def test_captions_state_what_a_pixel_classifier_reads(written):
    """The texts follow the pixels: logistic regression on the (2x2-pooled) train pixels,
    labelled by the captions, predicts held-out modality and body part almost perfectly and
    lesion presence above chance."""
    from sklearn.linear_model import LogisticRegression

    root, _ = written
    train = _json(root, "alignment")
    pixels = np.stack([read_image(root / IMAGE_FOLDER / r["image"])[..., 0] for r in train])
    x = pixels.reshape(len(train), SIZE // 2, 2, SIZE // 2, 2).mean(axis=(2, 4)) / 255.0
    x = x.reshape(len(train), -1)  # 2x2-pooled pixels
    labels = [_caption_labels(r["conversations"][1]["value"]) for r in train]
    cut = N_TRAIN - 48
    scores = {}
    for key in ("modality", "region", "lesion"):
        y = [lab[key] for lab in labels]
        clf = LogisticRegression(max_iter=2000).fit(x[:cut], y[:cut])
        scores[key] = clf.score(x[cut:], y[cut:])
    assert scores["modality"] >= 0.9 and scores["region"] >= 0.85, scores
    assert scores["lesion"] >= 0.6, scores
    sizes = {read_image(root / IMAGE_FOLDER / r["image"]).shape for r in train[:5]}
    assert sizes == {(SIZE, SIZE, 3)}
