"""Layer stacks: a Python loop over an ``nnx.List`` or one stacked layer under ``lax.scan``.

A stacked layer is one module whose every Variable holds the per-layer values on a new
leading axis of size ``num_layers`` (logical axis ``layers`` prepended to its sharding
names; parameter paths lose the ``<i>/`` level). ``run_layers`` applies either form the same
way, optionally rematerialising each layer in the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.nn.remat import checkpointed

LayerCall = Callable[[nnx.Module, Any], Any]  # (layer, carry) -> carry


def stack_modules(modules: Sequence[nnx.Module]) -> nnx.Module:
    """One module of the modules' (common) structure with every Variable stacked on a new
    leading axis: the form ``scan_layers`` iterates over."""
    graphdef, first = nnx.split(modules[0])
    states = [first] + [nnx.split(m)[1] for m in modules[1:]]

    def stack(*variables):
        value = jnp.stack([v.get_value() for v in variables])
        names = variables[0].get_metadata().get("out_sharding")
        meta = {} if names is None else {"out_sharding": ("layers", *names)}
        return variables[0].replace(value=value, **meta)

    stacked = jax.tree.map(stack, *states, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, stacked)


def unstack_module(stacked: nnx.Module, num_layers: int) -> list[nnx.Module]:
    """The layers of a stacked module one by one (slices of its leading axis)."""
    graphdef, state = nnx.split(stacked)
    return [
        nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(num_layers)
    ]


def scan_layers(stacked: nnx.Module, carry: Any, call: LayerCall, *, remat: bool = False) -> Any:
    """``call(layer, carry)`` for each layer of a stacked module, as one ``lax.scan`` step
    each (one compiled layer whatever the depth); ``remat`` checkpoints every step.

    The layers' RNG state (the per-layer (num_layers,) keys and counts of their dropout
    streams) is written back after the scan, as a Python loop over the layers would leave it:
    each layer draws from its own key, and the next call draws fresh masks. Other state is
    read, not written back (no BatchNorm statistics)."""
    graphdef, state = nnx.split(stacked)

    def body(carry, layer_state):
        layer = nnx.merge(graphdef, layer_state, copy=True)
        carry = call(layer, carry)
        return carry, nnx.state(layer, nnx.RngState)

    if remat:
        body = jax.checkpoint(body, prevent_cse=False)
    carry, rng_state = jax.lax.scan(body, carry, state)
    nnx.update(stacked, rng_state)
    return carry


def run_layers(
    layers: nnx.List | nnx.Module, carry: Any, call: LayerCall, *, scanned: bool, remat: bool
) -> Any:
    """``call`` over an ``nnx.List`` of layers in a Python loop (each ``checkpointed`` with
    ``remat``), or over a stacked layer with ``scan_layers`` when ``scanned``."""
    if scanned:
        return scan_layers(layers, carry, call, remat=remat)
    for layer in layers:
        carry = checkpointed(layer, carry, method=call) if remat else call(layer, carry)
    return carry
