"""GPT-2 through radjax.train.generation: greedy and beam output token-identical to
transformers' ``generate`` on a left-padded batch; with extra keys/values held in the cache,
cached decoding equals recomputing the whole sequence."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_gpt2 import TINY_HF, _model, _reference

import radjax  # noqa: F401  (eager sharding off)
from radjax.models.gpt2 import GPT2, GPT2Config
from radjax.train.generation import generate
from tests.sharded import jit_build

PROMPT, NEW, EOS, PAD = 7, 10, 0, 99


def _prompts():
    """Left-padded (2, 7) ids / mask: row 1 has 4 real tokens."""
    ids = np.random.default_rng(3).integers(1, 99, (2, PROMPT)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    ids[1, :3] = PAD
    return ids, mask


@pytest.fixture(scope="module")
def pair():
    reference = _reference()
    return reference, _model(reference)


@pytest.fixture(scope="module")
def radjax_model():
    """The tiny GPT-2, randomly initialised by radjax (no torch needed)."""
    model = jit_build(lambda: GPT2(GPT2Config.from_hf_config(TINY_HF), rngs=nnx.Rngs(1)))
    model.eval()
    return model


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_is_token_identical_to_transformers(torch, pair, num_beams):
    reference, model = pair
    ids, mask = _prompts()
    with torch.no_grad():
        want = reference.generate(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            max_new_tokens=NEW,
            do_sample=False,
            num_beams=num_beams,
            eos_token_id=EOS,
            pad_token_id=PAD,
        ).numpy()[:, PROMPT:]
    got = np.asarray(
        generate(
            *nnx.split(model),
            input_ids=jnp.asarray(ids),
            attention_mask=jnp.asarray(mask),
            max_new_tokens=NEW,
            eos_token_id=EOS,
            pad_token_id=PAD,
            num_beams=num_beams,
        )
    )
    want = np.pad(want, ((0, 0), (0, NEW - want.shape[1])), constant_values=PAD)
    np.testing.assert_array_equal(got, want)


@functools.partial(jax.jit, static_argnums=0)
def _full_logits(graphdef, state, ids, mask, positions, extra):
    return nnx.merge(graphdef, state)(ids, attention_mask=mask, positions=positions, extra_kv=extra)


def test_extra_kv_in_cache_matches_full_recomputation(radjax_model):
    model = radjax_model
    cfg = model.cfg
    ids, mask = _prompts()
    rng = np.random.default_rng(0)
    extra = [
        tuple(
            jnp.asarray(3 * rng.normal(size=(2, 3, cfg.n_head, cfg.head_dim)), jnp.float32)
            for _ in range(2)
        )
        for _ in range(cfg.n_layer)
    ]
    extra[1] = None  # a layer without extra keys
    graphdef, state = nnx.split(model)
    tokens = np.asarray(
        generate(
            graphdef,
            state,
            input_ids=jnp.asarray(ids),
            attention_mask=jnp.asarray(mask),
            max_new_tokens=NEW,
            eos_token_id=100,
            pad_token_id=PAD,
            cache_inputs={"extra_kv": extra},
        )
    )
    # the cached prefill sees the extra keys: its logits equal the full forward's, and differ
    # from those without extra keys
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    full = _full_logits(
        graphdef, state, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(positions), extra
    )[:, -1:]
    cached, _ = model(
        jnp.asarray(ids),
        attention_mask=jnp.asarray(mask),
        last_only=True,
        cache=model.init_cache(2, PROMPT + 1, extra_kv=extra),
    )
    plain, _ = model(
        jnp.asarray(ids),
        attention_mask=jnp.asarray(mask),
        last_only=True,
        cache=model.init_cache(2, PROMPT + 1),
    )
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(cached) - np.asarray(plain)).max() > 1e-3
    # greedy decoding again, by full recomputation with real-token positions
    seq, seq_mask = ids, mask
    for step in range(NEW):
        positions = np.maximum(np.cumsum(seq_mask, axis=1) - 1, 0)
        logits = _full_logits(
            graphdef, state, jnp.asarray(seq), jnp.asarray(seq_mask), jnp.asarray(positions), extra
        )
        nxt = np.asarray(jnp.argmax(logits[:, -1], axis=-1))
        np.testing.assert_array_equal(nxt, tokens[:, step])
        seq = np.concatenate([seq, nxt[:, None]], axis=1).astype(np.int32)
        seq_mask = np.concatenate([seq_mask, np.ones((2, 1), np.int32)], axis=1)


def test_extra_kv_errors(radjax_model):
    model = radjax_model
    with pytest.raises(ValueError, match="pass extra_kv to init_cache"):
        model(
            jnp.ones((1, 2), jnp.int32),
            cache=model.init_cache(1, 4),
            extra_kv=[None] * model.cfg.n_layer,
        )
    bad = [(jnp.zeros((1, 3, 5, 2)), jnp.zeros((1, 3, 5, 2)))] * model.cfg.n_layer
    with pytest.raises(ValueError, match=r"extra_kv\[0\] keys \(1, 3, 5, 2\)"):
        model.init_cache(1, 4, extra_kv=bad)
    with pytest.raises(ValueError, match="context length 64"):
        generate(
            *nnx.split(model),
            input_ids=jnp.ones((1, 60), jnp.int32),
            attention_mask=jnp.ones((1, 60), jnp.int32),
            max_new_tokens=5,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )
