"""Released RadFM checkpoints (``MultiLLaMAForCausalLM`` state dicts) -> radjax paths.

The released ``pytorch_model.bin`` holds the original model's keys:

  embedding_layer.vision_encoder.to_patch_embedding.{1,2,3}
                                    -> vision/vision_encoder/patch_embed_3d/{norm_in,proj,norm_out}
  embedding_layer.vision_encoder.pos_embedding.{row,col,dep}_embed.weight
                                                            -> .../pos_embed/{row,col,dep}_embed
  embedding_layer.vision_encoder.transformer.layers.i.0.norm      -> .../encoder/layers/i/norm1
  embedding_layer.vision_encoder.transformer.layers.i.0.fn.to_qkv -> .../attn/{query,key,value}
                                                                     (rows split in thirds)
  embedding_layer.vision_encoder.transformer.layers.i.0.fn.to_out.0 -> .../attn/out
  embedding_layer.vision_encoder.transformer.layers.i.1.norm      -> .../layers/i/norm2
  embedding_layer.vision_encoder.transformer.layers.i.1.fn.net.{0,3} -> .../mlp/fc{1,2}
  embedding_layer.perceiver.latents                          -> vision/perceiver/latents
  embedding_layer.perceiver.layers.i.0.{norm_media,norm_latents,to_q,to_kv,to_out}
                                                            -> vision/perceiver/layers/i/attn/...
  embedding_layer.perceiver.layers.i.1.{0,1,3}               -> .../layers/i/ff/{norm,fc1,fc2}
  embedding_layer.perceiver.norm                             -> vision/perceiver/norm
  embedding_layer.fc                                         -> vision/fc
  embedding_layer.figure_token_weight (2, llm_dim)           -> figure_token_weight
  lang_model.*  (transformers LlamaForCausalLM)              -> lang_model/* (convert.llama)

``embedding_layer.weight`` is the LLaMA input embedding (the original ties them); it must
equal ``lang_model.model.embed_tokens.weight`` and is dropped. Dropped as never run in the
released model (``MyEmbedding``'s keyword-matching and segmentation branches):
``embedding_layer.{bert_model, bert_projection_fc, transformer_decoder,
transformer_decoder_mlp, cls_head, output_upscaling}.*``. Any other key raises
``ConversionError``; missing ones and wrong shapes are reported by ``torch_io.assign``.

The ViT's patch flattening order (p1 p2 pf c) is the one ``radjax.nn.patch_embed.patchify_3d`` produces
from radjax's (D, H, W, C) volumes, so the patch-embedding weight is only transposed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from radjax.convert.llama import from_hf_llama
from radjax.convert.torch_io import (
    ConversionError,
    drop_tied_copy,
    linear_kernel,
    map_keys,
    module_renamer,
)
from radjax.models.llama import DecoderConfig

EMBEDDING = "embedding_layer."
LANG = "lang_model."
VISION_MODULES = ("vision_encoder.", "perceiver.", "fc.")
UNUSED_BRANCHES = (
    "bert_model",
    "bert_projection_fc",
    "transformer_decoder",
    "transformer_decoder_mlp",
    "cls_head",
    "output_upscaling",
)
_UNUSED = re.compile(re.escape(EMBEDDING) + "(" + "|".join(UNUSED_BRANCHES) + r")\..*")
_TIED_EMBEDDING = EMBEDDING + "weight"
_FIGURE_TOKENS = EMBEDDING + "figure_token_weight"

_VIT_LAYER = r"vision_encoder\.transformer\.layers\.(\d+)\."
_VIT = "vision_encoder/encoder/layers/\\1"
_PERCEIVER_LAYER = r"perceiver\.layers\.(\d+)\."
_PERCEIVER = "perceiver/layers/\\1"
# (torch module regex, radjax module path, kind) for Linear / LayerNorm modules.
_MODULES = (
    (r"vision_encoder\.to_patch_embedding\.1", "vision_encoder/patch_embed_3d/norm_in", "norm"),
    (r"vision_encoder\.to_patch_embedding\.2", "vision_encoder/patch_embed_3d/proj", "linear"),
    (r"vision_encoder\.to_patch_embedding\.3", "vision_encoder/patch_embed_3d/norm_out", "norm"),
    (_VIT_LAYER + r"0\.norm", _VIT + "/norm1", "norm"),
    (_VIT_LAYER + r"0\.fn\.to_out\.0", _VIT + "/attn/out", "linear"),
    (_VIT_LAYER + r"1\.norm", _VIT + "/norm2", "norm"),
    (_VIT_LAYER + r"1\.fn\.net\.0", _VIT + "/mlp/fc1", "linear"),
    (_VIT_LAYER + r"1\.fn\.net\.3", _VIT + "/mlp/fc2", "linear"),
    (_PERCEIVER_LAYER + r"0\.(norm_media|norm_latents)", _PERCEIVER + "/attn/\\2", "norm"),
    (_PERCEIVER_LAYER + r"0\.(to_q|to_kv|to_out)", _PERCEIVER + "/attn/\\2", "linear"),
    (_PERCEIVER_LAYER + r"1\.0", _PERCEIVER + "/ff/norm", "norm"),
    (_PERCEIVER_LAYER + r"1\.1", _PERCEIVER + "/ff/fc1", "linear"),
    (_PERCEIVER_LAYER + r"1\.3", _PERCEIVER + "/ff/fc2", "linear"),
    (r"perceiver\.norm", "perceiver/norm", "norm"),
    (r"fc", "fc", "linear"),
)
# Parameters that are no Linear / LayerNorm leaf.
_PARAMS = {
    "perceiver.latents": "perceiver/latents",
    **{
        f"vision_encoder.pos_embedding.{axis}_embed.weight": f"vision_encoder/pos_embed/{axis}_embed"
        for axis in ("row", "col", "dep")
    },
}
_FUSED_QKV = re.compile(_VIT_LAYER + r"0\.fn\.to_qkv\.weight")
_module_rename = module_renamer(_MODULES)


def _rename(key: str) -> str | None:
    return _PARAMS.get(key) or _module_rename(key)


def _split_qkv(key: str, w: np.ndarray, layer: str) -> dict[str, np.ndarray]:
    """ViT ``to_qkv.weight`` (3*inner, dim), rows q|k|v -> three (dim, inner) kernels."""
    if w.ndim != 2 or w.shape[0] % 3:
        raise ConversionError(
            f"{key}: fused q/k/v weight of shape {w.shape}; expected (3 * heads * dim_head, dim)"
        )
    parts = np.split(np.asarray(w, np.float32), 3, axis=0)
    return {
        f"vision_encoder/encoder/layers/{layer}/attn/{name}/kernel": linear_kernel(part)
        for name, part in zip(("query", "key", "value"), parts)
    }


def _vision(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keys relative to ``embedding_layer.`` (vision modules only) -> RadFMVision paths."""
    out, rest = {}, {}
    for key, value in sd.items():
        if m := _FUSED_QKV.fullmatch(key):
            out |= _split_qkv(EMBEDDING + key, value, m[1])
        else:
            rest[key] = value
    return out | map_keys(rest, _rename, caller="radfm vision")


def _split(sd: Mapping[str, np.ndarray]) -> tuple[dict, dict, dict]:
    """Checkpoint -> (vision part without ``embedding_layer.``, figure-token entries,
    ``lang_model.`` sub-dict without the prefix); unused branches are dropped.

    Raises ConversionError listing keys that belong to no known part.
    """
    vision, figure, lang, unknown = {}, {}, {}, []
    for key, value in sd.items():
        inner = key.removeprefix(EMBEDDING)
        if key.startswith(EMBEDDING) and inner.startswith(VISION_MODULES):
            vision[inner] = value
        elif key == _FIGURE_TOKENS:
            figure["figure_token_weight"] = np.asarray(value, np.float32)
        elif key.startswith(LANG):
            lang[key.removeprefix(LANG)] = value
        elif key != _TIED_EMBEDDING and not _UNUSED.fullmatch(key):
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"RadFM checkpoint: {len(unknown)} keys fit no part of RadFM (expected "
            f"{EMBEDDING}{{vision_encoder,perceiver,fc,figure_token_weight,weight}}.*, "
            f"{LANG}*, or the unused {EMBEDDING}{{{','.join(UNUSED_BRANCHES)}}}.*): "
            f"{sorted(unknown)[:20]}"
        )
    return vision, figure, lang


def vision_from_radfm(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """RadFM checkpoint -> ``{RadFMVision path: array}`` (e.g. ``perceiver/latents``).

    ``sd`` is the whole checkpoint (``torch_io.load_state_dict``); only the
    ``embedding_layer.{vision_encoder,perceiver,fc}`` entries are converted, the
    language model and figure tokens are left out.
    """
    return _vision(_split(sd)[0])


def from_radfm_state_dict(
    sd: Mapping[str, np.ndarray], decoder_cfg: DecoderConfig
) -> dict[str, np.ndarray]:
    """RadFM checkpoint -> flat radjax paths of a model with attributes ``vision``
    (RadFMVision), ``figure_token_weight`` (2, llm_dim) and ``lang_model`` (llama Decoder).

    Raises:
      ConversionError: unknown keys, a malformed fused weight, or an ``embedding_layer.weight``
        that differs from ``lang_model.model.embed_tokens.weight``.
    """
    sd = dict(sd)
    drop_tied_copy(
        sd, _TIED_EMBEDDING, (LANG + "model.embed_tokens.weight",), caller="RadFM checkpoint"
    )
    vision, figure, lang = _split(sd)
    out = {f"vision/{k}": v for k, v in _vision(vision).items()}
    out |= figure
    out |= {f"lang_model/{k}": v for k, v in from_hf_llama(lang, decoder_cfg).items()}
    return out
