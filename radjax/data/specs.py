"""Abstract training batches: what a format's ``batch_spec(config)`` builds on.

A format's ``batch_spec(config) -> {key: jax.ShapeDtypeStruct}`` states the global shapes and
dtypes of the training batches its pipeline hands the train step (``pipeline.train_dataset``
after the skip counter took ``skipped`` and ``pipeline.REPAIRED`` out), from config fields
alone: no file is read, so a paper config is compiled (``radjax.train.compiled_memory``)
without its data.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import ml_collections
import numpy as np


def rows_of(rows: int, example: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> dict:
    """``example`` (key -> one row's (shape, dtype)) as a batch of ``rows`` rows: key ->
    ShapeDtypeStruct (rows, *shape)."""
    return {
        k: jax.ShapeDtypeStruct((int(rows), *map(int, shape)), np.dtype(dtype))
        for k, (shape, dtype) in example.items()
    }


def required(config: ml_collections.ConfigDict, path: str, how: str) -> int:
    """The positive integer at the dotted ``path`` of ``config``.

    Raises:
      ValueError: the field is missing or not positive (unset until the data fill it); the
        message names the field and ``how`` (how to set it).
    """
    value = config
    for key in path.split("."):
        value = value.get(key) if isinstance(value, Mapping | ml_collections.ConfigDict) else None
    if value is None or int(value) <= 0:
        raise ValueError(f"{path} is {value}: {how}")
    return int(value)
