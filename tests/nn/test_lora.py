"""LoRA module surgery (radjax.nn.lora) on a tiny LLaMA decoder."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

import radjax  # noqa: F401  (eager sharding off)
from radjax.models.llama import Decoder, DecoderConfig
from radjax.nn.lora import (
    LLAMA_ALL_LINEAR,
    LLAMA_QV,
    LoRALinear,
    apply_lora,
    lora_only_groups,
    lora_param_count,
    merge_lora,
)
from radjax.train.optim import make_optimizer, path_str
from radjax.train.step import (
    init_train_state,
    make_train_step,
    merge_model,
    split_model,
)
from tests.parity import assert_close

CFG = DecoderConfig(
    vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48
)
IDS = (jnp.arange(2 * 8).reshape(2, 8) * 7) % CFG.vocab_size


_BASE = {}


def decoder():
    """A fresh copy of one tiny decoder (built once: eager init is the slow part on CPU)."""
    if "model" not in _BASE:
        _BASE["model"] = Decoder(CFG, rngs=nnx.Rngs(0))
    return nnx.clone(_BASE["model"])


@jax.jit(static_argnums=0)
def _forward(graphdef, state, ids):
    return nnx.merge(graphdef, state, copy=True)(ids)


def forward(model, ids=IDS):
    """model(ids) as one compiled program (faster than op-by-op on CPU)."""
    return _forward(*nnx.split(model), ids)


def flat_params(model):
    return {
        path_str(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def randomize_b(model, seed=3):
    """Gives every lora_b a nonzero value so the adapter changes outputs."""
    key = jax.random.key(seed)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, LoRALinear):
            key, sub = jax.random.split(key)
            node.lora_b[...] = 0.1 * jax.random.normal(sub, node.lora_b.shape)


def test_targets_select_exactly_q_and_v_and_outputs_unchanged():
    model = decoder()
    before = model(IDS)
    params_before = flat_params(model)
    paths = apply_lora(model, rank=4, alpha=8, targets=LLAMA_QV, rngs=nnx.Rngs(params=1, dropout=2))
    assert paths == [f"layers/{i}/self_attn/{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    for layer in model.layers:
        assert isinstance(layer.self_attn.q_proj, LoRALinear)
        assert isinstance(layer.self_attn.v_proj, LoRALinear)
        for name in ("k_proj", "o_proj"):
            assert type(getattr(layer.self_attn, name)) is nnx.Linear
        for name in ("gate_proj", "up_proj", "down_proj"):
            assert type(getattr(layer.mlp, name)) is nnx.Linear
    assert type(model.lm_head) is nnx.Linear
    # B = 0: the same outputs (to rounding: the adapted q/k/v projections are no longer one
    # stacked matmul); base parameters keep their paths and values.
    np.testing.assert_allclose(np.asarray(model(IDS)), np.asarray(before), rtol=1e-5, atol=1e-5)
    after = flat_params(model)
    for path, value in params_before.items():
        np.testing.assert_array_equal(after[path], value)
    assert sorted(set(after) - set(params_before)) == sorted(
        f"{p}/{n}" for p in paths for n in ("lora_a", "lora_b")
    )
    # Init as peft: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0; logical axes from the base kernel.
    q = model.layers[0].self_attn.q_proj
    a = np.asarray(q.lora_a[...])
    assert a.shape == (32, 4) and np.abs(a).max() <= 1 / np.sqrt(32) and a.std() > 0.05
    assert not np.asarray(q.lora_b[...]).any()
    assert q.lora_a.get_metadata()["out_sharding"] == ("embed", None)
    assert q.lora_b.get_metadata()["out_sharding"] == (None, "heads")
    assert model.layers[0].self_attn.v_proj.lora_b.get_metadata()["out_sharding"] == (None, "kv")
    assert q.scaling == 2.0
    assert lora_param_count(model) == 2 * (32 * 4 + 4 * 32 + 32 * 4 + 4 * 16)
    # Re-applying leaves adapted modules alone; all-linear adds the other five per layer.
    more = apply_lora(model, rank=4, alpha=8, targets=LLAMA_ALL_LINEAR, rngs=nnx.Rngs(params=4))
    assert len(more) == 2 * 5 and not set(more) & set(paths)


def test_no_match_raises_clear_error():
    model = decoder()
    with pytest.raises(ValueError, match=r"no nnx.Linear .* matches targets '.\*/qproj'"):
        apply_lora(model, rank=4, alpha=8, targets=r".*/qproj", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no nnx.Linear"):  # fullmatch, not search
        apply_lora(model, rank=4, alpha=8, targets=r"q_proj", rngs=nnx.Rngs(0))


def test_lora_only_groups():
    groups = lora_only_groups((r"lm_head/.*", (r"norm/.*", 0.1)))
    assert groups[-1] == (r".*", None)

    def first(p):
        return next(m for rx, m in groups if re.fullmatch(rx, p))

    assert first("layers/0/self_attn/q_proj/lora_a") == 1.0
    assert first("layers/1/self_attn/v_proj/lora_b") == 1.0
    assert first("layers/0/self_attn/q_proj/kernel") is None
    assert first("embed_tokens") is None
    assert first("lm_head/kernel") == 1.0
    assert first("norm/scale") == 0.1


def test_dropout_only_in_train_mode():
    base = nnx.Linear(16, 8, rngs=nnx.Rngs(0))
    layer = LoRALinear(base, rank=4, alpha=4, dropout=0.5, rngs=nnx.Rngs(params=1, dropout=2))
    x = jax.random.normal(jax.random.key(0), (3, 16))
    # B = 0: the base path is never dropped, in either mode.
    layer.train()
    np.testing.assert_array_equal(np.asarray(layer(x)), np.asarray(base(x)))
    layer.lora_b[...] = jnp.ones((4, 8))
    layer.eval()
    e1, e2 = np.asarray(layer(x)), np.asarray(layer(x))
    np.testing.assert_array_equal(e1, e2)
    expect = np.asarray(base(x)) + 1.0 * np.asarray(x @ layer.lora_a[...] @ layer.lora_b[...])
    np.testing.assert_allclose(e1, expect, rtol=1e-5, atol=1e-5)
    layer.train()
    t1, t2 = np.asarray(layer(x)), np.asarray(layer(x))
    assert not np.allclose(t1, e1) and not np.allclose(t1, t2)
    # No dropout module state without dropout.
    plain = LoRALinear(nnx.Linear(16, 8, rngs=nnx.Rngs(0)), rank=2, alpha=2, rngs=nnx.Rngs(0))
    plain.train()
    assert plain(x).shape == (3, 8)


def _loss_fn(model, batch, config):
    logits = model(batch["ids"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], batch["ids"][:, 1:])
    return loss.mean(), {}


def test_train_steps_update_only_lora_then_merge():
    model = decoder()
    base_before = flat_params(model)
    apply_lora(
        model, rank=4, alpha=8, dropout=0.05, targets=LLAMA_QV, rngs=nnx.Rngs(params=1, dropout=2)
    )
    lora_before = {k: v for k, v in flat_params(model).items() if k not in base_before}
    config = ml_collections.ConfigDict(
        {
            "train": {"grad_accum": 1, "remat_policy": ""},
            "optim": {
                "name": "adamw",
                "lr": 1e-2,
                "schedule": "constant",
                "warmup_ratio": 0.0,
                "weight_decay": 0.0,
                "groups": lora_only_groups(),
            },
        }
    )
    groups = config.optim.groups
    tx, schedule = make_optimizer(config.optim, 4, split_model(model, groups)[1]["trainable"])
    graphdef, state = init_train_state(model, groups, tx)
    trainable = {path_str(p) for p, _ in nnx.to_flat_state(state["trainable"])}
    assert trainable == set(lora_before)
    # Optimizer state exists only for the LoRA parameters.
    opt_arrays = [
        (path_str(p), x)
        for p, x in jax.tree_util.tree_flatten_with_path(state["opt"])[0]
        if getattr(x, "ndim", 0) > 0
    ]
    assert len(opt_arrays) == 2 * len(trainable)  # adam mu and nu
    assert all(re.search(r"/lora_[ab](/value)?$", p) for p, _ in opt_arrays)

    step = jax.jit(make_train_step(graphdef, _loss_fn, tx, schedule, config))
    losses = []
    for _ in range(4):
        state, metrics = step(state, {"ids": IDS})
        losses.append(float(metrics["loss"]))
    assert int(state["skipped"]) == 0 and losses[-1] < losses[0]

    trained = merge_model(graphdef, state)
    after = flat_params(trained)
    for path, value in base_before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)  # bit-identical
    for path, value in lora_before.items():
        assert not np.array_equal(after[path], value), path

    trained.eval()
    unmerged = np.asarray(trained(IDS))
    np.testing.assert_raises(
        AssertionError, np.testing.assert_allclose, unmerged, np.asarray(decoder()(IDS)), rtol=1e-4
    )
    merged = merge_lora(trained)
    assert not any(isinstance(n, LoRALinear) for _, n in nnx.iter_graph(merged))
    assert type(merged.layers[0].self_attn.q_proj) is nnx.Linear
    assert set(flat_params(merged)) == set(base_before)
    out = np.asarray(merged(IDS))
    assert_close(out, unmerged, 1e-5, "merged vs unmerged LoRA")
    # Merged kernels moved; untouched ones did not.
    merged_params = flat_params(merged)
    assert not np.array_equal(
        merged_params["layers/0/self_attn/q_proj/kernel"],
        base_before["layers/0/self_attn/q_proj/kernel"],
    )
    np.testing.assert_array_equal(
        merged_params["layers/0/self_attn/k_proj/kernel"],
        base_before["layers/0/self_attn/k_proj/kernel"],
    )


def test_merge_matches_unmerged_all_linear():
    model = decoder()
    apply_lora(model, rank=8, alpha=16, targets=LLAMA_ALL_LINEAR, rngs=nnx.Rngs(params=1))
    randomize_b(model)
    unmerged = np.asarray(forward(model))
    out = np.asarray(forward(merge_lora(model)))
    assert_close(out, unmerged, 1e-5, "merged vs unmerged LoRA")


def test_stacked_kernel_gets_per_layer_adapters():
    """A stacked (L, in, out) kernel (scanned layers) gets adapters stacked on the same axis;
    merging folds each layer's A @ B into its own kernel slice."""
    base = nnx.Linear(
        16, 8, use_bias=False, kernel_metadata={"out_sharding": ("embed", "mlp")}, rngs=nnx.Rngs(0)
    )
    stacked = jax.random.normal(jax.random.key(1), (3, 16, 8))
    base.kernel = nnx.Param(stacked, out_sharding=("layers", "embed", "mlp"))
    layer = LoRALinear(base, rank=2, alpha=4, rngs=nnx.Rngs(params=1))
    assert layer.lora_a.shape == (3, 16, 2) and layer.lora_b.shape == (3, 2, 8)
    assert layer.lora_a.get_metadata()["out_sharding"] == ("layers", "embed", None)
    assert layer.lora_b.get_metadata()["out_sharding"] == ("layers", None, "mlp")
    a = np.asarray(layer.lora_a[...])
    assert not np.allclose(a[0], a[1])
    layer.lora_b[...] = jax.random.normal(jax.random.key(2), (3, 2, 8))
    b = np.asarray(layer.lora_b[...])
    merged = layer.merged()
    for i in range(3):
        np.testing.assert_allclose(
            np.asarray(merged.kernel[...])[i],
            np.asarray(stacked[i]) + 2.0 * a[i] @ b[i],
            rtol=1e-5,
            atol=1e-5,
        )


def test_scanned_lora_dropout_one_stream_per_layer():
    """LoRA dropout under ``scan_layers``: each layer's adapter draws from its own stream
    (stacked keys and counts); copying layer l's adapters and stream into the unscanned
    model gives the same train-mode logits on two successive calls, which differ."""
    import dataclasses

    plain = decoder()
    scanned = Decoder(dataclasses.replace(CFG, scan_layers=True), rngs=nnx.Rngs(0))
    for model in (plain, scanned):
        apply_lora(
            model,
            rank=4,
            alpha=8,
            dropout=0.5,
            targets=LLAMA_ALL_LINEAR,
            rngs=nnx.Rngs(params=1, dropout=2),
        )
        randomize_b(model)
    q = scanned.layers.self_attn.q_proj
    keys = jax.random.key_data(q.lora_dropout.rngs.key[...])
    assert keys.shape[0] == CFG.num_layers and q.lora_dropout.rngs.count.shape == (2,)
    assert not np.array_equal(keys[0], keys[1])  # per-layer masks differ
    for path, node in nnx.iter_graph(scanned):
        if not isinstance(node, LoRALinear):
            continue
        for i, layer in enumerate(plain.layers):
            target = layer
            for name in path[1:]:
                target = getattr(target, name)
            target.kernel[...] = node.kernel[...][i]
            target.lora_a[...] = node.lora_a[...][i]
            target.lora_b[...] = node.lora_b[...][i]
            target.lora_dropout.rngs.key[...] = node.lora_dropout.rngs.key[...][i]
    plain.train()
    scanned.train()
    calls = []
    for _ in range(2):
        # called in place: the streams' counts advance (the scan writes them back)
        want, got = np.asarray(plain(IDS)), np.asarray(scanned(IDS))
        assert_close(got, want, 1e-5, "scanned vs unscanned LoRA dropout")
        calls.append(got)
    np.testing.assert_array_equal(np.asarray(q.lora_dropout.rngs.count[...]), [2, 2])
    assert not np.allclose(calls[0], calls[1], atol=1e-4)
    scanned.eval()
    plain.eval()
    assert_close(np.asarray(forward(scanned)), np.asarray(forward(plain)), 1e-5, "eval")
