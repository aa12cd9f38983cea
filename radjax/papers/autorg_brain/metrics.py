"""AutoRG-Brain's report metrics (``llm_metric`` of its evaluation code): sentence BLEU-1,
unigram-set recall (its "ROUGE-1") and BERTScore F1, averaged over the reports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from radjax.metrics import text


def bleu1(prediction: str, reference: str) -> float:
    """AutoRG-Brain BLEU-1: nltk, weights (1,0,0,0), lower-cased whitespace tokens."""
    return text.sentence_bleu(
        text.whitespace_tokens(prediction), [text.whitespace_tokens(reference)], (1, 0, 0, 0)
    )


def unigram_recall(prediction: str, reference: str) -> float:
    """AutoRG-Brain "ROUGE-1": recall of the reference's unigram *set*,
    |set(pred) ∩ set(ref)| / |set(ref)| on lower-cased whitespace tokens (0 for an empty ref)."""
    ref = set(text.whitespace_tokens(reference))
    if not ref:
        return 0.0
    return len(ref & set(text.whitespace_tokens(prediction))) / len(ref)


def report_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    bertscore_model: str | None = None,
    num_layers: int = 6,
) -> dict[str, float]:
    """AutoRG-Brain ``llm_metric``: BLEU-1, unigram-set recall ("ROUGE-1"), BERTScore F1, averaged."""
    text.check_pairs(predictions, references)
    return {
        "bleu1": text.mean(bleu1(p, r) for p, r in zip(predictions, references)),
        "rouge1": text.mean(unigram_recall(p, r) for p, r in zip(predictions, references)),
        "bertscore_f1": float(
            np.mean(text.bertscore(predictions, references, bertscore_model, num_layers)["f1"])
        ),
    }
