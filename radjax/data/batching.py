"""Bucketed multi-process batching, for formats whose batches vary in shape.

A format that batches itself (its ``batches`` hook, see ``radjax.data.pipeline``) states its
choices in a ``Bucketing``: the bucket of a record (e.g. 2D or 3D), the rows per process of
a bucket's batches, how to load a record and how to stack loaded rows. ``bucketed_batches``
does the rest:

* **plan**: every epoch chunks each bucket's records (sorted bucket keys, record order or
  shuffled) into global batches of ``process_count x rows`` records; shuffled, epoch e uses
  ``(seed, e)`` and the batch order is shuffled too. Every process computes the same plan.
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
    """

    key: Callable[[dict], Hashable]
    rows: Callable[[Hashable], int]
    load_example: Callable[..., dict]
    collate: Callable[[list[dict], list[dict], Hashable], dict[str, np.ndarray]]
    fill: Mapping[str, Any] = dataclasses.field(default_factory=dict)


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
        if self._cached[0] != epoch:
            rng = np.random.default_rng((self._seed, epoch)) if self._shuffle else None
            self._cached = (epoch, epoch_batches(self._keys, self._rows, rng, self._processes))
        return self._cached[1][j]


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

    train: an endless stream of shuffled epochs, examples loaded with per-row seeded rngs.
    eval (train=False): one pass, bucket by bucket in record order, ``rng=None``; every
    record appears in exactly one row of one process. Threads: ``data.num_threads`` (2).
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside 0..{process_count - 1}")
    keys = np.array([bucketing.key(r) for r in source])
    if not len(keys):
        raise ValueError("the source has no records")
    plan = BatchPlan(keys, bucketing.rows, seed=seed, shuffle=train, process_count=process_count)
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
