"""Optimizers with freezing and per-group learning rates chosen by regex on parameter paths.

``config.optim.groups`` is a sequence of ``(regex, multiplier | None)``; the first regex that
fully matches a parameter's '/'-joined path decides: ``None`` freezes it (it is split off
before differentiation, so it has neither gradients nor optimizer state), a number scales the
base learning-rate schedule. Parameters no regex matches train with multiplier 1.

``config.optim.delay`` is a sequence of ``(regex, start_step)``: parameters whose path the
first matching regex selects keep their values (learning rate 0, so no update and no weight
decay) before ``start_step``, e.g. RadFM's first stage that trains only the perceiver and
the projection. Their gradients and Adam moments are still computed in that stage.

``config.optim.schedule`` names the base schedule (``learning_rate_schedule``): ``cosine``
(default: linear warm-up from 0, cosine to 0 over the steps after it), ``constant``, or
``linear_warmup_cosine_lr`` (LAVIS' scheduler of that name, which MiniGPT-4 / MiniGPT-v2 /
Uni-Med train with: warm-up from ``warmup_lr`` and a cosine over ALL steps to ``min_lr``).
``optim.warmup_steps``, when set, replaces ``warmup_ratio``.

Weight decay (AdamW) applies to every trainable parameter unless ``optim.no_decay`` (regexes
searched, ``re.search``, in the '/'-joined path) or ``optim.no_decay_ndim`` (a parameter with
fewer dimensions, not counting its stacking axes ``layers`` / ``expert``, i.e. the dimensions
of one layer's or one expert's tensor as a PyTorch module would hold it) exempts it. LAVIS'
rule (``runner_base.py``: ``p.ndim < 2 or "bias" in n or "ln" in n or "bn" in n``) is
``no_decay=("bias", "ln", "bn"), no_decay_ndim=2``. Both default off.
"""

from __future__ import annotations

import math
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


SCHEDULES = ("cosine", "constant", "linear_warmup_cosine_lr")
STACK_AXES = ("layers", "expert")  # leading axes of stacked layers / experts (no_decay_ndim)


def warmup_steps(optim: ml_collections.ConfigDict, total_steps: int) -> int:
    """``optim.warmup_steps`` if set, else ``round(warmup_ratio * total_steps)``."""
    if optim.get("warmup_steps", None) is not None:
        return int(optim.warmup_steps)
    return int(round(optim.get("warmup_ratio", 0.0) * total_steps))


def linear_warmup_cosine_lr(
    init_lr: float,
    total_steps: int,
    warmup: int,
    *,
    warmup_lr: float | None = None,
    min_lr: float = 0.0,
    iters_per_epoch: int | None = None,
) -> optax.Schedule:
    """LAVIS' ``LinearWarmupCosineLRScheduler`` (``lavis/common/optims.py``, as copied by
    MiniGPT-4 / MiniGPT-v2 / Uni-Med ``uni_med/common/optims.py:56-112``), as a function of the
    0-based update index ``s`` (the original sets the LR before update ``s``):

    * ``s < warmup``: ``min(init_lr, warmup_lr + (init_lr - warmup_lr) * i / max(warmup, 1))``
      with ``i = s mod iters_per_epoch``, the step within its epoch (the original passes
      ``cur_step``, not the total step, so a warm-up longer than an epoch restarts from
      ``warmup_lr`` each epoch);
    * else ``(init_lr - min_lr) / 2 * (1 + cos(pi * s / total_steps)) + min_lr``: the cosine
      spans all ``total_steps`` (``max_epoch * iters_per_epoch``) from step 0, so it is not
      offset by the warm-up and the LR drops at ``s = warmup`` from the warm-up line to the
      cosine's value there (Uni-Med: 9.9982e-6 -> 9.7577e-6 at step 5000).

    ``warmup_lr`` None or negative = ``init_lr`` (the original's ``warmup_start_lr=-1``);
    ``iters_per_epoch`` None = ``total_steps`` (one epoch). Past ``total_steps`` (which the
    original never reaches) the LR stays at ``min_lr``.
    """
    if total_steps < 1:
        raise ValueError(f"linear_warmup_cosine_lr: total_steps must be >= 1, got {total_steps}")
    start = init_lr if warmup_lr is None or warmup_lr < 0 else float(warmup_lr)
    per_epoch = int(iters_per_epoch or total_steps)
    if per_epoch < 1:
        raise ValueError(f"optim.iters_per_epoch must be >= 1, got {iters_per_epoch}")
    span = max(warmup, 1)

    def schedule(count):
        count = jnp.asarray(count)
        within = jnp.mod(count, per_epoch).astype(jnp.float32)
        warm = jnp.minimum(init_lr, start + (init_lr - start) * within / span)
        t = jnp.minimum(count, total_steps).astype(jnp.float32)
        # (1 + cos x) / 2 = cos(x / 2) ** 2, which keeps f32 precision where cos x is near -1
        cosine = (init_lr - min_lr) * jnp.cos(0.5 * math.pi * t / total_steps) ** 2 + min_lr
        return jnp.where(count < warmup, warm, cosine)

    return schedule


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Base schedule ``optim.schedule`` (see the module docstring): linear warm-up over
    ``warmup_steps(optim, total_steps)`` steps, then cosine or constant."""
    warmup = warmup_steps(optim, total_steps)
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
    if kind == "linear_warmup_cosine_lr":
        return linear_warmup_cosine_lr(
            float(optim.lr),
            int(total_steps),
            warmup,
            warmup_lr=optim.get("warmup_lr", None),
            min_lr=float(optim.get("min_lr", 0.0)),
            iters_per_epoch=optim.get("iters_per_epoch", None),
        )
    raise ValueError(f"optim.schedule: unknown {kind!r}; use one of {SCHEDULES}")


def _module_ndim(variable: Any) -> int:
    """Dimensions of a parameter without its stacking axes (``STACK_AXES``, from its logical
    axis names): the ndim of one layer's / one expert's tensor."""
    shape = getattr(variable, "shape", ())
    md = variable.get_metadata() if hasattr(variable, "get_metadata") else {}
    names = md.get("out_sharding") or md.get("sharding_names") or ()
    if len(names) != len(shape):
        return len(shape)
    return sum(1 for n in names if n not in STACK_AXES)


def decays(path: str, variable: Any, optim: ml_collections.ConfigDict) -> bool:
    """Whether weight decay applies to the parameter at ``path`` (see the module docstring:
    ``optim.no_decay`` regexes, ``optim.no_decay_ndim``)."""
    if any(re.search(pattern, path) for pattern in optim.get("no_decay", ())):
        return False
    return _module_ndim(variable) >= int(optim.get("no_decay_ndim", 0))


def _base_optimizer(
    optim: ml_collections.ConfigDict, lr: optax.Schedule, decay: bool = True
) -> optax.GradientTransformation:
    name = optim.get("name", "adamw")
    if name == "adamw":
        return optax.adamw(
            lr,
            b1=optim.get("b1", 0.9),
            b2=optim.get("b2", 0.999),
            eps=optim.get("eps", 1e-8),
            weight_decay=optim.get("weight_decay", 0.0) if decay else 0.0,
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
    # label = group @ start step @ decay (0 / 1), decided once from the parameters' metadata
    names = {
        path_str(p): f"{_group_of(path_str(p), groups)}@{_start_of(path_str(p), delay)}"
        f"@{int(decays(path_str(p), v, optim))}"
        for p, v in nnx.to_flat_state(trainable)
    }

    def label(path: str) -> str:
        if path not in names:
            raise KeyError(f"optimizer: {path!r} is not one of the trainable parameters")
        return names[path]

    def schedule(group: int, start: int) -> optax.Schedule:
        m = multipliers[group]
        if not start:
            return lambda s: m * base(s)
        return lambda s: jnp.where(s >= start, m * base(s), 0.0)

    def transform(name: str) -> optax.GradientTransformation:
        group, start, decay = (int(x) for x in name.split("@"))
        return _base_optimizer(optim, schedule(group, start), bool(decay))

    transforms = {name: transform(name) for name in sorted(set(names.values()))}

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
