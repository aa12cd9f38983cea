"""M3D's report metrics (``eval_caption.py``): per-sample BLEU-1, ROUGE-1 F, METEOR and
BERTScore F1, averaged."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from radjax.metrics import text


def bleu1(prediction: str, reference: str) -> float:
    """M3D BLEU-1: HF ``evaluate`` ``bleu`` with ``max_order=1``, one sample at a time.

    For one reference and order 1 that is exactly nltk BLEU-1 on 13a tokens (case kept):
    clipped unigram precision times the brevity penalty exp(1 - r/c) when c < r.
    """
    return text.sentence_bleu(
        text.tokens_13a(prediction), [text.tokens_13a(reference)], (1, 0, 0, 0)
    )


def report_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    bertscore_model: str | None = None,
    num_layers: int = 6,
    with_meteor: bool = True,
) -> dict[str, float]:
    """M3D ``eval_caption.py``: per-sample BLEU-1, ROUGE-1 F (no stemmer), METEOR and
    BERTScore F1, averaged. Deviation: BERTScore model is local (MiniLM by default)."""
    text.check_pairs(predictions, references)
    out = {
        "bleu1": text.mean(bleu1(p, r) for p, r in zip(predictions, references)),
        "rouge1": text.mean(
            text.rouge(p, r, ("rouge1",))["rouge1"]["fmeasure"]
            for p, r in zip(predictions, references)
        ),
        "bertscore_f1": float(
            np.mean(text.bertscore(predictions, references, bertscore_model, num_layers)["f1"])
        ),
    }
    if with_meteor:
        out["meteor"] = text.mean(text.meteor(p, r) for p, r in zip(predictions, references))
    return out
