"""One sharded-equals-unsharded check: a pure function of an nnx model and inputs, run
unsharded and then on a device mesh (parameters by their logical axes, inputs split over
the batch), must give the same outputs."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from radjax import sharding

FSDP_TENSOR = {"fsdp": 2, "tensor": 4}  # the 8 simulated CPU devices of tests/conftest.py


class Sharded(NamedTuple):
    got: Any  # outputs on the mesh
    want: Any  # outputs unsharded
    mesh: jax.sharding.Mesh
    shardings: Any  # the state's NamedShardings
    state: Any  # the state placed on the mesh


def jit_build(ctor: Callable[[], nnx.Module]) -> nnx.Module:
    """``ctor()`` with its initialisers compiled once, as one program: eager NNX init
    compiles one RNG kernel per parameter shape, which dominates tiny CPU tests."""
    abstract = nnx.eval_shape(ctor)
    return nnx.merge(nnx.graphdef(abstract), jax.jit(lambda: nnx.state(ctor()))())


def _call(model, *inputs):
    return model(*inputs)


def assert_sharded_equals_unsharded(
    model: nnx.Module | Callable[[], nnx.Module],
    *inputs: Any,
    fn: Callable[..., Any] = _call,
    mesh_shape: dict[str, int] | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    atol_relative: bool = False,
) -> Sharded:
    """Runs ``fn(model, *inputs)`` jitted, unsharded and on ``make_mesh(mesh_shape)``
    (default fsdp 2 x tensor 4), and asserts every output leaf agrees.

    ``model`` is a module or a zero-argument constructor; a constructor's state is
    initialised straight onto the mesh (``jax.jit(..., out_shardings=...)``), so a sharded
    init is under test too. Every array leaf of ``inputs`` is split over the batch axis.
    ``atol_relative`` scales ``atol`` by each reference leaf's largest magnitude (f32 sums
    split over devices reorder, so logits are compared relative to the largest one).
    Returns both outputs, the mesh and the state's shardings for further checks.
    """
    mesh = sharding.make_mesh(FSDP_TENSOR if mesh_shape is None else mesh_shape)
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
        shardings = sharding.state_shardings(state, mesh)
        placed = jax.device_put(state, shardings)
    else:
        abstract = nnx.eval_shape(model)
        graphdef = nnx.graphdef(abstract)
        shardings = sharding.state_shardings(nnx.state(abstract), mesh)
        state = jax.jit(lambda: nnx.state(model()))()
        placed = jax.jit(lambda: nnx.state(model()), out_shardings=shardings)()

    forward = jax.jit(lambda state, *xs: fn(nnx.merge(graphdef, state, copy=True), *xs))
    want = forward(state, *inputs)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    put = lambda x: jax.device_put(
        x, sharding.batch_sharding(mesh, np.ndim(x)) if np.ndim(x) else replicated
    )
    batch = jax.tree.map(put, inputs)
    with jax.set_mesh(mesh):
        got = forward(placed, *batch)

    def close(g, w):
        w = np.asarray(w)
        tol = atol * float(np.abs(w).max()) if atol_relative and w.size else atol
        np.testing.assert_allclose(np.asarray(g), w, rtol=rtol, atol=tol)

    jax.tree.map(close, got, want)
    return Sharded(got, want, mesh, shardings, placed)
