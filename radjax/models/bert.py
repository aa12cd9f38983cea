"""BERT encoder (Devlin et al. 2019), numerically equal to transformers' ``BertModel``.

Post-LN transformer: token + position + segment embeddings -> LayerNorm, then
``num_layers`` blocks of ``LN(x + Attn(x))``, ``LN(x + FFN(x))``; the pooler is
``tanh(Linear(h[:, 0]))``. Padding is an additive mask on the attention logits.

The config base class, the layer and its building blocks are shared with MPNet
(``radjax.models.mpnet``), whose layers take an additive relative position bias.

Used frozen as the knowledge-enhancement text encoder (RP3D-Diag), and as the
encoder of text stacks. Original weights load with ``radjax.convert.bert``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.nn import norms
from radjax.nn.attention import dot_product_attention
from radjax.nn.linear import linear as nn_linear
from radjax.sharding import shard_act

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


# transformers config.json names of EncoderConfig fields that are spelled differently.
_HF_NAMES = {
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "hidden_dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "init_std": "initializer_range",
}


def read_hf_config(config: Mapping[str, Any] | str | os.PathLike) -> tuple[dict, str]:
    """A transformers ``config.json`` (a dict, the file, or its directory) -> (fields, where).

    ``where`` names the file for error messages (``'config'`` for a dict).
    """
    if isinstance(config, Mapping):
        return dict(config), "config"
    where = os.fspath(config)
    if os.path.isdir(where):
        where = os.path.join(where, "config.json")
    if not os.path.isfile(where):
        raise FileNotFoundError(f"transformers config not found: {where}")
    try:
        with open(where) as f:
            fields = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{where}: cannot read JSON: {e}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{where}: expected a JSON object")
    return fields, where


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters shared by the post-LN BERT-family encoders (BERT, MPNet).

    Field defaults are transformers' defaults (transformers' names in comments where
    they differ). Subclasses name their ``model_type`` and add their own fields.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int  # num_hidden_layers
    num_heads: int  # num_attention_heads
    intermediate_size: int
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"  # "gelu" is the exact (erf) GELU, as in transformers
    hidden_dropout: float = 0.1  # hidden_dropout_prob
    attention_dropout: float = 0.1  # attention_probs_dropout_prob
    init_std: float = 0.02  # initializer_range
    dtype: str = "float32"  # compute dtype; parameters are always f32

    MODEL_TYPE: ClassVar[str] = ""  # config.json ``model_type``
    NAME: ClassVar[str] = ""  # for messages
    # config.json fields whose other values are not implemented: field -> allowed values,
    # the first being transformers' default.
    HF_SUPPORTED: ClassVar[Mapping[str, tuple]] = {}

    def __post_init__(self):
        name = type(self).__name__
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"{name}: hidden_size {self.hidden_size} is not a multiple "
                f"of num_heads {self.num_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"{name}: hidden_act {self.hidden_act!r} not supported; "
                f"use one of {sorted(ACTIVATIONS)}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any] | str | os.PathLike) -> Self:
        """Reads a transformers ``config.json`` (a dict, the file, or its directory).

        A missing ``model_type`` is taken to be this class's; absent optional
        fields take the defaults above.
        """
        config, where = read_hf_config(config)
        model_type = config.get("model_type", cls.MODEL_TYPE)
        if model_type != cls.MODEL_TYPE:
            raise ValueError(f"{where}: model_type {model_type!r} is not a {cls.NAME} model")
        for field, allowed in cls.HF_SUPPORTED.items():
            value = config.get(field, allowed[0])
            if value not in allowed:
                raise ValueError(
                    f"{where}: {field} {value!r} not supported for {cls.NAME}; "
                    f"expected one of {allowed}"
                )
        kwargs = {}
        for field in dataclasses.fields(cls):
            name = _HF_NAMES.get(field.name, field.name)
            if name in config and field.name != "dtype":
                kwargs[field.name] = config[name]
            elif field.default is dataclasses.MISSING:
                raise ValueError(f"{where}: missing field {name!r}")
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class BertConfig(EncoderConfig):
    """BERT hyper-parameters: the shared ones plus the segment vocabulary."""

    type_vocab_size: int = 2

    MODEL_TYPE: ClassVar[str] = "bert"
    NAME: ClassVar[str] = "BERT"
    HF_SUPPORTED: ClassVar[Mapping[str, tuple]] = {
        "position_embedding_type": ("absolute",),
        "is_decoder": (False,),
        "add_cross_attention": (False,),
    }


def linear(cfg: EncoderConfig, din: int, dout: int, axes: tuple, *, rngs: nnx.Rngs) -> nnx.Linear:
    """Linear with BERT's N(0, init_std) kernel, zero bias and logical axes ``axes`` (in, out)."""
    init = nnx.initializers.normal(cfg.init_std)
    return nn_linear(din, dout, axes, init=init, dtype=cfg.dtype, rngs=rngs)


def layer_norm(cfg: EncoderConfig, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over the hidden size, torch semantics (two-pass variance)."""
    return norms.layer_norm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs)


def embed(
    cfg: EncoderConfig, num: int, axes: tuple, *, features: int | None = None, rngs: nnx.Rngs
) -> nnx.Embed:
    """(num, features) table, N(0, init_std), logical axes ``axes``; features = hidden size."""
    return nnx.Embed(
        num,
        features or cfg.hidden_size,
        dtype=cfg.dtype,
        param_dtype=jnp.float32,
        embedding_init=nnx.initializers.normal(cfg.init_std),
        embedding_metadata={"out_sharding": axes},
        rngs=rngs,
    )


def check_inputs(
    model: str, input_ids: jax.Array, attention_mask: jax.Array, max_length: int
) -> None:
    """Raises ValueError unless ids and mask are both (B, L) with L <= max_length."""
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"{model}: input_ids {input_ids.shape} and attention_mask "
            f"{attention_mask.shape} must both be (B, L)"
        )
    if input_ids.shape[1] > max_length:
        raise ValueError(
            f"{model}: length {input_ids.shape[1]} exceeds {max_length}, "
            f"the most max_position_embeddings allows"
        )


def padding_bias(attention_mask: jax.Array) -> jax.Array:
    """(B, L) mask, 1 = real token -> (B, 1, 1, L) f32 additive bias (0 or f32 min)."""
    valid = attention_mask.astype(bool)[:, None, None, :]
    return jnp.where(valid, 0.0, jnp.finfo(jnp.float32).min)


class BertEmbeddings(nnx.Module):
    """Word + absolute position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.word = embed(cfg, cfg.vocab_size, ("vocab", "embed"), rngs=rngs)
        self.position = embed(cfg, cfg.max_position_embeddings, (None, "embed"), rngs=rngs)
        self.token_type = embed(cfg, cfg.type_vocab_size, (None, "embed"), rngs=rngs)
        self.norm = layer_norm(cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout, rngs=rngs)

    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        """(B, L) int ids, (B, L) int segments -> (B, L, H)."""
        positions = jnp.arange(input_ids.shape[1])[None]
        x = self.word(input_ids) + self.token_type(token_type_ids) + self.position(positions)
        return self.dropout(self.norm(x))


class BertSelfAttention(nnx.Module):
    """Multi-head self-attention with an additive logit bias (scaled dot product, f32 softmax).

    Padding is the additive bias (f32 min), not a boolean mask, as in transformers: the
    core (``radjax.nn.attention.dot_product_attention``) takes it as ``bias``."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        h = cfg.hidden_size
        self.query = linear(cfg, h, h, ("embed", "heads"), rngs=rngs)
        self.key = linear(cfg, h, h, ("embed", "heads"), rngs=rngs)
        self.value = linear(cfg, h, h, ("embed", "heads"), rngs=rngs)
        self.out = linear(cfg, h, h, ("heads", "embed"), rngs=rngs)
        self.dropout = nnx.Dropout(cfg.attention_dropout, rngs=rngs)

    def _heads(self, x: jax.Array) -> jax.Array:
        """(B, L, H) -> (B, L, N, H/N)."""
        x = x.reshape(*x.shape[:2], self.num_heads, self.head_dim)
        return shard_act(x, ("act_batch", "act_length", "act_heads", None))

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """(B, L, H) hidden, f32 bias broadcastable to (B, N, L, L) -> (B, L, H).

        ``bias`` is added to the scaled logits: the padding mask (B, 1, 1, L), plus
        for MPNet the relative position bias (1, N, L, L). Softmax in >= f32.
        """
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        y, _, _ = dot_product_attention(q, k, v, bias=bias, dropout=self.dropout)
        return self.out(y.reshape(x.shape))


class BertLayer(nnx.Module):
    """Post-LN block: ``x = LN(x + Attn(x)); x = LN(x + W2 act(W1 x))`` (BERT and MPNet)."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.attention = BertSelfAttention(cfg, rngs=rngs)
        self.attention_norm = layer_norm(cfg, rngs=rngs)
        self.intermediate = linear(
            cfg, cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), rngs=rngs
        )
        self.output = linear(
            cfg, cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), rngs=rngs
        )
        self.output_norm = layer_norm(cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout, rngs=rngs)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """(B, L, H), f32 logit bias broadcastable to (B, N, L, L) -> (B, L, H)."""
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
        self.pooler = linear(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", None), rngs=rngs)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Encodes a padded batch.

        Args:
          input_ids: (B, L) int token ids, L <= max_position_embeddings.
          attention_mask: (B, L), 1 = real token, 0 = padding.
          token_type_ids: (B, L) segment ids; None = all zeros.

        Returns:
          last_hidden (B, L, H) and pooled = tanh(Linear(last_hidden[:, 0])) (B, H).
        """
        check_inputs("BertModel", input_ids, attention_mask, self.cfg.max_position_embeddings)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        bias = padding_bias(attention_mask)
        x = self.embeddings(input_ids, token_type_ids)
        x = shard_act(x, ("act_batch", "act_length", "act_embed"))
        for layer in self.layers:
            x = layer(x, bias)
        pooled = jnp.tanh(self.pooler(x[:, 0]))
        return x, pooled
