"""Token-level language-model losses: weighted next-token cross-entropy, plain or fused
with the LM head.

All return ``sum_i w_i * CE_i / sum_i w_i`` in f32 (0 when no weight is positive). With
weights in {0, 1} that is transformers' mean cross-entropy over non-ignored labels; RadFM's
paper weights medical-entity tokens 3 (``radjax.metrics.entities.entity_token_weights``).

``fused_head_cross_entropy`` takes the final hidden states and the head kernel instead of
logits. Its forward pass computes the loss and, at the same time, the gradients with respect
to hidden states and kernel (a ``jax.custom_vjp`` whose backward only scales them by the
incoming cotangent), so the (tokens, vocab) logits and their gradient are never stored for
the backward pass: the three head matmuls run once each, and the softmax passes over the
logits are fused. ``num_chunks > 1`` computes them chunk by chunk over tokens (a
``lax.scan``), so at most (tokens / num_chunks, vocab) logits exist at a time, which is what
bounds activation memory for a 32000-token vocabulary on accelerators. Weights are treated as
constants (no gradient flows to them).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def next_token_targets(ids: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Shifts labels for causal LM training: position t predicts ``ids[t + 1]``.

    Args:
      ids: (B, L) int label ids. weights: (B, L) per-label weight (0 = ignored, e.g.
        padding, prompt or image tokens).
    Returns:
      targets (B, L) int32 and weights (B, L) f32, aligned with the logits of every
      position; the last position gets target 0 with weight 0.
    """
    targets = jnp.concatenate([ids[:, 1:], jnp.zeros_like(ids[:, :1])], axis=1)
    shifted = jnp.concatenate([weights[:, 1:], jnp.zeros_like(weights[:, :1])], axis=1)
    return targets.astype(jnp.int32), shifted.astype(jnp.float32)


def _normaliser(weights: jax.Array) -> jax.Array:
    total = jnp.sum(weights.astype(jnp.float32))
    return jnp.where(total > 0, total, 1.0)


def token_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean cross-entropy. logits (..., V); targets, weights (...) -> () f32."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    weights = weights.astype(jnp.float32)
    return jnp.sum(weights * (lse - picked)) / _normaliser(weights)


def _chunk_loss_and_grads(hidden, kernel, targets, weights, scale, with_grads: bool):
    """One chunk: hidden (n, D), kernel (D, V), targets / weights (n,), scale () = 1 / sum w.

    Returns (summed weighted CE (), dhidden (n, D) or None, dkernel (D, V) f32 or None).
    """
    logits = jnp.dot(hidden, kernel, preferred_element_type=jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    loss = jnp.sum(weights * (lse - picked))
    if not with_grads:
        return loss, None, None
    probs = jnp.exp(logits - lse[:, None])
    is_target = jnp.arange(logits.shape[-1])[None, :] == targets[:, None]
    dlogits = jnp.where(is_target, probs - 1.0, probs) * (weights * scale)[:, None]
    dlogits = dlogits.astype(kernel.dtype)
    dhidden = jax.lax.dot_general(
        dlogits, kernel, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
    ).astype(hidden.dtype)
    dkernel = jax.lax.dot_general(
        hidden, dlogits, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )
    return loss, dhidden, dkernel


def _chunked(hidden, kernel, targets, weights, num_chunks: int, with_grads: bool):
    """(loss, dhidden, dkernel) over all tokens, ``num_chunks`` row chunks at a time."""
    weights = weights.astype(jnp.float32)
    scale = 1.0 / _normaliser(weights)
    targets = targets.astype(jnp.int32)
    if num_chunks == 1:
        loss, dh, dk = _chunk_loss_and_grads(hidden, kernel, targets, weights, scale, with_grads)
        return loss * scale, dh, None if dk is None else dk.astype(kernel.dtype)
    n, d = hidden.shape
    rows = -(-n // num_chunks)
    pad = rows * num_chunks - n
    split = (
        lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(  # noqa: E731
            (num_chunks, rows) + x.shape[1:]
        )
    )
    xs = (split(hidden), split(targets), split(weights))  # padded rows have weight 0

    def body(dkernel, chunk):
        h, t, w = chunk
        loss, dh, dk = _chunk_loss_and_grads(h, kernel, t, w, scale, with_grads)
        return (dkernel + dk if with_grads else dkernel), (loss, dh)

    init = jnp.zeros(kernel.shape, jnp.float32) if with_grads else jnp.zeros((), jnp.float32)
    dkernel, (losses, dh) = jax.lax.scan(body, init, xs)
    if not with_grads:
        return jnp.sum(losses) * scale, None, None
    return (jnp.sum(losses) * scale, dh.reshape(-1, d)[:n], dkernel.astype(kernel.dtype))


def fused_head_cross_entropy(
    hidden: jax.Array,
    kernel: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    *,
    num_chunks: int = 1,
) -> jax.Array:
    """``token_cross_entropy(hidden @ kernel, targets, weights)`` without keeping the logits.

    Args:
      hidden: (N, D) final hidden states (after the final norm), compute dtype.
      kernel: (D, V) LM head kernel (``Decoder.head_kernel()``), same dtype as hidden.
      targets: (N,) int in [0, V). weights: (N,) >= 0.
      num_chunks: token chunks computed one after another (static).
    Returns:
      () f32. Differentiable in hidden and kernel.
    """
    if hidden.ndim != 2 or kernel.ndim != 2 or hidden.shape[1] != kernel.shape[0]:
        raise ValueError(
            f"fused_head_cross_entropy: hidden {hidden.shape} and kernel "
            f"{kernel.shape} must be (N, D) and (D, V)"
        )
    if targets.shape != hidden.shape[:1] or weights.shape != hidden.shape[:1]:
        raise ValueError(
            f"fused_head_cross_entropy: targets {targets.shape} and weights "
            f"{weights.shape} must both be ({hidden.shape[0]},)"
        )
    if num_chunks < 1:
        raise ValueError(f"fused_head_cross_entropy: num_chunks must be >= 1, got {num_chunks}")
    return _fused(hidden, kernel, targets, weights, num_chunks)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused(hidden, kernel, targets, weights, num_chunks):
    return _chunked(hidden, kernel, targets, weights, num_chunks, with_grads=False)[0]


def _fused_fwd(hidden, kernel, targets, weights, num_chunks):
    loss, dhidden, dkernel = _chunked(hidden, kernel, targets, weights, num_chunks, with_grads=True)
    return loss, (dhidden, dkernel, targets, weights)


def _fused_bwd(num_chunks, residuals, g):
    dhidden, dkernel, targets, weights = residuals
    no_grad = np.zeros(targets.shape, jax.dtypes.float0)
    return (
        g.astype(dhidden.dtype) * dhidden,
        g.astype(dkernel.dtype) * dkernel,
        no_grad,
        jnp.zeros_like(weights),
    )


_fused.defvjp(_fused_fwd, _fused_bwd)
