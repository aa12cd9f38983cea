"""radjax.papers.autorg_brain.metrics: BLEU-1, unigram-set recall and the report bundle."""

import numpy as np
import pytest

from radjax.papers.autorg_brain import metrics as M

PREDS = [
    "Small right pleural effusion. No pneumothorax.",
    "No acute intracranial hemorrhage is seen.",
]
REFS = ["There is a small right pleural effusion.", "No intracranial hemorrhage or mass effect."]


def test_bleu1_against_nltk_and_hand():
    from nltk.translate.bleu_score import sentence_bleu

    for p, r in zip(PREDS, REFS):
        assert M.bleu1(p, r) == pytest.approx(
            sentence_bleu([r.lower().split()], p.lower().split(), weights=(1, 0, 0, 0))
        )
    # 5 of 6 unigrams clipped-match, lengths 6 vs 5 -> BP 1
    assert M.bleu1("the the heart is normal size", "The heart is normal size") == pytest.approx(
        5 / 6
    )


def test_unigram_recall_hand():
    # ref set {no, intracranial, hemorrhage, or, mass, effect.} (6); shared: no, intracranial,
    # hemorrhage
    assert M.unigram_recall(PREDS[1], REFS[1]) == pytest.approx(3 / 6)
    assert M.unigram_recall("effusion effusion", "effusion Effusion") == 1.0
    assert M.unigram_recall("x", "") == 0.0


def test_report_metrics_average_the_parts():
    m = M.report_metrics(PREDS, REFS)
    assert m["bleu1"] == pytest.approx(np.mean([M.bleu1(p, r) for p, r in zip(PREDS, REFS)]))
    assert m["rouge1"] == pytest.approx(
        np.mean([M.unigram_recall(p, r) for p, r in zip(PREDS, REFS)])
    )
    assert 0.5 < m["bertscore_f1"] <= 1.0
