"""Multi-head dot-product attention with explicit masks.

Layout: sequences are (B, L, dim); per-head tensors are (B, L, H, Dh) (the layout of
``jax.nn.dot_product_attention``); masks are boolean, True = may attend, broadcastable
to (B, H, Lq, Lk). Scores and softmax are computed in f32; masked scores are filled
with a large negative constant (-1e9, as the RP3D/Annotated-Transformer code does)
rather than -inf, so a fully masked row gives a uniform distribution, not NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

MASK_FILL = -1e9


def key_padding_mask(valid: jax.Array) -> jax.Array:
    """(B, Lk) validity (nonzero = real token) -> (B, 1, 1, Lk) boolean attention mask."""
    return (valid != 0)[:, None, None, :]


def attention_scores(q: jax.Array, k: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Scaled f32 scores q·k/sqrt(Dh), masked entries set to MASK_FILL.

    Args:
      q: (B, Lq, H, Dh). k: (B, Lk, H, Dh).
      mask: boolean, broadcastable to (B, H, Lq, Lk); True = attend.
    Returns:
      (B, H, Lq, Lk) f32.
    """
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(q.shape[-1]))
    if mask is not None:
        scores = jnp.where(mask, scores, MASK_FILL)
    return scores


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None = None,
    *,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """softmax(q·k/sqrt(Dh) masked)·v.

    Args:
      q: (B, Lq, H, Dh). k, v: (B, Lk, H, Dh).
      mask: boolean, broadcastable to (B, H, Lq, Lk); True = attend.
      dropout: applied to the probabilities before they weight ``v`` (e.g. an nnx.Dropout).
    Returns:
      out (B, Lq, H, Dh) in v's dtype; probs (B, H, Lq, Lk) f32 (before dropout);
      raw scores (B, H, Lq, Lk) f32 (after masking, before softmax).
    """
    scores = attention_scores(q, k, mask)
    probs = jax.nn.softmax(scores, axis=-1)
    weights = dropout(probs) if dropout is not None else probs
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    return out, probs, scores


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
        init = {} if kernel_init is None else {"kernel_init": kernel_init}

        def proj(d_in, d_out, bias, axes):
            return nnx.Linear(
                d_in,
                d_out,
                use_bias=bias,
                dtype=dtype,
                rngs=rngs,
                kernel_metadata={"out_sharding": axes},
                bias_metadata={"out_sharding": axes[1:]},
                **init,
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
