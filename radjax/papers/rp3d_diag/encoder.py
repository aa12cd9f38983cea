"""RP3D-Diag's transformer encoder (``src/Train/Model/transformer_encoder``) and its LayerNorm.

The original is the Annotated Transformer's encoder with one change that matters: **self-
attention reads the un-normalised input**. Its layer computes ``attn(x, x, x, mask)`` first
and hands the result to the first residual sublayer through ``lambda _: attn_output``, so that
sublayer's norm is evaluated and thrown away (its parameters stay in the checkpoint and get
no gradient). The feed-forward sublayer is pre-norm and a final norm follows the stack::

    x = x + Attn(x)                 # norm1 kept, never used
    x = x + MLP(norm2(x))           # MLP: Linear -> ReLU -> Linear
    y = norm(x)                     # after the last layer

Dropout sits on the attention probabilities, after the ReLU and on both residual branches
(RP3D builds every encoder with rate 0). Masked scores are -1e9 before the softmax.

``StdLayerNorm`` (``transformer_encoder/layer_norm.py``)::

    y = a * (x - mean) / (std + eps) + b,   std unbiased (N - 1), eps = 1e-6 added to std

It differs from ``nnx.LayerNorm`` (biased variance, eps inside the square root), so released
RP3D weights only reproduce their outputs with it. The original's ``a`` is ``scale``, ``b``
is ``bias``.

Parameter paths (``convert.from_annotated_encoder``): ``layers/<i>/{attn/{query,key,value,
out}, mlp/{fc1,fc2}, norm1, norm2}``, ``norm``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.nn.transformer import Encoder, EncoderLayer


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


class RP3DEncoderLayer(EncoderLayer):
    """``x + Attn(x)`` then ``x + MLP(norm2(x))``: (B, L, dim) -> (B, L, dim).

    ``norm1`` holds the original's ``sublayer.0.norm`` and is never applied.
    """

    def __call__(
        self, x: jax.Array, mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x (B, L, dim); mask boolean broadcastable to (B, H, L, L), True = attend.

        Returns (x, attention probs (B, H, L, L) f32, raw masked scores (B, H, L, L) f32).
        """
        h, probs, scores = self.attn(x, mask=mask)
        x = x + self.dropout(h)
        x = x + self.dropout(self.mlp(self.norm2(x)))
        return x, probs, scores


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
    """RP3D-Diag's encoder (``TransformerEncoder(d_model, d_ff, n_heads, n_layers)``): the
    layers, then ``norm``. (B, L, dim), mask -> (B, L, dim), per-layer probs, per-layer raw
    scores (each (B, H, L, L) f32); the original returns only the last layer's (``[-1]``)."""
    return Encoder(
        dim,
        layers=layers,
        final_norm=StdLayerNorm,
        remat=remat,
        layer=RP3DEncoderLayer,
        heads=heads,
        mlp_dim=mlp_dim,
        norm=StdLayerNorm,
        activation=jax.nn.relu,
        dropout=dropout,
        kernel_init=nnx.initializers.xavier_uniform(),
        dtype=dtype,
        rngs=rngs,
    )
