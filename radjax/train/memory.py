"""Parameter count and per-device memory of a config's training state, without allocating it.

``state_memory(config, mesh_shape)`` builds the model and optimizer state abstractly
(``nnx.eval_shape`` / ``jax.eval_shape``: shapes and dtypes only, no weights) and shards them
over an ``AbstractMesh`` of the requested shape, so a 14B configuration can be sized on a
laptop for a pod it will run on. Counted per device: trainable parameters, their gradients
(one transient copy, sharded like the parameters), frozen parameters, other state (e.g.
BatchNorm statistics) and optimizer state. Activations are not counted: they depend on batch,
sequence length and the remat policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from radjax import sharding
from radjax.train import experiment, optim
from radjax.train import step as step_lib

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Counts and per-device bytes of one training state on one mesh shape."""

    mesh_shape: dict[str, int]
    num_params: int
    num_trainable: int
    per_device_bytes: dict[str, int]  # part -> bytes on the most loaded device

    @property
    def total_per_device(self) -> int:
        return sum(self.per_device_bytes.values())

    def lines(self) -> list[str]:
        mesh = " x ".join(f"{k}={v}" for k, v in self.mesh_shape.items())
        out = [
            f"parameters: {self.num_params:,} ({self.num_trainable:,} trainable)",
            f"mesh: {mesh} ({int(np.prod(list(self.mesh_shape.values())))} devices)",
        ]
        out += [
            f"  {part:<16} {b / GIB:9.2f} GiB per device"
            for part, b in self.per_device_bytes.items()
        ]
        out.append(
            f"  {'total':<16} {self.total_per_device / GIB:9.2f} GiB per device (plus activations)"
        )
        return out


def abstract_mesh(mesh_shape: Mapping[str, int]) -> jax.sharding.AbstractMesh:
    """A (data, fsdp, tensor, expert) AbstractMesh; missing axes have size 1."""
    unknown = set(mesh_shape) - set(sharding.MESH_AXES)
    if unknown:
        raise ValueError(f"mesh axes {sorted(unknown)} unknown; use {sharding.MESH_AXES}")
    sizes = tuple(int(mesh_shape.get(a, 1)) for a in sharding.MESH_AXES)
    if min(sizes) < 1:
        raise ValueError(f"mesh sizes must be >= 1, got {dict(zip(sharding.MESH_AXES, sizes))}")
    return jax.sharding.AbstractMesh(
        sizes, sharding.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(sizes)
    )


def _itemsize(dtype) -> int:
    """Bytes per element; a PRNG key counts its key data (threefry: two uint32)."""
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return int(np.prod(jax.eval_shape(jax.random.key_data, jax.random.key(0)).shape)) * 4
    return np.dtype(dtype).itemsize


def _per_device(tree: Any, shardings: Any) -> int:
    """Bytes of the largest shard of every leaf of ``tree``, summed."""
    leaves = jax.tree.leaves(tree)
    shards = jax.tree.leaves(shardings)
    return int(
        sum(
            np.prod(s.shard_shape(x.shape), dtype=np.int64) * _itemsize(x.dtype)
            for x, s in zip(leaves, shards)
        )
    )


def _count(tree: Any) -> int:
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def state_memory(config: ml_collections.ConfigDict, mesh_shape: Mapping[str, int]) -> MemoryReport:
    """Abstract training state of ``config`` sharded over a mesh of ``mesh_shape``."""
    paper = experiment.paper_module(config)
    groups = tuple(tuple(g) for g in config.optim.get("groups", ()))

    def make_model():
        return paper.build_model(config, rngs=nnx.Rngs(0))

    abstract_model = nnx.eval_shape(make_model)
    _, parts = step_lib.split_model(abstract_model, groups)
    tx, _ = optim.make_optimizer(config.optim, int(config.train.steps), parts["trainable"])
    state = jax.eval_shape(lambda: step_lib.init_train_state(make_model(), groups, tx)[1])
    mesh = abstract_mesh(mesh_shape)
    shardings = sharding.state_shardings(state, mesh)
    per_device = {
        "trainable": _per_device(state["trainable"], shardings["trainable"]),
        "gradients": _per_device(state["trainable"], shardings["trainable"]),
        "frozen": _per_device(state["frozen"], shardings["frozen"]),
        "other state": _per_device(state["rest"], shardings["rest"]),
        "optimizer": _per_device(state["opt"], shardings["opt"]),
    }
    params = _count(state["trainable"]) + _count(state["frozen"])
    return MemoryReport(dict(mesh.shape), params, _count(state["trainable"]), per_device)
