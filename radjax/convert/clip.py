"""transformers ``CLIPVisionModel`` state dicts -> ``radjax.models.vit.ViT`` paths.

CLIP takes (B, C, H, W) images, radjax (B, H, W, C). Its ViT is ``ViTConfig(inputs=('2d',),
posemb='clip', cls_token=True, pre_norm=True, final_norm=True, patch_bias=False,
activation='quick_gelu')`` (``vit_config``); ``post_layernorm``, which transformers applies
to the pooled CLS token only, is the final norm (``pool_type='cls'`` reproduces
``pooler_output``). Keys (with or without the leading ``vision_model.``)::

  embeddings.class_embedding (d,)            -> cls_token
  embeddings.patch_embedding.weight          -> patch_embed_2d/proj/kernel (conv -> patch kernel)
  embeddings.position_embedding.weight       -> pos_embed/embedding (1 + N, d)
  pre_layrnorm / post_layernorm              -> pre_norm / norm
  encoder.layers.i.self_attn.{q,k,v,out}_proj -> encoder/layers/i/attn/{query,key,value,out}
  encoder.layers.i.layer_norm1 / layer_norm2 -> .../norm1 / norm2
  encoder.layers.i.mlp.fc1 / fc2             -> .../mlp/fc1 / fc2

``embeddings.position_ids`` (a buffer) is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from radjax.convert.monai_vit import patch_kernel
from radjax.convert.torch_io import map_keys, module_renamer
from radjax.models.vit import ViTConfig

_LAYER = r"encoder\.layers\.(\d+)\."
_TO = "encoder/layers/\\1"
_MODULES = (
    (r"pre_layrnorm", "pre_norm", "norm"),
    (r"post_layernorm", "norm", "norm"),
    (_LAYER + r"self_attn\.q_proj", _TO + "/attn/query", "linear"),
    (_LAYER + r"self_attn\.k_proj", _TO + "/attn/key", "linear"),
    (_LAYER + r"self_attn\.v_proj", _TO + "/attn/value", "linear"),
    (_LAYER + r"self_attn\.out_proj", _TO + "/attn/out", "linear"),
    (_LAYER + r"layer_norm1", _TO + "/norm1", "norm"),
    (_LAYER + r"layer_norm2", _TO + "/norm2", "norm"),
    (_LAYER + r"mlp\.fc1", _TO + "/mlp/fc1", "linear"),
    (_LAYER + r"mlp\.fc2", _TO + "/mlp/fc2", "linear"),
)
_PREFIX = "vision_model."


def vit_config(hf: Mapping[str, Any], **overrides) -> ViTConfig:
    """A ``CLIPVisionConfig`` (as a dict, ``config.to_dict()``) -> ``ViTConfig``;
    ``overrides`` set e.g. ``select_layer``, ``pool_type``, ``dtype``."""
    fields = dict(
        image_size=hf["image_size"],
        patch_size=hf["patch_size"],
        width=hf["hidden_size"],
        depth=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        mlp_dim=hf["intermediate_size"],
        channels=hf.get("num_channels", 3),
        inputs=("2d",),
        patch_bias=False,
        posemb="clip",
        cls_token=True,
        pre_norm=True,
        final_norm=True,
        activation=hf.get("hidden_act", "quick_gelu"),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
    )
    return ViTConfig(**(fields | overrides))


def from_clip_vision(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CLIPVisionModel state dict (arrays) -> ``{radjax path: array}`` for ``assign``."""
    rest, out = {}, {}
    for key, value in sd.items():
        key = key.removeprefix(_PREFIX)
        if key == "embeddings.class_embedding":
            out["cls_token"] = np.asarray(value, np.float32)
        elif key == "embeddings.patch_embedding.weight":
            out["patch_embed_2d/proj/kernel"] = patch_kernel(value)
        elif key == "embeddings.position_embedding.weight":
            out["pos_embed/embedding"] = np.asarray(value, np.float32)
        elif key != "embeddings.position_ids":
            rest[key] = value
    return out | map_keys(rest, module_renamer(_MODULES), caller="from_clip_vision")
