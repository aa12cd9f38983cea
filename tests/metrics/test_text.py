"""radjax.metrics.text against the libraries it wraps and against hand-computed values."""

import math

import numpy as np
import pytest

from radjax.metrics import text as T

PREDS = [
    "Small right pleural effusion. No pneumothorax.",
    "The heart is enlarged with mild pulmonary edema.",
    "No acute intracranial hemorrhage is seen.",
]
REFS = [
    "There is a small right pleural effusion without pneumothorax.",
    "Cardiomegaly with mild pulmonary edema.",
    "No intracranial hemorrhage or mass effect.",
]


def _has_wordnet():
    try:
        T.require_wordnet()
        return True
    except T.WordNetMissingError:
        return False


# ---------------------------------------------------------------- normalisation, token F1, VQA


def test_normalize_answer_hand():
    assert (
        T.normalize_answer("Yes, the lesion is in the Left-Lung. Two nodules!")
        == "yes lesion is in left lung 2 nodules"
    )
    assert T.normalize_answer("3.5 cm") == "3.5 cm"  # period before a digit kept
    assert T.normalize_answer("1,000 (approx)") == "1000 approx"  # digit,digit: punctuation dropped
    assert T.normalize_answer("it isnt an MRI") == "it isn't mri"


def test_token_f1_and_exact_match_hand():
    f1, p, r = T.token_f1("left lung upper lobe", "the left lung")
    assert (p, r) == (0.5, 1.0) and f1 == pytest.approx(2 / 3)
    assert T.token_f1("", "yes") == (0.0, 0.0, 0.0)
    assert T.token_f1("no", "yes") == (0.0, 0.0, 0.0)
    f1, p, r = T.token_f1("lung lung", "lung")  # multiplicity counts in tp
    assert (f1, p, r) == (1.0, 1.0, 1.0)
    assert T.llava_med_exact_match("left lung upper lobe", "left lung") == 0.5


def test_llava_med_vqa_hand():
    out = T.llava_med_vqa(
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
        T.llava_med_vqa(["a"], ["a"], ["other"])


def test_uni_med_vqa_against_nltk():
    from nltk.translate.bleu_score import sentence_bleu

    preds, gts, types = (
        ["Yes, it is.", "The left lower lung lobe"],
        ["yes", "left lung lobe"],
        ["CLOSED", "OPEN"],
    )
    out = T.uni_med_vqa(preds, gts, types)
    assert out["closed"]["acc"] == 1.0
    hyp, ref = "left lower lung lobe".split(), "left lung lobe".split()
    with pytest.warns(UserWarning):  # nltk warns about the missing higher-order overlaps
        for n, w in [(1, (1, 0, 0, 0)), (2, (0.5, 0.5)), (3, (1 / 3,) * 3), (4, (0.25,) * 4)]:
            assert out["open"][f"bleu{n}"] == pytest.approx(sentence_bleu([ref], hyp, weights=w))
    assert out["open"]["bleu1"] == 0.75  # 3 of 4 unigrams, no brevity penalty
    assert out["open"]["f1"] == pytest.approx(2 * 0.75 * 1.0 / 1.75)
    assert out["all"]["f1"] == pytest.approx((out["open"]["f1"] + out["closed"]["f1"]) / 2)


# ---------------------------------------------------------------- BLEU


def test_bleu_variants_against_nltk_and_hand():
    from nltk.translate.bleu_score import sentence_bleu

    for p, r in zip(PREDS, REFS):
        assert T.autorg_bleu1(p, r) == pytest.approx(
            sentence_bleu([r.lower().split()], p.lower().split(), weights=(1, 0, 0, 0))
        )
        lm = T.llava_med_bleu(p, r)
        hp, hr = T.normalize_answer(p.lower()).split(), T.normalize_answer(r.lower()).split()
        assert lm["bleu"] == pytest.approx(sentence_bleu([hr], hp))
        assert lm["bleu_2"] == pytest.approx(sentence_bleu([hr], hp, weights=(0, 1, 0, 0)))
    # M3D (HF evaluate bleu, max_order=1): 13a tokens, case kept; 4 of 4 hyp unigrams match,
    # hyp length 4 < ref length 5 -> BP = exp(1 - 5/4)
    assert T.tokens_13a("No acute findings.") == ["No", "acute", "findings", "."]
    assert T.m3d_bleu1("No acute findings.", "No acute findings seen.") == pytest.approx(
        math.exp(-0.25)
    )
    assert T.m3d_bleu1("no acute findings.", "No acute findings.") == pytest.approx(
        0.75
    )  # case kept
    # AutoRG BLEU-1 by hand: 5 of 6 unigrams clipped-match, lengths 6 vs 5 -> BP 1
    assert T.autorg_bleu1(
        "the the heart is normal size", "The heart is normal size"
    ) == pytest.approx(5 / 6)


def test_corpus_bleu_against_sacrebleu():
    import sacrebleu

    assert T.corpus_bleu(PREDS, REFS) == pytest.approx(
        sacrebleu.corpus_bleu(PREDS, [REFS]).score / 100
    )
    with pytest.raises(ValueError, match="2 predictions but 1"):
        T.corpus_bleu(PREDS[:2], REFS[:1])


# ---------------------------------------------------------------- ROUGE


def test_rouge_against_rouge_score_and_autorg_hand():
    from rouge_score import rouge_scorer

    sc = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for p, r in zip(PREDS, REFS):
        ours, ref = T.rouge(p, r, use_stemmer=True), sc.score(r, p)
        for k in ("rouge1", "rouge2", "rougeL"):
            assert ours[k]["fmeasure"] == pytest.approx(ref[k].fmeasure)
            assert ours[k]["recall"] == pytest.approx(ref[k].recall)
    # set recall: ref set {no, intracranial, hemorrhage, or, mass, effect.} (6); shared: no, intracranial, hemorrhage
    assert T.autorg_rouge1(PREDS[2], REFS[2]) == pytest.approx(3 / 6)
    assert T.autorg_rouge1("effusion effusion", "effusion Effusion") == 1.0
    assert T.autorg_rouge1("x", "") == 0.0


# ---------------------------------------------------------------- METEOR


def test_lexnames_file(tmp_path):
    lines = T.write_lexnames(tmp_path).read_text().splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1"
    assert lines[44] == "44\tadj.ppl\t3" and lines[29] == "29\tverb.body\t2"


def test_missing_wordnet_error_is_clear(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr("sys.prefix", str(tmp_path))
    with pytest.raises(T.WordNetMissingError, match="make wordnet") as e:
        T.meteor("small effusion", "minor effusion")
    assert "apt-get download wordnet-base wordnet-sense-index" in str(e.value)
    assert "NLTK_DATA" in str(e.value)


@pytest.mark.skipif(
    not _has_wordnet(),
    reason="WordNet not installed (run `make wordnet`; "
    "needs apt-get); the missing-WordNet error is tested separately",
)
def test_meteor_against_nltk():
    from nltk.corpus import wordnet
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.translate.meteor_score import meteor_score

    tok = NLTKWordTokenizer().tokenize
    for p, r in [
        ("The pleural effusion is small", "There is a minor pleural effusion"),
        ("heart enlarged", "cardiomegaly"),
    ]:
        assert T.meteor(p, r) == pytest.approx(meteor_score([tok(r)], tok(p), wordnet=wordnet))
    # synonym stage really used: "minor" ~ "small" only through WordNet
    assert T.meteor("small effusion", "minor effusion") > T.meteor(
        "tiny effusion", "minor effusion"
    )
    assert T.meteor_tokens("No effusion. Heart normal.") == [
        "No",
        "effusion",
        ".",
        "Heart",
        "normal",
        ".",
    ]


# ---------------------------------------------------------------- BERTScore


def test_bertscore_against_bert_score():
    import bert_score

    path = T.default_bertscore_model()
    ours = T.bertscore(PREDS, REFS)
    p, r, f = bert_score.score(PREDS, REFS, model_type=path, num_layers=6, device="cpu")
    np.testing.assert_allclose(ours["f1"], f.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours["precision"], p.numpy(), atol=1e-5)
    same = T.bertscore(REFS[:1], REFS[:1])["f1"]
    assert same[0] == pytest.approx(1.0, abs=1e-4)
    blank = T.bertscore(["", PREDS[0], "x"], [REFS[0], REFS[0], " "])["f1"]
    np.testing.assert_allclose(blank, [0.0, ours["f1"][0], 0.0], atol=1e-5)  # bert-score: 0
    with pytest.raises(FileNotFoundError, match="BERTScore model directory"):
        T.bertscore(PREDS, REFS, model_dir="/nonexistent/model")


def test_report_bundles():
    m = T.autorg_report_metrics(PREDS, REFS)
    assert m["bleu1"] == pytest.approx(np.mean([T.autorg_bleu1(p, r) for p, r in zip(PREDS, REFS)]))
    assert m["rouge1"] == pytest.approx(
        np.mean([T.autorg_rouge1(p, r) for p, r in zip(PREDS, REFS)])
    )
    assert 0.5 < m["bertscore_f1"] <= 1.0
    u = T.uni_med_report_metrics(PREDS, REFS, with_meteor=False)
    assert u["bleu4"] == pytest.approx(T.corpus_bleu(PREDS, REFS))
    m3 = T.m3d_report_metrics(PREDS, REFS, with_meteor=_has_wordnet())
    assert m3["rouge1"] == pytest.approx(
        np.mean([T.rouge(p, r, ("rouge1",))["rouge1"]["fmeasure"] for p, r in zip(PREDS, REFS)])
    )


# ---------------------------------------------------------------- medical entities


def test_entity_matcher_hand():
    m = T.EntityMatcher(["pleural effusion", "effusion", "pulmonary nodule", "pneumothorax"])
    text = "Small pleural effusions and two pulmonary nodules; no pneumothorax."
    spans = m.spans(text)
    assert [e for _, _, e in spans] == ["pleural effusion", "pulmonary nodule", "pneumothorax"]
    s, e, _ = spans[0]
    assert text[s:e] == "pleural effusions"  # longest match wins, plural normalised
    sc = T.radfm_entity_scores(
        "Pleural effusion and pneumothorax.", "Effusion, pleural effusion.", m
    )
    # pred {pleural effusion, pneumothorax}; ref {effusion, pleural effusion}
    assert sc == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert T.radfm_entity_scores("normal", "normal", m) == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }
    with pytest.raises(ValueError):
        T.EntityMatcher(["", "  "])


def test_default_lexicon_and_token_weights():
    from transformers import AutoTokenizer

    m = T.EntityMatcher.default()
    assert len(m) > 5000
    assert "pleural effusion" in T.icd10cm_terms() and "hypersomnia" in T.icd10cm_terms()
    assert "atelectasis" in T.radiology_terms()
    ents = m.entities("Right pleural effusion with bibasilar atelectasis. Hypersomnia noted.")
    assert {"pleural effusion", "atelectasis", "hypersomnia"} <= ents
    tok = AutoTokenizer.from_pretrained(T.default_bertscore_model())
    text = "mild cardiomegaly and no pneumothorax"
    ids, w = T.entity_token_weights(
        text, tok, matcher=T.EntityMatcher(["cardiomegaly", "pneumothorax"])
    )
    toks = tok.convert_ids_to_tokens(ids.tolist())
    assert len(w) == len(ids)
    assert len(toks) > 5  # the entity words split into word pieces, each weighted
    for t, wi in zip(toks, w):
        assert wi == (1.0 if t in ("mild", "and", "no") else 3.0), (t, wi)
    np.testing.assert_array_equal(
        T.token_weights_from_offsets(np.array([[0, 0], [0, 4], [5, 9]]), [(5, 9, "x")]), [1, 1, 3]
    )
