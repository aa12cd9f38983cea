"""RadFM's evaluation (paper §4; the repository ships no metric code): per task, on decoded
greedy answers.

* Classification-like tasks (``modality``, ``diagnosis_open``, ``diagnosis_closed``):
  accuracy of normalised exact match (``metrics.text.normalize_answer``) and macro F1 over
  the reference answers' classes (scikit-learn).
* Generation tasks (``vqa``, ``caption`` = report generation, ``rationale``): mean sentence
  BLEU-1 and BLEU-4 (nltk, cumulative weights, no smoothing), corpus BLEU-4 (sacrebleu),
  ROUGE-1/2/L F-measure (rouge-score), medical-entity precision / recall
  (``radfm_entity_scores``: ``radjax.metrics.entities`` lexicon matching in place of
  scispaCy + UMLS) and, when asked, BERTScore F1 (bert-score with the local MiniLM);
  ``distinct``, the fraction of distinct generations (1 = every study got its own text, 1 / N =
  one text for all); for ``caption`` and ``rationale`` also ``disorder_named``, the fraction of
  answers that name exactly the reference's disorders (``named_disorders``; none for a normal
  study), over the phantom disorder vocabulary (``radjax.data.phantoms.anatomy.DISORDERS``).

``radfm_report`` also scores a baseline that answers every question of a task with that
task's most frequent training answer, so a trained model can be compared with it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from radjax.data.phantoms.anatomy import DISORDERS
from radjax.metrics import entities, text
from radjax.metrics.samples import spread_samples

CLASSIFICATION = ("modality", "diagnosis_open", "diagnosis_closed")
GENERATION = ("vqa", "caption", "rationale")
NAMING = ("caption", "rationale")  # tasks whose answers name the diagnosis
DISORDER_NAMES = tuple(d.name for d in DISORDERS[1:])  # "Normal" is the absence of a name
SAMPLES_PER_TASK = 3


def radfm_entity_scores(
    prediction: str, reference: str, matcher: entities.EntityMatcher | None = None
) -> dict[str, float]:
    """RadFM-style UMLS precision/recall with an offline lexicon: entity *sets* of prediction
    and reference; precision = |P∩R|/|P|, recall = |P∩R|/|R|, f1 their harmonic mean
    (0 when the denominator set is empty). RadFM used scispaCy + the UMLS linker instead."""
    m = matcher or entities.EntityMatcher.default()
    p, r = m.entities(prediction), m.entities(reference)
    both = len(p & r)
    prec = both / len(p) if p else 0.0
    rec = both / len(r) if r else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": prec, "recall": rec, "f1": f1}


def named_disorders(answer: str, names: Sequence[str] = DISORDER_NAMES) -> frozenset[str]:
    """The ``names`` that occur in ``answer`` as whole words, case and punctuation ignored."""
    words = _words(answer)
    return frozenset(n for n in names if _words(n) in words)


def _words(s: str) -> str:
    """ " a b c ": lower-cased alphanumeric runs, space-delimited (for whole-word search)."""
    return " " + " ".join(re.findall(r"[a-z0-9]+", s.lower())) + " "


def disorder_named(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions naming exactly their reference's disorders (both none: a hit)."""
    hits = [named_disorders(p) == named_disorders(r) for p, r in zip(predictions, references)]
    return float(np.mean(hits))


def distinct_fraction(predictions: Sequence[str]) -> float:
    """Distinct strings / count: 1 when every answer differs, 1 / N when all are one."""
    return len(set(predictions)) / len(predictions)


def _classification(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    from sklearn.metrics import f1_score

    pred = [text.normalize_answer(p) for p in predictions]
    ref = [text.normalize_answer(r) for r in references]
    classes = sorted(set(ref))
    return {
        "accuracy": float(np.mean([p == r for p, r in zip(pred, ref)])),
        "macro_f1": float(f1_score(ref, pred, labels=classes, average="macro", zero_division=0)),
    }


def _generation(
    predictions: Sequence[str], references: Sequence[str], bertscore: bool
) -> dict[str, float]:
    bleu = [text.cumulative_bleu(p, r) for p, r in zip(predictions, references)]
    rouge = [text.rouge(p, r) for p, r in zip(predictions, references)]
    entities = [radfm_entity_scores(p, r) for p, r in zip(predictions, references)]
    out = {
        "bleu1": float(np.mean([b["bleu1"] for b in bleu])),
        "bleu4": float(np.mean([b["bleu4"] for b in bleu])),
        "corpus_bleu4": text.corpus_bleu(predictions, references),
        **{
            f"{k}_f": float(np.mean([r[k]["fmeasure"] for r in rouge]))
            for k in ("rouge1", "rouge2", "rougeL")
        },
        "entity_precision": float(np.mean([e["precision"] for e in entities])),
        "entity_recall": float(np.mean([e["recall"] for e in entities])),
        "distinct": distinct_fraction(predictions),
    }
    if bertscore:
        out["bertscore_f1"] = float(np.mean(text.bertscore(predictions, references)["f1"]))
    return out


def task_metrics(
    task: str, predictions: Sequence[str], references: Sequence[str], *, bertscore: bool = False
) -> dict[str, float]:
    """The metrics of one task (see the module docstring)."""
    if task in CLASSIFICATION:
        return _classification(predictions, references)
    if task in GENERATION:
        out = _generation(predictions, references, bertscore)
        if task in NAMING:
            out["disorder_named"] = disorder_named(predictions, references)
        return out
    raise ValueError(f"RadFM task {task!r} is not one of {CLASSIFICATION + GENERATION}")


def radfm_report(
    predictions: Sequence[str],
    references: Sequence[str],
    tasks: Sequence[str],
    *,
    baseline: Mapping[str, str] | None = None,
    bertscore: bool = False,
) -> dict[str, Any]:
    """Metrics per task as ``"<task>/<metric>"`` (and ``"baseline/<task>/<metric>"`` for the
    most-frequent-answer baseline), ``"<task>/count"``, and ``"samples/<task>"``: a few
    (prediction, reference) pairs at rows spread evenly over the task's rows (``spread_samples``;
    ``row`` = the position among the task's rows in evaluation order), so the report shows
    different studies rather than the split's first few."""
    if not len(predictions) == len(references) == len(tasks):
        raise ValueError(
            f"{len(predictions)} predictions, {len(references)} references and {len(tasks)} tasks"
        )
    rows: dict[str, list[int]] = defaultdict(list)
    for i, task in enumerate(tasks):
        rows[task].append(i)
    out: dict[str, Any] = {}
    for task, idx in sorted(rows.items()):
        preds, refs = [predictions[i] for i in idx], [references[i] for i in idx]
        out[f"{task}/count"] = len(idx)
        out.update(
            {
                f"{task}/{k}": v
                for k, v in task_metrics(task, preds, refs, bertscore=bertscore).items()
            }
        )
        if baseline and task in baseline:
            constant = [baseline[task]] * len(idx)
            out.update(
                {
                    f"baseline/{task}/{k}": v
                    for k, v in task_metrics(task, constant, refs, bertscore=bertscore).items()
                }
            )
        out[f"samples/{task}"] = spread_samples(preds, refs, SAMPLES_PER_TASK)
    return out
