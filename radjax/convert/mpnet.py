"""transformers MPNet checkpoints -> ``radjax.models.mpnet.MPNetModel``.

Key names follow transformers' ``MPNetModel`` (``embeddings.*``, ``encoder.layer.{i}.*``,
``encoder.relative_attention_bias``, ``pooler.*``), optionally under an ``mpnet.``
prefix (``MPNetFor*`` checkpoints, whose task heads such as ``lm_head.*`` are left
out). sentence-transformers directories (BioLORD-2023) store the bare ``MPNetModel``.
Linear weights are stored (out, in) in PyTorch and become (in, out) kernels.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from radjax.convert.bert import load_hf_encoder, map_hf_keys
from radjax.models.mpnet import MPNetConfig, MPNetModel

_PREFIX = "mpnet."
_BUFFERS = frozenset({"embeddings.position_ids"})

# transformers module name -> (radjax module path, kind); \1 is the layer index.
_MODULES = (
    (r"embeddings\.word_embeddings", "embeddings/word", "embed"),
    (r"embeddings\.position_embeddings", "embeddings/position", "embed"),
    (r"embeddings\.LayerNorm", "embeddings/norm", "norm"),
    (r"encoder\.relative_attention_bias", "relative_attention_bias", "embed"),
    (r"encoder\.layer\.(\d+)\.attention\.attn\.q", r"layers/\1/attention/query", "linear"),
    (r"encoder\.layer\.(\d+)\.attention\.attn\.k", r"layers/\1/attention/key", "linear"),
    (r"encoder\.layer\.(\d+)\.attention\.attn\.v", r"layers/\1/attention/value", "linear"),
    (r"encoder\.layer\.(\d+)\.attention\.attn\.o", r"layers/\1/attention/out", "linear"),
    (r"encoder\.layer\.(\d+)\.attention\.LayerNorm", r"layers/\1/attention_norm", "norm"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense", r"layers/\1/intermediate", "linear"),
    (r"encoder\.layer\.(\d+)\.output\.dense", r"layers/\1/output", "linear"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm", r"layers/\1/output_norm", "norm"),
    (r"pooler\.dense", "pooler", "linear"),
)


def from_hf_mpnet(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maps a transformers MPNet state dict onto radjax paths ('/'-joined), f32.

    Raises:
      ConversionError: a key inside the encoder that is no MPNet parameter.
    """
    return map_hf_keys(sd, _MODULES, prefix=_PREFIX, buffers=_BUFFERS, caller="from_hf_mpnet")


def load_mpnet(model_dir: str | os.PathLike) -> tuple[MPNetModel, Any]:
    """Loads a local transformers MPNet directory: (MPNetModel in eval mode, tokenizer)."""
    return load_hf_encoder(model_dir, MPNetConfig, MPNetModel, from_hf_mpnet)
