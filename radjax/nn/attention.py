"""Multi-head dot-product attention with explicit masks.

Layout: sequences are (B, L, dim); per-head tensors are (B, L, H, Dh) (the layout of
``jax.nn.dot_product_attention``); masks are boolean, True = may attend, broadcastable
to (B, H, Lq, Lk). Scores are scaled by Dh**-0.5 and they and the softmax are computed
in f32; masked scores are filled with a large negative constant (-1e9, as the
RP3D/Annotated-Transformer code does) rather than -inf, so a fully masked row gives a
uniform distribution, not NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.nn.linear import linear

MASK_FILL = -1e9
# key/value einsum subscripts: b batch, s key index, k key/value head, d head channel
_KV_SPECS = {"blhd": "bskd", "bhld": "bksd"}


def key_padding_mask(valid: jax.Array) -> jax.Array:
    """(B, Lk) validity (nonzero = real token) -> (B, 1, 1, Lk) boolean attention mask."""
    return (valid != 0)[:, None, None, :]


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    *,
    bias: jax.Array | None = None,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
    kv_layout: str = "blhd",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """softmax(q·k * Dh**-0.5 + bias, masked)·v, grouped-query when k/v have fewer heads.

    The one attention core of radjax: every attention layer computes through it.

    Args:
      q: (B, Lq, H, Dh).
      k, v: (B, Lk, K, Dh) (``kv_layout='blhd'``) or (B, K, Lk, Dh) (``'bhld'``, the
        ``radjax.nn.kv_cache`` layout, read without a transpose), H a multiple of K:
        query head h uses key/value head h // (H / K). K = H is plain multi-head attention.
      mask: boolean, broadcastable to (B, H, Lq, Lk); True = attend. Masked scores are
        MASK_FILL.
      bias: additive f32 logit bias broadcastable to (B, H, Lq, Lk) (BERT's padding
        bias, MPNet's relative position bias), added to the scaled scores.
      dropout: applied to the probabilities before they weight ``v`` (e.g. an nnx.Dropout).
    Returns:
      out (B, Lq, H, Dh) in v's dtype; probs (B, H, Lq, Lk) f32 (before dropout);
      raw scores (B, H, Lq, Lk) f32 (scaled, biased and masked, before softmax).
    """
    if kv_layout not in _KV_SPECS:
        raise ValueError(f"dot_product_attention: kv_layout {kv_layout!r} not in {_KV_SPECS}")
    b, lq, h, dh = q.shape
    kv_spec = _KV_SPECS[kv_layout]
    kv_heads = k.shape[kv_spec.index("k")]
    if kv_heads == h:  # plain multi-head: no group axis (a size-1 one costs XLA CPU transposes)
        scores = jnp.einsum(f"bqkd,{kv_spec}->bkqs", q, k, preferred_element_type=jnp.float32)
    else:
        q = q.reshape(b, lq, kv_heads, h // kv_heads, dh)
        scores = jnp.einsum(f"bqkgd,{kv_spec}->bkgqs", q, k, preferred_element_type=jnp.float32)
    scores = scores.reshape(b, h, lq, -1) * (dh**-0.5)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = jnp.where(mask, scores, MASK_FILL)
    probs = jax.nn.softmax(scores, axis=-1)
    weights = dropout(probs) if dropout is not None else probs
    if kv_heads == h:
        out = jnp.einsum(f"bkqs,{kv_spec}->bqkd", weights.astype(v.dtype), v)
        return out, probs, scores
    weights = weights.reshape(b, kv_heads, h // kv_heads, lq, -1).astype(v.dtype)
    out = jnp.einsum(f"bkgqs,{kv_spec}->bqkgd", weights, v)
    return out.reshape(b, lq, h, dh), probs, scores


class MultiHeadAttention(nnx.Module):
    """Attention with separate q, k, v and output projections.

    Projections: ``query``/``key``/``value`` Linear(dim, heads*head_dim), ``out``
    Linear(heads*head_dim, dim). Logical axes: (embed, heads) in, (heads, embed) out.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
        dropout: float = 0.0,
        kernel_init: nnx.Initializer | None = None,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"MultiHeadAttention: dim {dim} not divisible by heads {heads}")
            head_dim = dim // heads
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim

        def proj(d_in, d_out, bias, axes):
            return linear(
                d_in, d_out, axes, use_bias=bias, init=kernel_init, dtype=dtype, rngs=rngs
            )

        self.query = proj(dim, inner, qkv_bias, ("embed", "heads"))
        self.key = proj(dim, inner, qkv_bias, ("embed", "heads"))
        self.value = proj(dim, inner, qkv_bias, ("embed", "heads"))
        self.out = proj(inner, dim, out_bias, ("heads", "embed"))
        self.dropout = nnx.Dropout(dropout, rngs=rngs if dropout else None)

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.heads, self.head_dim)

    def __call__(
        self, x: jax.Array, context: jax.Array | None = None, mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x (B, Lq, dim) attends to ``context`` (B, Lk, dim; default x).

        Returns (out (B, Lq, dim), probs (B, H, Lq, Lk) f32, raw scores (B, H, Lq, Lk) f32).
        """
        context = x if context is None else context
        q, k, v = (
            self._heads(p(t))
            for p, t in ((self.query, x), (self.key, context), (self.value, context))
        )
        out, probs, scores = dot_product_attention(q, k, v, mask, dropout=self.dropout)
        return self.out(out.reshape(*out.shape[:-2], -1)), probs, scores
