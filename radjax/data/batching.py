"""Bucketed multi-process batching, for formats whose batches vary in shape.

A format that batches itself (its ``batches`` hook, see ``radjax.data.pipeline``) states its
choices in a ``Bucketing``: the bucket of a record (e.g. 2D or 3D), the rows per process of
a bucket's batches, how to load a record and how to stack loaded rows. ``bucketed_batches``
does the rest:

* **plan**: every epoch chunks each bucket's records (sorted bucket keys, record order or
  shuffled) into global batches of ``process_count x rows`` records; shuffled, epoch e uses
  ``(seed, e)`` and the batch order is shuffled too. Every process computes the same plan.
  So in training a bucket's share of the batches follows its record count, unless
  ``Bucketing.weight`` gives sampling weights (``WeightedBatchPlan``): then each training
  batch draws its bucket with probability ``weight / sum of weights`` (LAVIS'
  ``MultiIterLoader`` over per-dataset loaders, ``sample_ratio``) and takes that bucket's
  next batch from its own endless stream of shuffled epochs (full batches only, as the
  per-dataset ``DataLoader(drop_last=True)``). Evaluation ignores the weights.
* **rows**: process p loads rows ``[p * B, (p + 1) * B)`` of each global batch; row r draws
  from the stream ``(batch seed, r)``, so a global batch is the same however it is split.
* **shapes**: ``collate`` sees the records of the whole global batch (to read their file
  headers, not pixels), so all processes can agree on one shape.
* **skips**: loading goes through ``pipeline.Load`` and ``pipeline.SkipCounter``: under
  ``data.skip_bad_records`` a bad record becomes an invalid row counted in ``skipped``.

Each batch is padded to B rows (``Bucketing.fill`` per key, else 0) and carries ``valid``
bool (B,) and ``skipped`` i32 (); a batch may have no valid row (all skipped, or the tail of
an eval pass on a later process); the pipeline keeps those with several processes.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

from radjax.data.pipeline import Load, SkipCounter


@dataclasses.dataclass(frozen=True)
class Bucketing:
    """A format's batching choices.

    key: record -> its bucket (sortable, hashable; one batch holds one bucket).
    rows: bucket -> B, the rows per process of that bucket's batches.
    load_example: ``(record, data_cfg, rng | None) -> example`` (raises BadRecordError).
    collate: ``(examples, records, key) -> batch`` of ``len(examples)`` rows; ``records``
        are those of the whole global batch (to agree on shapes across processes).
    fill: pad value of a key in padded rows (default 0), e.g. ``{"labels": -100}``.
    weight: bucket -> its sampling weight (>= 0) in training (``WeightedBatchPlan``); None
        (default) = every epoch holds each bucket's records once.
    """

    key: Callable[[dict], Hashable]
    rows: Callable[[Hashable], int]
    load_example: Callable[..., dict]
    collate: Callable[[list[dict], list[dict], Hashable], dict[str, np.ndarray]]
    fill: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    weight: Callable[[Hashable], float] | None = None


def epoch_batches(
    keys: np.ndarray,
    rows: Callable[[Hashable], int],
    rng: np.random.Generator | None,
    process_count: int = 1,
) -> list[np.ndarray]:
    """Record indices of one epoch's global batches: each bucket's records (``keys`` (N,),
    buckets in sorted order) chunked by ``process_count x rows(key)``, the last chunk kept
    short; with ``rng`` every bucket's indices and then the batch order are shuffled."""
    batches = []
    for key in sorted(set(keys.tolist())):
        size = rows(key) * process_count
        idx = np.flatnonzero(keys == key)
        idx = rng.permutation(idx) if rng is not None else idx
        batches += [idx[i : i + size] for i in range(0, len(idx), size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class BatchPlan:
    """Batch i of the stream -> its global record indices (every process computes the same);
    epoch e is shuffled with seed ``(seed, e)`` when ``shuffle``."""

    def __init__(
        self,
        keys: np.ndarray,
        rows: Callable[[Hashable], int],
        *,
        seed: int,
        shuffle: bool,
        process_count: int,
    ):
        self._keys, self._rows, self._seed, self._shuffle = keys, rows, seed, shuffle
        self._processes = process_count
        self.per_epoch = len(epoch_batches(keys, rows, None, process_count))
        self._cached: tuple[int, list[np.ndarray]] = (-1, [])

    def __call__(self, i: int) -> np.ndarray:
        epoch, j = divmod(int(i), self.per_epoch)
        cached = self._cached  # one read: loader threads may replace it meanwhile
        if cached[0] != epoch:
            rng = np.random.default_rng((self._seed, epoch)) if self._shuffle else None
            cached = (epoch, epoch_batches(self._keys, self._rows, rng, self._processes))
            self._cached = cached
        return cached[1][j]


class WeightedBatchPlan:
    """Training batch i -> its global record indices when buckets have sampling weights.

    Batches come in rounds of ``round_size``; round r draws the bucket of each of its batches
    i.i.d. with probabilities ``weights / sum(weights)`` (buckets in sorted key order) from
    ``np.random.default_rng((seed, r, 0))``. The k-th batch drawn from bucket b is batch
    ``k mod n_b`` of that bucket's epoch ``k // n_b``: its records shuffled with
    ``(seed, e, b + 1)`` and chunked into ``n_b`` full batches of ``process_count x rows``
    (the short remainder is left out; a bucket smaller than one batch gives one short
    batch). Every process computes the same plan; random access (a restored iterator) walks
    the rounds' bucket counts once, cached. Safe to call from several loader threads.
    """

    def __init__(
        self,
        keys: np.ndarray,
        rows: Callable[[Hashable], int],
        weight: Callable[[Hashable], float],
        *,
        seed: int,
        process_count: int,
        round_size: int | None = None,
    ):
        self._buckets = sorted(set(keys.tolist()))
        self._members = [np.flatnonzero(keys == b) for b in self._buckets]
        self._sizes = [rows(b) * process_count for b in self._buckets]
        w = np.array([float(weight(b)) for b in self._buckets], np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
            raise ValueError(
                "sampling weights must be finite, >= 0 and not all 0; got "
                + ", ".join(f"{b!r}: {x}" for b, x in zip(self._buckets, w))
            )
        self.probabilities = w / w.sum()
        self._seed = seed
        self._per_epoch = [max(len(m) // size, 1) for m, size in zip(self._members, self._sizes)]
        self.round_size = int(round_size or sum(self._per_epoch))
        self._starts = [np.zeros(len(self._buckets), np.int64)]  # bucket counts before round r
        self._lock = threading.Lock()
        self._round: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int64))
        self._epochs: dict[int, tuple[int, np.ndarray]] = {}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def buckets(self, r: int) -> np.ndarray:
        """Bucket indices of round r's batches."""
        cached = self._round  # one read: loader threads may replace it meanwhile
        if cached[0] != r:
            rng = np.random.default_rng((self._seed, r, 0))
            draws = rng.choice(len(self._buckets), size=self.round_size, p=self.probabilities)
            cached = (r, draws)
            self._round = cached
        return cached[1]

    def _start(self, r: int) -> np.ndarray:
        with self._lock:
            while len(self._starts) <= r:
                done = len(self._starts) - 1
                counts = np.bincount(self.buckets(done), minlength=len(self._buckets))
                self._starts.append(self._starts[-1] + counts)
            return self._starts[r]

    def _bucket_batch(self, b: int, k: int) -> np.ndarray:
        epoch, j = divmod(int(k), self._per_epoch[b])
        cached = self._epochs.get(b, (-1, None))
        if cached[0] != epoch:
            rng = np.random.default_rng((self._seed, epoch, b + 1))
            cached = (epoch, rng.permutation(self._members[b]))
            self._epochs[b] = cached
        size = self._sizes[b]
        return cached[1][j * size : (j + 1) * size]

    def __call__(self, i: int) -> np.ndarray:
        r, j = divmod(int(i), self.round_size)
        start = self._start(r)
        draws = self.buckets(r)
        b = int(draws[j])
        return self._bucket_batch(b, int(start[b]) + int(np.count_nonzero(draws[:j] == b)))


def pad_rows(
    batch: dict[str, np.ndarray], rows: int, fill: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Pads every (n, ...) array to (rows, ...) with ``fill[key]`` (else 0); adds ``valid``
    bool (rows,), True on the n real rows."""
    n = len(next(iter(batch.values())))
    out = {
        k: np.concatenate([v, np.full((rows - n,) + v.shape[1:], fill.get(k, 0), v.dtype)])
        for k, v in batch.items()
    }
    out["valid"] = np.arange(rows) < n
    return out


class _LoadRows(grain.transforms.RandomMap):
    """Global record indices -> this process's rows of the batch, padded to B rows, with
    ``valid`` and ``skipped``."""

    def __init__(
        self,
        source: Sequence[dict],
        data_cfg: ml_collections.ConfigDict,
        bucketing: Bucketing,
        train: bool,
        process_index: int,
    ):
        self._source, self._bucketing, self._process = source, bucketing, process_index
        self._load = Load(bucketing.load_example, data_cfg, random=train)

    def random_map(self, indices: np.ndarray, rng: np.random.Generator) -> dict:
        records = [self._source[int(i)] for i in indices]
        key = self._bucketing.key(records[0])
        rows = self._bucketing.rows(key)
        seed = int(rng.integers(2**62))
        skips = SkipCounter()
        loaded = (
            # a stream per global row: the batch does not depend on how processes split it
            self._load.random_map(records[row], np.random.default_rng((seed, row)))
            for row in range(self._process * rows, min((self._process + 1) * rows, len(records)))
        )
        examples = [e for e in loaded if skips.keep(e)]
        batch = pad_rows(
            self._bucketing.collate(examples, records, key), rows, self._bucketing.fill
        )
        batch["skipped"] = np.asarray(skips.count, np.int32)
        return batch


def bucketed_batches(
    source: Sequence[dict],
    data_cfg: ml_collections.ConfigDict,
    bucketing: Bucketing,
    *,
    seed: int = 0,
    train: bool = True,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """This process's batches of ``source`` (records), as a checkpointable grain IterDataset.

    train: an endless stream of shuffled epochs, examples loaded with per-row seeded rngs
    (with ``bucketing.weight``: each batch's bucket drawn by weight, ``WeightedBatchPlan``).
    eval (train=False): one pass, bucket by bucket in record order, ``rng=None``; every
    record appears in exactly one row of one process. Threads: ``data.num_threads`` (2).
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside 0..{process_count - 1}")
    keys = np.array([bucketing.key(r) for r in source])
    if not len(keys):
        raise ValueError("the source has no records")
    if train and bucketing.weight is not None:
        plan = WeightedBatchPlan(
            keys, bucketing.rows, bucketing.weight, seed=seed, process_count=process_count
        )
        count = sys.maxsize
    else:
        plan = BatchPlan(
            keys, bucketing.rows, seed=seed, shuffle=train, process_count=process_count
        )
        count = sys.maxsize if train else plan.per_epoch
    load = _LoadRows(source, data_cfg, bucketing, train, process_index)
    return (
        grain.MapDataset.range(count)
        .map(plan)
        .seed(seed)
        .random_map(load)
        .to_iter_dataset(
            grain.ReadOptions(
                num_threads=int(data_cfg.get("num_threads", 2)), prefetch_buffer_size=2
            )
        )
    )
