"""radjax.train.generation and the Decoder KV cache: token-identical to transformers'
``generate`` on left-padded batches, cached logits equal full recomputation, EOS handling,
inputs_embeds prompts, logits warpers, length errors, beam search."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_llama import _convert, _radjax, _reference  # _reference skips without torch

import radjax  # noqa: F401  (eager sharding off)
from radjax.models.llama import Decoder
from radjax.train.generation import generate, warp_logits
from tests.parity import rel_err

PROMPT = 9
NEW = 12  # one max_new_tokens everywhere: tests share compiled functions


def _prompts():
    """Left-padded (2, 9) ids and mask: row 1 is a 5-token prompt behind 4 pads."""
    ids = np.random.default_rng(0).integers(3, 128, (2, PROMPT)).astype(np.int32)
    mask = np.ones((2, PROMPT), np.int32)
    mask[1, :4] = 0
    ids[1, :4] = 0
    return ids, mask


def _hf_generate(reference, ids, mask, max_new_tokens, eos, pad=0, **kwargs):
    import torch

    with torch.no_grad():
        out = reference.generate(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
            **kwargs,
        ).numpy()[:, ids.shape[1] :]
    # transformers stops early when every row is done; radjax always returns max_new_tokens
    return np.pad(out, ((0, 0), (0, max_new_tokens - out.shape[1])), constant_values=pad)


@pytest.fixture(scope="module")
def llama():
    reference = _reference("llama")
    return reference, _convert(reference)[0]


@pytest.fixture(scope="module")
def radjax_llama():
    """The tiny LLaMA, randomly initialised by radjax (no torch needed)."""
    return _radjax("llama", tie_word_embeddings=False)


@pytest.mark.parametrize("case", ["llama", "mistral_window", "phi3_partial"])
def test_greedy_matches_transformers(case):
    """12 new tokens: longer than the Mistral (4) and Phi-3 (5) sliding windows."""
    reference = _reference(case)
    model, _ = _convert(reference)
    ids, mask = _prompts()
    got = np.asarray(
        generate(
            *nnx.split(model),
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=NEW,
            eos_token_id=2,
            pad_token_id=0,
        )
    )
    want = _hf_generate(reference, ids, mask, NEW, eos=2)
    assert got.dtype == np.int32 and got.shape == (2, 12)
    np.testing.assert_array_equal(got, want)


def test_eos_stops_and_pads(llama):
    reference, model = llama
    ids, mask = _prompts()
    free = np.asarray(
        generate(
            *nnx.split(model),
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=NEW,
            eos_token_id=2,
            pad_token_id=0,
        )
    )
    eos = (int(free[0, 2]), int(free[1, 4]))  # row 0 ends at step 2, row 1 by step 4
    got = np.asarray(
        generate(
            *nnx.split(model),
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=NEW,
            eos_token_id=eos,
            pad_token_id=0,
        )
    )
    np.testing.assert_array_equal(got, _hf_generate(reference, ids, mask, NEW, eos=list(eos)))
    for row, free_row in zip(got, free):
        stop = int(np.flatnonzero(np.isin(row, eos))[0])
        assert stop <= 4 and (row[stop + 1 :] == 0).all()
        np.testing.assert_array_equal(row[: stop + 1], free_row[: stop + 1])


def test_inputs_embeds_start_equals_ids(radjax_llama):
    model = radjax_llama
    ids, mask = _prompts()
    graphdef, state = nnx.split(model)
    kwargs = {"attention_mask": mask, "max_new_tokens": NEW, "eos_token_id": 2, "pad_token_id": 0}
    by_ids = generate(graphdef, state, input_ids=ids, **kwargs)
    by_embeds = generate(graphdef, state, inputs_embeds=model.embed(ids), **kwargs)
    np.testing.assert_array_equal(np.asarray(by_ids), np.asarray(by_embeds))
    with pytest.raises(ValueError, match="exactly one"):
        generate(graphdef, state, **kwargs)


@pytest.mark.parametrize("case", ["llama", "mistral_window"])
def test_cached_logits_equal_full_recompute(case):
    """Prefill + one-token steps through the cache vs the whole sequence without it."""
    model = _radjax("llama") if case == "llama" else _radjax("mistral", sliding_window=4)
    graphdef, state = nnx.split(model)
    ids, mask = _prompts()
    steps = 6
    new = np.random.default_rng(1).integers(3, 128, (2, steps)).astype(np.int32)
    full_ids = np.concatenate([ids, new], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(new)], axis=1)

    @jax.jit
    def full(state):
        return nnx.merge(graphdef, state, copy=True)(full_ids, attention_mask=full_mask)

    @jax.jit
    def prefill(state):
        m = nnx.merge(graphdef, state, copy=True)
        return m(ids, attention_mask=mask, cache=m.init_cache(2, PROMPT + steps))

    @jax.jit
    def step(state, token, cache):
        return nnx.merge(graphdef, state, copy=True)(token, cache=cache)

    logits, cache = prefill(state)
    got = [logits]
    for i in range(steps):
        logits, cache = step(state, new[:, i : i + 1], cache)
        got.append(logits)
    assert int(cache.length) == PROMPT + steps and bool(cache.valid[0].all())
    want, got = np.asarray(full(state)), np.concatenate(got, axis=1)
    valid = full_mask.astype(bool)
    rel = rel_err(got[valid], want[valid])
    print(f"{case}: cached vs full rel err {rel:.2e}")
    assert rel < 1e-5


def test_top_k_one_sampling_equals_greedy(radjax_llama):
    model = radjax_llama
    ids, mask = _prompts()
    kwargs = {
        "input_ids": ids,
        "attention_mask": mask,
        "max_new_tokens": NEW,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    greedy = generate(*nnx.split(model), **kwargs)
    sampled = [
        np.asarray(
            generate(
                *nnx.split(model),
                do_sample=True,
                top_k=1,
                top_p=0.9,
                temperature=0.7,
                rng=jax.random.key(seed),
                **kwargs,
            )
        )
        for seed in (3, 4)
    ]
    np.testing.assert_array_equal(sampled[0], np.asarray(greedy))
    np.testing.assert_array_equal(sampled[1], np.asarray(greedy))
    with pytest.raises(ValueError, match="rng"):
        generate(*nnx.split(model), do_sample=True, **kwargs)


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.8), (1.3, 20, 0.6)]
)
def test_warp_logits_match_transformers(torch, transformers, temperature, top_k, top_p):
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = np.random.default_rng(0).normal(size=(3, 128)).astype(np.float32) * 3
    warpers = LogitsProcessorList(
        [TemperatureLogitsWarper(temperature)]
        + ([TopKLogitsWarper(top_k)] if top_k else [])
        + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
    )
    want = warpers(None, torch.from_numpy(logits)).numpy()
    got = np.asarray(
        warp_logits(jnp.asarray(logits), temperature=temperature, top_k=top_k, top_p=top_p)
    )
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    keep = ~np.isinf(want)
    np.testing.assert_allclose(got[keep], want[keep], rtol=1e-6)
    assert keep.sum(-1).min() >= 1


def test_length_errors(llama):
    _, model = llama
    assert model.cfg.max_position_embeddings == 2048  # read from config.json
    ids, mask = _prompts()
    short = dataclasses.replace(model.cfg, max_position_embeddings=PROMPT + 3)  # 3 new fit
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Decoder(short, rngs=nnx.Rngs(0))))
    state = nnx.state(model)
    kwargs = {"input_ids": ids, "attention_mask": mask, "eos_token_id": 2, "pad_token_id": 0}
    with pytest.raises(ValueError, match="context length 12"):
        generate(graphdef, state, max_new_tokens=4, **kwargs)
    with pytest.raises(ValueError, match="do not fit a KV cache of 4 slots"):
        model(ids, attention_mask=mask, cache=model.init_cache(2, 4))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(graphdef, state, max_new_tokens=0, **kwargs)


# transformers' beam search fills finished hypotheses with `pad_token_id or eos[0]`, i.e. with
# EOS when pad is 0; radjax always pads with pad_token_id, so the beam tests use pad 1
BEAM_PAD = 1


def _beam(model, ids, mask, eos, num_beams, **kwargs):
    return np.asarray(
        generate(
            *nnx.split(model),
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=NEW,
            eos_token_id=eos,
            pad_token_id=BEAM_PAD,
            num_beams=num_beams,
            **kwargs,
        )
    )


@pytest.mark.parametrize("num_beams", [2, 3])
def test_beam_search_matches_transformers(llama, num_beams):
    """No EOS within 12 tokens: hypotheses finish at the length limit."""
    reference, model = llama
    ids, mask = _prompts()
    got = _beam(model, ids, mask, 2, num_beams)
    want = _hf_generate(reference, ids, mask, NEW, eos=2, pad=BEAM_PAD, num_beams=num_beams)
    assert got.dtype == np.int32 and got.shape == (2, NEW)
    np.testing.assert_array_equal(got, want)
    if num_beams == 3:  # beam search finds a different continuation than greedy here
        greedy = _beam(model, ids, mask, 2, 1)
        assert (got != greedy).any()


@pytest.mark.parametrize("settings", ["one_eos", "two_eos_never_lp2"])
def test_beam_search_eos_matches_transformers(llama, settings):
    """EOS ids taken from the free beam output, so hypotheses finish early (row 1's best at
    its second token) while row 0 runs to the limit; also two EOS ids (3 * num_beams
    candidates per step) with early_stopping='never' and length_penalty 2 (which favours the
    long hypotheses)."""
    reference, model = llama
    ids, mask = _prompts()
    free = _beam(model, ids, mask, 2, 3)
    if settings == "one_eos":
        eos, kwargs = int(free[1, 1]), {}
    else:
        eos, kwargs = (
            [int(free[0, 2]), int(free[1, 2])],
            {"early_stopping": "never", "length_penalty": 2.0},
        )
    got = _beam(model, ids, mask, eos, 3, **kwargs)
    want = _hf_generate(reference, ids, mask, NEW, eos=eos, pad=BEAM_PAD, num_beams=3, **kwargs)
    np.testing.assert_array_equal(got, want)
    assert (got != free).any()  # the EOS ids changed the search
    ends = [np.flatnonzero(np.isin(row, eos)) for row in got]
    for row, end in zip(got, ends):
        if len(end):  # a finished hypothesis is padded after its EOS
            assert (row[end[0] + 1 :] == BEAM_PAD).all()
    if settings == "one_eos":  # row 1's best hypothesis stops at its second token
        assert ends[1][0] == 1 and not len(ends[0])


def test_beam_search_errors(radjax_llama):
    model = radjax_llama
    ids, mask = _prompts()
    with pytest.raises(ValueError, match="num_beams"):
        _beam(model, ids, mask, 2, 0)
    with pytest.raises(ValueError, match="beam sampling"):
        _beam(model, ids, mask, 2, 2, do_sample=True, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="early_stopping"):
        _beam(model, ids, mask, 2, 2, early_stopping="sometimes")


def test_first_argmax_is_argmax_with_ties_infinities_and_nan():
    from radjax.train.generation import first_argmax

    x = np.random.default_rng(0).normal(size=(5, 40)).astype(np.float32)
    x[1, 3] = x[1, 7] = 9.0  # tie: first index
    x[2, 5] = x[2, 9] = np.nan  # NaN wins, first one
    x[3] = -np.inf  # all -inf: index 0
    x[4, 2] = np.inf
    np.testing.assert_array_equal(
        np.asarray(first_argmax(jnp.asarray(x))), np.asarray(jnp.argmax(jnp.asarray(x), axis=-1))
    )


def test_generation_on_a_2x4_mesh_equals_unsharded(radjax_llama):
    """Greedy and beam generation with fsdp x tensor sharded weights and cache give the
    unsharded tokens."""
    from radjax import sharding

    model = radjax_llama
    ids, mask = _prompts()
    graphdef, state = nnx.split(model)
    kwargs = dict(max_new_tokens=NEW, eos_token_id=2, pad_token_id=0)
    want = {
        beams: np.asarray(
            generate(
                graphdef,
                state,
                input_ids=jnp.asarray(ids),
                attention_mask=jnp.asarray(mask),
                num_beams=beams,
                **kwargs,
            )
        )
        for beams in (1, 2)
    }
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    s_state = jax.device_put(state, sharding.state_shardings(state, mesh))
    q = s_state["layers"][0]["self_attn"]["q_proj"]["kernel"].get_value()
    assert not q.sharding.is_fully_replicated
    s_ids, s_mask = (jax.device_put(x, sharding.batch_sharding(mesh, 2)) for x in (ids, mask))
    with jax.set_mesh(mesh):
        for beams in (1, 2):
            got = generate(
                graphdef, s_state, input_ids=s_ids, attention_mask=s_mask, num_beams=beams, **kwargs
            )
            np.testing.assert_array_equal(np.asarray(got), want[beams])
