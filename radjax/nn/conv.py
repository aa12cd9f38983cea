"""Convolution primitive for ``nnx.Conv(conv_general_dilated=...)``.

XLA's CPU convolutions run far below its matmuls (Intel Xeon, 2 threads, forward + backward
of RP3D's ResNet-50 convs at 64x64..2x2: XLA 477 ms, torch's oneDNN 81 ms, the same convs as
matmuls 70 ms; ``benchmarks/conv.py``), so channels-last convolutions are rewritten
as matmuls (exact up to summation order; gradients become matmuls too):

* pointwise (1x1) convolutions: a matmul over channels of the (strided) input (every backend);
* kernels whose window is larger than the input or the output map (a 3x3 conv on the 2x2
  maps at the end of a ResNet-50 on 64x64 slices ran at ~2 GFLOP/s in XLA): im2col, on every
  backend (those maps are tiny);
* on the CPU, every other one: a kernel as large as its stride, unpadded (a ViT's patch
  embedding), by a reshape into patches and a matmul; any other window by im2col.

im2col gathers the window's strided slices of the padded input side by side on the channel
axis ((N, *out, prod(window) * C_in), window-major, as the (*window, C_in, C_out) kernel
flattens) and multiplies by the kernel. The patches are recomputed in the backward pass
(``jax.checkpoint``), so the step keeps only the conv's input, as XLA's convolution does.

Everything else (grouped, input-dilated, channels-first, sharded-output convs, and the
general case on GPUs / TPUs) goes to ``jax.lax.conv_general_dilated`` unchanged.
"""

from __future__ import annotations

import functools
import itertools
import math
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


def _times_kernel(patches, rhs, precision, preferred_element_type):
    """(N, *out, prod(window) * C_in) patches times the (*window, C_in, C_out) kernel,
    flattened window-major: (N, *out, C_out)."""
    return jnp.matmul(
        patches,
        rhs.reshape(-1, rhs.shape[-1]),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


def _pointwise(lhs, rhs, strides, pads, precision, preferred_element_type):
    """1x1 conv: pad, subsample by the strides, matmul over channels."""
    x = jnp.pad(lhs, [(0, 0), *pads, (0, 0)])
    x = x[(slice(None), *(slice(None, None, s) for s in strides))]
    return _times_kernel(x, rhs, precision, preferred_element_type)


def _patchify(lhs, rhs, precision, preferred_element_type):
    """Kernel = stride, no padding: (N, *out, *window, C_in) blocks by a reshape (cropping a
    ragged edge, as the conv does), then a matmul with the (*window, C_in, C_out) kernel.
    ``radjax.nn.patch_embed`` orders tokens as its originals' rearranges do; this keeps the
    conv's (N, *out) order and its kernel's window-major flattening, in any rank."""
    window, n, cin = rhs.shape[:-2], lhs.shape[0], lhs.shape[-1]
    out = [size // k for size, k in zip(lhs.shape[1:-1], window)]
    x = lhs[(slice(None), *(slice(0, o * k) for o, k in zip(out, window)))]
    x = x.reshape(n, *itertools.chain.from_iterable(zip(out, window)), cin)
    d = len(window)
    x = x.transpose(0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1)
    x = x.reshape(n, *out, math.prod(window) * cin)
    return _times_kernel(x, rhs, precision, preferred_element_type)


@functools.partial(jax.checkpoint, static_argnums=(2, 3, 4, 5, 6, 7), prevent_cse=False)
def _im2col(lhs, rhs, strides, pads, dilation, out_sizes, precision, preferred_element_type):
    """(N, *spatial, C_in) x (*window, C_in, C_out) -> (N, *out, C_out): the window's
    strided slices of the padded input, side by side on the channel axis, times the kernel."""
    window = rhs.shape[:-2]
    x = jnp.pad(lhs, [(0, 0), *pads, (0, 0)])
    cols = [
        x[
            (
                slice(None),
                *(
                    slice(i * d, i * d + (o - 1) * s + 1, s)
                    for i, d, o, s in zip(offset, dilation, out_sizes, strides)
                ),
            )
        ]
        for offset in itertools.product(*(range(k) for k in window))
    ]
    return _times_kernel(jnp.concatenate(cols, axis=-1), rhs, precision, preferred_element_type)


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
        tiny_maps = any(e > n for e, n in zip(extent, in_sizes)) or any(
            e > n for e, n in zip(extent, out_sizes)
        )
        on_cpu = jax.default_backend() == "cpu"
        unpadded = all(lo == hi == 0 for lo, hi in pads)
        if on_cpu and unpadded and tuple(window_strides) == tuple(window) and set(dilation) == {1}:
            return _patchify(lhs, rhs, precision, preferred_element_type)
        if tiny_maps or on_cpu:
            return _im2col(
                lhs,
                rhs,
                tuple(window_strides),
                tuple(tuple(p) for p in pads),
                dilation,
                tuple(out_sizes),
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
