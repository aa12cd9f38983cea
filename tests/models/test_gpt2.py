"""radjax.models.gpt2 and radjax.convert.gpt2: transformers parity, extra keys/values,
sharding, conversion errors."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import radjax  # noqa: F401  (eager sharding off)
from radjax.convert import gpt2 as convert
from radjax.convert.torch_io import ConversionError, assign
from radjax.models.gpt2 import GPT2, GPT2Config, causal_padding_mask
from tests.parity import assert_close, rel_err
from tests.sharded import assert_sharded_equals_unsharded, jit_build

TINY_HF = {"vocab_size": 100, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}
B, L, H, DH, PX = 4, 10, 4, 8, 3  # batch, length, heads, head dim, extra keys


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, ids, kwargs):
    return nnx.merge(graphdef, state)(ids, **kwargs)


def _run(model, ids, **kwargs):
    """Jitted forward (eager dispatch of every op is slow on the shared CI cores)."""
    return np.asarray(_forward(*nnx.split(model), ids, kwargs))


def _numpy_sd(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _reference():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**TINY_HF, bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    return transformers.GPT2LMHeadModel(cfg).eval()


def _model(reference, **overrides):
    model = GPT2(
        GPT2Config.from_hf_config(reference.config.to_dict(), **overrides), rngs=nnx.Rngs(1)
    )
    assign(model, convert.from_hf_gpt2(_numpy_sd(reference)))
    model.eval()
    return model


@pytest.fixture(scope="module")
def tiny():
    """A random transformers GPT2LMHeadModel and the radjax copy of its weights."""
    reference = _reference()
    return _model(reference), reference


@pytest.fixture(scope="module")
def radjax_tiny():
    """The tiny configuration, randomly initialised by radjax (no torch needed)."""
    model = jit_build(lambda: GPT2(GPT2Config.from_hf_config(TINY_HF), rngs=nnx.Rngs(1)))
    model.eval()
    return model


def _batch(seed=0):
    """Right-padded (B, L) ids and mask; row 0 is full length."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, TINY_HF["vocab_size"], (B, L)).astype(np.int32)
    lengths = rng.integers(2, L + 1, B)
    lengths[0] = L
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    return ids * mask, mask


def _torch_logits(reference, ids, mask, **kwargs):
    import torch

    with torch.no_grad():
        return reference(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            **kwargs,
        ).logits.numpy()


def _extra_kv(seed=1):
    """Per-layer (keys, values), each (B, PX, H, DH)."""
    rng = np.random.default_rng(seed)
    return [
        tuple(rng.normal(size=(B, PX, H, DH)).astype(np.float32) for _ in range(2))
        for _ in range(TINY_HF["n_layer"])
    ]


def test_logits_match_transformers_on_padded_batch(tiny):
    model, reference = tiny
    ids, mask = _batch()
    got = _run(model, ids, attention_mask=mask)
    assert got.shape == (B, L, TINY_HF["vocab_size"]) and got.dtype == np.float32
    assert_close(got, _torch_logits(reference, ids, mask), 1e-5)


def test_inputs_embeds_and_no_extra_kv_equal_the_ids_path(radjax_tiny):
    model = radjax_tiny
    ids, mask = _batch()
    want = _run(model, ids, attention_mask=mask)
    embeds = model.embed(jnp.asarray(ids))
    got = np.asarray(model(inputs_embeds=embeds, attention_mask=mask))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    nones = _run(model, ids, attention_mask=mask, extra_kv=[None] * TINY_HF["n_layer"])
    np.testing.assert_array_equal(nones, want)


def _attention_numpy(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, mask, ek, ev):
    """GPT-2 attention of x (B, L, D) over [extra; self] keys in float64 numpy."""
    qkv = x @ c_attn_w + c_attn_b
    q, k, v = (t.reshape(B, L, H, DH) for t in np.split(qkv, 3, axis=-1))
    k, v = np.concatenate([ek, k], 1), np.concatenate([ev, v], 1)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(DH)
    visible = np.concatenate([np.ones((B, 1, L, PX), bool), mask], -1)
    scores = np.where(visible, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, L, H * DH)
    return out @ c_proj_w + c_proj_b


def test_extra_kv_attention_equals_direct_computation(tiny):
    """One layer against numpy: softmax(q [ek; k]^T / sqrt(Dh)) [ev; v], extra keys visible
    to every query, own keys causal and padding-masked."""
    model, reference = tiny
    sd = {k: v.astype(np.float64) for k, v in _numpy_sd(reference).items()}
    _, mask = _batch()
    ek, ev = _extra_kv()[0]
    x = np.random.default_rng(2).normal(size=(B, L, TINY_HF["n_embd"])).astype(np.float32)
    bool_mask = causal_padding_mask(jnp.asarray(mask))
    got = model.h[0].attn(jnp.asarray(x), bool_mask, (jnp.asarray(ek), jnp.asarray(ev)))
    want = _attention_numpy(
        x.astype(np.float64),
        *(
            sd[f"transformer.h.0.attn.{n}"]
            for n in ("c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias")
        ),
        np.asarray(bool_mask),
        ek.astype(np.float64),
        ev.astype(np.float64),
    )
    assert_close(got, want, 1e-5)
    plain = np.asarray(model.h[0].attn(jnp.asarray(x), bool_mask))
    assert rel_err(got, plain) > 1e-2  # the extra keys change the output


def test_extra_kv_model_equals_transformers_with_prefix_cache(torch, transformers, tiny):
    """Whole model: extra keys/values = transformers' cached prefix keys/values with an
    all-visible prefix mask and positions 0..L-1; the callable hook gives the same."""
    model, reference = tiny
    ids, mask = _batch()
    extra = _extra_kv()
    cache = transformers.DynamicCache(config=reference.config)
    for layer, (ek, ev) in enumerate(extra):
        cache.update(*(torch.from_numpy(t).transpose(1, 2) for t in (ek, ev)), layer)
    full_mask = np.concatenate([np.ones((B, PX), np.int32), mask], 1)
    want = _torch_logits(
        reference, ids, full_mask, cache=cache, position_ids=torch.arange(L)[None].expand(B, L)
    )
    got = _run(model, ids, attention_mask=mask, extra_kv=extra)
    assert_close(got, want, 1e-5)
    hooked = np.asarray(
        model(jnp.asarray(ids), attention_mask=mask, extra_kv=lambda layer: extra[layer])
    )
    np.testing.assert_allclose(hooked, got, rtol=0, atol=1e-5)


def test_input_errors(radjax_tiny):
    model = radjax_tiny
    ids, mask = _batch()
    with pytest.raises(ValueError, match="exactly one"):
        model(attention_mask=mask)
    with pytest.raises(ValueError, match="1 entries"):
        model(jnp.asarray(ids), extra_kv=_extra_kv()[:1])
    bad = [(k[:, :, :2], v[:, :, :2]) for k, v in _extra_kv()]
    with pytest.raises(ValueError, match=r"\(B, P, 4, 8\)"):
        model(jnp.asarray(ids), extra_kv=bad)
    with pytest.raises(ValueError, match="n_positions"):
        model(jnp.zeros((1, 65), jnp.int32))


def test_word_table_positions_reproduce_autorg_quirk(torch):
    """position_table='wte' equals transformers with wpe overwritten by wte's first rows."""
    reference = _reference()
    model = _model(reference, position_table="wte")
    with torch.no_grad():
        reference.transformer.wpe.weight.copy_(
            reference.transformer.wte.weight[: TINY_HF["n_positions"]]
        )
    ids, mask = _batch()
    assert_close(_run(model, ids, attention_mask=mask), _torch_logits(reference, ids, mask), 1e-5)


def test_sharded_forward_equals_unsharded(radjax_tiny):
    ids, mask = _batch()
    kwargs = {"attention_mask": mask, "extra_kv": _extra_kv()}
    run = assert_sharded_equals_unsharded(
        radjax_tiny, ids, kwargs, fn=lambda m, ids, kw: m(ids, **kw), atol=1e-5
    )
    shardings = run.shardings
    assert shardings["h"][0]["attn"]["c_attn"]["kernel"].get_value().spec == P("fsdp", "tensor")
    assert shardings["h"][1]["mlp"]["c_proj"]["kernel"].get_value().spec == P("tensor", "fsdp")
    assert not run.got.sharding.is_fully_replicated


def test_logical_axes(radjax_tiny):
    model = radjax_tiny
    axes = lambda v: v.get_metadata().get("out_sharding")
    assert axes(model.wte.embedding) == ("vocab", "embed")
    assert axes(model.h[0].attn.c_attn.kernel) == ("embed", "heads")
    assert axes(model.h[0].mlp.c_fc.kernel) == ("embed", "mlp")
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert all(axes(v) is not None for _, v in params)


def test_from_hf_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY_HF, model_type="gpt2")))
    cfg = GPT2Config.from_hf_config(tmp_path)
    assert cfg == GPT2Config.from_hf_config(TINY_HF)
    assert (cfg.head_dim, cfg.inner_dim, cfg.activation_function) == (8, 128, "gelu_new")
    for field, value in (
        ("model_type", "bert"),
        ("add_cross_attention", True),
        ("scale_attn_by_inverse_layer_idx", True),
        ("tie_word_embeddings", False),
    ):
        with pytest.raises(ValueError, match=field):
            GPT2Config.from_hf_config(dict(TINY_HF, **{field: value}))


def test_converter_accepts_bare_keys_and_old_buffers(tiny):
    _, reference = tiny
    sd = _numpy_sd(reference)
    values = convert.from_hf_gpt2(sd)
    bare = {k.removeprefix("transformer."): v for k, v in sd.items() if k != "lm_head.weight"}
    bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), bool))
    got = convert.from_hf_gpt2(bare)
    assert got.keys() == values.keys() and all(np.array_equal(got[k], values[k]) for k in got)
    np.testing.assert_array_equal(
        values["h/1/attn/c_attn/kernel"],  # Conv1D: no transpose
        sd["transformer.h.1.attn.c_attn.weight"],
    )


def test_conversion_errors_name_the_keys(tiny):
    _, reference = tiny
    sd = _numpy_sd(reference)
    fresh = lambda: nnx.eval_shape(
        lambda: GPT2(GPT2Config.from_hf_config(TINY_HF), rngs=nnx.Rngs(0))
    )
    with pytest.raises(ConversionError, match="rotary"):
        convert.from_hf_gpt2(dict(sd, **{"transformer.h.0.attn.rotary.weight": np.zeros(2)}))
    untied = dict(sd, **{"lm_head.weight": sd["lm_head.weight"] + 1})
    with pytest.raises(ConversionError, match="differs from the embedding table"):
        convert.from_hf_gpt2(untied)
    missing = {k: v for k, v in sd.items() if k != "transformer.ln_f.weight"}
    with pytest.raises(ConversionError, match="missing.*\n.*ln_f/scale"):
        assign(fresh(), convert.from_hf_gpt2(missing))
    extra_layer = dict(
        sd, **{k.replace(".h.1.", ".h.2."): v for k, v in sd.items() if ".h.1." in k}
    )
    with pytest.raises(ConversionError, match="unexpected.*\n.*h/2/"):
        assign(fresh(), convert.from_hf_gpt2(extra_layer))


def test_load_gpt2_roundtrip(tiny, tmp_path):
    _, reference = tiny
    reference.save_pretrained(tmp_path)
    model = convert.load_gpt2(tmp_path)
    ids, mask = _batch(seed=3)
    assert_close(_run(model, ids, attention_mask=mask), _torch_logits(reference, ids, mask), 1e-5)
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        convert.load_gpt2(tmp_path / "no-such-dir")
