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


def test_iou_is_pixel_inclusive():
    assert M.compute_iou([0, 0, 9, 9], [0, 0, 9, 9]) == 1.0
    assert M.compute_iou([0, 0, 9, 9], [10, 0, 19, 9]) == 0.0  # adjacent: no overlap
    assert M.compute_iou([0, 0, 1, 1], [1, 1, 2, 2]) == pytest.approx(1 / 7)  # 2x2 boxes, 1 px


def test_rec_scales_grid_predictions_to_pixels():
    """eval_ref.py: 0-100 predictions times W / H, against the raw pixel box, +1 areas."""
    gt = [[50, 50, 150, 100]]  # on a 200 x 100 image
    out = M.rec(["{<25><50><75><100>}"], gt, [[200, 100]])
    assert out == {"miou": 1.0, "acc": 1.0, "valid": 1.0}
    # the same answer compared on the grid (the spec's reading) would not match
    assert M.compute_iou([25, 50, 75, 100], [25, 50, 75, 100]) == 1.0
    assert M.compute_iou([25, 50, 75, 100], gt[0]) < 0.5
    # +1 in pixels: on a 1000-px image one grid unit off is 10 px, not 1
    far = M.rec(["{<0><0><10><10>}"], [[0, 0, 90, 90]], [[1000, 1000]])
    assert far["miou"] == pytest.approx(M.compute_iou([0, 0, 100, 100], [0, 0, 90, 90]))
    # strict > 0.5; unparsable answers count as IoU 0; spaces and trailing text allowed
    half = M.rec(
        ["{<0><0><9><9>}", "no box", "{<0> <0><9><19>} done"],
        [[0, 0, 9, 19], [0, 0, 9, 9], [0, 0, 9, 19]],
        [[100, 100]] * 3,
    )
    assert half["miou"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert half["acc"] == pytest.approx(1 / 3) and half["valid"] == pytest.approx(2 / 3)


def test_identify_and_cls_are_exact_normalised_matches():
    out = M.identify(["The Nodule.", "a cyst here"], ["nodule", "cyst"])
    assert out["acc"] == 0.5  # no substring test
    assert M.cls_accuracy(["Left Lung", "liver"], ["left lung", "spleen"]) == 0.5


def test_report_groups_tasks_with_baselines_and_routing():
    import numpy as np

    out = M.uni_med_report(
        ["yes", "no", "cyst"],
        ["yes", "yes", "cyst"],
        tasks=["vqa", "vqa", "identify"],
        closed=np.array([True, True, False]),
        boxes=np.zeros((3, 4)),
        image_wh=np.ones((3, 2)),
        routing=np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]),
        baseline={"vqa_closed": "yes", "identify": "nodule"},
    )
    assert out["vqa/closed_acc"] == 0.5 and out["baseline/vqa/closed_acc"] == 1.0
    assert out["identify/acc"] == 1.0 and out["baseline/identify/acc"] == 0.0
    assert out["vqa/routing_e0"] == 0.75 and out["identify/routing_e1"] == 1.0
    assert out["vqa/count"] == 2 and len(out["samples/vqa"]) == 2


def test_report_metrics_drop_empty_pairs():
    out = M.report_metrics(["", "a b c"], ["x y", "a b c"], with_meteor=False)
    assert out["count"] == 1 and out["f1"] == 1.0
