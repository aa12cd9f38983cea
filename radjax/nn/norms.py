"""Normalisation layers. Statistics are computed in f32; outputs keep the input dtype.

``StdLayerNorm`` is the LayerNorm of the Annotated Transformer that RP3D-Diag's
transformer encoders use (``transformer_encoder/layer_norm.py``)::

    y = a * (x - mean) / (std + eps) + b,   std unbiased (N - 1), eps = 1e-6 added to std

It differs from ``nnx.LayerNorm`` (biased variance, eps inside the square root), so
released RP3D weights only reproduce their outputs with it. Parameter names: the
original's ``a`` (``a_2`` in the Annotated Transformer) is ``scale``, ``b`` (``b_2``) is ``bias``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class StdLayerNorm(nnx.Module):
    """Annotated-Transformer LayerNorm over the last axis: (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, rngs: nnx.Rngs | None = None):
        del rngs  # deterministic init; accepted so norms are interchangeable
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), out_sharding=("norm",))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32), out_sharding=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        centred = x32 - x32.mean(axis=-1, keepdims=True)
        std = jnp.sqrt(jnp.sum(centred**2, axis=-1, keepdims=True) / (x.shape[-1] - 1))
        y = self.scale[...] * centred / (std + self.eps) + self.bias[...]
        return y.astype(x.dtype)


def layer_norm(dim: int, *, eps: float = 1e-5, dtype=None, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """``torch.nn.LayerNorm(dim, eps)`` semantics (two-pass variance) with logical axis names."""
    meta = {"out_sharding": ("norm",)}
    return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, use_fast_variance=False,
                         scale_metadata=meta, bias_metadata=meta, rngs=rngs)
