"""grain pipelines shared by every data format.

Training: ``source.seed(seed).shuffle().repeat()`` → per-host slice → seeded ``random_map``
(the format's ``load_example``) → skip-and-count bad records → ``batch`` → count repaired
records. All randomness is in the seeded map, so the iterator state (saved in checkpoints)
replays exactly.

Evaluation: the split in order, per-host slice, deterministic loading (``rng=None``), batches
padded to a fixed size with a ``valid`` mask so one compiled step serves the whole split.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from radjax.data.errors import BadRecordError
from radjax.data.readers import nonfinite_repairs
from radjax.sharding import batch_sharding

log = logging.getLogger(__name__)

# Per-row bool of every loaded example and batch (until ``SkipCounter.take_batch_skips``):
# the record's non-finite voxels were set to 0 (``data.nonfinite='zero'``).
REPAIRED = "nonfinite_repaired"


@dataclasses.dataclass(frozen=True)
class _Skipped:
    """Stands in for an example whose record could not be loaded."""

    error: str


@dataclasses.dataclass
class SkipCounter:
    """Counts bad records dropped under ``data.skip_bad_records`` (never silently), and
    records whose NaN/Inf voxels were set to 0 under ``data.nonfinite='zero'``.

    ``count`` = records the format left out of its index (``source.skipped_records``) plus
    every draw whose loading failed (a bad file drawn in two epochs counts twice).
    ``repaired`` = every draw whose loading repaired non-finite voxels (counted per draw too).
    """

    count: int = 0
    repaired: int = 0

    @classmethod
    def for_source(cls, source: grain.MapDataset) -> "SkipCounter":
        return cls(count=len(getattr(source, "skipped_records", ())))

    def take_batch_skips(self, batch: dict) -> dict:
        """Moves a batch's ``skipped`` count (format-batched) and its ``REPAIRED`` rows into
        the counter."""
        skipped = int(batch.pop("skipped", 0))
        if skipped:
            self.count += skipped
            log.warning("skipped %d bad records in a batch (%d so far)", skipped, self.count)
        self.repaired += int(np.count_nonzero(batch.pop(REPAIRED, 0)))
        return batch

    def keep(self, example: Any) -> bool:
        if isinstance(example, _Skipped):
            self.count += 1
            log.warning("skipping bad record (%d so far): %s", self.count, example.error)
            return False
        return True


class Load(grain.transforms.RandomMap):
    """Runs a format's ``load_example(record, data_cfg, rng | None)``; under
    ``data.skip_bad_records`` a BadRecordError becomes a marker that ``SkipCounter.keep``
    counts and drops. Each loaded example gets ``REPAIRED``: whether a reader set non-finite
    voxels to 0 (``radjax.data.readers.nonfinite_repairs``)."""

    def __init__(self, load_example, data_cfg: ml_collections.ConfigDict, random: bool):
        self._load, self._cfg, self._random = load_example, data_cfg, random
        self._skip = bool(data_cfg.get("skip_bad_records", False))

    def random_map(self, record, rng: np.random.Generator | None):
        try:
            with nonfinite_repairs() as repairs:
                example = self._load(record, self._cfg, rng if self._random else None)
        except BadRecordError as e:
            if not self._skip:
                raise
            return _Skipped(str(e))
        if repairs:
            log.info("set non-finite voxels to 0 (data.nonfinite='zero'): %s", "; ".join(repairs))
        return {**example, REPAIRED: np.asarray(bool(repairs))}


def _read_options(data_cfg) -> grain.ReadOptions:
    threads = int(data_cfg.get("num_threads", 2))
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * threads, 1))


def _host_batch(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ValueError(f"batch size {global_batch} is not divisible by {process_count} processes")
    return global_batch // process_count


def train_dataset(
    fmt: ModuleType,
    data_cfg: ml_collections.ConfigDict,
    *,
    global_batch: int,
    seed: int,
    split: str = "train",
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[grain.IterDataset, SkipCounter]:
    """Infinite shuffled training batches of this process's share of ``global_batch``
    (formats with a ``batches`` function batch themselves and set their own sizes)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    source = fmt.make_source(data_cfg, split)
    if len(source) == 0:
        raise ValueError(f"data split {split!r} under {data_cfg.root} has no records")
    counter = SkipCounter.for_source(source)
    if hasattr(fmt, "batches"):
        return (
            _format_batches(
                fmt, source, data_cfg, counter, seed, True, process_index, process_count
            ),
            counter,
        )
    ds = source.seed(seed).shuffle().repeat()
    ds = ds[process_index::process_count]
    it = (
        ds.random_map(Load(fmt.load_example, data_cfg, random=True))
        .to_iter_dataset(_read_options(data_cfg))
        .filter(counter.keep)
        .batch(_host_batch(global_batch, process_count), drop_remainder=True)
        .map(counter.take_batch_skips)
    )
    return it, counter


def eval_batches(
    fmt: ModuleType,
    data_cfg: ml_collections.ConfigDict,
    split: str,
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[Iterator[dict], SkipCounter]:
    """This process's share of ``split`` in order, as fixed-size batches with a ``valid`` mask."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    host_batch = _host_batch(batch_size, process_count)
    source = fmt.make_source(data_cfg, split)
    counter = SkipCounter.for_source(source)
    if hasattr(fmt, "batches"):
        return iter(
            _format_batches(fmt, source, data_cfg, counter, 0, False, process_index, process_count)
        ), counter
    source = source[process_index::process_count]
    ds = (
        source.seed(0)
        .random_map(Load(fmt.load_example, data_cfg, random=False))
        .to_iter_dataset(_read_options(data_cfg))
        .filter(counter.keep)
        .batch(host_batch, drop_remainder=False)
    )

    def padded():
        for batch in ds:
            n = len(next(iter(batch.values())))
            pad = lambda x, n=n: np.concatenate(
                [x, np.zeros((host_batch - n,) + x.shape[1:], x.dtype)]
            )
            out = {k: pad(np.asarray(v)) for k, v in batch.items()}
            out["valid"] = np.arange(host_batch) < n
            yield counter.take_batch_skips(out)

    return padded(), counter


def _format_batches(
    fmt: ModuleType,
    source: grain.MapDataset,
    data_cfg: ml_collections.ConfigDict,
    counter: SkipCounter,
    seed: int,
    train: bool,
    process_index: int,
    process_count: int,
) -> grain.IterDataset:
    """Batches made by the format itself (``fmt.batches(source, data_cfg, seed=, train=,
    process_index=, process_count=)``), for formats whose batches vary in shape (RadFM:
    all-2D or all-3D, depth buckets). Each batch carries ``valid``; its ``skipped`` count
    goes to ``counter``. On one process batches without a valid row are dropped; with
    several every process keeps them, so all step through the same global batches."""
    batches = fmt.batches(
        source,
        data_cfg,
        seed=seed,
        train=train,
        process_index=process_index,
        process_count=process_count,
    ).map(counter.take_batch_skips)
    return batches.filter(lambda batch: batch["valid"].any()) if process_count == 1 else batches


def to_global(batch: dict, mesh: jax.sharding.Mesh) -> dict:
    """Assembles process-local numpy batches into global arrays sharded over (data, fsdp)."""
    return {
        k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
        for k, v in batch.items()
    }
