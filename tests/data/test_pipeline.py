"""The shared grain pipeline: determinism, host slicing, skip-and-count, padded eval batches."""

import types

import grain
import ml_collections
import numpy as np
import pytest

from radjax.data import pipeline, readers
from radjax.data.errors import BadRecordError


def _format(bad=()):
    """A minimal data-format module over integer records; ids in ``bad`` fail to load."""

    def make_source(cfg, split):
        return grain.MapDataset.source(list(range(10 if split == "train" else 7)))

    def load_example(record, cfg, rng):
        if record in bad:
            raise BadRecordError(f"case_{record}.npy", "image_data_path", "corrupt")
        jitter = 0.0 if rng is None else rng.uniform()
        return {"x": np.array([record, jitter], np.float32)}

    return types.SimpleNamespace(make_source=make_source, load_example=load_example)


def _cfg(skip=False):
    return ml_collections.ConfigDict(dict(root="/data", skip_bad_records=skip, num_threads=1))


def _take(it, n):
    return [next(it)["x"] for _ in range(n)]


def test_training_batches_are_seeded_and_resumable():
    ds, _ = pipeline.train_dataset(
        _format(), _cfg(), global_batch=4, seed=3, process_index=0, process_count=1
    )
    it = iter(ds)
    first = _take(it, 2)
    state = it.get_state()
    later = _take(it, 3)
    again = iter(ds)
    np.testing.assert_array_equal(np.stack(first), np.stack(_take(again, 2)))
    again.set_state(state)
    np.testing.assert_array_equal(np.stack(later), np.stack(_take(again, 3)))
    # a different seed gives a different order
    other, _ = pipeline.train_dataset(
        _format(), _cfg(), global_batch=4, seed=4, process_index=0, process_count=1
    )
    assert not np.array_equal(np.stack(first), np.stack(_take(iter(other), 2)))


def test_hosts_see_disjoint_records():
    seen = []
    for host in range(2):
        ds, _ = pipeline.train_dataset(
            _format(), _cfg(), global_batch=4, seed=0, process_index=host, process_count=2
        )
        batch = next(iter(ds))["x"]
        assert batch.shape == (2, 2)  # per-host share of the global batch
        seen.append(set(batch[:, 0].astype(int)))
    assert not seen[0] & seen[1]


def test_bad_record_raises_naming_file_and_field_unless_skipping():
    ds, _ = pipeline.train_dataset(
        _format(bad={0, 1, 2, 3, 4, 5, 6, 7, 8}),
        _cfg(),
        global_batch=1,
        seed=0,
        process_index=0,
        process_count=1,
    )
    with pytest.raises(Exception, match=r"case_\d\.npy.*image_data_path"):
        _take(iter(ds), 3)
    ds, counter = pipeline.train_dataset(
        _format(bad={2, 5}),
        _cfg(skip=True),
        global_batch=2,
        seed=0,
        process_index=0,
        process_count=1,
    )
    xs = np.concatenate(_take(iter(ds), 8))  # 16 examples drawn from two epochs
    assert not {2, 5} & set(xs[:, 0].astype(int))
    assert counter.count >= 2


def test_eval_batches_cover_split_once_with_padding_mask():
    batches, counter = pipeline.eval_batches(
        _format(bad={3}), _cfg(skip=True), "test", batch_size=4, process_index=0, process_count=1
    )
    batches = list(batches)
    assert [b["x"].shape for b in batches] == [(4, 2), (4, 2)]
    valid = np.concatenate([b["valid"] for b in batches])
    ids = np.concatenate([b["x"][:, 0] for b in batches])[valid].astype(int)
    assert list(ids) == [0, 1, 2, 4, 5, 6] and counter.count == 1
    # deterministic path: rng=None gives no jitter
    assert np.all(np.concatenate([b["x"][:, 1] for b in batches]) == 0)


def _self_batching_format():
    """A format that batches itself (as RadFM): batch i of process p holds record 2i + p;
    records >= 2 do not exist, so later batches have no valid row."""

    def batches(source, cfg, *, seed, train, process_index, process_count):
        def batch(i):
            record = process_count * i + process_index
            return {
                "x": np.array([record], np.float32),
                "valid": np.array([record < 2]),
                "skipped": np.asarray(0, np.int32),
            }

        return grain.MapDataset.range(3).map(batch).to_iter_dataset()

    return types.SimpleNamespace(
        make_source=lambda cfg, split: grain.MapDataset.source([0]), batches=batches
    )


def test_self_batching_formats_keep_empty_batches_only_on_several_processes():
    fmt = _self_batching_format()
    alone, _ = pipeline.eval_batches(
        fmt, _cfg(), "test", batch_size=1, process_index=0, process_count=1
    )
    assert [b["x"].tolist() for b in alone] == [[0.0], [1.0]]  # [2.0] dropped
    shares = [
        list(
            pipeline.eval_batches(
                fmt, _cfg(), "test", batch_size=2, process_index=p, process_count=2
            )[0]
        )
        for p in (0, 1)
    ]
    assert [len(s) for s in shares] == [3, 3]  # every process steps together
    assert [b["valid"].tolist() for b in shares[1]] == [[True], [False], [False]]
    assert [b["x"].tolist() for b in shares[0]] == [[0.0], [2.0], [4.0]]
    assert "skipped" not in shares[0][0]


def _nan_format(root):
    """A format over real ``.npy`` files read by ``read_npy``; records 1 and 4 hold NaN."""

    def make_source(cfg, split):
        return grain.MapDataset.source(list(range(6)))

    def load_example(record, cfg, rng):
        path = f"{root}/{record}.npy"
        return {"x": readers.read_npy(path, nonfinite=readers.nonfinite_policy(cfg))}

    for record in range(6):
        np.save(root / f"{record}.npy", np.full((3,), np.nan if record in (1, 4) else record, "f4"))
    return types.SimpleNamespace(make_source=make_source, load_example=load_example)


def test_nonfinite_voxels_rejected_by_default_or_zeroed_and_counted(tmp_path):
    fmt = _nan_format(tmp_path)
    batches, _ = pipeline.eval_batches(
        fmt, _cfg(), "test", batch_size=3, process_index=0, process_count=1
    )
    with pytest.raises(BadRecordError, match=r"1\.npy: 3 non-finite"):
        list(batches)
    cfg = _cfg()
    cfg.nonfinite = "zero"
    batches, counter = pipeline.eval_batches(
        fmt, cfg, "test", batch_size=4, process_index=0, process_count=1
    )
    batches = list(batches)
    assert set(batches[0]) == {"x", "valid"}  # the per-row flag does not reach the model
    xs = np.concatenate([b["x"] for b in batches])[np.concatenate([b["valid"] for b in batches])]
    np.testing.assert_array_equal(xs[:, 0], [0, 0, 2, 3, 0, 5])
    assert counter.repaired == 2 and counter.count == 0
    ds, counter = pipeline.train_dataset(
        fmt, cfg, global_batch=3, seed=0, process_index=0, process_count=1
    )
    it = iter(ds)
    assert set(next(it)) == {"x"}
    for _ in range(3):  # 12 draws, two epochs: both NaN files drawn twice
        next(it)
    assert counter.repaired == 4
