"""Normalisation layers. Statistics are computed in f32; outputs keep the input dtype."""

from __future__ import annotations

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
