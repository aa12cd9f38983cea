"""Optimizers with freezing and per-group learning rates chosen by regex on parameter paths.

``config.optim.groups`` is a sequence of ``(regex, multiplier | None)``; the first regex that
fully matches a parameter's '/'-joined path decides: ``None`` freezes it (it is split off
before differentiation, so it has neither gradients nor optimizer state), a number scales the
base learning-rate schedule. Parameters no regex matches train with multiplier 1.

``config.optim.delay`` is a sequence of ``(regex, start_step)``: parameters whose path the
first matching regex selects keep their values (learning rate 0, so no update and no weight
decay) before ``start_step``, e.g. RadFM's first stage that trains only the perceiver and
the projection. Their gradients and Adam moments are still computed in that stage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx


def path_str(path: Sequence[Any]) -> str:
    """'/'-joined string of an NNX state path or a jax key path."""
    parts = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                p = getattr(p, attr)
                break
        parts.append(str(p))
    return "/".join(parts)


def _group_of(path: str, groups: Sequence[tuple[str, float | None]]) -> int | None:
    """Index of the first matching group, len(groups) for the default group."""
    for i, (pattern, _) in enumerate(groups):
        if re.fullmatch(pattern, path):
            return i
    return len(groups)


def trainable_filter(groups: Sequence[tuple[str, float | None]]):
    """NNX filter: a Param whose first matching group is not frozen."""

    def is_trainable(path, value) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        i = _group_of(path_str(path), groups)
        return i == len(groups) or groups[i][1] is not None

    return is_trainable


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Base schedule: linear warmup over ``warmup_ratio`` of the steps, then cosine or constant."""
    warmup = int(round(optim.get("warmup_ratio", 0.0) * total_steps))
    kind = optim.get("schedule", "cosine")
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, optim.lr, max(warmup, 0), max(total_steps, warmup + 1), 0.0
        )
    if kind == "constant":
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, optim.lr, max(warmup, 1)),
                optax.constant_schedule(optim.lr),
            ],
            [warmup],
        )
    raise ValueError(f"optim.schedule: unknown {kind!r}; use 'cosine' or 'constant'")


def _base_optimizer(
    optim: ml_collections.ConfigDict, lr: optax.Schedule
) -> optax.GradientTransformation:
    name = optim.get("name", "adamw")
    if name == "adamw":
        return optax.adamw(
            lr,
            b1=optim.get("b1", 0.9),
            b2=optim.get("b2", 0.999),
            eps=optim.get("eps", 1e-8),
            weight_decay=optim.get("weight_decay", 0.0),
        )
    if name == "sgd":
        return optax.sgd(lr, momentum=optim.get("momentum", 0.9))
    raise ValueError(f"optim.name: unknown {name!r}; use 'adamw' or 'sgd'")


def _start_of(path: str, delay: Sequence[tuple[str, int]]) -> int:
    """The step from which ``path`` trains: the first matching delay's, else 0."""
    for pattern, start in delay:
        if re.fullmatch(pattern, path):
            return int(start)
    return 0


def make_optimizer(
    optim: ml_collections.ConfigDict, total_steps: int, trainable: nnx.State
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the optimizer for the ``trainable`` state and returns it with the base schedule."""
    groups = tuple(tuple(g) for g in optim.get("groups", ()))
    delay = tuple(tuple(d) for d in optim.get("delay", ()))
    base = learning_rate_schedule(optim, total_steps)
    multipliers = {i: m for i, (_, m) in enumerate(groups) if m is not None}
    multipliers[len(groups)] = 1.0

    def label(path: str) -> str:
        return f"{_group_of(path, groups)}@{_start_of(path, delay)}"

    def schedule(name: str) -> optax.Schedule:
        group, start = (int(x) for x in name.split("@"))
        m = multipliers[group]
        if not start:
            return lambda s: m * base(s)
        return lambda s: jnp.where(s >= start, m * base(s), 0.0)

    used = sorted({label(path_str(p)) for p, _ in nnx.to_flat_state(trainable)})
    transforms = {name: _base_optimizer(optim, schedule(name)) for name in used}

    def labels(tree):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: label(path_str(path)),
            tree,
            is_leaf=lambda x: isinstance(x, nnx.Variable),
        )

    tx = optax.partition(transforms, labels)
    clip = optim.get("grad_clip", 0.0)
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx, base
