"""radjax.metrics.entities: the longest-match lexicon, its default term lists, token masks
and weights."""

import numpy as np
import pytest

from radjax.assets import minilm_path
from radjax.metrics import entities as E


def test_entity_matcher_hand():
    m = E.EntityMatcher(["pleural effusion", "effusion", "pulmonary nodule", "pneumothorax"])
    text = "Small pleural effusions and two pulmonary nodules; no pneumothorax."
    spans = m.spans(text)
    assert [e for _, _, e in spans] == ["pleural effusion", "pulmonary nodule", "pneumothorax"]
    s, e, _ = spans[0]
    assert text[s:e] == "pleural effusions"  # longest match wins, plural normalised
    with pytest.raises(ValueError):
        E.EntityMatcher(["", "  "])


def test_default_lexicon_and_token_weights():
    from transformers import AutoTokenizer

    m = E.EntityMatcher.default()
    assert len(m) > 5000
    assert "pleural effusion" in E.icd10cm_terms() and "hypersomnia" in E.icd10cm_terms()
    assert "atelectasis" in E.radiology_terms()
    ents = m.entities("Right pleural effusion with bibasilar atelectasis. Hypersomnia noted.")
    assert {"pleural effusion", "atelectasis", "hypersomnia"} <= ents
    tok = AutoTokenizer.from_pretrained(minilm_path())
    text = "mild cardiomegaly and no pneumothorax"
    ids, w = E.entity_token_weights(
        text, tok, matcher=E.EntityMatcher(["cardiomegaly", "pneumothorax"])
    )
    toks = tok.convert_ids_to_tokens(ids.tolist())
    assert len(w) == len(ids)
    assert len(toks) > 5  # the entity words split into word pieces, each weighted
    for t, wi in zip(toks, w):
        assert wi == (1.0 if t in ("mild", "and", "no") else 3.0), (t, wi)
    np.testing.assert_array_equal(
        E.token_weights_from_offsets(np.array([[0, 0], [0, 4], [5, 9]]), [(5, 9, "x")]), [1, 1, 3]
    )
