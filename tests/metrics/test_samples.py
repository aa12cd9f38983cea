"""Report samples are spread over the split, not its first rows."""

from radjax.metrics.samples import sample_rows, spread_samples


def test_rows_are_spread_evenly_and_cover_both_ends():
    assert sample_rows(24, 3) == [0, 12, 23]
    assert sample_rows(10, 4) == [0, 3, 6, 9]
    assert sample_rows(2, 3) == [0, 1]
    assert sample_rows(0, 3) == []


def test_samples_carry_their_row():
    preds, refs = list("abcde"), list("ABCDE")
    assert spread_samples(preds, refs, 2) == [
        {"prediction": "a", "reference": "A", "row": 0},
        {"prediction": "e", "reference": "E", "row": 4},
    ]
