"""radjax.papers.llava_med.metrics: VQA by hand, BLEU against nltk, its "exact match"."""

import pytest

from radjax.metrics import text
from radjax.papers.llava_med import metrics as M


def test_exact_match_hand():
    assert M.exact_match("left lung upper lobe", "left lung") == 0.5
    assert M.exact_match("", "left lung") == 0.0


def test_bleu_against_nltk():
    from nltk.translate.bleu_score import sentence_bleu

    for p, r in [
        ("Small right pleural effusion. No pneumothorax.", "A small right pleural effusion."),
        ("The heart is enlarged with mild pulmonary edema.", "Cardiomegaly, mild pulmonary edema."),
    ]:
        lm = M.bleu(p, r)
        hp = text.normalize_answer(p.lower()).split()
        hr = text.normalize_answer(r.lower()).split()
        assert lm["bleu"] == pytest.approx(sentence_bleu([hr], hp))
        assert lm["bleu_2"] == pytest.approx(sentence_bleu([hr], hp, weights=(0, 1, 0, 0)))


def test_vqa_hand():
    out = M.vqa(
        ["Yes, it is.", "The left lung", "no"],
        ["yes", "left lung", "yes"],
        ["CLOSED", "OPEN", "closed"],
    )
    assert out["closed_acc"] == 0.5 and out["recall_closed"] == 0.5
    assert out["open_acc"] == 1.0 and out["open_recall"] == 1.0 and out["f1"] == 1.0
    assert out["exact_match"] == 1.0 and out["bleu_1"] == 1.0 and out["bleu_2"] == 1.0
    assert out["bleu_3"] < 1e-300 and out["bleu"] < 1e-100  # no trigram: nltk's ~0, no smoothing
    assert (out["num_open"], out["num_closed"]) == (1.0, 2.0)
    with pytest.raises(ValueError, match="OPEN or CLOSED"):
        M.vqa(["a"], ["a"], ["other"])
