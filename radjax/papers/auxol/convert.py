"""The ORIGINAL AuxOL U-Net's state dict (``Nets/Unet/unet_model.UNet``) -> radjax
``papers.auxol.unet.UNet`` paths. A rename plus layouts:

  inc.double_conv.{0,3}.weight                    -> inc/double_conv/{0,1}/kernel
  down<i>.maxpool_conv.1.double_conv.{0,3}.weight -> down<i>/conv/double_conv/{0,1}/kernel
  up<i>.conv.double_conv.{0,3}.weight             -> up<i>/conv/double_conv/{0,1}/kernel
  up<i>.up.{weight,bias}  (bilinear=False)        -> up<i>/up/{kernel,bias}
  outc.conv.{weight,bias}                         -> outc/conv/{kernel,bias}

Conv weights (O, I, kh, kw) -> (kh, kw, I, O); the transposed conv's (I, O, 2, 2) ->
(2, 2, I, O). InstanceNorm has no parameters or buffers (affine=False, no running stats).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from radjax.convert.torch_io import ConversionError, assign, conv_kernel
from radjax.papers.auxol.unet import UNet

_DOUBLE = {"0": "0", "3": "1"}  # Sequential index of each conv -> radjax double_conv index
_KEY = re.compile(
    r"(?P<block>inc|down[1-4]\.maxpool_conv\.1|up[1-4]\.conv)\.double_conv\.(?P<i>[03])\.weight"
    r"|(?P<up>up[1-4])\.up\.(?P<up_leaf>weight|bias)"
    r"|outc\.conv\.(?P<out_leaf>weight|bias)"
)


def _path(key: str) -> str | None:
    m = _KEY.fullmatch(key)
    if m is None:
        return None
    if m["block"]:
        block = m["block"].replace(".maxpool_conv.1", "/conv").replace(".", "/")
        return f"{block}/double_conv/{_DOUBLE[m['i']]}/kernel"
    if m["up"]:
        return f"{m['up']}/up/{'kernel' if m['up_leaf'] == 'weight' else 'bias'}"
    return f"outc/conv/{'kernel' if m['out_leaf'] == 'weight' else 'bias'}"


def from_auxol_unet(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Original UNet state dict (arrays; a leading ``module.`` is stripped) ->
    ``{radjax path: f32 array}``. Raises ConversionError listing every unknown key."""
    out, unknown = {}, []
    for key, value in sd.items():
        key = key.removeprefix("module.")
        path = _path(key)
        if path is None:
            unknown.append(key)
            continue
        value = np.asarray(value, np.float32)
        if path.endswith("/up/kernel"):
            out[path] = np.transpose(value, (2, 3, 0, 1))  # (I, O, kh, kw) -> (kh, kw, I, O)
        elif path.endswith("kernel"):
            out[path] = conv_kernel(value)
        else:
            out[path] = value
    if unknown:
        raise ConversionError(
            f"from_auxol_unet: {len(unknown)} keys are no parameter of the AuxOL UNet: "
            f"{sorted(unknown)[:20]}"
        )
    return out


def load_auxol_unet(model: UNet, sd: Mapping[str, np.ndarray]) -> None:
    """Writes the original state dict into ``model`` (strict: every parameter covered, shapes
    checked)."""
    assign(model, from_auxol_unet(sd), strict=True)
