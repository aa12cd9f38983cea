"""LLaMA decoder training: sharded forward + backward on a 2x4 CPU mesh equal to unsharded,
remat (``DecoderConfig.remat``) keeps loss and gradients, a jitted train step lowers the
loss, attention dropout (``DecoderConfig.dropout``) acts in train mode only and draws the same
masks under ``scan_layers``."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (eager sharding off)
from radjax import sharding
from radjax.convert.torch_io import stack_layers
from radjax.models.llama import Decoder, DecoderConfig
from radjax.train import optim
from radjax.train import step as step_lib

CFG = DecoderConfig(
    vocab_size=128,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=96,
    init_std=0.1,
)


def _build(cfg: DecoderConfig) -> Decoder:
    # rbg dropout keys: XLA CPU compiles threefry bits ~2x slower than the whole tiny model
    return Decoder(cfg, rngs=nnx.Rngs(0, dropout=jax.random.key(1, impl="rbg")))


def _batch():
    """Left-padded (4, 12) ids and mask (rows 1 and 3 padded)."""
    ids = np.random.default_rng(0).integers(1, 128, (4, 12)).astype(np.int32)
    mask = np.ones((4, 12), np.int32)
    mask[1, :4] = 0
    mask[3, :2] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def lm_loss(model, batch, config=None):
    """Causal-LM cross-entropy over real (token, next token) pairs."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = model(ids, attention_mask=mask)[:, :-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    weight = (mask[:, 1:] * mask[:, :-1]).astype(jnp.float32)
    return jnp.sum(nll * weight) / jnp.sum(weight), {}


@functools.partial(jax.jit, static_argnums=(0, 4))
def _loss_and_grads(graphdef, params, rest, batch, train=False):
    def f(params):
        model = nnx.merge(graphdef, params, rest, copy=True)
        model.train() if train else model.eval()
        loss, _ = lm_loss(model, batch)
        return loss, nnx.state(model, nnx.RngState)

    (loss, rng), grads = jax.value_and_grad(f, has_aux=True)(params)
    return loss, grads, rng


def _assert_grads_close(got, want, rtol=1e-5):
    got, want = dict(nnx.to_flat_state(got)), dict(nnx.to_flat_state(want))
    assert got.keys() == want.keys()
    for path, w in want.items():
        w = np.asarray(w.get_value())
        g = np.asarray(got[path].get_value())
        assert np.abs(w).max() > 0, path
        np.testing.assert_allclose(
            g, w, rtol=rtol, atol=rtol * float(np.abs(w).max()), err_msg=str(path)
        )


def test_sharded_forward_backward_equals_unsharded():
    batch = _batch()
    graphdef, params, rest = nnx.split(_build(CFG), nnx.Param, ...)
    want_loss, want_grads, _ = _loss_and_grads(graphdef, params, rest, batch)

    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    abstract = nnx.eval_shape(lambda: _build(CFG))
    shardings = sharding.state_shardings(nnx.state(abstract), mesh)
    state = jax.jit(lambda: nnx.state(_build(CFG)), out_shardings=shardings)()
    q = state["layers"][0]["self_attn"]["q_proj"]["kernel"].get_value()
    assert not q.sharding.is_fully_replicated
    _, s_params, s_rest = nnx.split(nnx.merge(nnx.graphdef(abstract), state), nnx.Param, ...)
    s_batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, 2)) for k, v in batch.items()}
    with jax.set_mesh(mesh):
        loss, grads, _ = _loss_and_grads(graphdef, s_params, s_rest, s_batch)
    assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(grads))
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
    _assert_grads_close(grads, want_grads)


def test_remat_same_loss_and_grads():
    """Remat recomputes the same dropout masks: train-mode loss, grads and RNG state agree."""
    batch = _batch()
    cfg = dataclasses.replace(CFG, dropout=0.2)
    graphdef, params, rest = nnx.split(_build(cfg), nnx.Param, ...)
    r_graphdef, r_params, r_rest = nnx.split(
        _build(dataclasses.replace(cfg, remat=True)), nnx.Param, ...
    )
    want_loss, want_grads, want_rng = _loss_and_grads(graphdef, params, rest, batch, True)
    loss, grads, rng = _loss_and_grads(r_graphdef, r_params, r_rest, batch, True)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
    _assert_grads_close(grads, want_grads)
    for a, b in zip(jax.tree.leaves(rng), jax.tree.leaves(want_rng)):
        np.testing.assert_array_equal(
            jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a,
            jax.random.key_data(b) if jnp.issubdtype(b.dtype, jax.dtypes.prng_key) else b,
        )
    assert len(jax.tree.leaves(rng)) > 0
    # the remat model's gradient really goes through a checkpoint
    jaxpr = str(
        jax.make_jaxpr(lambda p: _loss_and_grads.__wrapped__(r_graphdef, p, r_rest, batch, True))(
            r_params
        )
    )
    assert "checkpoint" in jaxpr or "remat" in jaxpr


def _flat(state):
    """'/'-joined path -> numpy value (key data for PRNG keys)."""
    out = {}
    for k, v in nnx.to_flat_state(state):
        a = v.get_value() if hasattr(v, "get_value") else v
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a = jax.random.key_data(a)
        out["/".join(map(str, k))] = np.asarray(a)
    return out


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_dropout_draws_the_unscanned_masks(remat):
    """Attention dropout under ``scan_layers``: each layer keeps its own stream and the scan
    writes the counts back, so two train-mode calls give the unscanned model's losses,
    gradients and RNG state, and the second call draws new masks."""
    batch = _batch()
    cfg = dataclasses.replace(CFG, dropout=0.3)
    plain = nnx.split(_build(cfg), nnx.Param, ...)
    scanned = nnx.split(
        _build(dataclasses.replace(cfg, scan_layers=True, remat=remat)), nnx.Param, ...
    )
    losses = []
    for _ in range(2):
        want_loss, want_grads, want_rng = _loss_and_grads(*plain, batch, True)
        loss, grads, rng = _loss_and_grads(*scanned, batch, True)
        np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
        for name, want, got in (("grads", want_grads, grads), ("rng", want_rng, rng)):
            want = stack_layers(_flat(want), "layers", cfg.num_layers, caller=name)
            got = _flat(got)
            assert set(got) == set(want), name
            for path, value in got.items():
                np.testing.assert_allclose(value, want[path], rtol=1e-4, atol=1e-6, err_msg=path)
        plain, scanned = (*plain[:2], want_rng), (*scanned[:2], rng)  # rest = the RNG state
        losses.append(float(loss))
    assert losses[0] != losses[1]  # fresh masks on the second call


def test_train_step_lowers_loss():
    cfg = dataclasses.replace(CFG, dropout=0.1, remat=True)
    model = _build(cfg)
    config = ml_collections.ConfigDict(
        dict(
            optim=dict(name="adamw", lr=1e-2, warmup_ratio=0.0, schedule="constant", groups=()),
            train=dict(grad_accum=1, remat_policy=""),
        )
    )
    _, parts = step_lib.split_model(model, ())
    tx, schedule = optim.make_optimizer(config.optim, 100, parts["trainable"])
    graphdef, state = step_lib.init_train_state(model, (), tx)
    train_step = jax.jit(step_lib.make_train_step(graphdef, lm_loss, tx, schedule, config))
    batch = _batch()
    losses = []
    for _ in range(12):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)) and int(state["skipped"]) == 0
    assert losses[-1] < 0.5 * losses[0], losses


def test_attention_dropout_train_only():
    ids = _batch()["input_ids"]
    plain = _build(CFG)
    assert not jax.tree.leaves(nnx.state(plain, nnx.RngState))  # rate 0: no RNG state
    model = _build(dataclasses.replace(CFG, dropout=0.5))
    nnx.update(model, nnx.state(plain, nnx.Param))
    want = np.asarray(plain(ids))

    model.train()
    first, second = np.asarray(model(ids)), np.asarray(model(ids))
    assert not np.allclose(first, want, atol=1e-3)
    assert not np.allclose(first, second, atol=1e-3)  # fresh masks per call
    model.eval()
    np.testing.assert_array_equal(np.asarray(model(ids)), want)
    np.testing.assert_array_equal(np.asarray(model(ids)), want)

    # the KV-cache (decoding) path never drops, even in train mode
    model.train()
    logits, _ = model(ids, cache=model.init_cache(ids.shape[0], ids.shape[1]))
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-5, atol=1e-5)


def test_dropout_from_hf_config():
    hf = {
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "attention_dropout": 0.1,
    }
    assert DecoderConfig.from_hf_config(hf).dropout == 0.1
    assert DecoderConfig.from_hf_config({**hf, "attention_dropout": 0.0}).dropout == 0.0
    with pytest.raises(ValueError, match="dropout"):
        dataclasses.replace(CFG, dropout=1.0)
