"""radjax.papers.llava_med.metrics: VQA by hand, BLEU against nltk, its "exact match",
run_eval.py's closed accuracy, the per-kind breakdown."""

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


def test_run_eval_closed_accuracy_before_and_after_pr35():
    preds = ["yes", "no, it is not", "maybe", "yes", "nothing"]
    refs = ["yes", "yes", "no", "no", "no"]
    # after: hits 1, 0 (yes/no present, ref absent), 0 (no yes/no), 0, 1 ("no" in "nothing")
    assert M.closed_accuracy_run_eval(preds, refs, fixed=True) == pytest.approx(2 / 5)
    # before: the two wrong answers holding yes/no append nothing -> 2 hits of 3 items
    assert M.closed_accuracy_run_eval(preds, refs, fixed=False) == pytest.approx(2 / 3)


def test_vqa_report_keys_and_distinct():
    out = M.vqa_report(
        ["Yes.", "No.", "No.", "left", "left"],
        ["yes"] * 3 + ["left"] * 2,
        [True, True, True, False, False],
    )
    assert out["closed/accuracy"] == pytest.approx(1 / 3) and out["open/recall"] == 1.0
    assert out["closed/distinct"] == pytest.approx(2 / 3) and out["open/distinct"] == 0.5
    assert out["closed/accuracy_pr35"] == pytest.approx(1 / 3)


def test_by_question_kind_by_hand():
    kinds = (("lesion", "^is there a lesion"), ("side", "which side"))
    out = M.by_question_kind(
        ["Yes.", "No.", "The lesion is on the left side.", "right", "CT"],
        ["yes", "yes", "left", "left", "ct"],
        [
            "<image>\nIs there a lesion?",
            "Is there a lesion?",
            "Which side?",
            "Which side?",
            "What modality?",
        ],
        [True, True, False, False, False],
        kinds,
    )
    assert out["lesion/accuracy"] == 0.5 and out["lesion/count"] == 2.0
    assert out["lesion/distinct"] == 1.0
    assert out["side/accuracy"] == 0.5 and out["side/recall"] == 0.5
    assert "modality/accuracy" not in out  # no kind matches: left out
    assert M.by_question_kind(["a"], ["a"], ["q"], [True], kinds) == {}
