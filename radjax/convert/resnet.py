"""PyTorch ResNet state dicts -> ``radjax.models.resnet`` state paths.

Each function takes a flat ``{torch key: array}`` dict (``torch_io.load_state_dict``),
keeps the keys under ``prefix`` and returns ``{NNX path: array}`` for
``torch_io.assign``. Conv kernels go (O, I, *k) -> (*k, I, O); BatchNorm
weight/bias/running_mean/running_var -> scale/bias/mean/var. Classifier heads
and BatchNorm's ``num_batches_tracked`` counters are skipped; any other key
under ``prefix`` that is not a ResNet key raises ``ConversionError``.

  from_torchvision   torchvision ResNet names (conv1.weight, bn1.running_mean,
                     layer1.0.downsample.0.weight, ...), as inside RP3D-Diag's checkpoints
  from_hf_resnet     transformers ``ResNetModel`` names (embedder.embedder.convolution.weight,
                     encoder.stages.0.layers.0.shortcut.convolution.weight, ...)
  from_medicalnet    RP3D-Diag v1 3D ResNet (torchvision names; kernels (O, I, kH, kW, kD))
  from_resnet_fuse   RP3D-Diag v1 shared encoder ``resnet34_Fuse`` (torchvision names)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import numpy as np

from radjax.convert.torch_io import ConversionError, conv_kernel

_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}

_TORCHVISION_MODULE = re.compile(r"(conv1|bn1)|layer\d+\.\d+\.(conv\d|bn\d|downsample\.[01])")
_HF_STEM = {"embedder.embedder.convolution": "conv1", "embedder.embedder.normalization": "bn1"}
_HF_BLOCK = re.compile(
    r"encoder\.stages\.(\d+)\.layers\.(\d+)\."
    r"(?:layer\.(\d+)|shortcut)\.(convolution|normalization)"
)


def _torchvision_path(module: str) -> str | None:
    """'layer1.0.downsample.0' -> 'layer1/0/downsample/conv'; None if not a ResNet module."""
    if not _TORCHVISION_MODULE.fullmatch(module):
        return None
    module = module.replace("downsample.0", "downsample.conv")
    return module.replace("downsample.1", "downsample.bn").replace(".", "/")


def _hf_path(module: str) -> str | None:
    """'encoder.stages.1.layers.0.layer.2.normalization' -> 'layer2/0/bn3'."""
    if module in _HF_STEM:
        return _HF_STEM[module]
    m = _HF_BLOCK.fullmatch(module)
    if not m:
        return None
    stage, block, conv, kind = m.groups()
    base = f"layer{int(stage) + 1}/{block}"
    if conv is None:
        return f"{base}/downsample/{'conv' if kind == 'convolution' else 'bn'}"
    return f"{base}/{'conv' if kind == 'convolution' else 'bn'}{int(conv) + 1}"


def _convert(
    sd: Mapping[str, np.ndarray],
    prefix: str,
    module_path: Callable[[str], str | None],
    heads: tuple[str, ...],
    depth_last: bool = False,
) -> dict[str, np.ndarray]:
    out, unknown = {}, []
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name.startswith(heads) or name.endswith(".num_batches_tracked"):
            continue
        module, _, leaf = name.rpartition(".")
        path = module_path(module)
        kind = path.rsplit("/", 1)[-1] if path else ""
        if kind.startswith("conv") and leaf == "weight":
            out[f"{path}/kernel"] = conv_kernel(np.asarray(value), depth_last=depth_last)
        elif kind.startswith("bn") and leaf in _BN_LEAVES:
            out[f"{path}/{_BN_LEAVES[leaf]}"] = np.asarray(value)
        else:
            unknown.append(f"{key} {tuple(np.shape(value))}")
    if unknown:
        raise ConversionError(
            f"{len(unknown)} keys under prefix {prefix!r} are not ResNet parameters: {unknown[:20]}"
        )
    if not out:
        raise ConversionError(
            f"no ResNet keys under prefix {prefix!r}; the state dict starts with {sorted(sd)[:5]}"
        )
    return out


def from_torchvision(sd: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """torchvision ``ResNet`` keys (``fc.*`` skipped) -> paths of ``ResNet``."""
    return _convert(sd, prefix, _torchvision_path, heads=("fc.",))


def from_hf_resnet(sd: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """transformers ``ResNetModel`` keys -> paths of ``ResNet``.

    Use ``prefix='resnet.'`` for ``ResNetForImageClassification`` (its
    ``classifier.*`` lies outside that prefix). The HF config must be torchvision's
    v1.5: ``downsample_in_bottleneck=False``, ``downsample_in_first_stage=False``.
    """
    return _convert(sd, prefix, _hf_path, heads=())


def from_medicalnet(sd: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """RP3D-Diag v1 3D ResNet keys (e.g. prefix ``'resnet3D.'``) -> paths of ``ResNet3D``.

    The original takes (B, C, H, W, D) volumes, so its kernels (O, I, kH, kW, kD) are
    reordered to radjax's (kD, kH, kW, I, O).
    """
    return _convert(sd, prefix, _torchvision_path, heads=(), depth_last=True)


def from_resnet_fuse(sd: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """RP3D-Diag v1 ``resnet34_Fuse`` keys (e.g. prefix ``'resnetFuse.'``) -> ``ResNetFuse``.

    Its classifier (``fc.*``, or ``fcke.*`` with knowledge enhancement) is skipped.
    """
    return _convert(sd, prefix, _torchvision_path, heads=("fc.", "fcke."))
