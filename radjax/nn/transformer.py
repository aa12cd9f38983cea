"""Transformer encoder layers and stacks: (B, L, dim) tokens with a (B, L) key-padding mask.

One layer class covers both residual orders:

* pre-norm (``norm_first=True``): ``x + Attn(LN(x))``, ``x + MLP(LN(x))``;
* post-norm (``norm_first=False``): ``LN(x + Attn(x))``, ``LN(x + MLP(x))``
  (``torch.nn.TransformerEncoderLayer``'s default).

Every layer's attention probabilities and raw scores are returned. One configuration is
named here:

* ``torch_encoder``: ``nn.TransformerEncoder(nn.TransformerEncoderLayer(d, nhead,
  dim_feedforward, dropout, relu, batch_first=True, norm_first=False), n)`` without a
  final norm (RP3D arXiv-v1 scan fusion).

Dropout (one rate) acts where torch puts it: on attention probabilities, inside the
MLP after the activation, and on each residual branch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from flax import nnx

from radjax.nn.attention import MultiHeadAttention
from radjax.nn.linear import linear, torch_linear_init
from radjax.nn.norms import layer_norm
from radjax.nn.remat import checkpointed
from radjax.sharding import shard_act

Activation = Callable[[jax.Array], jax.Array]
NormFactory = Callable[..., nnx.Module]  # norm(dim, *, rngs) -> module

gelu_exact = functools.partial(jax.nn.gelu, approximate=False)  # torch nn.GELU()


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's ``quick_gelu``: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


class Mlp(nnx.Module):
    """Linear(in, hidden) -> activation -> dropout -> Linear(hidden, out): (..., in) -> (..., out).

    Logical axes: fc1 (embed, mlp), fc2 (mlp, ``out_axis``).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int | None = None,
        *,
        activation: Activation = jax.nn.relu,
        dropout: float = 0.0,
        kernel_init: nnx.Initializer | None = None,
        out_axis: str | None = "embed",
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.fc1 = linear(
            in_dim, hidden_dim, ("embed", "mlp"), init=kernel_init, dtype=dtype, rngs=rngs
        )
        self.fc2 = linear(
            hidden_dim,
            out_dim or in_dim,
            ("mlp", out_axis),
            init=kernel_init,
            dtype=dtype,
            rngs=rngs,
        )
        self.activation = activation
        self.dropout = nnx.Dropout(dropout, rngs=rngs if dropout else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.dropout(self.activation(self.fc1(x))))


class EncoderLayer(nnx.Module):
    """Self-attention + MLP block, pre- or post-norm: (B, L, dim) -> (B, L, dim)."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        mlp_dim: int,
        head_dim: int | None = None,
        norm_first: bool = True,
        norm: NormFactory = layer_norm,
        activation: Activation = jax.nn.relu,
        dropout: float = 0.0,
        qkv_bias: bool = True,
        kernel_init: nnx.Initializer | None = None,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.norm_first = norm_first
        self.attn = MultiHeadAttention(
            dim,
            heads=heads,
            head_dim=head_dim,
            qkv_bias=qkv_bias,
            dropout=dropout,
            kernel_init=kernel_init,
            dtype=dtype,
            rngs=rngs,
        )
        self.mlp = Mlp(
            dim,
            mlp_dim,
            activation=activation,
            dropout=dropout,
            kernel_init=kernel_init,
            dtype=dtype,
            rngs=rngs,
        )
        self.norm1 = norm(dim, rngs=rngs)
        self.norm2 = norm(dim, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs if dropout else None)

    def __call__(
        self, x: jax.Array, mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x (B, L, dim); mask boolean broadcastable to (B, H, L, L), True = attend.

        Returns (x, attention probs (B, H, L, L) f32, raw scores (B, H, L, L) f32).
        """
        if self.norm_first:
            h, probs, scores = self.attn(self.norm1(x), mask=mask)
            x = x + self.dropout(h)
            x = x + self.dropout(self.mlp(self.norm2(x)))
        else:
            h, probs, scores = self.attn(x, mask=mask)
            x = self.norm1(x + self.dropout(h))
            x = self.norm2(x + self.dropout(self.mlp(x)))
        return x, probs, scores


class Encoder(nnx.Module):
    """A stack of ``EncoderLayer``s and an optional final norm: (B, L, dim) -> (B, L, dim).

    Args:
      dim: model width.
      layers: number of layers.
      final_norm: factory of the norm after the stack, or None.
      remat: rematerialise each layer in the backward pass.
      layer: the layer class (``EncoderLayer`` or a subclass with another residual order).
      **layer_kwargs: ``layer`` arguments (heads, mlp_dim, norm_first, ...).
    """

    def __init__(
        self,
        dim: int,
        *,
        layers: int,
        final_norm: NormFactory | None = None,
        remat: bool = False,
        layer: type[EncoderLayer] = EncoderLayer,
        rngs: nnx.Rngs,
        **layer_kwargs,
    ):
        self.layers = nnx.List([layer(dim, rngs=rngs, **layer_kwargs) for _ in range(layers)])
        self.norm = final_norm(dim, rngs=rngs) if final_norm is not None else None
        self.remat = remat

    def __call__(
        self, x: jax.Array, mask: jax.Array | None = None, *, depth: int | None = None
    ) -> tuple[jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...]]:
        """Returns (x, per-layer probs, per-layer raw scores), each (B, H, L, L) f32.

        ``depth``: run only the first ``depth`` layers (then without the final norm), e.g.
        for an intermediate layer's hidden states."""
        all_probs, all_scores = [], []
        for layer in self.layers[:depth]:
            x, probs, scores = checkpointed(layer, x, mask) if self.remat else layer(x, mask)
            x = shard_act(x, ("act_batch", "act_length", "act_embed"))
            all_probs.append(probs)
            all_scores.append(scores)
        if self.norm is not None and len(all_probs) == len(self.layers):
            x = self.norm(x)
        return x, tuple(all_probs), tuple(all_scores)


def torch_encoder(
    dim: int,
    *,
    heads: int,
    layers: int,
    mlp_dim: int = 2048,
    dropout: float = 0.1,
    dtype=None,
    remat: bool = False,
    rngs: nnx.Rngs,
) -> Encoder:
    """``nn.TransformerEncoder`` of post-norm ``nn.TransformerEncoderLayer``s (ReLU, eps 1e-5).

    Kernels use torch's default Linear init (torch initialises the fused q/k/v
    projection xavier-uniform; biases are zero here).
    """
    norm = functools.partial(layer_norm, eps=1e-5, dtype=dtype)
    return Encoder(
        dim,
        layers=layers,
        final_norm=None,
        remat=remat,
        rngs=rngs,
        heads=heads,
        mlp_dim=mlp_dim,
        norm_first=False,
        norm=norm,
        activation=jax.nn.relu,
        dropout=dropout,
        kernel_init=torch_linear_init,
        dtype=dtype,
    )
