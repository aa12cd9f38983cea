"""RP3D-Diag's key-slice attention loss (``KLwithGaussian``). f32 throughout."""

from __future__ import annotations

import jax
import jax.numpy as jnp

PROB_FLOOR = 1e-5


def truncated_gaussian_target(
    keys: jax.Array, cutoffs: jax.Array, length: int, std: float
) -> jax.Array:
    """Gaussian over positions 0..length-1 centred at ``keys``, zero from ``cutoffs`` on,
    normalised to sum 1. (S,), (S,) -> (S, length) f32 (NaN rows where nothing is left)."""
    x = jnp.arange(length, dtype=jnp.float32)
    g = jnp.exp(-0.5 * ((x - keys[:, None].astype(jnp.float32)) / std) ** 2)
    g = jnp.where(x < cutoffs[:, None], g, 0.0)
    return g / g.sum(axis=-1, keepdims=True)


def symmetric_kl_gaussian_key_slice(
    scores: jax.Array,
    keys: jax.Array,
    marks: jax.Array,
    length: int,
    std: float,
    valid: jax.Array | None = None,
) -> jax.Array:
    """RP3D-Diag's key-slice attention loss (``KLwithGaussian``).

    target p: Gaussian (``std``) centred at the key slice, cut at the number of valid
    slices, renormalised; prediction q: softmax of the CLS->slice raw attention scores.
    Both are clamped to >= 1e-5 (not renormalised), and the loss is
    (KL(p||q) + KL(q||p)) / 2 summed over slices and averaged over the scans that count
    (``batchmean`` over the original's selected rows); 0 when none counts.

    Args:
      scores: (S, length) raw scores (masked slices already at -1e9).
      keys: (S,) key-slice index; negative = none.
      marks: (S, length) slice validity (nonzero = real slice).
      length: number of slice positions (the original's ``length``).
      std: Gaussian standard deviation in slices (original: length / 16).
      valid: (S,) extra scan selection (e.g. non-padding scans); combined with
        ``keys >= 0`` and at least one valid slice.
    """
    if scores.shape[-1] != length:
        raise ValueError(
            f"key-slice loss: scores have {scores.shape[-1]} positions, length is {length}"
        )
    cutoffs = jnp.sum(marks != 0, axis=-1)
    counted = (keys >= 0) & (cutoffs > 0)
    if valid is not None:
        counted &= valid.astype(bool)
    # Scans that do not count get a harmless target, so no NaN reaches the gradient.
    p = truncated_gaussian_target(
        jnp.where(counted, keys, 0), jnp.where(counted, cutoffs, length), length, std
    )
    p = jnp.maximum(p, PROB_FLOOR)
    q = jnp.maximum(jax.nn.softmax(scores.astype(jnp.float32), axis=-1), PROB_FLOOR)
    log_ratio = jnp.log(p) - jnp.log(q)
    per_scan = 0.5 * jnp.sum((p - q) * log_ratio, axis=-1)
    n = jnp.sum(counted)
    return jnp.sum(jnp.where(counted, per_scan, 0.0)) / jnp.maximum(n, 1)
