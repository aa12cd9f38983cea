"""MONAI ``monai.networks.nets.ViT`` state dicts -> ``radjax.models.vit.ViT`` paths.

MONAI takes (B, C, H, W, D) volumes, radjax (B, D, H, W, C) (``image_size`` (H, W),
``frames`` D); the token order is the same ((h, w, d), depth fastest). Supported: the
``conv`` patch projection, ``pos_embed_type='learnable'`` and optionally ``classification``
(CLS token; the classification head is not converted). Keys::

  patch_embedding.patch_embeddings.{weight,bias}  -> patch_embed_3d/proj (conv -> patch kernel)
  patch_embedding.position_embeddings (1, N, d)   -> pos_embed/embedding (N, d)
  cls_token (1, 1, d)                             -> cls_token (d,)
  blocks.i.norm1 / norm2                          -> encoder/layers/i/norm1 / norm2
  blocks.i.attn.qkv (rows [q | k | v])            -> .../attn/{query,key,value}
  blocks.i.attn.out_proj                          -> .../attn/out
  blocks.i.mlp.linear1 / linear2                  -> .../mlp/fc1 / fc2
  norm                                            -> norm

``blocks.i.norm_cross_attn`` (unused without cross-attention) is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from radjax.convert.torch_io import conv_kernel, map_keys, module_renamer

_LAYER = r"blocks\.(\d+)\."
_TO = "encoder/layers/\\1"
_MODULES = (
    (r"patch_embedding\.patch_embeddings", "patch_embed_3d/proj", "linear"),
    (_LAYER + r"norm1", _TO + "/norm1", "norm"),
    (_LAYER + r"norm2", _TO + "/norm2", "norm"),
    (_LAYER + r"attn\.out_proj", _TO + "/attn/out", "linear"),
    (_LAYER + r"mlp\.linear1", _TO + "/mlp/fc1", "linear"),
    (_LAYER + r"mlp\.linear2", _TO + "/mlp/fc2", "linear"),
    (r"norm", "norm", "norm"),
)
_QKV = re.compile(_LAYER + r"attn\.qkv\.(weight|bias)")
_DROPPED = re.compile(_LAYER + r"norm_cross_attn\..*")


def patch_kernel(w: np.ndarray) -> np.ndarray:
    """torch patch Conv weight (dim, C, *patch) with kernel = stride = patch -> radjax
    ``PatchEmbed`` kernel (prod(patch) * C, dim), rows in (patch..., C) order."""
    return conv_kernel(np.asarray(w, np.float32)).reshape(-1, w.shape[0])


def split_qkv(w: np.ndarray, prefix: str, leaf: str) -> dict[str, np.ndarray]:
    """A fused [q | k | v] weight (3 inner, d) or bias (3 inner,) -> the three radjax
    ``{prefix}/{query,key,value}/{kernel|bias}`` entries."""
    parts = np.split(np.asarray(w, np.float32), 3, axis=0)
    return {
        f"{prefix}/{name}/{leaf}": part.T if leaf == "kernel" else part
        for name, part in zip(("query", "key", "value"), parts)
    }


def from_monai_vit(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """MONAI ViT state dict (arrays) -> ``{radjax path: array}`` for ``torch_io.assign``."""
    rest, out = {}, {}
    for key, value in sd.items():
        qkv = _QKV.fullmatch(key)
        if qkv:
            leaf = "kernel" if qkv.group(2) == "weight" else "bias"
            out.update(split_qkv(value, f"encoder/layers/{qkv.group(1)}/attn", leaf))
        elif key == "patch_embedding.patch_embeddings.weight":
            out["patch_embed_3d/proj/kernel"] = patch_kernel(value)
        elif key == "patch_embedding.position_embeddings":
            out["pos_embed/embedding"] = np.asarray(value, np.float32)[0]
        elif key == "cls_token":
            out["cls_token"] = np.asarray(value, np.float32).reshape(-1)
        elif not _DROPPED.fullmatch(key):
            rest[key] = value
    return out | map_keys(rest, module_renamer(_MODULES), caller="from_monai_vit")
