"""transformers LLaMA / Mistral / Phi-3 checkpoints -> ``radjax.models.llama.Decoder``.

Key names follow transformers' ``*ForCausalLM``: ``model.embed_tokens.weight``,
``model.layers.{i}.self_attn.{q,k,v,o}_proj.weight``, ``model.layers.{i}.mlp.{gate,up,down}_proj.weight``,
``model.layers.{i}.{input,post_attention}_layernorm.weight``, ``model.norm.weight`` and
``lm_head.weight``. Phi-3 fuses ``self_attn.qkv_proj`` (rows: q, then k, then v) and
``mlp.gate_up_proj`` (rows: gate, then up); they are split into the separate projections.
Linear weights (out, in) become (in, out) kernels. With tied embeddings an ``lm_head.weight``
equal to the embedding table (torch state dicts repeat tied tensors) is dropped.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import numpy as np
from flax import nnx

from radjax.convert.torch_io import (
    ConversionError,
    assign,
    drop_tied_copy,
    load_state_dict,
    map_keys,
    stack_layers,
)
from radjax.models.llama import Decoder, DecoderConfig

_LAYER = r"model\.layers\.(\d+)\."
# transformers key regex -> radjax path; \1 is the layer index.
_KEYS = (
    (r"model\.embed_tokens\.weight", "embed_tokens"),
    (r"model\.norm\.weight", "norm/scale"),
    (r"lm_head\.weight", "lm_head/kernel"),
    (_LAYER + r"self_attn\.([qkvo])_proj\.weight", r"layers/\1/self_attn/\2_proj/kernel"),
    (_LAYER + r"mlp\.(gate|up|down)_proj\.weight", r"layers/\1/mlp/\2_proj/kernel"),
    (_LAYER + r"(input|post_attention)_layernorm\.weight", r"layers/\1/\2_layernorm/scale"),
)
# Checkpoint entries that are buffers, not parameters (old LLaMA files store RoPE tables).
_BUFFERS = re.compile(_LAYER + r"self_attn\.rotary_emb\.inv_freq")
_FUSED_QKV = re.compile(_LAYER + r"self_attn\.qkv_proj\.weight")
_FUSED_GATE_UP = re.compile(_LAYER + r"mlp\.gate_up_proj\.weight")


def _split_rows(key: str, w: np.ndarray, sizes: tuple[int, ...]) -> list[np.ndarray]:
    """Splits a fused (sum(sizes), in) weight into row blocks of ``sizes``."""
    if w.ndim != 2 or w.shape[0] != sum(sizes):
        raise ConversionError(
            f"{key}: fused weight of shape {w.shape}, expected ({sum(sizes)}, in) = rows {sizes}"
        )
    return np.split(w, np.cumsum(sizes)[:-1], axis=0)


def _unfuse(sd: Mapping[str, np.ndarray], cfg: DecoderConfig) -> dict[str, np.ndarray]:
    """Phi-3 fused projections -> the separate LLaMA ones (other keys unchanged)."""
    dh = cfg.dim_per_head
    qkv = (cfg.num_heads * dh, cfg.kv_heads * dh, cfg.kv_heads * dh)
    out = {}
    for key, w in sd.items():
        if m := _FUSED_QKV.fullmatch(key):
            for name, part in zip("qkv", _split_rows(key, w, qkv)):
                out[f"model.layers.{m[1]}.self_attn.{name}_proj.weight"] = part
        elif m := _FUSED_GATE_UP.fullmatch(key):
            gate, up = _split_rows(key, w, (cfg.intermediate_size,) * 2)
            out[f"model.layers.{m[1]}.mlp.gate_proj.weight"] = gate
            out[f"model.layers.{m[1]}.mlp.up_proj.weight"] = up
        else:
            out[key] = w
    return out


def _rename(key: str) -> str | None:
    for pattern, target in _KEYS:
        if m := re.fullmatch(pattern, key):
            return m.expand(target)
    return None


def from_hf_llama(sd: Mapping[str, np.ndarray], cfg: DecoderConfig) -> dict[str, np.ndarray]:
    """Maps a transformers LLaMA / Mistral / Phi-3 state dict onto radjax paths, f32.

    Args:
      sd: ``{transformers key: array}`` of a ``*ForCausalLM`` checkpoint.
      cfg: the model's config (for Phi-3 split sizes and tied embeddings).
    Returns:
      ``{'/'-joined Decoder path: array}`` in radjax layout, for ``assign``.
    Raises:
      ConversionError: keys that are no decoder parameter, a fused weight of the wrong
        size, or a tied head that differs from the embedding table.
    """
    sd = _unfuse({k: v for k, v in sd.items() if not _BUFFERS.fullmatch(k)}, cfg)
    if cfg.tie_word_embeddings:
        drop_tied_copy(sd, "lm_head.weight", ("model.embed_tokens.weight",), caller="from_hf_llama")
    flat = map_keys(sd, _rename, caller="from_hf_llama")
    if cfg.scan_layers:
        return stack_layers(flat, "layers", cfg.num_layers, caller="from_hf_llama")
    return flat


def load_decoder(
    model_dir: str | os.PathLike, *, dtype: str = "float32", scan_layers: bool = False
) -> Decoder:
    """Loads a local transformers LLaMA / Mistral / Phi-3 directory (``config.json`` plus
    ``model.safetensors``, ``pytorch_model.bin`` or shards named by an index file).

    Args:
      dtype: compute dtype of the returned model (parameters stay f32).
      scan_layers: build the scanned form (``DecoderConfig.scan_layers``).
    Raises:
      FileNotFoundError: no such directory or no config.json.
      ValueError: an unsupported config.
      ConversionError: naming the directory, when the weights do not fit the config.
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"decoder directory {model_dir}: no such directory")
    cfg = DecoderConfig.from_hf_config(model_dir)
    cfg = dataclasses.replace(cfg, dtype=dtype, scan_layers=scan_layers)
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    try:
        assign(model, from_hf_llama(load_state_dict(model_dir), cfg), strict=True)
    except ConversionError as e:
        raise ConversionError(f"decoder directory {model_dir}: {e}") from None
    return model
