"""Jitted text generation for ``radjax.models.llama.Decoder`` with a preallocated KV cache.

``generate`` compiles one function per (graphdef, shapes, static settings): it prefills the
(left-padded) prompt into a ``KVCache`` of ``prompt_len + max_new_tokens`` slots, picks the
first token from the last prompt position, then runs a ``jax.lax.while_loop`` that feeds
one token per step until ``max_new_tokens`` tokens are out or every row has produced EOS.
Semantics follow transformers' ``generate``: a row that has produced an EOS token emits
``pad_token_id`` afterwards (and keeps being fed the pad token, as a real token, exactly as
transformers extends the attention mask), RoPE positions count real tokens only, so left
padding does not shift them. Sampling applies transformers' logits warpers in their order:
temperature, top-k (ties with the k-th logit kept), top-p (nucleus; the smallest set of
tokens whose probability mass exceeds ``top_p``, at least one), then draws from the softmax.

Not implemented: beam search (``num_beams``), repetition penalties and other logits
processors, stopping strings.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.models.llama import Decoder

NEG_INF = -jnp.inf


def warp_logits(logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0) -> jax.Array:
    """transformers' Temperature -> TopK -> TopP warpers: (B, V) f32 -> (B, V) f32 with
    removed tokens at -inf. ``top_k`` 0 and ``top_p`` 1.0 switch a warper off."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p < 1.0:
        ascending = jnp.sort(logits, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
        # tokens removed form a prefix of the ascending order; the largest is always kept
        removed = jnp.sum(cumulative[..., :-1] <= 1 - top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(ascending, removed, axis=-1)
        logits = jnp.where(logits < cutoff, NEG_INF, logits)
    return logits


def generate(graphdef: nnx.GraphDef, state: nnx.State, *, input_ids: jax.Array | None = None,
             inputs_embeds: jax.Array | None = None, attention_mask: jax.Array,
             max_new_tokens: int, eos_token_id: int | Sequence[int], pad_token_id: int,
             do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, rng: jax.Array | None = None) -> jax.Array:
    """Generates continuations of a left-padded prompt batch, all inside one jit.

    Args:
      graphdef, state: ``nnx.split`` of a ``Decoder``.
      input_ids: (B, L) int prompt ids; or instead
      inputs_embeds: (B, L, hidden) prompt embeddings (e.g. a visual prefix spliced into
        ``Decoder.embed(ids)``); generated tokens are embedded with the model's table.
      attention_mask: (B, L), nonzero = real token; padding must be on the left.
      max_new_tokens: tokens generated per row (static).
      eos_token_id: one id or several; a row stops at the first of them.
      pad_token_id: emitted after EOS.
      do_sample: False = greedy (argmax); True = sample with ``rng`` after
        ``warp_logits(temperature, top_k, top_p)``.
    Returns:
      (B, max_new_tokens) int32 new tokens (the prompt is not repeated), ``pad_token_id``
      after each row's EOS.
    Raises:
      ValueError: both/neither of input_ids and inputs_embeds, ``max_new_tokens < 1``,
        sampling without ``rng`` or with a bad setting, or prompt plus new tokens longer
        than the model's ``max_position_embeddings``.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("generate: pass exactly one of input_ids and inputs_embeds")
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    prompt = input_ids if input_ids is not None else inputs_embeds
    prompt_len = prompt.shape[1]
    limit = nnx.merge(graphdef, state).cfg.max_position_embeddings
    if limit is not None and prompt_len + max_new_tokens > limit:
        raise ValueError(f"generate: prompt length {prompt_len} + max_new_tokens "
                         f"{max_new_tokens} exceeds max_position_embeddings {limit}")
    if do_sample:
        if rng is None:
            raise ValueError("generate: do_sample=True needs rng")
        if not temperature > 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ValueError(f"generate: need temperature > 0, 0 < top_p <= 1, top_k >= 0; got "
                             f"{temperature}, {top_p}, {top_k}")
    else:
        rng = jax.random.key(0)  # unused
    eos = (eos_token_id,) if isinstance(eos_token_id, int) else tuple(int(e) for e in eos_token_id)
    sampling = (float(temperature), int(top_k), float(top_p)) if do_sample else None
    return _generate(graphdef, state, input_ids, inputs_embeds, jnp.asarray(attention_mask), rng,
                     max_new_tokens=max_new_tokens, eos=eos, pad=int(pad_token_id),
                     sampling=sampling)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("max_new_tokens", "eos", "pad",
                                                               "sampling"))
def _generate(graphdef, state, input_ids, inputs_embeds, attention_mask, rng, *,
              max_new_tokens: int, eos: tuple[int, ...], pad: int,
              sampling: tuple[float, int, float] | None) -> jax.Array:
    model: Decoder = nnx.merge(graphdef, state, copy=True)
    prompt = input_ids if input_ids is not None else inputs_embeds
    batch, prompt_len = prompt.shape[:2]
    cache = model.init_cache(batch, prompt_len + max_new_tokens)
    logits, cache = model(input_ids, inputs_embeds=inputs_embeds,
                          attention_mask=attention_mask, cache=cache)

    def choose(logits: jax.Array, step: jax.Array, finished: jax.Array):
        """(B, V) logits of the last position -> tokens (B,) int32, finished after them."""
        if sampling is None:
            token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            temperature, top_k, top_p = sampling
            warped = warp_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
            token = jax.random.categorical(jax.random.fold_in(rng, step), warped,
                                           axis=-1).astype(jnp.int32)
        token = jnp.where(finished, pad, token)
        return token, finished | jnp.isin(token, jnp.asarray(eos, jnp.int32))

    token, finished = choose(logits[:, -1], jnp.int32(0), jnp.zeros((batch,), jnp.bool_))
    out = jnp.full((batch, max_new_tokens), pad, jnp.int32).at[:, 0].set(token)

    def cond(carry):
        step, _, _, finished, _ = carry
        return (step < max_new_tokens) & ~jnp.all(finished)

    def body(carry):
        step, token, cache, finished, out = carry
        logits, cache = model(token[:, None], cache=cache)
        token, finished = choose(logits[:, -1], step, finished)
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
        return step + 1, token, cache, finished, out

    carry = (jnp.int32(1), token, cache, finished, out)
    return jax.lax.while_loop(cond, body, carry)[-1]
