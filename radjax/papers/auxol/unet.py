"""AuxOL's auxiliary U-Net (``Nets/Unet/unet_{model,parts}.py``: milesial's Pytorch-UNet with
InstanceNorm), channels-last.

``UNet(cfg)(x)``: x (B, H, W, in_channels) -> logits (B, H, W, n_classes). Any H, W work:
``Down`` max-pools with floor (an odd map loses its last row / column) and ``Up`` pads the
upsampled map to its skip's size, ``diff // 2`` before and ``diff - diff // 2`` after.

Blocks, as the original:

* ``DoubleConv``: [conv 3x3 (padding 1, no bias) -> InstanceNorm (no affine, eps 1e-5, biased
  variance per sample and channel over H, W; no running statistics) -> ReLU] x 2;
* ``Down``: max-pool 2 -> DoubleConv;
* ``Up`` (``bilinear=True``, what run.sh passes): bilinear x2 with ``align_corners=True``
  (``nn.Upsample``; not ``jax.image.resize``, which maps pixel centres), pad, concat
  [skip, up] on channels, DoubleConv with mid = in // 2. ``bilinear=False``: a 2x2 stride-2
  transposed conv (in -> in // 2, with bias), pad, concat, DoubleConv(in, out);
* ``OutConv``: conv 1x1 with bias.

Widths: ``base`` (64 in the original) x (1, 2, 4, 8, 16 // factor) on the way down, factor 2
with ``bilinear``; ``base`` is configurable so that narrow U-Nets can be tested against the
original parts built at the same widths. Initialisation is torch's default (kaiming-uniform
a = sqrt(5): U(+-1/sqrt(fan_in)) for kernels and biases), since AuxOL trains from scratch.

Parameter paths follow the original's module names: ``inc/double_conv/{0,1}/kernel``
(torch ``double_conv.0`` / ``.3``), ``down<i>/conv/...`` (torch ``maxpool_conv.1``),
``up<i>/conv/...``, ``up<i>/up/{kernel,bias}`` (transposed conv), ``outc/conv/{kernel,bias}``;
``radjax.papers.auxol.convert`` maps a torch state dict onto them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from radjax.nn.conv import conv_general_dilated
from radjax.nn.linear import torch_linear_init

_EPS = 1e-5  # nn.InstanceNorm2d


def _torch_uniform(fan_in: int) -> nnx.Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default conv bias (and, with the fan_in of
    its weight layout, transposed-conv kernel) init."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """``UNet(n_channels=in_channels, n_classes, bilinear)``; defaults = run.sh (4 channels:
    RGB + SAM's binary mask, ``--bilinear``)."""

    in_channels: int = 4
    n_classes: int = 1
    base: int = 64  # the original's fixed width (64, 128, 256, 512, 1024 // factor)
    bilinear: bool = True
    dtype: str = "float32"  # compute dtype; parameters and InstanceNorm statistics are f32


def instance_norm(x: jax.Array) -> jax.Array:
    """``nn.InstanceNorm2d`` (affine=False, track_running_stats=False): (B, H, W, C) normalised
    per sample and channel over H, W with the biased variance, in f32 (f64 for f64 inputs)."""
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = x32.mean(axis=(1, 2), keepdims=True)
    var = jnp.square(x32 - mean).mean(axis=(1, 2), keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + _EPS)).astype(x.dtype)


def _conv(cin: int, cout: int, kernel: int, *, bias: bool, dtype, rngs: nnx.Rngs) -> nnx.Conv:
    pad = (kernel - 1) // 2
    return nnx.Conv(
        cin,
        cout,
        (kernel, kernel),
        padding=((pad, pad), (pad, pad)),
        use_bias=bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=torch_linear_init,
        bias_init=_torch_uniform(cin * kernel * kernel),
        conv_general_dilated=conv_general_dilated,
        kernel_metadata={"out_sharding": (None, None, "conv_in", "conv_out")},
        bias_metadata={"out_sharding": ("conv_out",)},
        rngs=rngs,
    )


class DoubleConv(nnx.Module):
    """[conv 3x3 no bias -> InstanceNorm -> ReLU] x 2: (B, H, W, cin) -> (B, H, W, cout)."""

    def __init__(self, cin: int, cout: int, mid: int | None = None, *, dtype, rngs: nnx.Rngs):
        mid = mid or cout
        self.double_conv = nnx.List(
            [
                _conv(cin, mid, 3, bias=False, dtype=dtype, rngs=rngs),
                _conv(mid, cout, 3, bias=False, dtype=dtype, rngs=rngs),
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv in self.double_conv:
            x = jax.nn.relu(instance_norm(conv(x)))
        return x


class Down(nnx.Module):
    """Max-pool 2 (floor) -> DoubleConv: (B, H, W, cin) -> (B, H // 2, W // 2, cout)."""

    def __init__(self, cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
        self.conv = DoubleConv(cin, cout, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID"))


def align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) f32 weights of 1-D linear interpolation with ``align_corners=True`` as
    torch computes them: src = o * (n_in - 1) / (n_out - 1) (scale in f32), i0 = floor(src),
    i1 = min(i0 + 1, n_in - 1), weights (1 - l, l) with l = src - i0."""
    scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
    src = scale * np.arange(n_out, dtype=np.float32)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0.astype(np.float32)
    out = np.zeros((n_out, n_in), np.float32)
    np.add.at(out, (np.arange(n_out), i0), np.float32(1) - lam)
    np.add.at(out, (np.arange(n_out), i1), lam)
    return out


def upsample_align_corners(x: jax.Array, factor: int = 2) -> jax.Array:
    """``nn.Upsample(scale_factor=factor, mode='bilinear', align_corners=True)`` on
    (B, H, W, C) -> (B, factor * H, factor * W, C), as two interpolation matmuls."""
    _, h, w, _ = x.shape
    mh = jnp.asarray(align_corners_matrix(h, factor * h), x.dtype)
    mw = jnp.asarray(align_corners_matrix(w, factor * w), x.dtype)
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=hi)
    return jnp.einsum("pw,bowc->bopc", mw, x, precision=hi)


class UpConv(nnx.Module):
    """``nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)``: (B, H, W, cin) ->
    (B, 2H, 2W, cout). The windows do not overlap, so it is one einsum: out[2i + a, 2j + b] =
    x[i, j] @ kernel[a, b] + bias; kernel (2, 2, cin, cout) = torch weight (cin, cout, 2, 2)
    moved."""

    def __init__(self, cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
        init = _torch_uniform(cout * 4)  # torch's fan_in of a (cin, cout, 2, 2) weight
        self.dtype = dtype
        self.kernel = nnx.Param(
            init(rngs.params(), (2, 2, cin, cout)),
            out_sharding=(None, None, "conv_in", "conv_out"),
        )
        self.bias = nnx.Param(init(rngs.params(), (cout,)), out_sharding=("conv_out",))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        dtype = self.dtype or x.dtype
        y = jnp.einsum("bhwc,ijco->bhiwjo", x.astype(dtype), self.kernel[...].astype(dtype))
        y = y + self.bias[...].astype(dtype)
        return y.reshape(b, 2 * h, 2 * w, -1)


def pad_to(x: jax.Array, like: jax.Array) -> jax.Array:
    """``F.pad`` of x (B, h, w, C) to like's (H, W): ``diff // 2`` before, the rest after
    (negative differences crop, as F.pad does)."""
    dy, dx = like.shape[1] - x.shape[1], like.shape[2] - x.shape[2]
    zero = jnp.zeros((), x.dtype)
    pads = ((0, 0, 0), (dy // 2, dy - dy // 2, 0), (dx // 2, dx - dx // 2, 0), (0, 0, 0))
    return jax.lax.pad(x, zero, pads)


class Up(nnx.Module):
    """Upsample x (B, h, w, cin'), pad to the skip (B, H, W, C_s), concat [skip, up],
    DoubleConv -> (B, H, W, cout)."""

    def __init__(self, cin: int, cout: int, bilinear: bool, *, dtype, rngs: nnx.Rngs):
        if bilinear:
            self.up = None
            self.conv = DoubleConv(cin, cout, cin // 2, dtype=dtype, rngs=rngs)
        else:
            self.up = UpConv(cin, cin // 2, dtype=dtype, rngs=rngs)
            self.conv = DoubleConv(cin, cout, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        x = upsample_align_corners(x) if self.up is None else self.up(x)
        x = pad_to(x, skip)
        return self.conv(jnp.concatenate([skip, x.astype(skip.dtype)], axis=-1))


class OutConv(nnx.Module):
    """Conv 1x1 with bias: (B, H, W, cin) -> (B, H, W, n_classes)."""

    def __init__(self, cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
        self.conv = _conv(cin, cout, 1, bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class UNet(nnx.Module):
    """The auxiliary U-Net: x (B, H, W, in_channels) in [0, 1] -> f32 logits
    (B, H, W, n_classes)."""

    def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        c = cfg.base
        factor = 2 if cfg.bilinear else 1
        kw = dict(dtype=dtype, rngs=rngs)
        self.inc = DoubleConv(cfg.in_channels, c, **kw)
        self.down1 = Down(c, 2 * c, **kw)
        self.down2 = Down(2 * c, 4 * c, **kw)
        self.down3 = Down(4 * c, 8 * c, **kw)
        self.down4 = Down(8 * c, 16 * c // factor, **kw)
        self.up1 = Up(16 * c, 8 * c // factor, cfg.bilinear, **kw)
        self.up2 = Up(8 * c, 4 * c // factor, cfg.bilinear, **kw)
        self.up3 = Up(4 * c, 2 * c // factor, cfg.bilinear, **kw)
        self.up4 = Up(2 * c, c, cfg.bilinear, **kw)
        self.outc = OutConv(c, cfg.n_classes, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.cfg.in_channels:
            raise ValueError(
                f"UNet: expected (B, H, W, {self.cfg.in_channels}) input, got shape {x.shape}"
            )
        x = x.astype(jnp.dtype(self.cfg.dtype))
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x).astype(jnp.float32)
