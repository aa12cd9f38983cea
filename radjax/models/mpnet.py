"""MPNet encoder (Song et al. 2020), numerically equal to transformers' ``MPNetModel``.

BERT's post-LN layers (``radjax.models.bert.BertLayer``) and pooler, with two changes:

* Embeddings are word + absolute position, no segments. Positions count the real
  tokens from ``padding_idx + 1`` (RoBERTa/fairseq convention): a token's position
  is ``1 + (number of non-pad tokens up to and including it)``, pad tokens sit at
  position 1. Padding is recognised by token id 1 (transformers hard-codes
  ``padding_idx = 1``, whatever ``pad_token_id`` says), not by the attention mask.
* Every layer adds to its attention logits a learned relative position bias, one
  scalar per head and bucket of the signed distance ``key - query`` (T5-style: 16
  buckets per direction, exact for distances below 8, log-spaced up to 128). It
  depends on the length only, so it is computed once per call and shared by all
  layers. transformers always buckets into 32, whatever
  ``relative_attention_num_buckets`` says, so the table must have at least 32 rows.

Used frozen as the knowledge-enhancement text encoder of RP3D-Diag's released code
(BioLORD-2023). Original weights load with ``radjax.convert.mpnet``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from radjax.models.bert import (
    BertLayer,
    EncoderConfig,
    check_inputs,
    embed,
    layer_norm,
    linear,
    padding_bias,
)
from radjax.sharding import shard_act

PADDING_IDX = 1
NUM_BUCKETS = 32  # buckets used by the bias, both directions together
MAX_DISTANCE = 128  # distances from here on share the last bucket of their direction


@dataclasses.dataclass(frozen=True)
class MPNetConfig(EncoderConfig):
    """MPNet hyper-parameters: the shared ones plus the relative-bias table size."""

    relative_attention_num_buckets: int = 32

    MODEL_TYPE: ClassVar[str] = "mpnet"
    NAME: ClassVar[str] = "MPNet"

    def __post_init__(self):
        super().__post_init__()
        if self.relative_attention_num_buckets < NUM_BUCKETS:
            raise ValueError(
                f"MPNetConfig: relative_attention_num_buckets "
                f"{self.relative_attention_num_buckets} < {NUM_BUCKETS}, the "
                f"buckets transformers' MPNet always uses"
            )
        if self.max_position_embeddings <= PADDING_IDX + 1:
            raise ValueError(
                f"MPNetConfig: max_position_embeddings "
                f"{self.max_position_embeddings} leaves no room for tokens"
            )

    @property
    def max_length(self) -> int:
        """Longest input: positions run from PADDING_IDX + 1 to max_position_embeddings - 1."""
        return self.max_position_embeddings - PADDING_IDX - 1


def relative_position_buckets(length: int) -> np.ndarray:
    """(L, L) int32 bucket of key j seen from query i, in [0, NUM_BUCKETS).

    Buckets 0..15 hold keys at or before the query, 16..31 keys after it; within
    a direction distance d < 8 is bucket d, larger ones ``8 + trunc(8 * log(d / 8) /
    log(16))`` capped at 15, evaluated in float32 as transformers does.
    """
    half = NUM_BUCKETS // 2
    exact = half // 2
    distance = np.arange(length)[:, None] - np.arange(length)[None, :]  # query - key
    offset = np.where(distance < 0, half, 0)
    d = np.abs(distance)
    log_ratio = np.log(np.maximum(d, exact).astype(np.float32) / np.float32(exact)) / np.float32(
        math.log(MAX_DISTANCE / exact)
    )
    far = np.minimum(exact + (log_ratio * np.float32(half - exact)).astype(np.int32), half - 1)
    return (offset + np.where(d < exact, d, far)).astype(np.int32)


def position_ids(input_ids: jax.Array) -> jax.Array:
    """(B, L) ids -> (B, L) positions: PADDING_IDX + running count of real tokens, pads at
    PADDING_IDX."""
    real = (input_ids != PADDING_IDX).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + PADDING_IDX


class MPNetEmbeddings(nnx.Module):
    """Word + padding-aware position embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: MPNetConfig, *, rngs: nnx.Rngs):
        self.word = embed(cfg, cfg.vocab_size, ("vocab", "embed"), rngs=rngs)
        self.position = embed(cfg, cfg.max_position_embeddings, (None, "embed"), rngs=rngs)
        self.norm = layer_norm(cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout, rngs=rngs)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        """(B, L) int ids -> (B, L, H)."""
        x = self.word(input_ids) + self.position(position_ids(input_ids))
        return self.dropout(self.norm(x))


class MPNetModel(nnx.Module):
    """MPNet encoder with pooler; outputs equal transformers' ``MPNetModel`` (f32)."""

    def __init__(self, cfg: MPNetConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = MPNetEmbeddings(cfg, rngs=rngs)
        self.relative_attention_bias = embed(
            cfg,
            cfg.relative_attention_num_buckets,
            (None, "heads"),
            features=cfg.num_heads,
            rngs=rngs,
        )
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.pooler = linear(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", None), rngs=rngs)

    def position_bias(self, length: int) -> jax.Array:
        """(1, N, L, L) f32 relative position bias of an L-token input."""
        table = self.relative_attention_bias.embedding[...]  # (buckets, N) f32
        bias = jnp.take(table, relative_position_buckets(length), axis=0)  # (L, L, N)
        return jnp.transpose(bias, (2, 0, 1))[None]

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Encodes a padded batch.

        Args:
          input_ids: (B, L) int token ids (pad id 1), L <= cfg.max_length.
          attention_mask: (B, L), 1 = real token, 0 = padding.

        Returns:
          last_hidden (B, L, H) and pooled = tanh(Linear(last_hidden[:, 0])) (B, H).
        """
        check_inputs("MPNetModel", input_ids, attention_mask, self.cfg.max_length)
        length = input_ids.shape[1]
        bias = padding_bias(attention_mask) + self.position_bias(length)  # (B, N, L, L)
        x = self.embeddings(input_ids)
        x = shard_act(x, ("act_batch", "act_length", "act_embed"))
        for layer in self.layers:
            x = layer(x, bias)
        pooled = jnp.tanh(self.pooler(x[:, 0]))
        return x, pooled
