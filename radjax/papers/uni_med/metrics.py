"""Uni-Med's evaluation (``eval_vqa.py``, ``eval_ref.py``, ``eval_identify.py``,
``eval_caption.py``, ``eval_cls.py``, ``uni_med/common/eval_utils.py``) on decoded answers.

* VQA (``vqa``): per subset OPEN / CLOSED / all, mean sentence BLEU-1..4 (nltk, cumulative
  weights, no smoothing) and the unclipped token F1 on ``normalize_word`` texts; CLOSED
  accuracy = the normalised reference is a *substring* of the normalised prediction.
* REC (``rec``): the answer (``<unk>`` and spaces removed) must start with
  ``{<a><b><c><d>}`` (else IoU 0, still averaged); the 0-100 grid prediction is scaled to
  **pixels** (``x / 100 * W``, ``y / 100 * H``) and compared with the ground-truth pixel box
  ``[x, y, x + w, y + h]`` by ``computeIoU`` (+1-inclusive areas, no clamp); ``miou`` = mean
  IoU, ``acc`` = fraction with IoU **> 0.5** (strict).
* REG (``identify``): BLEU-1..4 and token F1 as VQA, ``acc`` = exact match of the
  normalised texts (no substring test).
* Reports (``report_metrics``): samples with an empty reference or prediction dropped
  first (eval_caption.py:157), then BLEU-4 / ROUGE / token F1 / METEOR (deviations below).
* Classification (``cls_accuracy``): exact match of the normalised texts.

Predictions are decoded as ``UniMedBase.generate`` does (``decode_generated``) and then
lower-cased with ``<unk>`` removed, as the scripts do (REC instead removes every space).
``uni_med_report`` puts it together per task, with baselines and the routing weights.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from radjax.data.prompt_answer import until_eos
from radjax.metrics import text
from radjax.metrics.samples import spread_samples

SAMPLES_PER_TASK = 3


def vqa(
    predictions: Sequence[str], references: Sequence[str], answer_types: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Uni-Med ``eval_vqa.evaluate_open_and_closed``: per subset (open/closed/all) mean
    BLEU-1..4 and token F1; closed accuracy (normalised gt substring of normalised pred).
    Predictions are lower-cased, ``<unk>`` removed and stripped first, as its generation loop
    does."""
    text.check_pairs(predictions, references)
    items = [
        (p.lower().replace("<unk>", "").strip(), g, t.upper())
        for p, g, t in zip(predictions, references, answer_types)
    ]

    def block(sub):
        bl = [text.cumulative_bleu(p, g) for p, g, _ in sub]
        res = {k: text.mean(b[k] for b in bl) for k in ("bleu1", "bleu2", "bleu3", "bleu4")}
        res["f1"] = text.mean(text.token_f1(p, g)[0] for p, g, _ in sub)
        return res

    closed = [x for x in items if x[2] == "CLOSED"]
    out = {
        "open": block([x for x in items if x[2] == "OPEN"]),
        "closed": block(closed),
        "all": block(items),
    }
    out["closed"]["acc"] = text.mean(text.vqa_hit(p, g) for p, g, _ in closed)
    return out


def compute_iou(box1: Sequence[float], box2: Sequence[float]) -> float:
    """``eval_utils.computeIoU``: boxes ``[x1, y1, x2, y2]``, intersection and areas with +1
    (pixel-inclusive), no clamp for inverted boxes."""
    x1, y1, x2, y2 = box1
    x3, y3, x4, y4 = box2
    inter = max(0, min(x2, x4) - max(x1, x3) + 1) * max(0, min(y2, y4) - max(y1, y3) + 1)
    area1 = (x2 - x1 + 1) * (y2 - y1 + 1)
    area2 = (x4 - x3 + 1) * (y4 - y3 + 1)
    return inter / (area1 + area2 - inter)


def rec(
    predictions: Sequence[str],
    gt_boxes: np.ndarray,
    image_wh: np.ndarray,
    res: float = 100.0,
) -> dict[str, float]:
    """``eval_ref.py`` on one dataset: predictions (raw decoded answers), ground-truth pixel
    boxes (N, 4) ``[x, y, x + w, y + h]`` and image sizes (N, 2) ``(W, H)`` -> ``miou``,
    ``acc`` (IoU > 0.5) and ``valid`` (the fraction of answers that parse as a box)."""
    from radjax.papers.uni_med.data import parse_box

    gt_boxes, image_wh = np.asarray(gt_boxes, np.float64), np.asarray(image_wh, np.float64)
    if not len(predictions) == len(gt_boxes) == len(image_wh):
        raise ValueError(
            f"{len(predictions)} predictions, {len(gt_boxes)} boxes, {len(image_wh)} sizes"
        )
    ious, parsed = [], 0
    for answer, gt, (width, height) in zip(predictions, gt_boxes, image_wh):
        grid = parse_box(answer)
        if grid is None:
            ious.append(0.0)
            continue
        parsed += 1
        scale = (width, height, width, height)
        pred = [v / res * s for v, s in zip(grid, scale)]
        ious.append(compute_iou(pred, gt.tolist()))
    ious = np.asarray(ious)
    return {
        "miou": float(ious.mean()),
        "acc": float((ious > 0.5).mean()),
        "valid": parsed / len(ious),
    }


def identify(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``eval_identify.py``: mean BLEU-1..4, token F1, exact normalised match ``acc``."""
    text.check_pairs(predictions, references)
    preds = [p.lower().replace("<unk>", "").strip() for p in predictions]
    bleu = [text.cumulative_bleu(p, g) for p, g in zip(preds, references)]
    out = {k: text.mean(b[k] for b in bleu) for k in ("bleu1", "bleu2", "bleu3", "bleu4")}
    out["f1"] = text.mean(text.token_f1(p, g)[0] for p, g in zip(preds, references))
    out["acc"] = text.mean(
        float(text.normalize_answer(g) == text.normalize_answer(p))
        for p, g in zip(preds, references)
    )
    return out


def cls_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """``eval_cls.py``: mean exact match of ``normalize_word`` texts."""
    text.check_pairs(predictions, references)
    return text.mean(
        float(text.normalize_answer(g) == text.normalize_answer(p.lower().replace("<unk>", "")))
        for p, g in zip(predictions, references)
    )


def report_metrics(
    predictions: Sequence[str], references: Sequence[str], with_meteor: bool = True
) -> dict[str, float]:
    """Uni-Med report metrics. Deviations (offline, no Java): corpus BLEU-4 from sacrebleu
    instead of pycocoevalcap ``Bleu(4)``; nltk METEOR instead of the Java METEOR 1.5;
    rouge-score instead of the ``rouge`` package for ROUGE-1/2/L F; token F1 as for VQA.
    Pairs whose reference or prediction is empty are dropped first, as eval_caption.py does
    (``count`` = the pairs scored)."""
    text.check_pairs(predictions, references)
    pairs = [(p, r) for p, r in zip(predictions, references) if p and r]
    out: dict[str, float] = {"count": float(len(pairs))}
    if not pairs:
        return out
    predictions, references = [p for p, _ in pairs], [r for _, r in pairs]
    rs = [text.rouge(p, r) for p, r in pairs]
    out.update(
        {
            "bleu4": text.corpus_bleu(predictions, references),
            **{k: text.mean(x[k]["fmeasure"] for x in rs) for k in ("rouge1", "rouge2", "rougeL")},
            "f1": text.mean(text.token_f1(p, r)[0] for p, r in pairs),
        }
    )
    if with_meteor:
        out["meteor"] = text.mean(text.meteor(p, r) for p, r in pairs)
    return out


# ----------------------------------------------------------------------------- decoding


def decode_generated(tokens: np.ndarray, tokenizer, eos_token_id: int) -> list[str]:
    """``UniMedBase.generate``'s post-processing of (N, T) generated ids: cut at the first EOS
    (its ``split(eos_token)[0]``), a leading id 0 dropped, decode skipping special tokens,
    ``<s>`` removed, the text after the last ``[/INST]``, stripped."""
    out = []
    for row in np.asarray(tokens):
        row = until_eos(row, eos_token_id)
        if len(row) and row[0] == 0:
            row = row[1:]
        answer = tokenizer.decode(row.tolist(), skip_special_tokens=True)
        if tokenizer.bos_token:
            answer = answer.replace(tokenizer.bos_token, "")
        out.append(answer.split("[/INST]")[-1].strip())
    return out


# ----------------------------------------------------------------------------- report


def _task_metrics(task: str, preds, refs, closed, boxes, wh, meteor: bool) -> dict[str, float]:
    if task == "vqa":
        scores = vqa(preds, refs, ["CLOSED" if c else "OPEN" for c in closed])
        out = {f"{sub}_{k}": v for sub, block in scores.items() for k, v in block.items()}
        out["closed_count"] = float(np.sum(closed))
        return out
    if task == "refer":
        return rec(preds, boxes, wh)
    if task == "identify":
        return identify(preds, refs)
    if task == "caption":
        return report_metrics(
            [p.lower().replace("<unk>", "").strip() for p in preds], refs, with_meteor=meteor
        )
    if task == "cls":
        return {"accuracy": cls_accuracy(preds, refs)}
    raise ValueError(f"Uni-Med task {task!r} has no evaluation")


def uni_med_report(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    tasks: Sequence[str],
    closed: np.ndarray,
    boxes: np.ndarray,
    image_wh: np.ndarray,
    routing: np.ndarray | None = None,
    baseline: Mapping[str, Any] | None = None,
    meteor: bool = False,
) -> dict[str, Any]:
    """Metrics per task as ``"<task>/<metric>"`` (``"<task>/count"`` the samples), the
    baselines as ``"baseline/<task>/<metric>"`` (``baseline``: ``{task: answer}``, with
    ``"vqa_open"`` / ``"vqa_closed"`` for the two VQA answer types; REC's entry is a box string
    on the 0-100 grid, e.g. a fixed centre box), ``"<task>/routing_e<k>"``: the mean routing
    weight of expert k over the task's samples (``routing`` (N, E), each sample's token-mean),
    and ``"samples/<task>"``: a few (prediction, reference, row) triples at rows spread over
    the task's rows (``radjax.metrics.samples.spread_samples``)."""
    n = len(predictions)
    if not n == len(references) == len(tasks):
        raise ValueError(f"{n} predictions, {len(references)} references, {len(tasks)} tasks")
    closed, boxes, image_wh = np.asarray(closed, bool), np.asarray(boxes), np.asarray(image_wh)
    rows: dict[str, list[int]] = collections.defaultdict(list)
    for i, task in enumerate(tasks):
        rows[task].append(i)
    out: dict[str, Any] = {}
    for task, idx in sorted(rows.items()):
        preds = [predictions[i] for i in idx]
        refs = [references[i] for i in idx]
        args = (closed[idx], boxes[idx], image_wh[idx], meteor)
        out[f"{task}/count"] = len(idx)
        out.update({f"{task}/{k}": v for k, v in _task_metrics(task, preds, refs, *args).items()})
        if baseline:
            if task == "vqa":
                constant = [
                    baseline.get("vqa_closed" if c else "vqa_open", "") for c in closed[idx]
                ]
            else:
                constant = [baseline.get(task, "")] * len(idx)
            out.update(
                {
                    f"baseline/{task}/{k}": v
                    for k, v in _task_metrics(task, constant, refs, *args).items()
                }
            )
        if routing is not None:
            for k, w in enumerate(np.asarray(routing)[idx].mean(axis=0)):
                out[f"{task}/routing_e{k}"] = float(w)
        out[f"samples/{task}"] = spread_samples(preds, refs, SAMPLES_PER_TASK)
    return out
