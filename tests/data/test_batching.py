"""The bucketed multi-process batcher on a format-agnostic toy source.

Records are dicts ``{"n": i, "size": 2 | 3}``: bucket = size, a loaded row is
``x`` f32 (size,) = i + a draw from its rng, and a bucket's batches stack rows of that size.
"""

import pickle

import ml_collections
import numpy as np
import pytest

from radjax.data import batching
from radjax.data.errors import BadRecordError

ROWS = {2: 2, 3: 1}  # rows per process per bucket


def _load(record, data_cfg, rng):
    if record.get("bad"):
        raise BadRecordError(f"toy.csv: row {record['n']}", "x", "unreadable")
    noise = 0.0 if rng is None else rng.uniform()
    return {"x": np.full(record["size"], record["n"] + noise, np.float32), "n": record["n"]}


def _collate(examples, records, size):
    # the width comes from the global batch's records, so every process agrees on it
    assert {r["size"] for r in records} == {size}
    return {
        "x": np.array([e["x"] for e in examples], np.float32).reshape(len(examples), size),
        "n": np.array([e["n"] for e in examples], np.int32),
    }


TOY = batching.Bucketing(
    key=lambda r: r["size"],
    rows=ROWS.__getitem__,
    load_example=_load,
    collate=_collate,
    fill={"n": -1},
)


def _source(bad=()):
    return [{"n": i, "size": 2 + i % 2, "bad": i in bad} for i in range(7)]  # 4 of 2, 3 of 3


def _cfg(**kw):
    return ml_collections.ConfigDict({"num_threads": 1, "skip_bad_records": False, **kw})


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_epoch_plan_chunks_each_bucket():
    keys = np.array([r["size"] for r in _source()])
    plan = batching.epoch_batches(keys, ROWS.__getitem__, None)
    assert [b.tolist() for b in plan] == [[0, 2], [4, 6], [1], [3], [5]]
    two = batching.epoch_batches(keys, ROWS.__getitem__, None, process_count=2)
    assert [b.tolist() for b in two] == [[0, 2, 4, 6], [1, 3], [5]]
    shuffled = batching.epoch_batches(keys, ROWS.__getitem__, np.random.default_rng(0))
    assert sorted(np.concatenate(shuffled).tolist()) == list(range(7))
    assert all(len({k for k in keys[b]}) == 1 for b in shuffled)


def test_eval_pass_pads_and_marks_valid():
    batches = list(batching.bucketed_batches(_source(), _cfg(), TOY, train=False))
    assert [b["x"].shape for b in batches] == [(2, 2)] * 2 + [(1, 3)] * 3
    assert batches[0]["n"].tolist() == [0, 2] and batches[0]["x"][0].tolist() == [0.0, 0.0]
    assert all(b["valid"].all() and int(b["skipped"]) == 0 for b in batches)


def test_two_processes_split_each_global_batch_and_agree():
    # one process with 2 x rows == two processes with rows each, draws included
    double = batching.Bucketing(**{**TOY.__dict__, "rows": lambda k: 2 * ROWS[k]})
    for train in (False, True):
        whole = list(
            _take(batching.bucketed_batches(_source(), _cfg(), double, seed=3, train=train), 3)
        )
        halves = [
            _take(
                batching.bucketed_batches(
                    _source(), _cfg(), TOY, seed=3, train=train, process_index=p, process_count=2
                ),
                3,
            )
            for p in (0, 1)
        ]
        for w, h0, h1 in zip(whole, *halves):
            assert h0["x"].shape == h1["x"].shape
            for key in ("x", "n", "valid"):
                np.testing.assert_array_equal(np.concatenate([h0[key], h1[key]]), w[key])
    # the eval tail of a short bucket: process 1 gets a batch with no valid row
    last = list(
        batching.bucketed_batches(
            _source(), _cfg(), TOY, train=False, process_index=1, process_count=2
        )
    )[-1]
    assert last["n"].tolist() == [-1] and not last["valid"].any()
    with pytest.raises(ValueError, match="process_index 2"):
        batching.bucketed_batches(_source(), _cfg(), TOY, process_index=2, process_count=2)


def test_train_stream_is_seeded_and_shuffled():
    a = _take(batching.bucketed_batches(_source(), _cfg(), TOY, seed=1), 5)
    b = _take(batching.bucketed_batches(_source(), _cfg(), TOY, seed=1), 5)
    c = _take(batching.bucketed_batches(_source(), _cfg(), TOY, seed=2), 5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["x"], y["x"])
    seen = np.concatenate([x["n"] for x in a])
    assert sorted(seen.tolist()) == list(range(7)) and seen.tolist() != list(range(7))
    assert [x["n"].tolist() for x in a] != [x["n"].tolist() for x in c]


def test_bad_records_raise_or_are_counted():
    source = _source(bad={2, 5})
    with pytest.raises(BadRecordError, match="toy.csv: row 2"):
        list(batching.bucketed_batches(source, _cfg(), TOY, train=False))
    batches = list(batching.bucketed_batches(source, _cfg(skip_bad_records=True), TOY, train=False))
    assert [int(b["skipped"]) for b in batches] == [1, 0, 0, 0, 1]
    assert batches[0]["n"].tolist() == [0, -1] and batches[0]["valid"].tolist() == [True, False]
    assert not batches[-1]["valid"].any()


def _weighted_source():
    # bucket 2: 40 records, bucket 3: 9 records (5 full batches of 2, 9 of 1 with ROWS)
    return [{"n": i, "size": 2 if i < 40 else 3} for i in range(49)]


def test_sampling_weights_set_the_bucket_frequencies():
    keys = np.array([r["size"] for r in _weighted_source()])
    weights = {2: 1.0, 3: 3.0}  # against the record counts (20 vs 9 batches an epoch)
    plan = batching.WeightedBatchPlan(
        keys, ROWS.__getitem__, weights.__getitem__, seed=0, process_count=1
    )
    np.testing.assert_allclose(plan.probabilities, [0.25, 0.75])
    batches = [plan(i) for i in range(4000)]
    share = np.mean([keys[b[0]] == 3 for b in batches])
    assert abs(share - 0.75) < 0.03  # 4000 draws: std 0.007
    assert all(len({int(k) for k in keys[b]}) == 1 for b in batches)
    # full batches only; each bucket's own stream holds its records once an epoch
    assert all(len(b) == ROWS[int(keys[b[0]])] for b in batches)
    twos = [b for b in batches if keys[b[0]] == 2][:20]  # the first epoch of bucket 2
    assert sorted(np.concatenate(twos).tolist()) == list(range(40))
    threes = [int(b[0]) for b in batches if keys[b[0]] == 3][:18]  # two epochs of bucket 3
    assert sorted(threes[:9]) == sorted(threes[9:]) == list(range(40, 49))
    assert threes[:9] != threes[9:]  # each epoch reshuffled
    # deterministic under the seed, random access (a restored iterator) equals the stream
    again = batching.WeightedBatchPlan(
        keys, ROWS.__getitem__, weights.__getitem__, seed=0, process_count=1
    )
    for i in (3999, 17, 2500, 0):
        np.testing.assert_array_equal(again(i), batches[i])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(again))(1234), batches[1234])
    other = batching.WeightedBatchPlan(
        keys, ROWS.__getitem__, weights.__getitem__, seed=1, process_count=1
    )
    assert [other(i).tolist() for i in range(40)] != [b.tolist() for b in batches[:40]]
    # a zero weight never samples the bucket; bad weights raise
    never = batching.WeightedBatchPlan(
        keys, ROWS.__getitem__, {2: 0.0, 3: 1.0}.__getitem__, seed=0, process_count=1
    )
    assert all(keys[never(i)[0]] == 3 for i in range(200))
    with pytest.raises(ValueError, match="not all 0"):
        batching.WeightedBatchPlan(keys, ROWS.__getitem__, lambda k: 0.0, seed=0, process_count=1)
    with pytest.raises(ValueError, match=">= 0"):
        batching.WeightedBatchPlan(keys, ROWS.__getitem__, lambda k: -1.0, seed=0, process_count=1)


def test_weighted_batches_through_the_batcher():
    weighted = batching.Bucketing(**{**TOY.__dict__, "weight": {2: 1.0, 3: 3.0}.__getitem__})
    source = _weighted_source()
    a = _take(batching.bucketed_batches(source, _cfg(), weighted, seed=5), 400)
    b = _take(batching.bucketed_batches(source, _cfg(), weighted, seed=5), 400)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["x"], y["x"])
    assert abs(np.mean([x["x"].shape[1] == 3 for x in a]) - 0.75) < 0.07
    # two processes split each global batch of the same weighted plan
    double = batching.Bucketing(**{**weighted.__dict__, "rows": lambda k: 2 * ROWS[k]})
    whole = _take(batching.bucketed_batches(source, _cfg(), double, seed=3), 6)
    halves = [
        _take(
            batching.bucketed_batches(
                source, _cfg(), weighted, seed=3, process_index=p, process_count=2
            ),
            6,
        )
        for p in (0, 1)
    ]
    for w, h0, h1 in zip(whole, *halves):
        np.testing.assert_array_equal(np.concatenate([h0["n"], h1["n"]]), w["n"])
    # evaluation ignores the weights: one pass, every record once
    seen = [
        n
        for x in batching.bucketed_batches(source, _cfg(), weighted, train=False)
        for n in x["n"][x["valid"]].tolist()
    ]
    assert sorted(seen) == list(range(49))
