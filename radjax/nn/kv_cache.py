"""Preallocated key/value cache for incremental decoding, and attention over it.

One cache type serves every decoder (``radjax.models.llama.Decoder``, ``radjax.models.gpt2.GPT2``):
a plain NamedTuple pytree passed in and out of pure jitted functions
(``radjax.train.generation``). Every array in it except ``length`` has the batch as its
first axis, so beam search can reorder or repeat rows with one ``jax.tree.map``.

Layout: keys and values are (B, K, S, Dh), heads before slots, so the attention matmuls
read them without a transpose; ``grouped_attention`` takes this layout. Under a mesh they are
sharded like activations: rows over (data, fsdp), heads over tensor (``CACHE_AXES``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Self

import jax
import jax.numpy as jnp

from radjax.nn.attention import dot_product_attention
from radjax.sharding import shard_act

# Logical axes of a layer's (B, K, S, Dh) keys / values: rows like the batch, heads like
# the attention heads (replicated where K does not divide the tensor axis).
CACHE_AXES = ("act_batch", "act_heads", None, None)


class KVCache(NamedTuple):
    """Keys and values of the tokens fed so far, plus optional fixed extra keys/values.

    Attributes:
      keys, values: one (B, K, S, Dh) array per layer, compute dtype; slot s holds the
        (RoPE-rotated, where the model uses RoPE) key and the value of the s-th token fed
        since the cache was made.
      valid: (B, S) bool, True for slots holding a real (not padding) token. Left padding
        of a prompt leaves False slots at its start.
      length: () int32, slots filled so far (the same for every row).
      extra_keys, extra_values: per layer, (B, K, P, Dh) keys/values every query also sees
        (GPT-2's ``extra_kv``: visual tokens), fixed while decoding; () when unused.
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    valid: jax.Array
    length: jax.Array
    extra_keys: tuple[jax.Array | None, ...] = ()
    extra_values: tuple[jax.Array | None, ...] = ()

    @classmethod
    def empty(
        cls, batch: int, size: int, *, num_layers: int, heads: int, head_dim: int, dtype
    ) -> Self:
        """``size`` zero slots per row, nothing valid, length 0."""
        shape = (batch, heads, size, head_dim)
        zeros = tuple(shard_act(jnp.zeros(shape, dtype), CACHE_AXES) for _ in range(num_layers))
        return cls(
            keys=zeros,
            values=tuple(jnp.zeros_like(z) for z in zeros),
            valid=jnp.zeros((batch, size), jnp.bool_),
            length=jnp.zeros((), jnp.int32),
        )

    @property
    def size(self) -> int:
        """S, the number of slots."""
        return self.valid.shape[1]


def map_rows(cache: KVCache, fn: Callable[[jax.Array], jax.Array]) -> KVCache:
    """Applies ``fn`` (e.g. a gather or repeat along axis 0) to every per-row array."""
    return jax.tree.map(lambda x: fn(x) if x.ndim else x, cache)


def real_positions(cache: KVCache, valid: jax.Array) -> jax.Array:
    """Positions of new tokens counted over real tokens only, continuing after those in the
    cache: (B, L) validity of the new tokens -> (B, L) int32 (padding gets the position of
    the next real token's predecessor; it is masked anyway)."""
    before = jnp.sum(cache.valid, axis=-1, dtype=jnp.int32)[:, None]
    return before + jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def append(
    cache: KVCache,
    valid: jax.Array,
    positions: jax.Array | None,
    *,
    owner: str,
    sliding_window: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """What a decoder needs to append L new tokens to ``cache``.

    Args:
      valid: (B, L) validity of the new tokens. positions: (B, L) or None (then
        ``real_positions``). owner: the model's name for the error message.
    Returns:
      positions (B, L), the slot validity after the append (B, S), and the attention mask
      of the new tokens over all slots (B, 1, L, S) (``cached_mask``).
    Raises:
      ValueError: L new tokens do not fit the cache's S slots.
    """
    num_new = valid.shape[1]
    if num_new > cache.size:
        raise ValueError(
            f"{owner}: {num_new} new tokens do not fit a KV cache of {cache.size} slots"
        )
    if positions is None:
        positions = real_positions(cache, valid)
    slots = jax.lax.dynamic_update_slice(cache.valid, valid, (0, cache.length))
    return positions, slots, cached_mask(slots, cache.length, num_new, sliding_window)


def write(cache_kv: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """Writes new keys or values (B, K, L, Dh) into a layer's (B, K, S, Dh) cache at slots
    ``[index, index + L)``."""
    out = jax.lax.dynamic_update_slice(cache_kv, new.astype(cache_kv.dtype), (0, 0, index, 0))
    return shard_act(out, CACHE_AXES)


def cached_mask(
    valid: jax.Array, length: jax.Array, num_new: int, sliding_window: int | None = None
) -> jax.Array:
    """Mask of ``num_new`` queries at slots ``length + i`` over all S cache slots.

    Args:
      valid: (B, S) slot validity after writing the new tokens. length: () int32, slots
        filled before them.
    Returns:
      (B, 1, num_new, S) bool (True = attend): causal over slot indices, real keys only,
      within ``sliding_window`` slots when set.
    """
    q = length + jnp.arange(num_new)
    j = jnp.arange(valid.shape[-1])
    allowed = j[None, :] <= q[:, None]
    if sliding_window is not None:
        allowed &= j[None, :] > q[:, None] - sliding_window
    return (allowed[None] & valid[:, None, :])[:, None]


def grouped_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Attention over keys/values in the cache layout: q (B, Lq, H, Dh), k, v (B, K, Lk, Dh)
    (H a multiple of K), boolean mask broadcastable to (B, H, Lq, Lk) -> (B, Lq, H, Dh).
    The shared core (``radjax.nn.attention.dot_product_attention``, f32 scores and softmax)
    with ``kv_layout='bhld'``; probabilities are not returned."""
    return dot_product_attention(q, k, v, mask, dropout=dropout, kv_layout="bhld")[0]
