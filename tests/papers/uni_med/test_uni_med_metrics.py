"""radjax.papers.uni_med.metrics: VQA per subset against nltk, and the report bundle."""

import pytest

from radjax.metrics import text
from radjax.papers.uni_med import metrics as M

PREDS = [
    "Small right pleural effusion. No pneumothorax.",
    "No acute intracranial hemorrhage is seen.",
]
REFS = ["There is a small right pleural effusion.", "No intracranial hemorrhage or mass effect."]


def test_vqa_against_nltk():
    from nltk.translate.bleu_score import sentence_bleu

    preds, gts, types = (
        ["Yes, it is.", "The left lower lung lobe"],
        ["yes", "left lung lobe"],
        ["CLOSED", "OPEN"],
    )
    out = M.vqa(preds, gts, types)
    assert out["closed"]["acc"] == 1.0
    hyp, ref = "left lower lung lobe".split(), "left lung lobe".split()
    with pytest.warns(UserWarning):  # nltk warns about the missing higher-order overlaps
        for n, w in [(1, (1, 0, 0, 0)), (2, (0.5, 0.5)), (3, (1 / 3,) * 3), (4, (0.25,) * 4)]:
            assert out["open"][f"bleu{n}"] == pytest.approx(sentence_bleu([ref], hyp, weights=w))
    assert out["open"]["bleu1"] == 0.75  # 3 of 4 unigrams, no brevity penalty
    assert out["open"]["f1"] == pytest.approx(2 * 0.75 * 1.0 / 1.75)
    assert out["all"]["f1"] == pytest.approx((out["open"]["f1"] + out["closed"]["f1"]) / 2)


def test_report_metrics():
    u = M.report_metrics(PREDS, REFS, with_meteor=False)
    assert u["bleu4"] == pytest.approx(text.corpus_bleu(PREDS, REFS))
    assert u["f1"] == pytest.approx(
        sum(text.token_f1(p, r)[0] for p, r in zip(PREDS, REFS)) / len(PREDS)
    )
    assert set(u) == {"count", "bleu4", "rouge1", "rouge2", "rougeL", "f1"}
