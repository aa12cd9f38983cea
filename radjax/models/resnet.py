"""ResNets (He et al. 2016) in NNX: torchvision's 2D ResNet and RP3D-Diag's v1 3D/fuse variants.

All layouts are channels-last: images (B, H, W, C), volumes (B, D, H, W, C).
Attribute names mirror torchvision (``conv1, bn1, layer1..layerN[i].{conv1, bn1, ...,
downsample.{conv, bn}}``), so ``radjax.convert.resnet`` maps checkpoints almost 1:1.

Semantics follow torchvision's ResNet v1.5: the bottleneck strides on its 3x3 conv,
the stem is a 7x7/2 conv + 3x3/2 max-pool (padding 1), convolutions pad
symmetrically by ``dilation * (k - 1) // 2`` as PyTorch does, and BatchNorm has
eps 1e-5 and PyTorch momentum 0.1 (flax momentum 0.9). One difference remains:
flax updates the running variance with the biased batch variance, PyTorch with the
unbiased one (a factor n/(n-1), n = batch x spatial positions).

Kernels carry logical axes (..., 'conv_in', 'conv_out'), BatchNorm scale/bias ('norm',).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from radjax.nn.conv import conv_general_dilated
from radjax.nn.remat import checkpointed
from radjax.sharding import shard_act

_KAIMING = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")

PRESETS: dict[str, dict[str, Any]] = {
    "resnet18": dict(block="basic", layers=(2, 2, 2, 2)),
    "resnet34": dict(block="basic", layers=(3, 4, 6, 3)),
    "resnet50": dict(block="bottleneck", layers=(3, 4, 6, 3)),
}

# RP3D-Diag arXiv-v1 3D ResNet ("MedicalNet" style), per input depth D: the (stride, dilation)
# of layer1..layer4. The original takes (B, C, H, W, D) volumes; strides here are (D, H, W).
MEDICALNET_LAYERS: dict[int, tuple[tuple[tuple[int, int, int], int], ...]] = {
    8: (((1, 1, 1), 1), ((2, 2, 2), 1), ((1, 2, 2), 2), ((1, 2, 2), 4)),
    16: (((1, 1, 1), 1), ((2, 2, 2), 1), ((2, 2, 2), 2), ((1, 2, 2), 4)),
    32: (((1, 1, 1), 1), ((2, 2, 2), 1), ((2, 2, 2), 2), ((2, 2, 2), 4)),
    64: (((2, 1, 1), 1), ((2, 2, 2), 1), ((2, 2, 2), 2), ((2, 2, 2), 4)),
}


def _conv(
    cin: int,
    cout: int,
    kernel: int,
    *,
    ndim: int,
    stride: Any = 1,
    dilation: int = 1,
    dtype: Any = None,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """Bias-free k^ndim conv padded like PyTorch (``dilation * (k - 1) // 2`` each side)."""
    pad = dilation * (kernel - 1) // 2
    return nnx.Conv(
        cin,
        cout,
        (kernel,) * ndim,
        strides=stride,
        padding=((pad, pad),) * ndim,
        kernel_dilation=dilation,
        use_bias=False,
        dtype=dtype,
        kernel_init=_KAIMING,
        conv_general_dilated=conv_general_dilated,
        kernel_metadata={"out_sharding": (None,) * ndim + ("conv_in", "conv_out")},
        rngs=rngs,
    )


def _bn(features: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with PyTorch's defaults (eps 1e-5, momentum 0.1 == flax 0.9)."""
    return nnx.BatchNorm(
        features,
        momentum=0.9,
        epsilon=1e-5,
        use_fast_variance=False,
        rngs=rngs,
        scale_metadata={"out_sharding": ("norm",)},
        bias_metadata={"out_sharding": ("norm",)},
    )


class Downsample(nnx.Module):
    """Shortcut projection, torchvision's ``downsample``: 1x1 conv with the block's stride + BN."""

    def __init__(
        self, cin: int, cout: int, *, stride: Any, ndim: int, dtype: Any = None, rngs: nnx.Rngs
    ):
        self.conv = _conv(cin, cout, 1, ndim=ndim, stride=stride, dtype=dtype, rngs=rngs)
        self.bn = _bn(cout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class _Block(nnx.Module):
    """Residual block: ``relu(residual(x) + shortcut(x))``, optionally rematerialised."""

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, *spatial, C_in) -> (B, *spatial / stride, planes * expansion)."""
        if not self.remat:
            return self.forward(x)
        return checkpointed(self, x, method=type(self).forward)

    def forward(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(self.residual(x) + shortcut)


class BasicBlock(_Block):
    """Two 3x3 convs; the first carries the stride. Both use ``dilation``."""

    expansion = 1

    def __init__(
        self,
        cin: int,
        planes: int,
        *,
        stride: Any = 1,
        dilation: int = 1,
        downsample: bool = False,
        ndim: int = 2,
        remat: bool = False,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        conv = dict(ndim=ndim, dtype=dtype, rngs=rngs)
        self.conv1 = _conv(cin, planes, 3, stride=stride, dilation=dilation, **conv)
        self.bn1 = _bn(planes, rngs=rngs)
        self.conv2 = _conv(planes, planes, 3, dilation=dilation, **conv)
        self.bn2 = _bn(planes, rngs=rngs)
        self.downsample = Downsample(cin, planes, stride=stride, **conv) if downsample else None
        self.remat = remat

    def residual(self, x: jax.Array) -> jax.Array:
        return self.bn2(self.conv2(jax.nn.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_Block):
    """1x1 reduce -> 3x3 (stride, dilation; v1.5) -> 1x1 expand to ``4 * planes``."""

    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        *,
        stride: Any = 1,
        dilation: int = 1,
        downsample: bool = False,
        ndim: int = 2,
        remat: bool = False,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        conv = dict(ndim=ndim, dtype=dtype, rngs=rngs)
        cout = planes * self.expansion
        self.conv1 = _conv(cin, planes, 1, **conv)
        self.bn1 = _bn(planes, rngs=rngs)
        self.conv2 = _conv(planes, planes, 3, stride=stride, dilation=dilation, **conv)
        self.bn2 = _bn(planes, rngs=rngs)
        self.conv3 = _conv(planes, cout, 1, **conv)
        self.bn3 = _bn(cout, rngs=rngs)
        self.downsample = Downsample(cin, cout, stride=stride, **conv) if downsample else None
        self.remat = remat

    def residual(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        return self.bn3(self.conv3(y))


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _block_class(block: str) -> type[_Block]:
    if block not in _BLOCKS:
        raise ValueError(f"ResNet block {block!r} unknown; use one of {sorted(_BLOCKS)}")
    return _BLOCKS[block]


def _make_layer(
    block_cls: type[_Block],
    cin: int,
    planes: int,
    num_blocks: int,
    *,
    stride: Any,
    dilation: int = 1,
    always_downsample: bool = False,
    **kw,
) -> nnx.List:
    """One stage; the first block strides and gets a projection shortcut when the shape
    changes (torchvision's rule) or when ``always_downsample``."""
    cout = planes * block_cls.expansion
    strided = bool(np.any(np.asarray(stride) != 1))
    first = block_cls(
        cin,
        planes,
        stride=stride,
        dilation=dilation,
        downsample=always_downsample or strided or cin != cout,
        **kw,
    )
    rest = [block_cls(cout, planes, dilation=dilation, **kw) for _ in range(num_blocks - 1)]
    return nnx.List([first, *rest])


class _Stages(nnx.Module):
    """Runs ``layer1 .. layerN`` with a batch-sharded activation constraint after each."""

    def _run_layers(self, x: jax.Array) -> jax.Array:
        names = ("act_batch",) + ("act_spatial",) * (x.ndim - 2) + ("act_channels",)
        for i in range(1, self.num_layers + 1):
            for block in getattr(self, f"layer{i}"):
                x = block(x)
            x = shard_act(x, names)
        return x


def _stem(conv: nnx.Conv, bn: nnx.BatchNorm, x: jax.Array) -> jax.Array:
    """conv (7/2) -> bn -> relu -> max-pool 3/2 with padding 1 (padded with -inf)."""
    nd = x.ndim - 2
    x = jax.nn.relu(bn(conv(x)))
    return nnx.max_pool(x, (3,) * nd, strides=(2,) * nd, padding=((1, 1),) * nd)


class ResNet(_Stages):
    """torchvision ResNet (v1.5) without the classifier: images -> pooled features.

    Args:
      block: 'basic' (ResNet-18/34) or 'bottleneck' (ResNet-50 and up).
      layers: blocks per stage, e.g. (3, 4, 6, 3). Stage i (1-based) has
        ``width * 2**(i-1)`` planes and stride 2, except stage 1 (stride 1).
      width: stem channels and stage-1 planes (64 in torchvision).
      in_channels: input image channels.
      remat: rematerialise every block in the backward pass.
      dtype: convolution compute dtype (None = f32); parameters and BatchNorm stay f32.

    ``out_features = width * 2**(len(layers)-1) * expansion`` (2048 for ResNet-50).
    """

    def __init__(
        self,
        *,
        block: str = "bottleneck",
        layers: Sequence[int],
        width: int = 64,
        in_channels: int = 3,
        remat: bool = False,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        block_cls = _block_class(block)
        kw = dict(ndim=2, remat=remat, dtype=dtype, rngs=rngs)
        self.conv1 = _conv(in_channels, width, 7, ndim=2, stride=2, dtype=dtype, rngs=rngs)
        self.bn1 = _bn(width, rngs=rngs)
        cin = width
        for i, n in enumerate(layers):
            planes = width * 2**i
            setattr(
                self,
                f"layer{i + 1}",
                _make_layer(block_cls, cin, planes, n, stride=1 if i == 0 else 2, **kw),
            )
            cin = planes * block_cls.expansion
        self.num_layers = len(layers)
        self.out_features = cin

    def features(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C_in) -> feature map (B, H/32, W/32, out_features) before pooling."""
        return self._run_layers(_stem(self.conv1, self.bn1, x))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C_in) -> globally average-pooled features (B, out_features)."""
        return jnp.mean(self.features(x), axis=(1, 2))


def resnet18(**kw) -> ResNet:
    return ResNet(**PRESETS["resnet18"], **kw)


def resnet34(**kw) -> ResNet:
    return ResNet(**PRESETS["resnet34"], **kw)


def resnet50(**kw) -> ResNet:
    return ResNet(**PRESETS["resnet50"], **kw)


class ResNet3D(_Stages):
    """RP3D-Diag v1's MedicalNet-style 3D ResNet ("3D normalisation module").

    Volumes (B, D, H, W, C_in) with D == ``depth`` -> (B, H/32, W/32, 8 * width * expansion):
    7^3/2 conv stem + 3^3/2 max-pool, then four stages whose (D, H, W) strides and
    dilations come from ``MEDICALNET_LAYERS[depth]``, reducing depth to 1, which is
    squeezed. As in the original, the first block of *every* stage has a projection
    shortcut (its strides are tuples, so its ``stride != 1`` test is always true).
    ResNet-18: ``layers=(2, 2, 2, 2)``, ``block='basic'``.
    """

    def __init__(
        self,
        *,
        depth: int = 16,
        layers: Sequence[int] = (2, 2, 2, 2),
        block: str = "basic",
        width: int = 64,
        in_channels: int = 3,
        remat: bool = False,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        if depth not in MEDICALNET_LAYERS:
            raise ValueError(
                f"ResNet3D depth {depth} unsupported; use one of {sorted(MEDICALNET_LAYERS)}"
            )
        if len(layers) != 4:
            raise ValueError(f"ResNet3D needs 4 stages, got layers={tuple(layers)}")
        block_cls = _block_class(block)
        kw = dict(ndim=3, remat=remat, dtype=dtype, rngs=rngs, always_downsample=True)
        self.depth = depth
        self.conv1 = _conv(in_channels, width, 7, ndim=3, stride=2, dtype=dtype, rngs=rngs)
        self.bn1 = _bn(width, rngs=rngs)
        cin = width
        for i, (n, (stride, dilation)) in enumerate(zip(layers, MEDICALNET_LAYERS[depth])):
            planes = width * 2**i
            setattr(
                self,
                f"layer{i + 1}",
                _make_layer(block_cls, cin, planes, n, stride=stride, dilation=dilation, **kw),
            )
            cin = planes * block_cls.expansion
        self.num_layers = 4
        self.out_features = cin

    def features(self, x: jax.Array) -> jax.Array:
        """(B, D, H, W, C_in) -> (B, d, H/32, W/32, out_features); d == 1 when D == depth."""
        return self._run_layers(_stem(self.conv1, self.bn1, x))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, D, H, W, C_in) -> (B, H/32, W/32, out_features), the depth axis squeezed."""
        y = self.features(x)
        if y.shape[1] != 1:
            raise ValueError(
                f"ResNet3D(depth={self.depth}) got {x.shape[1]} slices, which "
                f"leaves depth {y.shape[1]} != 1; input shape {x.shape}"
            )
        return y[:, 0]


class ResNetFuse(_Stages):
    """RP3D-Diag v1's shared encoder (``resnet34_Fuse``), without its classifier.

    Feature maps (B, h, w, in_channels) -> (B, vis_dim): basic-block stages
    ``layers`` (default [3, 4, 6, 3]); stages 1-3 keep ``width`` channels at stride 1,
    stage 4 goes to ``vis_dim`` channels at stride 2; then global average pooling.
    The original is ``in_channels = width = 512``, ``vis_dim = 1024``.
    """

    def __init__(
        self,
        *,
        layers: Sequence[int] = (3, 4, 6, 3),
        in_channels: int = 512,
        width: int = 512,
        vis_dim: int = 1024,
        remat: bool = False,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        if len(layers) != 4:
            raise ValueError(f"ResNetFuse needs 4 stages, got layers={tuple(layers)}")
        kw = dict(ndim=2, remat=remat, dtype=dtype, rngs=rngs)
        cin = in_channels
        for i, n in enumerate(layers):
            planes, stride = (vis_dim, 2) if i == 3 else (width, 1)
            setattr(
                self, f"layer{i + 1}", _make_layer(BasicBlock, cin, planes, n, stride=stride, **kw)
            )
            cin = planes
        self.num_layers = 4
        self.out_features = vis_dim

    def features(self, x: jax.Array) -> jax.Array:
        """(B, h, w, in_channels) -> (B, h/2, w/2, vis_dim)."""
        return self._run_layers(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, h, w, in_channels) -> (B, vis_dim)."""
        return jnp.mean(self.features(x), axis=(1, 2))
