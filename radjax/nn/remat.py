"""Rematerialisation of one NNX module call (activations recomputed in the backward pass)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx


def checkpointed(module: nnx.Module, *args: Any, method: Callable[..., Any] | None = None) -> Any:
    """``method(module, *args)`` (default ``module(*args)``) under ``jax.checkpoint``.

    The call runs on a copy of the module's state inside the checkpoint, so it works under
    ``jax.grad`` in graph and tree mode; state the call changes (BatchNorm statistics, RNG
    counters) is written back to ``module``.
    """
    graphdef, state = nnx.split(module)
    call = method or (lambda m, *a: m(*a))

    def run(state, *args):
        inner = nnx.merge(graphdef, state, copy=True)
        return call(inner, *args), nnx.state(inner)

    out, state = jax.checkpoint(run)(state, *args)
    nnx.update(module, state)
    return out
