"""Normalisation layers. Statistics are computed in f32; outputs keep the input dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def layer_norm(dim: int, *, eps: float = 1e-5, dtype=None, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """``torch.nn.LayerNorm(dim, eps)`` semantics (two-pass variance) with logical axis names."""
    meta = {"out_sharding": ("norm",)}
    return nnx.LayerNorm(
        dim,
        epsilon=eps,
        dtype=dtype,
        use_fast_variance=False,
        scale_metadata=meta,
        bias_metadata=meta,
        rngs=rngs,
    )


class RMSNorm(nnx.Module):
    """x / sqrt(mean(x^2) + eps) * scale over the last axis, in f32: (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, *, eps: float):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), out_sharding=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (self.scale[...] * y).astype(x.dtype)
