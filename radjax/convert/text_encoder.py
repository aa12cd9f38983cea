"""Loads a local BERT-family text-encoder directory, choosing the model by ``model_type``."""

from __future__ import annotations

import os
from typing import Any

from flax import nnx

from radjax.convert.bert import load_bert
from radjax.convert.mpnet import load_mpnet
from radjax.models.bert import read_hf_config


def load_text_encoder(model_dir: str | os.PathLike) -> tuple[nnx.Module, Any]:
    """Loads a local text-encoder directory by its ``config.json`` ``model_type``.

    ``bert`` (also when absent: old BERT configs) gives a ``BertModel``, ``mpnet`` an
    ``MPNetModel``; sentence-transformers directories (BioLORD-2023, all-MiniLM) hold
    the transformers model at their top level and load as such.

    Returns:
      (model in eval mode, transformers tokenizer).

    Raises:
      FileNotFoundError: no such directory, or no ``config.json`` in it.
      ValueError: naming ``config.json``, for any other ``model_type``.
    """
    loaders = {"bert": load_bert, "mpnet": load_mpnet}
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"text encoder: no such directory {os.fspath(model_dir)!r}")
    config, where = read_hf_config(model_dir)
    model_type = config.get("model_type", "bert")
    if model_type not in loaders:
        raise ValueError(
            f"{where}: model_type {model_type!r} is not a supported text encoder; "
            f"supported: {sorted(loaders)}"
        )
    return loaders[model_type](model_dir)
