"""EVA ViT-g/14 (BLIP-2's ``eva_vit.py`` as Uni-Med ships it) -> ``radjax.models.vit.ViT``.

The original (MSIIP/Uni-Med ``uni_med/models/eva_vit.py``, ``create_eva_vit_g``) is a pre-norm
ViT: Conv2d patch embedding (with bias), CLS prepended, then a learned absolute position table
over 1 + N tokens, 39 blocks ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` (LayerNorm eps 1e-6,
exact GELU, scale head_dim**-0.5), and **no final norm**: its output is the raw output of the
last block, CLS first, (B, 1 + N, 1408). Its attention has one bias-free ``qkv`` Linear and
two vectors ``q_bias``, ``v_bias``: the bias is ``cat(q_bias, 0, v_bias)``, so **k has none**
(radjax ``qkv_bias='qv'``; ``attn/key`` has no ``bias``). Not used by ``create_eva_vit_g``
and not supported here: layer scale (``init_values``), relative position bias, dropout.

The original takes (B, C, H, W) images, radjax (B, H, W, C). ``vit_config()`` is the
ViT-g of Uni-Med (224 px, patch 14, width 1408, 16 heads of 88, MLP int(1408 * 4.3637) =
6144, 985,894,528 parameters); ``vit_config(args)`` reads the original ``VisionTransformer``
constructor arguments (with ``norm_eps`` for ``norm_layer=partial(LayerNorm, eps=...)``).
Keys (with or without the ``visual_encoder.`` of a full Uni-Med / BLIP-2 state dict)::

  cls_token (1, 1, d)                  -> cls_token (d,)
  pos_embed (1, 1 + N, d)              -> pos_embed/embedding (1 + N, d)
  patch_embed.proj.{weight,bias}       -> patch_embed_2d/proj (conv -> patch kernel)
  blocks.i.norm1 / norm2               -> encoder/layers/i/norm1 / norm2
  blocks.i.attn.qkv.weight ([q|k|v])   -> .../attn/{query,key,value}/kernel
  blocks.i.attn.q_bias / v_bias        -> .../attn/query/bias / value/bias
  blocks.i.attn.proj                   -> .../attn/out
  blocks.i.mlp.fc1 / fc2               -> .../mlp/fc1 / fc2

A ``blocks.i.attn.qkv.bias`` (a fused q/k/v bias, as timm's ViTs have) is rejected: the
original's ``qkv`` has no bias, and its ``load_state_dict(strict=False)`` would drop it
silently. Layer-scale (``gamma_1/2``) and relative-position keys are rejected by name.
``depth`` drops the blocks at and beyond it, as the original's ``strict=False`` load does
when the file holds more blocks than the model (BLIP-2's ``eva_vit_g.pth`` is said to hold
the 40 blocks of EVA-CLIP-g, of which ViT-g uses 39; not checked here). Every other
unknown key raises, naming it, and ``torch_io.assign`` names any missing one (the original
would keep a random init for it).

Precision: the original (``vit_precision: fp16``) halves only the Conv2d / Linear weights and
biases and runs under fp16 autocast; ``q_bias``, ``v_bias``, ``cls_token``, ``pos_embed`` and
the norms stay f32. radjax keeps f32 parameters; ``vit_config(..., dtype=...)`` sets the
compute dtype. ``interpolate_pos_embed`` (bicubic resize of the position table for another
image size) is a no-op at 224 and is not ported: a table of another size is a shape error.

``ln_vision``: Uni-Med's model (``BaseModel.init_vision_encoder``, base_model.py:177) applies
``LayerNorm(1408)`` after the tower, with torch's default eps **1e-5** (the tower's are 1e-6),
freshly initialised (gain 1, bias 0), frozen and in no checkpoint (not in ``eva_vit_g.pth``;
Uni-Med saves only trainable tensors). It is computed in f32 and cast back to the input
dtype. It belongs to the paper's model, not to the tower: the Uni-Med package holds
``ln_vision(width, rngs=...)`` beside the ViT, freezes it, and ``encode_img`` is
``ln_vision(vit(image))[:, 1:]`` (CLS dropped after the norm). No key of this converter
maps to it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from radjax.convert.monai_vit import patch_kernel, split_qkv
from radjax.convert.torch_io import ConversionError, map_keys, module_renamer
from radjax.models.vit import ViTConfig
from radjax.nn.norms import layer_norm

# create_eva_vit_g (eva_vit.py:414-427) as BaseModel.init_vision_encoder calls it in Uni-Med.
EVA_VIT_G = dict(
    img_size=224,
    patch_size=14,
    embed_dim=1408,
    depth=39,
    num_heads=1408 // 88,
    mlp_ratio=4.3637,
    qkv_bias=True,
    norm_eps=1e-6,
)
LN_VISION_EPS = 1e-5  # torch.nn.LayerNorm's default: Uni-Med's ln_vision
# constructor arguments radjax accepts only at these values (VisionTransformer's defaults)
_FIXED = dict(
    init_values=None,
    use_rel_pos_bias=False,
    use_shared_rel_pos_bias=False,
    use_abs_pos_emb=True,
    qk_scale=None,
    drop_rate=0.0,
    attn_drop_rate=0.0,
)
# arguments without effect on the tower's output: no head is built (num_classes,
# use_mean_pooling, init_scale); drop path is the identity in eval mode, where Uni-Med keeps
# the frozen tower (``train = disabled_train``), and radjax has no drop path;
# use_checkpoint (activation checkpointing) saves memory only: ``remat=`` is an override.
_NO_EFFECT = ("num_classes", "use_mean_pooling", "init_scale", "drop_path_rate", "use_checkpoint")
_KNOWN = set(EVA_VIT_G) | set(_FIXED) | set(_NO_EFFECT) | {"in_chans"}

_LAYER = r"blocks\.(\d+)\."
_TO = "encoder/layers/\\1"
_MODULES = (
    (r"patch_embed\.proj", "patch_embed_2d/proj", "linear"),
    (_LAYER + r"norm1", _TO + "/norm1", "norm"),
    (_LAYER + r"norm2", _TO + "/norm2", "norm"),
    (_LAYER + r"attn\.proj", _TO + "/attn/out", "linear"),
    (_LAYER + r"mlp\.fc1", _TO + "/mlp/fc1", "linear"),
    (_LAYER + r"mlp\.fc2", _TO + "/mlp/fc2", "linear"),
)
_BLOCK = re.compile(_LAYER + r"(.+)")
_QV_BIAS = {"attn.q_bias": "query", "attn.v_bias": "value"}
_REJECTED = tuple(
    (re.compile(pattern), why)
    for pattern, why in (
        (_LAYER + r"attn\.qkv\.bias", "a fused q/k/v bias; EVA's qkv has none (q_bias, v_bias)"),
        (_LAYER + r"gamma_[12]", "layer scale (init_values), not supported"),
        (r"(.*\.)?relative_position_(bias_table|index)", "relative position bias, not supported"),
    )
)
_PREFIX = "visual_encoder."


def vit_config(eva: Mapping[str, Any] | None = None, **overrides) -> ViTConfig:
    """The original ``VisionTransformer`` constructor arguments (default: the ViT-g of
    ``create_eva_vit_g``; missing ones from it) -> ``ViTConfig``. ``norm_eps`` stands for
    ``norm_layer=partial(nn.LayerNorm, eps=...)``; ``overrides`` set ``ViTConfig`` fields
    (``dtype``, ``select_layer``, ...).

    Raises:
      ValueError: an unknown argument, or one radjax does not implement (layer scale,
        relative position bias, dropout, ``qk_scale``, no absolute position table).
    """
    args = EVA_VIT_G | dict(eva or {})
    unknown = sorted(set(args) - _KNOWN)
    if unknown:
        raise ValueError(f"eva_vit.vit_config: unknown VisionTransformer arguments {unknown}")
    for name, value in _FIXED.items():
        if args.get(name, value) != value:
            raise ValueError(
                f"eva_vit.vit_config: {name}={args[name]!r} is not supported (only {value!r})"
            )
    fields = dict(
        image_size=args["img_size"],
        patch_size=args["patch_size"],
        width=args["embed_dim"],
        depth=args["depth"],
        num_heads=args["num_heads"],
        mlp_dim=int(args["embed_dim"] * args["mlp_ratio"]),  # Block: int(dim * mlp_ratio)
        channels=args.get("in_chans", 3),
        inputs=("2d",),
        posemb="clip",
        cls_token=True,
        pre_norm=False,
        final_norm=False,
        activation="gelu",
        qkv_bias="qv" if args["qkv_bias"] else False,
        layer_norm_eps=args["norm_eps"],
    )
    return ViTConfig(**(fields | overrides))


def ln_vision(width: int = EVA_VIT_G["embed_dim"], *, dtype=None, rngs: nnx.Rngs) -> nnx.Module:
    """Uni-Med's ``ln_vision``: a fresh ``LayerNorm(width)`` with eps 1e-5 (gain 1, bias 0),
    f32 statistics, output in the input's dtype. (B, T, width) -> (B, T, width)."""
    return layer_norm(width, eps=LN_VISION_EPS, dtype=dtype, rngs=rngs)


def from_eva_vit(
    sd: Mapping[str, np.ndarray], *, depth: int | None = None
) -> dict[str, np.ndarray]:
    """EVA ``VisionTransformer`` state dict (arrays) -> ``{radjax path: array}`` for
    ``torch_io.assign``. ``depth``: drop the blocks with index >= depth (see the module
    docstring).

    Raises:
      ConversionError: naming the keys that are rejected or no parameter of the model.
    """
    rest, out, rejected = {}, {}, []
    for key, value in sd.items():
        key = key.removeprefix(_PREFIX)
        block = _BLOCK.fullmatch(key)
        if depth is not None and block and int(block[1]) >= depth:
            continue
        reason = next((why for pattern, why in _REJECTED if pattern.fullmatch(key)), None)
        if reason is not None:
            rejected.append(f"{key}: {reason}")
        elif key == "cls_token":
            out["cls_token"] = np.asarray(value, np.float32).reshape(-1)
        elif key == "pos_embed":
            value = np.asarray(value, np.float32)
            out["pos_embed/embedding"] = value.reshape(value.shape[-2:])
        elif key == "patch_embed.proj.weight":
            out["patch_embed_2d/proj/kernel"] = patch_kernel(value)
        elif block and block[2] == "attn.qkv.weight":
            out.update(split_qkv(value, f"encoder/layers/{block[1]}/attn", "kernel"))
        elif block and block[2] in _QV_BIAS:
            path = f"encoder/layers/{block[1]}/attn/{_QV_BIAS[block[2]]}/bias"
            out[path] = np.asarray(value, np.float32)
        else:
            rest[key] = value
    if rejected:
        raise ConversionError(
            f"from_eva_vit: {len(rejected)} keys rejected:\n  " + "\n  ".join(sorted(rejected))
        )
    return out | map_keys(rest, module_renamer(_MODULES), caller="from_eva_vit")
