"""Perceiver resampler (Flamingo; RadFM's ``helpers.PerceiverResampler``).

A fixed set of learned latents reads a variable number of media tokens:
(B, T, dim) tokens of one image -> (B, num_latents, dim). Each layer is

    latents = PerceiverAttention(tokens, latents) + latents
    latents = FeedForward(latents) + latents

and a final LayerNorm follows. In ``PerceiverAttention`` the queries come from the
normalised latents and the keys/values from the normalised tokens **concatenated with**
the normalised latents; q, kv and output projections have no bias. ``FeedForward`` is
LayerNorm -> Linear(dim, ff_mult*dim) -> exact GELU -> Linear(ff_mult*dim, dim), no biases.
No frame or media-time embeddings (RadFM builds the resampler without them).

Attribute names follow the original state dict: ``latents``, ``layers.{i}.0.{norm_media,
norm_latents,to_q,to_kv,to_out}`` -> ``layers/{i}/attn/...``, ``layers.{i}.1.{0,1,3}`` ->
``layers/{i}/ff/{norm,fc1,fc2}``, ``norm``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.nn.attention import dot_product_attention
from radjax.nn.linear import linear, torch_linear_init
from radjax.nn.norms import layer_norm
from radjax.nn.transformer import gelu_exact
from radjax.sharding import shard_act


def _linear(d_in: int, d_out: int, axes: tuple[str, str], *, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """Bias-free Linear with torch's default init and logical axes ``axes``."""
    return linear(d_in, d_out, axes, use_bias=False, init=torch_linear_init, dtype=dtype, rngs=rngs)


class PerceiverAttention(nnx.Module):
    """Latents attend to [tokens; latents]: (B, T, dim), (B, L, dim) -> (B, L, dim)."""

    def __init__(self, dim: int, *, heads: int, dim_head: int, dtype=None, rngs: nnx.Rngs):
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.norm_media = layer_norm(dim, dtype=dtype, rngs=rngs)
        self.norm_latents = layer_norm(dim, dtype=dtype, rngs=rngs)
        self.to_q = _linear(dim, inner, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.to_kv = _linear(dim, 2 * inner, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.to_out = _linear(inner, dim, ("heads", "embed"), dtype=dtype, rngs=rngs)

    def _split_heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.heads, self.dim_head)

    def __call__(self, tokens: jax.Array, latents: jax.Array) -> jax.Array:
        tokens, latents = self.norm_media(tokens), self.norm_latents(latents)
        q = self._split_heads(self.to_q(latents))
        k, v = jnp.split(self.to_kv(jnp.concatenate([tokens, latents], axis=1)), 2, axis=-1)
        out, _, _ = dot_product_attention(q, self._split_heads(k), self._split_heads(v))
        return self.to_out(out.reshape(*out.shape[:-2], -1))


class FeedForward(nnx.Module):
    """LayerNorm -> Linear -> exact GELU -> Linear, no biases: (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, *, mult: int, dtype=None, rngs: nnx.Rngs):
        self.norm = layer_norm(dim, dtype=dtype, rngs=rngs)
        self.fc1 = _linear(dim, mult * dim, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = _linear(mult * dim, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu_exact(self.fc1(self.norm(x))))


class PerceiverLayer(nnx.Module):
    """One resampler layer (residual attention, then residual feed-forward) on the latents."""

    def __init__(
        self, dim: int, *, heads: int, dim_head: int, ff_mult: int, dtype=None, rngs: nnx.Rngs
    ):
        self.attn = PerceiverAttention(dim, heads=heads, dim_head=dim_head, dtype=dtype, rngs=rngs)
        self.ff = FeedForward(dim, mult=ff_mult, dtype=dtype, rngs=rngs)

    def __call__(self, tokens: jax.Array, latents: jax.Array) -> jax.Array:
        latents = self.attn(tokens, latents) + latents
        return self.ff(latents) + latents


class PerceiverResampler(nnx.Module):
    """(B, T, dim) media tokens -> (B, num_latents, dim) resampled tokens.

    Args:
      dim: token width.
      depth: number of layers (RadFM: 6).
      num_latents: output tokens (RadFM: 32); ``latents`` are initialised N(0, 1).
      heads, dim_head: attention heads and per-head width (inner width heads*dim_head).
      ff_mult: feed-forward hidden width is ``ff_mult * dim``.
    """

    def __init__(
        self,
        dim: int,
        *,
        depth: int = 6,
        num_latents: int = 32,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: int = 4,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.latents = nnx.Param(
            jax.random.normal(rngs.params(), (num_latents, dim)), out_sharding=(None, "embed")
        )
        self.layers = nnx.List(
            [
                PerceiverLayer(
                    dim, heads=heads, dim_head=dim_head, ff_mult=ff_mult, dtype=dtype, rngs=rngs
                )
                for _ in range(depth)
            ]
        )
        self.norm = layer_norm(dim, dtype=dtype, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        latents = jnp.broadcast_to(
            self.latents[...].astype(tokens.dtype), (tokens.shape[0], *self.latents.shape)
        )
        for layer in self.layers:
            latents = layer(tokens, latents)
            latents = shard_act(latents, ("act_batch", "act_length", "act_embed"))
        return self.norm(latents)
