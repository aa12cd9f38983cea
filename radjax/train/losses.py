"""Losses shared by the models. All are computed in f32 and return f32 scalars."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sigmoid_bce_clamped(logits: jax.Array, labels: jax.Array, clamp: float = 60.0) -> jax.Array:
    """``BCEWithLogitsLoss()(logits.clamp(-clamp, clamp), labels)``: mean over every element.

    Args:
      logits: (..., C). labels: (..., C) in [0, 1].
    """
    x = jnp.clip(logits.astype(jnp.float32), -clamp, clamp)
    y = labels.astype(jnp.float32)
    return jnp.mean(jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x))))
