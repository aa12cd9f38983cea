"""Parameter count and per-device memory of a config's training state, without allocating it.

``state_memory(config, mesh_shape)`` builds the model and optimizer state abstractly
(``nnx.eval_shape`` / ``jax.eval_shape``: shapes and dtypes only, no weights) and shards them
over an ``AbstractMesh`` of the requested shape, so a 14B configuration can be sized on a
laptop for a pod it will run on. Counted per device: trainable parameters, their gradients
(one transient copy, sharded like the parameters), frozen parameters, other state (e.g.
BatchNorm statistics) and optimizer state. Activations are not counted: they depend on batch,
sequence length and the remat policy.

A parameter whose logical axes ask for a mesh axis that does not divide the dimension (e.g.
``fsdp=7`` on a width of 256) is not split over that axis there; fsdp then goes on another
dimension it divides (``radjax.sharding``'s ZeRO-3 fallback), and where none is, the parameter
stays replicated over the axis. The report lists those parameters (``MemoryReport.fallbacks``,
grouped by path with layer indices as ``*``).
"""

from __future__ import annotations

import collections
import dataclasses
import re
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
MIB = 2**20
MAX_LISTED = 12  # fallback groups printed by MemoryReport.lines


@dataclasses.dataclass(frozen=True)
class Fallback:
    """A parameter left replicated over mesh axes its rules ask for."""

    path: str  # '/'-joined NNX path
    shape: tuple[int, ...]
    dropped: tuple[tuple[int, tuple[str, ...]], ...]  # (dimension, mesh axes it is not split on)
    nbytes: int

    def reason(self, mesh_shape: Mapping[str, int]) -> str:
        return "; ".join(
            f"{'x'.join(f'{a}={mesh_shape[a]}' for a in axes)} does not divide dim {d} "
            f"({self.shape[d]})"
            for d, axes in self.dropped
        )


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Counts and per-device bytes of one training state on one mesh shape."""

    mesh_shape: dict[str, int]
    num_params: int
    num_trainable: int
    per_device_bytes: dict[str, int]  # part -> bytes on the most loaded device
    fallbacks: tuple[Fallback, ...] = ()  # parameters not sharded as their rules ask

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
        return out + self._fallback_lines()

    def _fallback_lines(self) -> list[str]:
        """The fallbacks grouped by path pattern (layer indices as ``*``), shape and reason."""
        if not self.fallbacks:
            return []
        groups = collections.Counter(
            (re.sub(r"(?<=/)\d+(?=/)", "*", f.path), f.shape, f.reason(self.mesh_shape))
            for f in self.fallbacks
        )
        nbytes = sum(f.nbytes for f in self.fallbacks)
        out = [
            f"replicated instead of sharded: {len(self.fallbacks)} parameter arrays "
            f"({nbytes / MIB:.2f} MiB), the mesh axis does not divide the dimension:"
        ]
        ranked = sorted(groups.items(), key=lambda kv: (-kv[1] * np.prod(kv[0][1]), kv[0][0]))
        for (path, shape, reason), n in ranked[:MAX_LISTED]:
            out.append(f"  {path} {shape}{f' x{n}' if n > 1 else ''}: {reason}")
        if len(ranked) > MAX_LISTED:
            out.append(f"  ... and {len(ranked) - MAX_LISTED} more groups")
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


def _fallbacks(tree: Any, shardings: Any) -> list[Fallback]:
    """Variables of ``tree`` whose logical axes map to mesh axes their sharding lacks."""
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    out = []
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_var)[0]
    for (path, var), target in zip(leaves, jax.tree.leaves(shardings, is_leaf=is_var)):
        names = var.get_metadata().get("out_sharding") if is_var(var) else None
        if not names:
            continue
        value = var.get_value()
        wanted, got = sharding.logical_to_spec(names), target.get_value().spec
        placed = {
            a for entry in got for a in sharding.spec_axes(entry)
        }  # fsdp may sit on another dim
        dropped = tuple(
            (d, tuple(a for a in sharding.spec_axes(w) if a not in placed))
            for d, w in enumerate(sharding.spec_entries(wanted, value.ndim))
            if set(sharding.spec_axes(w)) - placed
        )
        if dropped:
            key = "/".join(str(getattr(k, "key", k)) for k in path)
            nbytes = int(np.prod(value.shape, dtype=np.int64)) * _itemsize(value.dtype)
            out.append(Fallback(key, tuple(value.shape), dropped, nbytes))
    return out


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
    fallbacks = tuple(
        f for part in ("trainable", "frozen") for f in _fallbacks(state[part], shardings[part])
    )
    return MemoryReport(dict(mesh.shape), params, _count(state["trainable"]), per_device, fallbacks)
