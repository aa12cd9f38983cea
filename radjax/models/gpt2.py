"""GPT-2 language model (Radford et al. 2019), equal to transformers' ``GPT2LMHeadModel``.

Pre-LN decoder: ``x = wte(ids) + wpe(positions)``, then ``n_layer`` blocks of
``x += Attn(LN(x))``, ``x += MLP(LN(x))`` (MLP = c_proj(gelu_new(c_fc(x)))), a final
LayerNorm and an LM head tied to ``wte``. Attention is causal plus a key-padding mask;
its query/key/value projection is one fused ``c_attn`` (n_embd -> 3 n_embd, output
ordered [q | k | v]), the layout of transformers' ``Conv1D`` (weights stored (in, out)).
Module names follow transformers (``wte``, ``wpe``, ``h/{i}/attn/c_attn``, ``ln_f``), so
``radjax.convert.gpt2`` is a plain rename.

Incremental decoding follows the cache protocol of ``radjax.train.generation``:
``init_cache(batch, size, extra_kv=...)`` allocates a ``radjax.nn.kv_cache.KVCache`` that also
holds the extra keys/values (fixed while decoding), and ``GPT2(..., cache=c)`` appends the
new tokens and returns ``(logits, cache)``. With a cache, positions count real tokens (left
padding does not shift them), as transformers' ``generate`` computes ``position_ids``.

Extra keys/values (the report-generator extension point). Every layer can attend, in
addition to the text, to ``P`` extra keys/values given per layer in head layout
(B, P, H, Dh). They are prepended to the layer's own keys/values, are visible to every
query (no causal or padding mask) and use the same scaling ``1/sqrt(Dh)``:
``softmax(q [k_extra; k]^T / sqrt(Dh)) [v_extra; v]``.

AutoRG-Brain (spec vision.md §4.4, "pseudo self-attention" after RGRG) builds them from
its 128 visual tokens ``T`` (B, 128, 1024) with two new trainable ``Linear(1024, 1024)``
per layer, ``uk_l`` and ``uv_l``, while all GPT-2 weights stay frozen::

    extra_kv = [(uk[l](T).reshape(B, 128, H, Dh), uv[l](T).reshape(B, 128, H, Dh))
                for l in range(n_layer)]
    logits = gpt2(ids, attention_mask=mask, extra_kv=extra_kv)

The uk/uv projections belong to the report-generator module, not to this one. Its
released forward also takes the position embeddings from the *word* table
(``wte(position_ids)``); ``position_table='wte'`` reproduces that.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Self

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.models.bert import ACTIVATIONS, read_hf_config
from radjax.nn import kv_cache, norms
from radjax.nn.attention import dot_product_attention
from radjax.nn.kv_cache import KVCache
from radjax.nn.linear import linear
from radjax.sharding import shard_act

# (keys, values), each (B, P, H, Dh); None = no extra keys for that layer.
ExtraKV = tuple[jax.Array, jax.Array] | None
ExtraKVArg = Sequence[ExtraKV] | Callable[[int], ExtraKV] | None


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """GPT-2 hyper-parameters; names and defaults are transformers' (GPT-2 small)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # None = 4 * n_embd
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    position_table: str = "wpe"  # not transformers': 'wte' = AutoRG-Brain's quirk
    dtype: str = "float32"  # compute dtype; parameters are always f32

    # config.json fields whose other values are not implemented; first = default.
    HF_SUPPORTED: ClassVar[Mapping[str, tuple]] = {
        "model_type": ("gpt2",),
        "add_cross_attention": (False,),
        "scale_attn_weights": (True,),
        "scale_attn_by_inverse_layer_idx": (False,),
        "tie_word_embeddings": (True,),
    }

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPT2Config: n_embd {self.n_embd} is not a multiple of n_head {self.n_head}"
            )
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"GPT2Config: activation_function {self.activation_function!r} "
                f"not supported; use one of {sorted(ACTIVATIONS)}"
            )
        if self.position_table not in ("wpe", "wte"):
            raise ValueError(
                f"GPT2Config: position_table {self.position_table!r} must be 'wpe' or 'wte'"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any] | str | os.PathLike, **overrides) -> Self:
        """Reads a transformers ``config.json`` (a dict, the file, or its directory).

        Absent fields take transformers' defaults; ``overrides`` set radjax-only fields
        (``dtype``, ``position_table``).
        """
        config, where = read_hf_config(config)
        for field, allowed in cls.HF_SUPPORTED.items():
            value = config.get(field, allowed[0])
            if value not in allowed:
                raise ValueError(
                    f"{where}: {field} {value!r} not supported for GPT-2; expected one of {allowed}"
                )
        local = {"dtype", "position_table"}
        kwargs = {
            f.name: config[f.name]
            for f in dataclasses.fields(cls)
            if f.name in config and f.name not in local
        }
        return cls(**kwargs, **overrides)


def _linear(
    cfg: GPT2Config, din: int, dout: int, axes: tuple, *, std: float, rngs: nnx.Rngs
) -> nnx.Linear:
    """Conv1D-equivalent Linear: (in, out) kernel N(0, std), zero bias, logical axes ``axes``."""
    return linear(din, dout, axes, init=nnx.initializers.normal(std), dtype=cfg.dtype, rngs=rngs)


def _layer_norm(cfg: GPT2Config, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over n_embd; statistics in f32, torch's two-pass variance."""
    return norms.layer_norm(cfg.n_embd, eps=cfg.layer_norm_epsilon, dtype=cfg.dtype, rngs=rngs)


def _embed(cfg: GPT2Config, num: int, axes: tuple, *, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(
        num,
        cfg.n_embd,
        dtype=cfg.dtype,
        param_dtype=jnp.float32,
        embedding_init=nnx.initializers.normal(cfg.initializer_range),
        embedding_metadata={"out_sharding": axes},
        rngs=rngs,
    )


def _residual_std(cfg: GPT2Config) -> float:
    """GPT-2's init of the projections that write into the residual stream."""
    return cfg.initializer_range / (2 * cfg.n_layer) ** 0.5


class GPT2Attention(nnx.Module):
    """Causal self-attention with a fused ``c_attn`` and optional extra keys/values."""

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        d = cfg.n_embd
        self.c_attn = _linear(
            cfg, d, 3 * d, ("embed", "heads"), std=cfg.initializer_range, rngs=rngs
        )
        self.c_proj = _linear(cfg, d, d, ("heads", "embed"), std=_residual_std(cfg), rngs=rngs)
        self.attn_dropout = nnx.Dropout(cfg.attn_pdrop, rngs=rngs)
        self.resid_dropout = nnx.Dropout(cfg.resid_pdrop, rngs=rngs)

    def _heads(self, x: jax.Array) -> jax.Array:
        """(B, L, D) -> (B, L, H, Dh)."""
        x = x.reshape(*x.shape[:2], self.n_head, self.head_dim)
        return shard_act(x, ("act_batch", "act_length", "act_heads", None))

    def _prepend(
        self, extra: ExtraKV, k: jax.Array, v: jax.Array, mask: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Puts (B, P, H, Dh) extra keys/values before k, v (B, L, H, Dh); mask gains P
        always-visible columns: (B, 1, L, L) -> (B, 1, L, P + L)."""
        ek, ev = extra
        want = (k.shape[0], ek.shape[1], self.n_head, self.head_dim)
        if ek.shape != ev.shape or ek.ndim != 4 or ek.shape[2:] != want[2:]:
            raise ValueError(
                f"GPT2: extra keys {ek.shape} / values {ev.shape} must both be "
                f"(B, P, {self.n_head}, {self.head_dim})"
            )
        ek, ev = (jnp.broadcast_to(t, want).astype(k.dtype) for t in (ek, ev))
        visible = jnp.ones((*mask.shape[:3], want[1]), bool)
        return (
            jnp.concatenate([ek, k], 1),
            jnp.concatenate([ev, v], 1),
            jnp.concatenate([visible, mask], -1),
        )

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        extra: ExtraKV = None,
        kv: tuple[jax.Array, jax.Array] | None = None,
        index: jax.Array | None = None,
    ):
        """x (B, L, D), boolean mask (B, 1, L, L) (True = attend), extra (k, v) each
        (B or 1, P, H, Dh) or None -> (B, L, D). Scores and softmax in f32.

        With a cache layer ``kv`` = (keys, values) (B, H, S, Dh): the new keys/values go to
        slots ``[index, index + L)``, mask is (B, 1, L, S), ``extra`` is the cache's
        (B, H, P, Dh) pair or None, and the result is ``(out, (keys, values))``."""
        q, k, v = (self._heads(t) for t in jnp.split(self.c_attn(x), 3, axis=-1))
        if kv is None:
            if extra is not None:
                k, v, mask = self._prepend(extra, k, v, mask)
            out, _, _ = dot_product_attention(q, k, v, mask, dropout=self.attn_dropout)
            return self.resid_dropout(self.c_proj(out.reshape(x.shape)))
        keys = kv_cache.write(kv[0], k.transpose(0, 2, 1, 3), index)
        values = kv_cache.write(kv[1], v.transpose(0, 2, 1, 3), index)
        all_k, all_v = keys, values
        if extra is not None:
            all_k, all_v = (
                jnp.concatenate([e.astype(t.dtype), t], axis=2)
                for e, t in zip(extra, (keys, values))
            )
            mask = jnp.concatenate(
                [jnp.ones((*mask.shape[:-1], extra[0].shape[2]), bool), mask], axis=-1
            )
        out = kv_cache.grouped_attention(q, all_k, all_v, mask)
        return self.resid_dropout(self.c_proj(out.reshape(x.shape))), (keys, values)


class GPT2MLP(nnx.Module):
    """c_proj(act(c_fc(x))), act = gelu_new (tanh GELU) for GPT-2."""

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        self.c_fc = _linear(
            cfg, cfg.n_embd, cfg.inner_dim, ("embed", "mlp"), std=cfg.initializer_range, rngs=rngs
        )
        self.c_proj = _linear(
            cfg, cfg.inner_dim, cfg.n_embd, ("mlp", "embed"), std=_residual_std(cfg), rngs=rngs
        )
        self.dropout = nnx.Dropout(cfg.resid_pdrop, rngs=rngs)
        self.act = ACTIVATIONS[cfg.activation_function]

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, L, D) -> (B, L, D)."""
        h = shard_act(self.act(self.c_fc(x)), ("act_batch", "act_length", "act_mlp"))
        return self.dropout(self.c_proj(h))


class GPT2Block(nnx.Module):
    """Pre-LN block: ``x += Attn(ln_1(x)); x += MLP(ln_2(x))``."""

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        self.ln_1 = _layer_norm(cfg, rngs=rngs)
        self.attn = GPT2Attention(cfg, rngs=rngs)
        self.ln_2 = _layer_norm(cfg, rngs=rngs)
        self.mlp = GPT2MLP(cfg, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        extra: ExtraKV = None,
        kv: tuple[jax.Array, jax.Array] | None = None,
        index: jax.Array | None = None,
    ):
        """(B, L, D), boolean mask (B, 1, L, L), extra (k, v) or None -> (B, L, D); with a
        cache layer ``kv``, ``(x, (keys, values))`` (see GPT2Attention)."""
        h = self.attn(self.ln_1(x), mask, extra, kv, index)
        if kv is not None:
            h, kv = h
        x = x + h
        x = shard_act(x + self.mlp(self.ln_2(x)), ("act_batch", "act_length", "act_embed"))
        return x if kv is None else (x, kv)


def causal_padding_mask(attention_mask: jax.Array) -> jax.Array:
    """(B, L) key validity (1 = real token) -> (B, 1, L, L) boolean, True = may attend:
    key j <= query i and key j is real."""
    length = attention_mask.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    return causal[None, None] & (attention_mask != 0)[:, None, None, :]


class GPT2(nnx.Module):
    """GPT-2 with tied LM head; logits equal transformers' ``GPT2LMHeadModel`` (f32)."""

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.wte = _embed(cfg, cfg.vocab_size, ("vocab", "embed"), rngs=rngs)
        self.wpe = _embed(cfg, cfg.n_positions, (None, "embed"), rngs=rngs)
        self.drop = nnx.Dropout(cfg.embd_pdrop, rngs=rngs)
        self.h = nnx.List([GPT2Block(cfg, rngs=rngs) for _ in range(cfg.n_layer)])
        self.ln_f = _layer_norm(cfg, rngs=rngs)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """(B, L) int token ids -> (B, L, D) word embeddings (no positions): the
        ``inputs_embeds`` to splice other modalities into."""
        return self.wte(input_ids)

    def _extra(self, extra_kv: ExtraKVArg, layer: int) -> ExtraKV:
        if extra_kv is None:
            return None
        return extra_kv(layer) if callable(extra_kv) else extra_kv[layer]

    def _positions(self, positions: jax.Array | None, length: int) -> jax.Array:
        """(B, L) or (L,) ids (default 0..L-1) -> (B or 1, L, D) position embeddings."""
        if length > self.cfg.n_positions:
            raise ValueError(f"GPT2: length {length} exceeds n_positions {self.cfg.n_positions}")
        positions = jnp.arange(length) if positions is None else jnp.asarray(positions)
        positions = jnp.broadcast_to(positions, (*positions.shape[:-1], length))
        table = self.wte if self.cfg.position_table == "wte" else self.wpe
        return table(positions.reshape(-1, length))

    @property
    def context_length(self) -> int:
        """Longest prompt + generation: the position table's size."""
        return self.cfg.n_positions

    def init_cache(self, batch: int, size: int, extra_kv: ExtraKVArg = None) -> KVCache:
        """An empty cache of ``size`` slots per row holding ``extra_kv`` (as in ``__call__``;
        each (B or 1, P, H, Dh)) for every later call."""
        cfg = self.cfg
        cache = KVCache.empty(
            batch,
            size,
            num_layers=cfg.n_layer,
            heads=cfg.n_head,
            head_dim=cfg.head_dim,
            dtype=cfg.dtype,
        )
        if extra_kv is None:
            return cache
        self._check_extra(extra_kv)
        layout = (
            lambda t: (
                jnp.broadcast_to(  # noqa: E731
                    t, (batch, *t.shape[1:])
                )
                .astype(cfg.dtype)
                .transpose(0, 2, 1, 3)
            )
        )
        pairs = [self._extra(extra_kv, i) for i in range(cfg.n_layer)]
        for i, pair in enumerate(pairs):
            if pair is not None and (
                pair[0].ndim != 4
                or pair[0].shape != pair[1].shape
                or pair[0].shape[2:] != (cfg.n_head, cfg.head_dim)
            ):
                raise ValueError(
                    f"GPT2: extra_kv[{i}] keys {pair[0].shape} / values "
                    f"{pair[1].shape} must both be (B, P, {cfg.n_head}, "
                    f"{cfg.head_dim})"
                )
        return cache._replace(
            extra_keys=tuple(None if p is None else layout(p[0]) for p in pairs),
            extra_values=tuple(None if p is None else layout(p[1]) for p in pairs),
        )

    def _check_extra(self, extra_kv: ExtraKVArg) -> None:
        if not callable(extra_kv) and extra_kv is not None and len(extra_kv) != self.cfg.n_layer:
            raise ValueError(
                f"GPT2: extra_kv has {len(extra_kv)} entries, the model {self.cfg.n_layer} layers"
            )

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        extra_kv: ExtraKVArg = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ):
        """Next-token logits of a right-padded batch.

        Args:
          input_ids: (B, L) int token ids; or instead
          inputs_embeds: (B, L, D) embeddings (e.g. ``embed(ids)`` with spliced tokens).
          attention_mask: (B, L), 1 = real token, 0 = padding (masked as keys); None = all real.
          positions: (B, L) or (L,) position ids; None = 0..L-1 (transformers' default).
          extra_kv: per-layer extra (keys, values), each (B or 1, P, H, Dh), prepended to
            the layer's keys/values and visible to every query: a sequence of n_layer
            entries (None = none for that layer), or a callable ``layer -> entry``. With a
            cache they live in the cache (``init_cache``) instead.
          cache: a ``KVCache`` from ``init_cache`` with room for L more slots: the tokens
            are appended (left-padded prompt, or one decode step) and attend to every
            earlier real slot; positions default to counting real tokens.
          last_only: logits of the last position only (L becomes 1 in the result).

        Returns:
          (B, L, vocab_size) f32 logits; with ``cache``, ``(logits, updated cache)``.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("GPT2: pass exactly one of input_ids and inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if x.ndim != 3 or x.shape[-1] != self.cfg.n_embd:
            raise ValueError(f"GPT2: embeddings {x.shape} must be (B, L, {self.cfg.n_embd})")
        self._check_extra(extra_kv)
        batch, length = x.shape[:2]
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), jnp.int32)
        if cache is not None:
            if extra_kv is not None:
                raise ValueError("GPT2: with a cache, pass extra_kv to init_cache")
            x, cache = self._cached(x, attention_mask != 0, positions, cache)
        else:
            x = self.drop(x + self._positions(positions, length))
            x = shard_act(x, ("act_batch", "act_length", "act_embed"))
            mask = causal_padding_mask(attention_mask)
            for i, block in enumerate(self.h):
                x = block(x, mask, self._extra(extra_kv, i))
        logits = self._logits(x[:, -1:] if last_only else x)
        return logits if cache is None else (logits, cache)

    def _cached(
        self, x: jax.Array, valid: jax.Array, positions: jax.Array | None, cache: KVCache
    ) -> tuple[jax.Array, KVCache]:
        """The cache path: embeddings x (B, L, D), valid (B, L) bool -> hidden states
        before ``ln_f`` and the updated cache."""
        num_new = x.shape[1]
        positions, slots, mask = kv_cache.append(cache, valid, positions, owner="GPT2")
        x = self.drop(x + self._positions(positions, num_new))
        keys, values = [], []
        for i, block in enumerate(self.h):
            extra = (
                None
                if not cache.extra_keys or cache.extra_keys[i] is None
                else (cache.extra_keys[i], cache.extra_values[i])
            )
            x, (k, v) = block(x, mask, extra, (cache.keys[i], cache.values[i]), cache.length)
            keys.append(k)
            values.append(v)
        return x, cache._replace(
            keys=tuple(keys), values=tuple(values), valid=slots, length=cache.length + num_new
        )

    def _logits(self, x: jax.Array) -> jax.Array:
        """ln_f and the tied head: (B, L, D) -> (B, L, vocab) f32."""
        x = self.ln_f(x)
        logits = jnp.einsum(
            "bld,vd->blv",
            x,
            self.wte.embedding[...].astype(x.dtype),
            preferred_element_type=jnp.float32,
        )
        return shard_act(logits, ("act_batch", "act_length", None))
