"""Uni-Med's evaluation: VQA (``eval_vqa.evaluate_open_and_closed``) and report metrics."""

from __future__ import annotations

from collections.abc import Sequence

from radjax.metrics import text


def vqa(
    predictions: Sequence[str], references: Sequence[str], answer_types: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Uni-Med ``eval_vqa.evaluate_open_and_closed``: per subset (open/closed/all) mean
    BLEU-1..4 and token F1; closed accuracy (normalised gt substring of normalised pred).
    Predictions are lower-cased and stripped first, as its generation loop does."""
    text.check_pairs(predictions, references)
    items = [
        (p.lower().strip(), g, t.upper()) for p, g, t in zip(predictions, references, answer_types)
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


def report_metrics(
    predictions: Sequence[str], references: Sequence[str], with_meteor: bool = True
) -> dict[str, float]:
    """Uni-Med report metrics. Deviations (offline, no Java): corpus BLEU-4 from sacrebleu
    instead of pycocoevalcap ``Bleu(4)``; nltk METEOR instead of the Java METEOR 1.5;
    rouge-score instead of the ``rouge`` package for ROUGE-1/2/L F; token F1 as for VQA."""
    text.check_pairs(predictions, references)
    rs = [text.rouge(p, r) for p, r in zip(predictions, references)]
    out = {
        "bleu4": text.corpus_bleu(predictions, references),
        **{k: text.mean(x[k]["fmeasure"] for x in rs) for k in ("rouge1", "rouge2", "rougeL")},
        "f1": text.mean(text.token_f1(p, r)[0] for p, r in zip(predictions, references)),
    }
    if with_meteor:
        out["meteor"] = text.mean(text.meteor(p, r) for p, r in zip(predictions, references))
    return out
