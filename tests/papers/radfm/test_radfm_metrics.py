"""radjax.papers.radfm.metrics: per-task metrics, the most-frequent-answer baseline."""

import pytest
from sklearn.metrics import f1_score

from radjax.metrics import entities, text
from radjax.papers.radfm import metrics as radfm


def test_report_scores_each_task_and_the_baseline():
    preds = ["CT", "MRI", "x-ray", "Finding: a cyst in the left kidney.", "yes"]
    refs = ["CT", "CT", "X-ray", "Finding: a renal cyst in the left kidney.", "no"]
    tasks = ["modality", "modality", "modality", "caption", "diagnosis_closed"]
    out = radfm.radfm_report(preds, refs, tasks, baseline={"modality": "CT", "caption": "x"})
    assert out["modality/count"] == 3
    assert out["modality/accuracy"] == pytest.approx(2 / 3)  # "x-ray" == "X-ray" normalised
    want_f1 = f1_score(
        ["ct", "ct", "x-ray"],
        ["ct", "mri", "x-ray"],
        labels=["ct", "x-ray"],
        average="macro",
        zero_division=0,
    )
    assert out["modality/macro_f1"] == pytest.approx(want_f1)
    assert out["baseline/modality/accuracy"] == pytest.approx(2 / 3)
    bleu = text.cumulative_bleu(preds[3], refs[3])
    assert out["caption/bleu4"] == pytest.approx(bleu["bleu4"])
    assert out["caption/entity_recall"] == pytest.approx(
        radfm.radfm_entity_scores(preds[3], refs[3])["recall"]
    )
    assert out["baseline/caption/bleu1"] == 0.0
    assert (
        out["diagnosis_closed/accuracy"] == 0.0 and "baseline/diagnosis_closed/accuracy" not in out
    )
    assert out["samples/caption"] == [{"prediction": preds[3], "reference": refs[3], "row": 0}]
    with pytest.raises(ValueError, match="not one of"):
        radfm.task_metrics("segmentation", ["a"], ["a"])
    with pytest.raises(ValueError, match="2 predictions, 1 references"):
        radfm.radfm_report(["a", "b"], ["a"], ["vqa", "vqa"])


def test_entity_scores_compare_entity_sets():
    m = entities.EntityMatcher(["pleural effusion", "effusion", "pneumothorax"])
    sc = radfm.radfm_entity_scores(
        "Pleural effusion and pneumothorax.", "Effusion, pleural effusion.", m
    )
    # pred {pleural effusion, pneumothorax}; ref {effusion, pleural effusion}
    assert sc == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert radfm.radfm_entity_scores("normal", "normal", m) == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }


def test_disorder_named_and_distinct_generations_by_hand():
    nodule = "Impression: Findings consistent with Pulmonary nodule (right upper)."
    normal = "Finding: No focal lesion is seen.Impression: Normal study."
    preds = [nodule, "Findings consistent with Renal cyst.", normal, nodule]
    refs = [nodule, "Findings consistent with Hepatic cyst (right lower).", normal, normal]
    out = radfm.radfm_report(preds, refs, ["caption"] * 4, baseline={"caption": nodule})
    # hits: 0 (same disorder), 2 (both normal); misses: 1 (renal vs hepatic), 3 (names one)
    assert out["caption/disorder_named"] == 0.5
    assert out["caption/distinct"] == 0.75  # rows 0 and 3 are one text
    assert out["baseline/caption/disorder_named"] == 0.25  # only row 0's reference is a nodule
    assert out["baseline/caption/distinct"] == 0.25
    vqa = radfm.radfm_report(["yes", "no", "no"], ["yes", "no", "yes"], ["vqa"] * 3)
    assert vqa["vqa/distinct"] == pytest.approx(2 / 3) and "vqa/disorder_named" not in vqa
    assert "modality/distinct" not in radfm.radfm_report(["CT"], ["CT"], ["modality"])


def test_named_disorders_match_whole_names_only():
    assert radfm.named_disorders("renal CYST, and splenic infarction.") == {
        "Renal cyst",
        "Splenic infarction",
    }
    assert radfm.named_disorders("Renal cysts; a pulmonary infarct.") == frozenset()
