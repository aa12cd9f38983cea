"""radjax.papers.m3d.metrics: BLEU-1 as HF ``evaluate`` computes it, the report bundle; and a
paper package with only its metrics is found by name yet has no model, data or demo."""

import math

import numpy as np
import pytest

from experiments import sections
from radjax import registry
from radjax.metrics import text
from radjax.papers.m3d import metrics as M

PREDS = [
    "Small right pleural effusion. No pneumothorax.",
    "No acute intracranial hemorrhage is seen.",
]
REFS = ["There is a small right pleural effusion.", "No intracranial hemorrhage or mass effect."]


def _has_wordnet():
    try:
        text.require_wordnet()
        return True
    except text.WordNetMissingError:
        return False


def test_bleu1_hand():
    # 13a tokens, case kept; 4 of 4 hyp unigrams match, hyp length 4 < ref length 5 ->
    # BP = exp(1 - 5/4)
    assert M.bleu1("No acute findings.", "No acute findings seen.") == pytest.approx(
        math.exp(-0.25)
    )
    assert M.bleu1("no acute findings.", "No acute findings.") == pytest.approx(0.75)


def test_report_metrics_average_the_parts():
    m = M.report_metrics(PREDS, REFS, with_meteor=_has_wordnet())
    assert m["bleu1"] == pytest.approx(np.mean([M.bleu1(p, r) for p, r in zip(PREDS, REFS)]))
    assert m["rouge1"] == pytest.approx(
        np.mean([text.rouge(p, r, ("rouge1",))["rouge1"]["fmeasure"] for p, r in zip(PREDS, REFS)])
    )
    assert 0.5 < m["bertscore_f1"] <= 1.0


def test_a_metrics_only_paper_is_found_and_skipped():
    assert {"m3d", "llava_med", "uni_med", "autorg_brain"} <= set(registry.names())
    assert registry.optional_module("m3d", "metrics") is M
    for part in ("model", "data", "demo"):
        assert registry.optional_module("m3d", part) is None
    with pytest.raises(ValueError, match="has no module 'model'"):
        registry.module("m3d", "model")
    assert sections.demos(("m3d",)) == []
