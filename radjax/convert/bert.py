"""transformers BERT checkpoints -> ``radjax.models.bert.BertModel``.

Key names follow transformers' ``BertModel`` (``embeddings.*``, ``encoder.layer.{i}.*``,
``pooler.*``), optionally under a ``bert.`` prefix (``BertFor*`` checkpoints, whose task
heads outside ``bert.`` are not part of the encoder and are left out). Old TF-ported
``LayerNorm.gamma/beta`` names are accepted. Linear weights are stored (out, in) in
PyTorch and become (in, out) kernels. ``map_hf_keys`` and ``load_hf_encoder`` serve
every BERT-family encoder (``radjax.convert.mpnet``); ``radjax.convert.text_encoder`` picks
the family from ``config.json``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flax import nnx

from radjax.convert.torch_io import (
    ConversionError,
    assign,
    load_state_dict,
    map_keys,
    module_renamer,
)
from radjax.models.bert import BertConfig, BertModel, EncoderConfig

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


def map_hf_keys(
    sd: Mapping[str, np.ndarray],
    modules: Sequence[tuple[str, str, str]],
    *,
    prefix: str,
    buffers: frozenset[str],
    caller: str,
) -> dict[str, np.ndarray]:
    """Maps a transformers encoder state dict onto radjax paths ('/'-joined), f32.

    Args:
      sd: the state dict. When some keys start with ``prefix`` (task-model
        checkpoints), only those are the encoder: the prefix is stripped and the
        task heads outside it are left out.
      modules: ``(transformers module regex, radjax module path, kind)`` rows, kind
        one of ``embed``, ``linear``, ``norm``; the path may use the regex groups.
      buffers: index buffers some checkpoints store (``embeddings.position_ids``), dropped.
      caller: names the converter in errors.

    Raises:
      ConversionError: a key inside the encoder that is no parameter of it.
    """
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    sd = {k: v for k, v in sd.items() if k not in buffers}
    return map_keys(sd, module_renamer(modules), caller=caller)


def from_hf_bert(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maps a transformers BERT state dict onto radjax paths ('/'-joined), f32.

    Raises:
      ConversionError: a key inside the encoder that is no BERT parameter.
    """
    return map_hf_keys(sd, _MODULES, prefix=_PREFIX, buffers=_BUFFERS, caller="from_hf_bert")


def load_hf_encoder(
    model_dir: str | os.PathLike,
    config_cls: type[EncoderConfig],
    model_cls: type[nnx.Module],
    from_hf: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]],
) -> tuple[nnx.Module, Any]:
    """Loads a local transformers directory of a BERT-family encoder.

    Reads ``config.json`` with ``config_cls``, the weights (``model.safetensors``,
    ``pytorch_model.bin`` loaded weights-only, or shards named by an index file)
    mapped by ``from_hf`` into ``model_cls``, and the tokenizer files.

    Returns:
      (model in eval mode, transformers tokenizer).
    """
    from transformers import AutoTokenizer  # imported here: transformers is slow to import

    model_dir = os.fspath(model_dir)
    where = f"{config_cls.NAME} directory {model_dir}"
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{where}: no such directory")
    cfg = config_cls.from_hf_config(model_dir)
    values = from_hf(load_state_dict(model_dir))
    model = model_cls(cfg, rngs=nnx.Rngs(0))
    try:
        assign(model, values, strict=True)
    except ConversionError as e:
        raise ConversionError(f"{where}: {e}") from None
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if len(tokenizer) > cfg.vocab_size:
        raise ConversionError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens, more than "
            f"config.json's vocab_size {cfg.vocab_size}"
        )
    return model, tokenizer


def load_bert(model_dir: str | os.PathLike) -> tuple[BertModel, Any]:
    """Loads a local transformers BERT directory: (BertModel in eval mode, tokenizer)."""
    return load_hf_encoder(model_dir, BertConfig, BertModel, from_hf_bert)
