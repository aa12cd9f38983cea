"""BERT encoder (Devlin et al. 2019), numerically equal to transformers' ``BertModel``.

Post-LN transformer: token + position + segment embeddings -> LayerNorm, then
``num_layers`` blocks of ``LN(x + Attn(x))``, ``LN(x + FFN(x))``; the pooler is
``tanh(Linear(h[:, 0]))``. Padding is an additive mask on the attention logits.

Used frozen as the knowledge-enhancement text encoder (RP3D-Diag), and as the
encoder of text stacks. Original weights load with ``radjax.convert.bert``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.sharding import shard_act

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT hyper-parameters (transformers' names in comments where they differ)."""
    vocab_size: int
    hidden_size: int
    num_layers: int            # num_hidden_layers
    num_heads: int             # num_attention_heads
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"   # "gelu" is the exact (erf) GELU, as in transformers
    hidden_dropout: float = 0.1     # hidden_dropout_prob
    attention_dropout: float = 0.1  # attention_probs_dropout_prob
    init_std: float = 0.02     # initializer_range
    dtype: str = "float32"     # compute dtype; parameters are always f32

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"BertConfig: hidden_size {self.hidden_size} is not a multiple "
                             f"of num_heads {self.num_heads}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"BertConfig: hidden_act {self.hidden_act!r} not supported; "
                             f"use one of {sorted(_ACTIVATIONS)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any] | str | os.PathLike) -> BertConfig:
        """Reads a transformers ``config.json`` (a dict, the file, or its directory)."""
        where = "config"
        if not isinstance(config, Mapping):
            where = os.fspath(config)
            if os.path.isdir(where):
                where = os.path.join(where, "config.json")
            if not os.path.isfile(where):
                raise FileNotFoundError(f"BERT config not found: {where}")
            with open(where) as f:
                config = json.load(f)
        model_type = config.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"{where}: model_type {model_type!r} is not a BERT model")
        position = config.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise ValueError(f"{where}: position_embedding_type {position!r} not supported")
        if config.get("is_decoder") or config.get("add_cross_attention"):
            raise ValueError(f"{where}: decoder / cross-attention BERT not supported")
        try:
            return cls(
                vocab_size=config["vocab_size"],
                hidden_size=config["hidden_size"],
                num_layers=config["num_hidden_layers"],
                num_heads=config["num_attention_heads"],
                intermediate_size=config["intermediate_size"],
                max_position_embeddings=config.get("max_position_embeddings", 512),
                type_vocab_size=config.get("type_vocab_size", 2),
                layer_norm_eps=config.get("layer_norm_eps", 1e-12),
                hidden_act=config.get("hidden_act", "gelu"),
                hidden_dropout=config.get("hidden_dropout_prob", 0.1),
                attention_dropout=config.get("attention_probs_dropout_prob", 0.1),
                init_std=config.get("initializer_range", 0.02))
        except KeyError as e:
            raise ValueError(f"{where}: missing field {e.args[0]!r}") from None


def _linear(cfg: BertConfig, din: int, dout: int, axes: tuple, *, rngs: nnx.Rngs) -> nnx.Linear:
    """Linear with BERT's N(0, init_std) kernel, zero bias and logical axes ``axes`` (in, out)."""
    return nnx.Linear(
        din, dout, dtype=cfg.dtype, param_dtype=jnp.float32,
        kernel_init=nnx.initializers.normal(cfg.init_std),
        kernel_metadata={"out_sharding": axes},
        bias_metadata={"out_sharding": axes[1:]},
        rngs=rngs)


def _layer_norm(cfg: BertConfig, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        cfg.hidden_size, epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=jnp.float32,
        use_fast_variance=False,
        scale_metadata={"out_sharding": ("norm",)},
        bias_metadata={"out_sharding": ("norm",)},
        rngs=rngs)


def _embed(cfg: BertConfig, num: int, axes: tuple, *, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(
        num, cfg.hidden_size, dtype=cfg.dtype, param_dtype=jnp.float32,
        embedding_init=nnx.initializers.normal(cfg.init_std),
        embedding_metadata={"out_sharding": axes},
        rngs=rngs)


class BertEmbeddings(nnx.Module):
    """Word + absolute position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.word = _embed(cfg, cfg.vocab_size, ("vocab", "embed"), rngs=rngs)
        self.position = _embed(cfg, cfg.max_position_embeddings, (None, "embed"), rngs=rngs)
        self.token_type = _embed(cfg, cfg.type_vocab_size, (None, "embed"), rngs=rngs)
        self.norm = _layer_norm(cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout, rngs=rngs)

    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        """(B, L) int ids, (B, L) int segments -> (B, L, H)."""
        positions = jnp.arange(input_ids.shape[1])[None]
        x = self.word(input_ids) + self.token_type(token_type_ids) + self.position(positions)
        return self.dropout(self.norm(x))


class BertSelfAttention(nnx.Module):
    """Multi-head self-attention with a key-padding mask (scaled dot product, f32 softmax)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        h = cfg.hidden_size
        self.query = _linear(cfg, h, h, ("embed", "heads"), rngs=rngs)
        self.key = _linear(cfg, h, h, ("embed", "heads"), rngs=rngs)
        self.value = _linear(cfg, h, h, ("embed", "heads"), rngs=rngs)
        self.out = _linear(cfg, h, h, ("heads", "embed"), rngs=rngs)
        self.dropout = nnx.Dropout(cfg.attention_dropout, rngs=rngs)

    def _heads(self, x: jax.Array) -> jax.Array:
        """(B, L, H) -> (B, L, N, H/N)."""
        x = x.reshape(*x.shape[:2], self.num_heads, self.head_dim)
        return shard_act(x, ("act_batch", "act_length", "act_heads", None))

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """(B, L, H) hidden, (B, 1, 1, L) additive mask -> (B, L, H); softmax in >= f32."""
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        logits = jnp.einsum("bqnd,bknd->bnqk", q, k)
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
        probs = jax.nn.softmax(logits * self.head_dim ** -0.5 + bias, axis=-1)
        probs = self.dropout(probs).astype(v.dtype)
        y = jnp.einsum("bnqk,bknd->bqnd", probs, v)
        return self.out(y.reshape(x.shape))


class BertLayer(nnx.Module):
    """Post-LN block: ``x = LN(x + Attn(x)); x = LN(x + W2 act(W1 x))``."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.attention = BertSelfAttention(cfg, rngs=rngs)
        self.attention_norm = _layer_norm(cfg, rngs=rngs)
        self.intermediate = _linear(cfg, cfg.hidden_size, cfg.intermediate_size,
                                    ("embed", "mlp"), rngs=rngs)
        self.output = _linear(cfg, cfg.intermediate_size, cfg.hidden_size,
                              ("mlp", "embed"), rngs=rngs)
        self.output_norm = _layer_norm(cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout, rngs=rngs)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """(B, L, H), (B, 1, 1, L) additive mask -> (B, L, H)."""
        x = self.attention_norm(x + self.dropout(self.attention(x, bias)))
        h = shard_act(self.act(self.intermediate(x)), ("act_batch", "act_length", "act_mlp"))
        x = self.output_norm(x + self.dropout(self.output(h)))
        return shard_act(x, ("act_batch", "act_length", "act_embed"))


class BertModel(nnx.Module):
    """BERT encoder with pooler; outputs equal transformers' ``BertModel`` (f32)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.pooler = _linear(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", None), rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
                 token_type_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Encodes a padded batch.

        Args:
          input_ids: (B, L) int token ids, L <= max_position_embeddings.
          attention_mask: (B, L), 1 = real token, 0 = padding.
          token_type_ids: (B, L) segment ids; None = all zeros.

        Returns:
          last_hidden (B, L, H) and pooled = tanh(Linear(last_hidden[:, 0])) (B, H).
        """
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"BertModel: input_ids {input_ids.shape} and attention_mask "
                             f"{attention_mask.shape} must both be (B, L)")
        if input_ids.shape[1] > self.cfg.max_position_embeddings:
            raise ValueError(f"BertModel: length {input_ids.shape[1]} exceeds "
                             f"max_position_embeddings {self.cfg.max_position_embeddings}")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        valid = attention_mask.astype(bool)[:, None, None, :]
        bias = jnp.where(valid, 0.0, jnp.finfo(jnp.float32).min)  # (B, 1, 1, L) f32
        x = self.embeddings(input_ids, token_type_ids)
        x = shard_act(x, ("act_batch", "act_length", "act_embed"))
        for layer in self.layers:
            x = layer(x, bias)
        pooled = jnp.tanh(self.pooler(x[:, 0]))
        return x, pooled
