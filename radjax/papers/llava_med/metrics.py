"""LLaVA-Med's VQA evaluation (``run_eval_batch.evaluate``): closed/open accuracy, token
F1/precision/recall, its "exact match" and BLEU on normalised answers; ``run_eval.py``'s
closed accuracy before and after PR #35; the report the evaluation writes (``vqa_report``)
and its breakdown by question kind (``by_question_kind``)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

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


def _norm(s: str) -> str:
    return text.normalize_answer(s.lower())


def closed_accuracy_run_eval(
    predictions: Sequence[str], references: Sequence[str], *, fixed: bool = True
) -> float:
    """``llava/eval/run_eval.py``'s yes/no accuracy on CLOSED items (normalised strings):
    a hit needs a ``'yes'`` or ``'no'`` substring in the prediction and the reference as a
    substring. ``fixed`` (after PR #35, b9a98a7): every other item counts 0. Before the fix a
    prediction holding yes/no but not the reference appended nothing, so it left both the
    numerator and the denominator (published numbers before the fix are inflated)."""
    hits = []
    for p, g in zip(predictions, references):
        p, g = _norm(p), _norm(g)
        if "yes" in p or "no" in p:
            if g in p:
                hits.append(1.0)
            elif fixed:
                hits.append(0.0)
        else:
            hits.append(0.0)
    return float(np.mean(hits)) if hits else 0.0


def vqa_report(
    predictions: Sequence[str],
    references: Sequence[str],
    closed: Sequence[bool],
) -> dict[str, float]:
    """LLaVA-Med's VQA metrics as ``"closed/<metric>"`` / ``"open/<metric>"``:

    closed: ``accuracy`` (``run_eval_batch.py``: reference substring of the prediction, the
      paper's numbers), ``accuracy_pr35`` / ``accuracy_pre_pr35`` (``run_eval.py`` after /
      before PR #35), ``recall``, ``count``;
    open: ``recall`` (the paper's open metric), ``accuracy`` (reference substring), ``f1``,
      ``precision``, ``exact_match``, ``bleu``, ``bleu_1..3``, ``count``;
    both: ``distinct`` (distinct predictions over items, radjax's: a model that answers
      every question alike reads nothing).
    """
    types = ["CLOSED" if c else "OPEN" for c in closed]
    m = vqa(predictions, references, types)
    c_pred = [p for p, c in zip(predictions, closed) if c]
    c_ref = [r for r, c in zip(references, closed) if c]
    o_pred = [p for p, c in zip(predictions, closed) if not c]
    out = {
        "closed/accuracy": m["closed_acc"],
        "closed/accuracy_pr35": closed_accuracy_run_eval(c_pred, c_ref, fixed=True),
        "closed/accuracy_pre_pr35": closed_accuracy_run_eval(c_pred, c_ref, fixed=False),
        "closed/recall": m["recall_closed"],
        "closed/count": m["num_closed"],
        "closed/distinct": _distinct(c_pred),
        "open/recall": m["open_recall"],
        "open/accuracy": m["open_acc"],
        "open/count": m["num_open"],
        "open/distinct": _distinct(o_pred),
    }
    for k in ("f1", "precision", "exact_match", "bleu", "bleu_1", "bleu_2", "bleu_3"):
        out[f"open/{k}"] = m[k]
    return out


def _distinct(predictions: Sequence[str]) -> float:
    return len(set(predictions)) / len(predictions) if predictions else 0.0


def by_question_kind(
    predictions: Sequence[str],
    references: Sequence[str],
    questions: Sequence[str],
    closed: Sequence[bool],
    kinds: Sequence[tuple[str, str]],
) -> dict[str, float]:
    """Scores per question kind (radjax's breakdown, not the paper's): ``kinds`` = ((name,
    regex), ...); an item is of the first kind whose regex ``re.search``-es its question
    (case-insensitive, ``<image>`` removed). For each kind with items: ``"<name>/accuracy"``
    (the reference a substring of the normalised prediction: ``run_eval_batch``'s closed /
    open accuracy), ``"<name>/recall"`` (token recall, the paper's open metric),
    ``"<name>/distinct"`` and ``"<name>/count"``; ``closed`` is unused (kept so the
    signature matches ``vqa_report``'s)."""
    text.check_pairs(predictions, references)
    patterns = [(name, re.compile(rx, re.IGNORECASE)) for name, rx in kinds]
    groups: dict[str, list[tuple[str, str]]] = {name: [] for name, _ in kinds}
    for p, g, q in zip(predictions, references, questions):
        q = q.replace("<image>", "").strip()
        name = next((n for n, rx in patterns if rx.search(q)), None)
        if name is not None:
            groups[name].append((p, g))
    out = {}
    for name, rows in groups.items():
        if not rows:
            continue
        norm = [(_norm(p), _norm(g)) for p, g in rows]
        out[f"{name}/accuracy"] = text.mean(float(g in p) for p, g in norm)
        out[f"{name}/recall"] = text.mean(text.token_f1(p, g)[2] for p, g in norm)
        out[f"{name}/distinct"] = _distinct([p for p, _ in rows])
        out[f"{name}/count"] = float(len(rows))
    return out
