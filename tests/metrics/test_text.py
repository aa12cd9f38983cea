"""radjax.metrics.text against the libraries it wraps and against hand-computed values.

The papers' protocols built on it are tested in tests/papers/<paper>/test_<paper>_metrics.py."""

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


def test_token_f1_hand():
    f1, p, r = T.token_f1("left lung upper lobe", "the left lung")
    assert (p, r) == (0.5, 1.0) and f1 == pytest.approx(2 / 3)
    assert T.token_f1("", "yes") == (0.0, 0.0, 0.0)
    assert T.token_f1("no", "yes") == (0.0, 0.0, 0.0)
    f1, p, r = T.token_f1("lung lung", "lung")  # multiplicity counts in tp
    assert (f1, p, r) == (1.0, 1.0, 1.0)


# ---------------------------------------------------------------- BLEU


def test_bleu_against_nltk_and_hand():
    from nltk.translate.bleu_score import sentence_bleu

    hyp, ref = "left lower lung lobe".split(), "left lung lobe".split()
    out = T.cumulative_bleu("The left lower lung lobe", "left lung lobe")
    with pytest.warns(UserWarning):  # nltk warns about the missing higher-order overlaps
        for n, w in [(1, (1, 0, 0, 0)), (2, (0.5, 0.5)), (3, (1 / 3,) * 3), (4, (0.25,) * 4)]:
            assert out[f"bleu{n}"] == pytest.approx(sentence_bleu([ref], hyp, weights=w))
    assert out["bleu1"] == 0.75  # 3 of 4 unigrams, no brevity penalty
    for p, r in zip(PREDS, REFS):
        hyp, ref = p.lower().split(), r.lower().split()
        assert T.sentence_bleu(hyp, [ref], (1, 0, 0, 0)) == pytest.approx(
            sentence_bleu([ref], hyp, weights=(1, 0, 0, 0))
        )
    assert T.tokens_13a("No acute findings.") == ["No", "acute", "findings", "."]
    assert T.mean([]) == 0.0 and T.mean([1, 2]) == 1.5


def test_corpus_bleu_against_sacrebleu():
    import sacrebleu

    assert T.corpus_bleu(PREDS, REFS) == pytest.approx(
        sacrebleu.corpus_bleu(PREDS, [REFS]).score / 100
    )
    with pytest.raises(ValueError, match="2 predictions but 1"):
        T.corpus_bleu(PREDS[:2], REFS[:1])


# ---------------------------------------------------------------- ROUGE


def test_rouge_against_rouge_score():
    from rouge_score import rouge_scorer

    sc = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for p, r in zip(PREDS, REFS):
        ours, ref = T.rouge(p, r, use_stemmer=True), sc.score(r, p)
        for k in ("rouge1", "rouge2", "rougeL"):
            assert ours[k]["fmeasure"] == pytest.approx(ref[k].fmeasure)
            assert ours[k]["recall"] == pytest.approx(ref[k].recall)


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
