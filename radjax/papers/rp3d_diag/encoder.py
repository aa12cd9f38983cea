"""RP3D-Diag's transformer encoder (``src/Train/Model/transformer_encoder``, the Annotated
Transformer) and its LayerNorm.

``StdLayerNorm`` (``transformer_encoder/layer_norm.py``)::

    y = a * (x - mean) / (std + eps) + b,   std unbiased (N - 1), eps = 1e-6 added to std

It differs from ``nnx.LayerNorm`` (biased variance, eps inside the square root), so released
RP3D weights only reproduce their outputs with it. The original's ``a`` (``a_2``) is ``scale``,
``b`` (``b_2``) is ``bias``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.nn.transformer import Encoder


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


def annotated_encoder(
    dim: int,
    *,
    heads: int,
    mlp_dim: int,
    layers: int,
    dropout: float = 0.0,
    dtype=None,
    remat: bool = False,
    rngs: nnx.Rngs,
) -> Encoder:
    """RP3D-Diag's pre-norm encoder (``TransformerEncoder(d_model, d_ff, n_heads, n_layers)``)."""
    return Encoder(
        dim,
        layers=layers,
        final_norm=StdLayerNorm,
        remat=remat,
        rngs=rngs,
        heads=heads,
        mlp_dim=mlp_dim,
        norm_first=True,
        norm=StdLayerNorm,
        activation=jax.nn.relu,
        dropout=dropout,
        kernel_init=nnx.initializers.xavier_uniform(),
        dtype=dtype,
    )
