"""Generation samples for reports: a few (prediction, reference) pairs spread over a split."""

from __future__ import annotations

from collections.abc import Sequence


def sample_rows(rows: int, count: int) -> list[int]:
    """``count`` row positions spread evenly over ``rows`` (all of them when fewer)."""
    if rows <= count:
        return list(range(rows))
    return sorted({round(k * (rows - 1) / (count - 1)) for k in range(count)})


def spread_samples(
    predictions: Sequence[str], references: Sequence[str], count: int
) -> list[dict[str, str | int]]:
    """``[{"prediction", "reference", "row"}]`` at ``sample_rows``: different studies rather
    than a split's first few (``row`` = the position in the given order)."""
    return [
        {"prediction": predictions[i], "reference": references[i], "row": i}
        for i in sample_rows(len(predictions), count)
    ]
