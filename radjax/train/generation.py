"""Jitted text generation with a preallocated KV cache, for any decoder that implements the
cache protocol: ``init_cache(batch, size, **cache_inputs) -> KVCache``, ``model(ids |
inputs_embeds, attention_mask=, cache=, last_only=) -> (logits, cache)`` and
``context_length`` (``radjax.models.llama.Decoder``, ``radjax.models.gpt2.GPT2``).

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
``min_new_tokens`` is transformers' ``MinNewTokensLengthLogitsProcessor`` (applied before the
warpers, and to the log-probabilities in beam search): every EOS id gets -inf while fewer
than ``min_new_tokens`` tokens have been generated. (transformers < 4.38 counted only the
generated tokens in ``min_length`` when the prompt is ``inputs_embeds``, so MiniGPT-v2 /
Uni-Med's ``generate(inputs_embeds=..., min_length=1)`` under 4.30 is ``min_new_tokens=1``.)

Beam search (``num_beams > 1``, greedy) follows transformers' vectorised ``_beam_search``:
the prompt is prefilled once and its cache repeated to ``B * num_beams`` rows; each step adds
the log-softmax of every beam to its running score, keeps the top
``max(2, 1 + #eos) * num_beams`` candidates per row, continues the best ``num_beams`` of them
that did not hit EOS (or the last step), gathers the KV cache rows of the beams they came
from, and merges the candidates among the top ``num_beams`` that did finish into a pool of
``num_beams`` finished hypotheses scored ``sum_logprob / generated_len ** length_penalty``.
``early_stopping`` (False, True or "never") has transformers' meaning, including its
stopping heuristic. The best finished hypothesis of each row is returned.

Not implemented: beam sampling, ``num_return_sequences > 1``, diverse/constrained beams,
repetition penalties and other logits processors (but ``min_new_tokens``), stopping strings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from radjax import runtime
from radjax.nn.kv_cache import map_rows

NEG_INF = -jnp.inf


def warp_logits(
    logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
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


def first_argmax(logits: jax.Array) -> jax.Array:
    """``jnp.argmax(logits, -1)`` (the first index of the maximum; NaN counts as the maximum)
    as two plain reductions, which XLA CPU runs about 2-4x faster than argmax's paired
    (value, index) reduction. (B, V) -> (B,) int32."""
    vocab = logits.shape[-1]
    nan = jnp.isnan(logits)
    top = jnp.where(
        jnp.any(nan, axis=-1, keepdims=True), nan, logits == jnp.max(logits, axis=-1, keepdims=True)
    )
    return jnp.min(jnp.where(top, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)


def generate(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    *,
    input_ids: jax.Array | None = None,
    inputs_embeds: jax.Array | None = None,
    attention_mask: jax.Array,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng: jax.Array | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    cache_inputs: Mapping[str, Any] | None = None,
    min_new_tokens: int = 0,
) -> jax.Array:
    """Generates continuations of a left-padded prompt batch, all inside one jit.

    Args:
      graphdef, state: ``nnx.split`` of a decoder implementing the cache protocol.
      input_ids: (B, L) int prompt ids; or instead
      inputs_embeds: (B, L, hidden) prompt embeddings (e.g. a visual prefix spliced into
        ``Decoder.embed(ids)``); generated tokens are embedded with the model's table.
      cache_inputs: per-sequence inputs fixed while decoding, given to ``init_cache`` (GPT-2's
        ``extra_kv``); arrays with a batch axis are repeated for beam search with the cache.
      attention_mask: (B, L), nonzero = real token; padding must be on the left.
      max_new_tokens: tokens generated per row (static).
      eos_token_id: one id or several; a row stops at the first of them.
      pad_token_id: emitted after EOS.
      do_sample: False = greedy (argmax); True = sample with ``rng`` after
        ``warp_logits(temperature, top_k, top_p)``.
      num_beams: > 1 = beam search (greedy only) with ``length_penalty`` (exponent of the
        generated length dividing a finished hypothesis' summed log-probability) and
        ``early_stopping`` (False: transformers' default heuristic; True: stop a row once
        ``num_beams`` hypotheses are finished; "never": canonical beam search).
      min_new_tokens: EOS is forbidden (its logit -inf) for the first ``min_new_tokens`` new
        tokens of each row (transformers' ``min_new_tokens``; 0 = off).
    Returns:
      (B, max_new_tokens) int32 new tokens (the prompt is not repeated), ``pad_token_id``
      after each row's EOS. For beam search, each row's best finished hypothesis.
    Raises:
      ValueError: both/neither of input_ids and inputs_embeds, ``max_new_tokens < 1``,
        sampling without ``rng`` or with a bad setting, ``num_beams < 1``, beam search with
        ``do_sample``, a bad ``early_stopping``, ``min_new_tokens < 0``, or prompt plus new
        tokens longer than the model's ``context_length``.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("generate: pass exactly one of input_ids and inputs_embeds")
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    if int(min_new_tokens) < 0:
        raise ValueError(f"generate: min_new_tokens must be >= 0, got {min_new_tokens}")
    min_new = jnp.int32(min(int(min_new_tokens), max_new_tokens))  # traced: no recompiles
    prompt = input_ids if input_ids is not None else inputs_embeds
    prompt_len = prompt.shape[1]
    limit = nnx.merge(graphdef, state).context_length
    if limit is not None and prompt_len + max_new_tokens > limit:
        raise ValueError(
            f"generate: prompt length {prompt_len} + max_new_tokens "
            f"{max_new_tokens} exceeds the model's context length {limit}"
        )
    if do_sample:
        if rng is None:
            raise ValueError("generate: do_sample=True needs rng")
        if not temperature > 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ValueError(
                f"generate: need temperature > 0, 0 < top_p <= 1, top_k >= 0; got "
                f"{temperature}, {top_p}, {top_k}"
            )
    else:
        rng = jax.random.key(0)  # unused
    eos = (eos_token_id,) if isinstance(eos_token_id, int) else tuple(int(e) for e in eos_token_id)
    if num_beams < 1:
        raise ValueError(f"generate: num_beams must be >= 1, got {num_beams}")
    top_level = not _traced(state, input_ids, inputs_embeds, attention_mask)
    if num_beams > 1:
        if do_sample:
            raise ValueError(
                "generate: beam sampling (num_beams > 1 with do_sample) is not implemented"
            )
        if early_stopping not in (False, True, "never"):
            raise ValueError(
                f"generate: early_stopping must be False, True or 'never', got {early_stopping!r}"
            )
        return _decode_jit(_beam_search, _BEAM_STATIC, top_level)(
            graphdef,
            state,
            input_ids,
            inputs_embeds,
            jnp.asarray(attention_mask),
            cache_inputs or {},
            max_new_tokens=max_new_tokens,
            eos=eos,
            pad=int(pad_token_id),
            num_beams=int(num_beams),
            length_penalty=float(length_penalty),
            early_stopping=early_stopping,
            min_new=min_new,
        )
    sampling = (float(temperature), int(top_k), float(top_p)) if do_sample else None
    return _decode_jit(_generate, _GENERATE_STATIC, top_level)(
        graphdef,
        state,
        input_ids,
        inputs_embeds,
        jnp.asarray(attention_mask),
        cache_inputs or {},
        rng,
        max_new_tokens=max_new_tokens,
        eos=eos,
        pad=int(pad_token_id),
        sampling=sampling,
        min_new=min_new,
    )


def forbid_eos(
    logits: jax.Array, step: jax.Array, eos: tuple[int, ...], min_new: int | jax.Array
) -> jax.Array:
    """(B, V) scores of new token ``step`` (0-based) with every EOS id at -inf while
    ``step < min_new`` (transformers' MinNewTokensLengthLogitsProcessor)."""
    if isinstance(min_new, int) and not min_new:
        return logits
    is_eos = jnp.zeros(logits.shape[-1], jnp.bool_).at[jnp.asarray(eos, jnp.int32)].set(True)
    return jnp.where(is_eos & (step < min_new), NEG_INF, logits)


@functools.cache
def _decode_jit(fn: Callable, static_argnames: tuple[str, ...], top_level: bool = True) -> Callable:
    """``fn`` jitted (graphdef static), built on first use; at the top level with the runtime's
    decode options (they depend on the backend, which must not start at import). Inside
    another jit (``top_level=False``) the enclosing program's options apply."""
    options = runtime.decode_compiler_options() if top_level else None
    return jax.jit(fn, static_argnums=0, static_argnames=static_argnames, compiler_options=options)


def _traced(*trees) -> bool:
    """Whether any array of ``trees`` is a tracer (this call runs inside a jit)."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(trees))


_GENERATE_STATIC = ("max_new_tokens", "eos", "pad", "sampling")
_BEAM_STATIC = ("max_new_tokens", "eos", "pad", "num_beams", "length_penalty", "early_stopping")


def _generate(
    graphdef,
    state,
    input_ids,
    inputs_embeds,
    attention_mask,
    cache_inputs,
    rng,
    *,
    max_new_tokens: int,
    eos: tuple[int, ...],
    pad: int,
    sampling: tuple[float, int, float] | None,
    min_new: jax.Array | int = 0,
) -> jax.Array:
    model = nnx.merge(graphdef, state, copy=True)
    prompt = input_ids if input_ids is not None else inputs_embeds
    batch, prompt_len = prompt.shape[:2]
    cache = model.init_cache(batch, prompt_len + max_new_tokens, **cache_inputs)
    logits, cache = model(
        input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        cache=cache,
        last_only=True,
    )

    def choose(logits: jax.Array, step: jax.Array, finished: jax.Array):
        """(B, V) logits of the last position -> tokens (B,) int32, finished after them."""
        logits = forbid_eos(logits, step, eos, min_new)
        if sampling is None:
            token = first_argmax(logits)
        else:
            temperature, top_k, top_p = sampling
            warped = warp_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
            token = jax.random.categorical(jax.random.fold_in(rng, step), warped, axis=-1).astype(
                jnp.int32
            )
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


def _beam_search(
    graphdef,
    state,
    input_ids,
    inputs_embeds,
    attention_mask,
    cache_inputs,
    *,
    max_new_tokens: int,
    eos: tuple[int, ...],
    pad: int,
    num_beams: int,
    length_penalty: float,
    early_stopping: bool | str,
    min_new: jax.Array | int = 0,
) -> jax.Array:
    model = nnx.merge(graphdef, state, copy=True)
    prompt = input_ids if input_ids is not None else inputs_embeds
    batch, prompt_len = prompt.shape[:2]
    beams, steps = num_beams, max_new_tokens
    keep = max(2, 1 + len(eos)) * beams  # candidates kept per row, as transformers
    cache = model.init_cache(batch, prompt_len + steps, **cache_inputs)
    logits, cache = model(
        input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        cache=cache,
        last_only=True,
    )
    # the B * beams rows of transformers' expanded prompt are identical: prefill once, repeat
    repeat = lambda x: jnp.repeat(x, beams, axis=0)  # noqa: E731
    cache = map_rows(cache, repeat)
    logits = repeat(logits[:, -1])
    # length_penalty denominators for generated lengths 1 .. steps, computed like Python's
    # int ** float and then rounded to f32
    denom = jnp.asarray(np.arange(1, steps + 1, dtype=np.float64) ** length_penalty, jnp.float32)
    eos_ids = jnp.asarray(eos, jnp.int32)
    in_top_beams = jnp.arange(keep) < beams
    row_offset = (jnp.arange(batch) * beams)[:, None]
    big = jnp.float32(-1.0e9)

    def gather(x, idx):  # x (B, n, ...), idx (B, m) -> (B, m, ...)
        return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

    def select(logits, carry):
        """One beam step from the (B * beams, V) next-token logits of the running beams."""
        (t, run_tokens, run_scores, fin_tokens, fin_scores, fin_done, open_rows, _, _) = carry
        vocab = logits.shape[-1]
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        log_probs = forbid_eos(log_probs, t, eos, min_new)
        log_probs = log_probs.reshape(batch, beams, vocab) + run_scores[:, :, None]
        top_scores, top_idx = jax.lax.top_k(log_probs.reshape(batch, beams * vocab), keep)
        source, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
        cand_tokens = gather(run_tokens, source)
        cand_tokens = jax.lax.dynamic_update_slice(cand_tokens, token[:, :, None], (0, 0, t))
        hits = jnp.isin(token, eos_ids) | (t + 1 >= steps)  # (B, keep)

        # continue the best `beams` candidates that did not stop
        run_cand = top_scores + hits.astype(jnp.float32) * big
        _, nxt = jax.lax.top_k(run_cand, beams)
        run_tokens, run_scores = gather(cand_tokens, nxt), gather(run_cand, nxt)
        rows = (gather(source, nxt) + row_offset).reshape(-1)

        # merge the stopped candidates among the top `beams` into the finished pool
        just_done = hits & in_top_beams[None, :]
        fin_cand = top_scores / denom[t]
        full = jnp.all(fin_done, axis=-1, keepdims=True) & (early_stopping is True)
        fin_cand = fin_cand + full.astype(jnp.float32) * big
        fin_cand = fin_cand + (~open_rows)[:, None].astype(jnp.float32) * big
        fin_cand = fin_cand + (~just_done).astype(jnp.float32) * big
        merged_scores = jnp.concatenate([fin_scores, fin_cand], axis=1)
        _, best = jax.lax.top_k(merged_scores, beams)
        fin_tokens = gather(jnp.concatenate([fin_tokens, cand_tokens], axis=1), best)
        fin_scores = gather(merged_scores, best)
        fin_done = gather(jnp.concatenate([fin_done, just_done], axis=1), best)

        # transformers' heuristic: can the best running beam still beat the worst finished?
        t = t + 1
        length = jnp.int32(steps) if (early_stopping == "never" and length_penalty > 0) else t
        best_running = run_scores[:, :1] / denom[length - 1]
        worst_done = jnp.where(fin_done, jnp.min(fin_scores, axis=1, keepdims=True), big)
        open_rows = open_rows & jnp.any(best_running > worst_done, axis=-1)
        go_on = jnp.any(open_rows) & ~jnp.all(hits)
        if early_stopping is True:
            go_on = go_on & ~jnp.all(fin_done)
        return (t, run_tokens, run_scores, fin_tokens, fin_scores, fin_done, open_rows, go_on, rows)

    tokens0 = jnp.full((batch, beams, steps), pad, jnp.int32)
    carry = (
        jnp.int32(0),
        tokens0,
        jnp.zeros((batch, beams), jnp.float32).at[:, 1:].set(big),  # only beam 0 at first
        tokens0,
        jnp.full((batch, beams), big),
        jnp.zeros((batch, beams), jnp.bool_),
        jnp.ones((batch,), jnp.bool_),
        jnp.bool_(True),
        jnp.zeros((batch * beams,), jnp.int32),
    )
    carry = select(logits, carry)

    def cond(c):
        return c[0][7] & (c[0][0] < steps)

    def body(c):
        carry, cache = c
        cache = map_rows(cache, lambda x: jnp.take(x, carry[-1], axis=0))
        token = carry[1][:, :, carry[0] - 1].reshape(-1)
        logits, cache = model(token[:, None], cache=cache)
        return select(logits[:, -1], carry), cache

    carry, _ = jax.lax.while_loop(cond, body, (carry, cache))
    return carry[3][:, 0]
