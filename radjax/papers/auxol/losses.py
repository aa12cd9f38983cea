"""AuxOL's training loss, ``tool.py:structure_loss`` (PraNet's), for the online batch.

Layouts are channels-last: logits and masks (B, H, W, C) f32, masks in {0, 1}. The original::

    weit = 1 + 5 * |avg_pool2d(mask, 31, stride=1, padding=15) - mask|    # pads count (/ 961)
    wbce = binary_cross_entropy_with_logits(pred, mask, reduce='none')
    wbce = (weit * wbce).sum((2, 3)) / weit.sum((2, 3))
    p = sigmoid(pred)
    wiou = 1 - ((p * mask * weit).sum((2, 3)) + 1) / (((p + mask) * weit).sum((2, 3))
                                                       - (p * mask * weit).sum((2, 3)) + 1)
    return (wbce + wiou).mean()                                          # over (B, C)

Quirk (inherited from PraNet): ``reduce='none'`` is the legacy ``reduce`` flag, and the string
is truthy, so BCE comes back as ONE scalar, the mean over the whole batch; the weight map then
cancels (sum(weit * s) / sum(weit) = s). The released loss is therefore
``mean BCE over the batch + mean over (B, C) of each map's weighted IoU``
(``weighted_bce=False``, the default). ``weighted_bce=True`` is what the code means to do:
each map's BCE weighted by ``weit``, then ``mean over (B, C) of (wbce + wiou)``.

Padding rows: the online batch is a fixed-shape buffer with a ``valid`` (B,) mask; the loss
(and so its gradient) over a padded batch equals the original's over its valid rows alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_POOL = 31  # avg_pool2d kernel; padding 15, stride 1, count_include_pad


def _box_mean(mask: jax.Array) -> jax.Array:
    """avg_pool2d(mask, 31, stride 1, padding 15) with the zero padding counted: a 31 x 31 box
    sum / 961, computed as two separable 31-wide sums. (B, H, W, C) -> (B, H, W, C)."""
    half = _POOL // 2
    total = jax.lax.reduce_window(
        mask,
        0.0,
        jax.lax.add,
        (1, _POOL, 1, 1),
        (1, 1, 1, 1),
        ((0, 0), (half, half), (0, 0), (0, 0)),
    )
    total = jax.lax.reduce_window(
        total,
        0.0,
        jax.lax.add,
        (1, 1, _POOL, 1),
        (1, 1, 1, 1),
        ((0, 0), (0, 0), (half, half), (0, 0)),
    )
    return total / (_POOL * _POOL)


def _terms(logits: jax.Array, masks: jax.Array):
    """-> (bce (B, H, W, C) elementwise, weit (B, H, W, C), wiou (B, C)) in f32 (f64 for f64
    logits)."""
    if logits.ndim != 4 or logits.shape != masks.shape:
        raise ValueError(
            f"structure_loss: logits and masks must be (B, H, W, C) of one shape, got "
            f"{logits.shape} and {masks.shape}"
        )
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    x = logits.astype(dtype)
    m = jax.lax.stop_gradient(masks.astype(dtype))
    weit = 1.0 + 5.0 * jnp.abs(_box_mean(m) - m)
    # binary_cross_entropy_with_logits, in its stable form
    bce = jnp.maximum(x, 0.0) - x * m + jnp.log1p(jnp.exp(-jnp.abs(x)))
    p = jax.nn.sigmoid(x)
    inter = (p * m * weit).sum(axis=(1, 2))
    union = ((p + m) * weit).sum(axis=(1, 2))
    wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
    return bce, weit, wiou


def valid_mean(per_row: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Mean of ``per_row`` (B,) over the ``valid`` rows (None = all); 0 when none is."""
    rows = jnp.ones(per_row.shape, bool) if valid is None else jnp.asarray(valid, bool)
    count = jnp.maximum(rows.reshape(per_row.shape).sum(), 1).astype(per_row.dtype)
    return jnp.where(rows.reshape(per_row.shape), per_row, 0.0).sum() / count


def structure_loss(
    logits: jax.Array,
    masks: jax.Array,
    valid: jax.Array | None = None,
    *,
    weighted_bce: bool = False,
) -> jax.Array:
    """The online batch's loss, () f32: ``structure_loss_per_row`` averaged over the valid
    rows. Every row has the same number of pixels, so the code's one BCE mean over the batch
    is the mean of the rows' BCE means.

    Args:
      logits: (B, H, W, C) the U-Net's output; masks: (B, H, W, C) in {0, 1}.
      valid: (B,) bool, rows that hold a crop (None = all). With no valid row the loss is 0
        (and its gradient zero).
      weighted_bce: False = the released code (mean BCE over the valid rows + mean wIoU),
        True = per-map weighted BCE + wIoU, averaged (see the module docstring).
    """
    return valid_mean(structure_loss_per_row(logits, masks, weighted_bce=weighted_bce), valid)


def structure_loss_per_row(
    logits: jax.Array, masks: jax.Array, *, weighted_bce: bool = False
) -> jax.Array:
    """Each row's own loss, (B,) f32: the row's mean BCE (``weighted_bce``: its weighted BCE)
    + its wIoU, averaged over channels; what ``structure_loss`` gives on that row alone."""
    bce, weit, wiou = _terms(logits, masks)
    if weighted_bce:
        wbce = (weit * bce).sum(axis=(1, 2)) / weit.sum(axis=(1, 2))
        return (wbce + wiou).mean(axis=-1)
    return bce.mean(axis=(1, 2, 3)) + wiou.mean(axis=-1)
