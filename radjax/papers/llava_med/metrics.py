"""LLaVA-Med's VQA evaluation (``run_eval_batch.evaluate``): closed/open accuracy, token
F1/precision/recall, its "exact match" and BLEU on normalised answers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from radjax.metrics import text


def bleu(prediction: str, reference: str, normalize: bool = True) -> dict[str, float]:
    """LLaVA-Med VQA BLEU on normalised answers: nltk default (uniform 4-gram) and the
    single-order variants ``weights=(1,0,0,0)``, ``(0,1,0,0)``, ``(0,0,1,0)``; no smoothing."""
    if normalize:
        prediction, reference = (
            text.normalize_answer(prediction.lower()),
            text.normalize_answer(reference.lower()),
        )
    hyp, ref = prediction.lower().split(), reference.lower().split()
    return {
        "bleu": text.sentence_bleu(hyp, [ref]),
        "bleu_1": text.sentence_bleu(hyp, [ref], (1, 0, 0, 0)),
        "bleu_2": text.sentence_bleu(hyp, [ref], (0, 1, 0, 0)),
        "bleu_3": text.sentence_bleu(hyp, [ref], (0, 0, 1, 0)),
    }


def exact_match(prediction: str, reference: str) -> float:
    """LLaVA-Med ``calculate_exactmatch``: distinct reference words found in the prediction,
    divided by the prediction's word count (not a true exact match; kept as published)."""
    pred = Counter(text.whitespace_tokens(text.normalize_answer(prediction)))
    ref = Counter(text.whitespace_tokens(text.normalize_answer(reference)))
    total = sum(pred.values())
    return sum(1 for w in ref if w in pred) / total if total else 0.0


def vqa(
    predictions: Sequence[str], references: Sequence[str], answer_types: Sequence[str]
) -> dict[str, float]:
    """LLaVA-Med ``run_eval_batch.evaluate`` (after PR #35: every item counts).

    ``answer_types`` are ``"OPEN"``/``"CLOSED"``. CLOSED: ``closed_acc`` (gt substring of pred)
    and ``recall_closed``. OPEN: ``open_acc`` (substring hit), ``open_recall`` (the paper's
    open metric), ``f1``, ``precision``, ``exact_match``, ``bleu``, ``bleu_1..3``. Fractions in
    [0, 1]; an empty group gives 0 as the original does for accuracies.
    """
    text.check_pairs(predictions, references)
    if len(answer_types) != len(predictions):
        raise ValueError(
            f"answer_types has {len(answer_types)} items, predictions {len(predictions)}"
        )
    rows = {"open": [], "closed": []}
    for p, g, t in zip(predictions, references, answer_types):
        t = t.upper()
        if t not in ("OPEN", "CLOSED"):
            raise ValueError(f"answer_type must be OPEN or CLOSED, got {t!r}")
        p, g = text.normalize_answer(p.lower()), text.normalize_answer(g.lower())
        rows[t.lower()].append((p, g))
    out = {"num_open": float(len(rows["open"])), "num_closed": float(len(rows["closed"]))}
    op = rows["open"]
    # as in the original, F1 and exact match normalise the already-normalised strings again
    f1s = [text.token_f1(p, g) for p, g in op]
    bleus = [bleu(p, g, normalize=False) for p, g in op]
    out.update(
        open_acc=text.mean(float(g in p) for p, g in op),
        exact_match=text.mean(exact_match(p, g) for p, g in op),
        f1=text.mean(f[0] for f in f1s),
        precision=text.mean(f[1] for f in f1s),
        open_recall=text.mean(f[2] for f in f1s),
        **{k: text.mean(b[k] for b in bleus) for k in ("bleu", "bleu_1", "bleu_2", "bleu_3")},
        closed_acc=text.mean(float(g in p) for p, g in rows["closed"]),
        recall_closed=text.mean(text.token_f1(p, g)[2] for p, g in rows["closed"]),
    )
    return out
