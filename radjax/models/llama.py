"""Decoder-only language models of the LLaMA family, numerically equal to transformers'
``LlamaForCausalLM``, ``MistralForCausalLM`` and ``Phi3ForCausalLM``.

One pre-norm block stack serves all three: token embedding, ``num_layers`` blocks of
``x + Attn(RMSNorm(x))``, ``x + MLP(RMSNorm(x))``, a final RMSNorm and the LM head
(its own kernel, or the embedding table when ``tie_word_embeddings``). Attention is
causal with rotary position embeddings (RoPE; ``default``, ``linear`` and ``llama3``
frequency scaling, partial rotary for Phi-3) and grouped-query attention (``num_kv_heads``
key/value heads each serving ``num_heads / num_kv_heads`` query heads). The MLP is SwiGLU:
``down(silu(gate(x)) * up(x))``. Mistral and Phi-3 add a sliding window: a query at index
i sees keys at indices ``i - sliding_window < j <= i``.

Family differences live in the checkpoint converter (``radjax.convert.llama``): Phi-3's
fused ``qkv_proj`` / ``gate_up_proj`` weights are split there into the separate
projections used here. Parameter names follow transformers' module names.

Incremental decoding: ``Decoder.init_cache(batch, size)`` allocates a ``KVCache``
(``radjax.nn.kv_cache``: a plain NamedTuple pytree, no NNX state) and ``Decoder(..., cache=c)`` writes the new tokens' keys
and values at slots ``[c.length, c.length + L)`` and returns ``(logits, new_cache)``, so the
cache travels in and out of pure jitted functions (``radjax.train.generation``).

Training: ``DecoderConfig.dropout`` is transformers' ``attention_dropout`` (read from
``config.json``): dropout on the attention probabilities, active only in train mode
(``model.train()``; it needs a ``dropout`` or ``default`` stream in the constructor's
``rngs``), the identity in eval mode and on the KV-cache (decoding) path. The LLaMA family
has no residual / embedding dropout (transformers has none), so neither does this module.
``DecoderConfig.remat`` rematerialises each ``DecoderLayer`` in the backward pass (``radjax.nn.remat.checkpointed``):
same values and gradients, activation memory of one layer.

Layers: by default a Python loop over an ``nnx.List`` (parameter paths ``layers/<i>/...``;
compile time grows with ``num_layers``). ``DecoderConfig.scan_layers`` keeps one
``DecoderLayer`` whose parameters are stacked on a leading ``layers`` axis (paths
``layers/self_attn/q_proj/kernel`` of shape (num_layers, ...)) and runs it with
``jax.lax.scan``: one compiled layer, whatever the depth. The converters stack checkpoints
for it (``radjax.convert.llama``); the KV-cache path slices the stack layer by layer. LoRA
(``radjax.nn.lora``) adapts both: stacked kernels get per-layer adapters stacked the same
way. Dropout (attention or LoRA) runs under the scan too: each layer keeps its own stream,
stacked like its weights, and ``scan_layers`` writes the streams' counts back: attention
dropout draws the very masks of the unscanned model, and every call draws new ones.

Not implemented: attention / MLP biases, and the ``dynamic``, ``yarn`` and ``longrope``
RoPE scalings (``from_hf_config`` rejects such configs).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, Self

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.models.bert import read_hf_config
from radjax.nn import kv_cache
from radjax.nn.kv_cache import KVCache, grouped_attention
from radjax.nn.linear import linear as nn_linear
from radjax.nn.linear import stacked_linear
from radjax.nn.norms import RMSNorm
from radjax.nn.rope import ROPE_TYPES, Rope, apply_rope
from radjax.nn.stack import run_layers, stack_modules, unstack_module
from radjax.sharding import shard_act

MODEL_TYPES = ("llama", "mistral", "phi3")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Hyper-parameters of a LLaMA / Mistral / Phi-3 decoder (transformers names in comments).

    ``rope_type`` ``llama3`` uses ``rope_factor``, ``rope_low_freq_factor``,
    ``rope_high_freq_factor`` and ``rope_original_max_positions``; ``linear`` divides
    the frequencies by ``rope_factor``.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int  # num_hidden_layers
    num_heads: int  # num_attention_heads
    intermediate_size: int
    num_kv_heads: int | None = None  # num_key_value_heads; None = num_heads
    head_dim: int | None = None  # None = hidden_size // num_heads
    model_type: str = "llama"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    partial_rotary_factor: float = 1.0
    sliding_window: int | None = None
    max_position_embeddings: int | None = None  # longest sequence generation accepts; None = any
    tie_word_embeddings: bool = False
    init_std: float = 0.02  # initializer_range
    dtype: str = "float32"  # compute dtype; parameters are always f32
    dropout: float = 0.0  # attention_dropout: on attention probabilities, train mode only
    remat: bool = False  # recompute each layer's activations in the backward pass
    scan_layers: bool = False  # one stacked layer run by lax.scan (see Decoder)

    def __post_init__(self):
        kv = self.num_kv_heads or self.num_heads
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DecoderConfig: dropout must be in [0, 1), got {self.dropout}")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(
                f"DecoderConfig: model_type {self.model_type!r} not one of {MODEL_TYPES}"
            )
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(
                f"DecoderConfig: rope_type {self.rope_type!r} not supported; "
                f"use one of {ROPE_TYPES}"
            )
        if self.num_heads % kv:
            raise ValueError(
                f"DecoderConfig: num_heads {self.num_heads} is not a multiple of num_kv_heads {kv}"
            )
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"DecoderConfig: hidden_size {self.hidden_size} is not a multiple "
                f"of num_heads {self.num_heads}; set head_dim"
            )
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.dim_per_head:
            raise ValueError(
                f"DecoderConfig: partial_rotary_factor {self.partial_rotary_factor} "
                f"gives rotary dim {self.rotary_dim} for head dim {self.dim_per_head}"
            )

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.dim_per_head * self.partial_rotary_factor)

    @property
    def rope(self) -> Rope:
        """The rotary embedding these fields describe (``radjax.nn.rope``)."""
        return Rope(
            self.rotary_dim,
            theta=self.rope_theta,
            rope_type=self.rope_type,
            factor=self.rope_factor,
            low_freq_factor=self.rope_low_freq_factor,
            high_freq_factor=self.rope_high_freq_factor,
            original_max_positions=self.rope_original_max_positions,
        )

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any] | str | os.PathLike) -> Self:
        """Reads a transformers ``config.json`` (a dict, the file, or its directory).

        Accepts both RoPE spellings: top-level ``rope_theta`` + ``rope_scaling`` (files
        written before transformers 5) and ``rope_parameters`` (transformers 5).

        Raises:
          ValueError: naming the file, for a missing required field or a setting
            this implementation does not have (other activations, biases, RoPE types).
        """
        config, where = read_hf_config(config)
        model_type = config.get("model_type", "llama")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"{where}: model_type {model_type!r} is not one of {MODEL_TYPES}")
        unsupported = {"hidden_act": ("silu",), "attention_bias": (False,), "mlp_bias": (False,)}
        for field, allowed in unsupported.items():
            if config.get(field, allowed[0]) not in allowed:
                raise ValueError(
                    f"{where}: {field} {config[field]!r} not supported; expected one of {allowed}"
                )
        required = {
            "vocab_size": "vocab_size",
            "hidden_size": "hidden_size",
            "num_layers": "num_hidden_layers",
            "num_heads": "num_attention_heads",
            "intermediate_size": "intermediate_size",
        }
        missing = [name for name in required.values() if name not in config]
        if missing:
            raise ValueError(f"{where}: missing fields {missing}")
        kwargs = {field: config[name] for field, name in required.items()}
        kwargs.update(
            model_type=model_type,
            num_kv_heads=config.get("num_key_value_heads"),
            head_dim=config.get("head_dim"),
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            sliding_window=config.get("sliding_window") if model_type != "llama" else None,
            max_position_embeddings=config.get("max_position_embeddings"),
            tie_word_embeddings=config.get("tie_word_embeddings", False),
            init_std=config.get("initializer_range", 0.02),
            dropout=float(config.get("attention_dropout", 0.0)),
            **_rope_fields(config, where),
        )
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


def _rope_fields(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """RoPE settings of a transformers config -> DecoderConfig fields."""
    rope = {**(config.get("rope_scaling") or {}), **(config.get("rope_parameters") or {})}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"{where}: RoPE type {rope_type!r} not supported; use one of {ROPE_TYPES}")
    fields = {
        "rope_type": rope_type,
        "rope_theta": float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        "partial_rotary_factor": float(
            rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
        ),
    }
    if rope_type != "default":
        fields["rope_factor"] = float(rope["factor"])
    if rope_type == "llama3":
        fields.update(
            rope_low_freq_factor=float(rope["low_freq_factor"]),
            rope_high_freq_factor=float(rope["high_freq_factor"]),
            rope_original_max_positions=int(rope["original_max_position_embeddings"]),
        )
    return fields


# ----------------------------------------------------------------------------- masks


def default_positions(valid: jax.Array) -> jax.Array:
    """(B, L) validity -> (B, L) int32 positions counting real tokens only (0 at the first
    real token, so left padding does not shift positions); padding gets 0."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def decoder_mask(valid: jax.Array, sliding_window: int | None) -> jax.Array:
    """(B, L) validity -> (B, 1, L, L) boolean mask (True = attend): causal, keys must
    be real tokens, and within ``sliding_window`` indices of the query when set."""
    idx = jnp.arange(valid.shape[-1])
    allowed = idx[None, :] <= idx[:, None]
    if sliding_window is not None:
        allowed &= idx[None, :] > idx[:, None] - sliding_window
    return (allowed[None] & (valid[:, None, :] != 0))[:, None]


# ----------------------------------------------------------------------------- modules


def linear(
    cfg: DecoderConfig, din: int, dout: int, axes: tuple[str, str], *, rngs: nnx.Rngs
) -> nnx.Linear:
    """Bias-free Linear, N(0, init_std) kernel (din, dout) with logical axes ``axes``."""
    init = nnx.initializers.normal(cfg.init_std)
    return nn_linear(din, dout, axes, use_bias=False, init=init, dtype=cfg.dtype, rngs=rngs)


class Attention(nnx.Module):
    """Causal GQA self-attention with RoPE: (B, L, hidden) -> (B, L, hidden).

    ``q_proj`` (hidden, H*Dh) is sharded over heads; ``k_proj``/``v_proj`` (hidden, K*Dh)
    too without GQA, else over the ``kv`` logical axis (few GQA heads: replicated by the
    default rules).
    """

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, dh = cfg.hidden_size, cfg.dim_per_head
        self.q_proj = linear(cfg, d, cfg.num_heads * dh, ("embed", "heads"), rngs=rngs)
        # without GQA keys/values shard like queries; a few GQA heads use the 'kv' axis
        kv_axes = ("embed", "heads" if cfg.kv_heads == cfg.num_heads else "kv")
        self.k_proj = linear(cfg, d, cfg.kv_heads * dh, kv_axes, rngs=rngs)
        self.v_proj = linear(cfg, d, cfg.kv_heads * dh, kv_axes, rngs=rngs)
        self.o_proj = linear(cfg, cfg.num_heads * dh, d, ("heads", "embed"), rngs=rngs)
        # No RNG state at rate 0: checkpoints and converters see the same state as before.
        self.attn_dropout = nnx.Dropout(cfg.dropout, rngs=rngs if cfg.dropout else None)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        kv: tuple[jax.Array, jax.Array] | None = None,
        index: jax.Array | None = None,
    ):
        """x (B, L, hidden); cos, sin (B, L, 1, rotary_dim); mask (B, 1, L, L), or
        (B, 1, L, S) with a cache ``kv`` = (keys, values) (B, K, S, Dh) whose slots
        ``[index, index + L)`` receive this call's keys/values; then returns
        ``(out, (keys, values))``."""
        b, l, _ = x.shape
        dh = self.cfg.dim_per_head
        q, k, v = self._project(x)
        q = q.reshape(b, l, self.cfg.num_heads, dh)
        q = shard_act(apply_rope(q, cos, sin), ("act_batch", "act_length", "act_heads", None))
        # keys / values as (B, K, L, Dh), the KVCache layout
        k = apply_rope(k.reshape(b, l, self.cfg.kv_heads, dh), cos, sin).transpose(0, 2, 1, 3)
        v = v.reshape(b, l, self.cfg.kv_heads, dh).transpose(0, 2, 1, 3)
        if kv is None:
            out = grouped_attention(q, k, v, mask, self._dropout())
            return self.o_proj(out.reshape(b, l, -1))
        keys, values = kv_cache.write(kv[0], k, index), kv_cache.write(kv[1], v, index)
        # The cache path is decoding (radjax.train.generation): no dropout even in train mode.
        out = grouped_attention(q, keys, values, mask)
        return self.o_proj(out.reshape(b, l, -1)), (keys, values)

    def _project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q (B, L, H*Dh), k, v (B, L, K*Dh): one stacked matmul for all three without GQA,
        else q alone and k, v stacked."""
        if self.cfg.kv_heads == self.cfg.num_heads:
            return stacked_linear(x, (self.q_proj, self.k_proj, self.v_proj))
        return (self.q_proj(x), *stacked_linear(x, (self.k_proj, self.v_proj)))

    def _dropout(self) -> Callable[[jax.Array], jax.Array] | None:
        """The probability dropout, or None when it is off (rate 0 or eval mode)."""
        if not self.cfg.dropout or self.attn_dropout.deterministic:
            return None
        return self.attn_dropout


class Mlp(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), (B, L, hidden) -> (B, L, hidden)."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = linear(cfg, d, f, ("embed", "mlp"), rngs=rngs)
        self.up_proj = linear(cfg, d, f, ("embed", "mlp"), rngs=rngs)
        self.down_proj = linear(cfg, f, d, ("mlp", "embed"), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up = stacked_linear(x, (self.gate_proj, self.up_proj))
        h = jax.nn.silu(gate) * up
        return self.down_proj(shard_act(h, ("act_batch", "act_length", "act_mlp")))


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x))."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mlp = Mlp(cfg, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        kv: tuple[jax.Array, jax.Array] | None = None,
        index: jax.Array | None = None,
    ):
        """Returns x, or ``(x, (keys, values))`` with a cache ``kv`` (see Attention)."""
        if kv is None:
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
            return x + self.mlp(self.post_attention_layernorm(x))
        h, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv, index)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class Decoder(nnx.Module):
    """Causal language model: token ids or embeddings (B, L) -> logits (B, L, vocab) f32."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        table = nnx.initializers.normal(cfg.init_std)(
            rngs.params(), (cfg.vocab_size, cfg.hidden_size)
        )
        self.embed_tokens = nnx.Param(table, out_sharding=("vocab", "embed"))
        layers = [DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)]
        self.layers = stack_modules(layers) if cfg.scan_layers else nnx.List(layers)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else linear(cfg, cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), rngs=rngs)
        )

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """(B, L) int token ids -> (B, L, hidden) embeddings in the compute dtype."""
        x = jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.cfg.dtype)
        return shard_act(x, ("act_batch", "act_length", "act_embed"))

    def init_cache(self, batch: int, size: int) -> KVCache:
        """An empty cache of ``size`` slots per row (zeros, nothing valid, length 0)."""
        return KVCache.empty(
            batch,
            size,
            num_layers=self.cfg.num_layers,
            heads=self.cfg.kv_heads,
            head_dim=self.cfg.dim_per_head,
            dtype=self.cfg.dtype,
        )

    @property
    def context_length(self) -> int | None:
        """Longest prompt + generation the model accepts (None = no limit)."""
        return self.cfg.max_position_embeddings

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ):
        """Next-token logits.

        Args:
          input_ids: (B, L) int; or instead
          inputs_embeds: (B, L, hidden), e.g. ``embed(ids)`` with visual embeddings spliced in.
          attention_mask: (B, L), nonzero = real token (default: all real). Left padding
            is the usual layout; padded positions' logits are meaningless.
          positions: (B, L) int RoPE positions (default: counted over real tokens,
            ``default_positions(attention_mask)``; with a cache, continuing after the real
            tokens already in it).
          cache: a ``KVCache`` with room for L more slots: the L tokens are appended to it
            (prefill, or one decode step with L = 1) and attend to every earlier real slot.
            Filling past ``cache.size`` inside jit cannot be detected (the write would be
            clamped); callers size the cache (``radjax.train.generation`` checks).
          last_only: compute the logits of the last position only (a prefill needs no
            others), so L becomes 1 in the result.
        Returns:
          (B, L, vocab) f32; with ``cache``, ``(logits, updated cache)``.
        Raises:
          ValueError: both or neither of input_ids / inputs_embeds; L larger than the cache.
        """
        x, valid = self._inputs(input_ids, inputs_embeds, attention_mask)
        if cache is not None:
            x, cache = self._cached(x, valid, positions, cache)
            return self._logits(x[:, -1:] if last_only else x), cache
        x = self._layers(x, valid, positions)
        return self._logits(x[:, -1:] if last_only else x)

    def hidden_states(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        """The final-normed hidden states (B, L, hidden) that ``head_kernel()`` maps to
        logits; arguments as ``__call__`` without a cache. For losses that fuse the head
        (``radjax.train.lm_loss.fused_head_cross_entropy``)."""
        x, valid = self._inputs(input_ids, inputs_embeds, attention_mask)
        return self.norm(self._layers(x, valid, positions))

    def head_kernel(self) -> jax.Array:
        """(hidden, vocab) LM head kernel in the compute dtype (the embedding table
        transposed when ``tie_word_embeddings``)."""
        if self.lm_head is None:
            return self.embed_tokens[...].T.astype(self.cfg.dtype)
        return self.lm_head.kernel[...].astype(self.cfg.dtype)

    def _inputs(self, input_ids, inputs_embeds, attention_mask) -> tuple[jax.Array, jax.Array]:
        """-> embeddings (B, L, hidden) in the compute dtype and validity (B, L) bool."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Decoder: pass exactly one of input_ids and inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.cfg.dtype)
        valid = jnp.ones(x.shape[:2], jnp.bool_) if attention_mask is None else attention_mask != 0
        return x, valid

    def _layers(self, x: jax.Array, valid: jax.Array, positions: jax.Array | None) -> jax.Array:
        """The block stack without a cache: (B, L, hidden) -> (B, L, hidden), before the
        final norm."""
        if positions is None:
            positions = default_positions(valid)
        cos, sin = self.cfg.rope.cos_sin(positions)
        mask = decoder_mask(valid, self.cfg.sliding_window)

        def call(layer, x):
            return shard_act(layer(x, cos, sin, mask), ("act_batch", "act_length", "act_embed"))

        return run_layers(self.layers, x, call, scanned=self.cfg.scan_layers, remat=self.cfg.remat)

    def _layer_list(self) -> list[DecoderLayer]:
        """The layers one by one (slices of the stacked layer when ``scan_layers``)."""
        if not self.cfg.scan_layers:
            return list(self.layers)
        return unstack_module(self.layers, self.cfg.num_layers)

    def _cached(
        self, x: jax.Array, valid: jax.Array, positions: jax.Array | None, cache: KVCache
    ) -> tuple[jax.Array, KVCache]:
        """The cache path of ``__call__``: x (B, L, hidden), valid (B, L) bool -> hidden
        states before the final norm (B, L, hidden) and the updated cache."""
        positions, slots, mask = kv_cache.append(
            cache, valid, positions, owner="Decoder", sliding_window=self.cfg.sliding_window
        )
        cos, sin = self.cfg.rope.cos_sin(positions)
        keys, values = [], []
        for layer, k, v in zip(self._layer_list(), cache.keys, cache.values):
            x, (k, v) = layer(x, cos, sin, mask, (k, v), cache.length)
            x = shard_act(x, ("act_batch", "act_length", "act_embed"))
            keys.append(k)
            values.append(v)
        cache = cache._replace(
            keys=tuple(keys), values=tuple(values), valid=slots, length=cache.length + x.shape[1]
        )
        return x, cache

    def _logits(self, x: jax.Array) -> jax.Array:
        """Final norm and LM head: (B, L, hidden) -> (B, L, vocab) f32."""
        logits = jnp.einsum(
            "bld,dv->blv", self.norm(x), self.head_kernel(), preferred_element_type=jnp.float32
        )
        return shard_act(logits, ("act_batch", "act_length", None))
