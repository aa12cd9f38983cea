"""Convolution primitive for ``nnx.Conv(conv_general_dilated=...)``.

XLA's CPU convolutions are far from its matmuls in two cases that ResNets hit all the time,
so those are rewritten as matmuls (exact up to summation order; gradients become matmuls too):

* pointwise (1x1) convolutions: a matmul over channels of the (strided) input;
* kernels whose window is larger than the input or the output map (a 3x3 conv on the 2x2
  maps at the end of a ResNet-50 on 64x64 slices runs at ~2 GFLOP/s, 40x slower than on
  4x4 maps; the backward of a strided 3x3 conv onto 2x2 outputs likewise): the maps are
  tiny, so the patches are gathered and multiplied by the kernel.

Everything else (grouped, input-dilated, channels-first, sharded-output convs, and the common
case) goes to ``jax.lax.conv_general_dilated`` unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp


def _channels_last(dimension_numbers: Any, ndim: int) -> bool:
    """True when the layout is flax's: lhs (N, *spatial, C), rhs (*spatial, I, O)."""
    if dimension_numbers is None:
        return False
    dn = jax.lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
    spatial = tuple(range(1, ndim - 1))
    return (
        dn.lhs_spec == (0, ndim - 1, *spatial)
        and dn.out_spec == dn.lhs_spec
        and dn.rhs_spec == (ndim - 1, ndim - 2, *range(ndim - 2))
    )


def _explicit_pads(
    in_sizes: Sequence[int], extent: Sequence[int], strides: Sequence[int], padding: Any
) -> list[tuple[int, int]]:
    if isinstance(padding, str):
        return jax.lax.padtype_to_pads(in_sizes, extent, strides, padding)
    return [tuple(p) for p in padding]


def _pointwise(lhs, rhs, strides, pads, precision, preferred_element_type):
    """1x1 conv: pad, subsample by the strides, matmul over channels."""
    x = jnp.pad(lhs, [(0, 0), *pads, (0, 0)])
    x = x[(slice(None), *(slice(None, None, s) for s in strides))]
    return jnp.matmul(
        x,
        rhs.reshape(rhs.shape[-2:]),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def _patches(
    lhs, rhs, strides, padding, dilation, dimension_numbers, precision, preferred_element_type
):
    """Gathers (N, *out, Cin * prod(window)) patches and multiplies by the kernel."""
    patches = jax.lax.conv_general_dilated_patches(
        lhs,
        rhs.shape[:-2],
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=dimension_numbers,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    # patch features are ordered (in_channels, *window); match the kernel to that order.
    kernel = jnp.moveaxis(rhs, -2, 0).reshape(-1, rhs.shape[-1])
    return jnp.matmul(
        patches, kernel, precision=precision, preferred_element_type=preferred_element_type
    )


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    out_sharding: Any = None,
) -> jax.Array:
    """``jax.lax.conv_general_dilated`` with the matmul rewrites above (same signature)."""
    window = rhs.shape[:-2]
    dilation = tuple(rhs_dilation or (1,) * len(window))
    rewritable = (
        feature_group_count == 1
        and batch_group_count == 1
        and out_sharding is None
        and all(d == 1 for d in (lhs_dilation or ()))
        and _channels_last(dimension_numbers, lhs.ndim)
    )
    if rewritable:
        extent = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
        in_sizes = lhs.shape[1:-1]
        pads = _explicit_pads(in_sizes, extent, window_strides, padding)
        out_sizes = [
            (n + lo + hi - e) // s + 1
            for n, (lo, hi), e, s in zip(in_sizes, pads, extent, window_strides)
        ]
        if all(k == 1 for k in window):
            return _pointwise(lhs, rhs, window_strides, pads, precision, preferred_element_type)
        if any(e > n for e, n in zip(extent, in_sizes)) or any(
            e > n for e, n in zip(extent, out_sizes)
        ):
            return _patches(
                lhs,
                rhs,
                window_strides,
                pads,
                dilation,
                dimension_numbers,
                precision,
                preferred_element_type,
            )
    kwargs = dict(
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if out_sharding is not None:  # only newer nnx.Conv passes it; keep older jax signatures
        kwargs["out_sharding"] = out_sharding
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
