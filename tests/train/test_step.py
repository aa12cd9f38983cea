"""Train-step mechanics: freezing, per-group learning rates, accumulation, non-finite skips."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (disables eager sharding)
from radjax.train import optim
from radjax.train import step as step_lib


class _Net(nnx.Module):
    def __init__(self, *, rngs):
        self.encoder = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.head(jax.nn.relu(self.norm(self.encoder(x))))[:, 0]


def _loss(model, batch, config):
    err = model(batch["x"]) - batch["y"]
    return jnp.mean(err**2), {"mae": jnp.mean(jnp.abs(err))}


def _config(groups=(), accum=1, lr=0.1, delay=()):
    return ml_collections.ConfigDict(
        dict(
            optim=dict(
                name="sgd",
                momentum=0.0,
                lr=lr,
                warmup_ratio=0.0,
                schedule="constant",
                groups=groups,
                delay=delay,
            ),
            train=dict(grad_accum=accum, remat_policy=""),
        )
    )


def _setup(config):
    model = _Net(rngs=nnx.Rngs(0))
    groups = tuple(tuple(g) for g in config.optim.groups)
    _, parts = step_lib.split_model(model, groups)
    tx, schedule = optim.make_optimizer(config.optim, 100, parts["trainable"])
    graphdef, state = step_lib.init_train_state(model, groups, tx)
    return jax.jit(step_lib.make_train_step(graphdef, _loss, tx, schedule, config)), state


def _batch(n=8, seed=0):
    r = np.random.default_rng(seed)
    return dict(
        x=jnp.asarray(r.normal(size=(n, 4)), jnp.float32),
        y=jnp.asarray(r.normal(size=(n,)), jnp.float32),
    )


def test_frozen_group_has_no_grads_or_updates():
    config = _config(groups=(("encoder/.*", None),))
    train_step, state = _setup(config)
    assert "encoder" not in state["trainable"] and "encoder" in state["frozen"]
    before = jax.tree.map(np.asarray, state["frozen"])
    head_before = np.asarray(state["trainable"]["head"]["kernel"][...])
    state, _ = train_step(state, _batch())
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state["frozen"]))
    assert not np.allclose(head_before, state["trainable"]["head"]["kernel"][...])


def test_group_multiplier_scales_learning_rate():
    base_step, base = _setup(_config())
    half_step, half = _setup(_config(groups=(("head/.*", 0.5),)))
    b = _batch()
    new_base, _ = base_step(base, b)
    new_half, _ = half_step(half, b)
    delta = lambda s, s0: (
        np.asarray(s["trainable"]["head"]["kernel"][...])
        - np.asarray(s0["trainable"]["head"]["kernel"][...])
    )
    k0 = jax.tree.map(np.asarray, (base, half))
    np.testing.assert_allclose(delta(new_half, k0[1]), 0.5 * delta(new_base, k0[0]), rtol=1e-5)


def test_delayed_group_keeps_values_until_its_start_step():
    train_step, state = _setup(_config(delay=(("encoder/.*", 2),)))
    kernel = lambda s, m: np.asarray(s["trainable"][m]["kernel"][...])  # noqa: E731
    values = [(kernel(state, "encoder"), kernel(state, "head"))]
    for i in range(3):
        state, _ = train_step(state, _batch(seed=i))
        values.append((kernel(state, "encoder"), kernel(state, "head")))
    # step counter 0 and 1: encoder unchanged, head trains; from step 2 on both train
    np.testing.assert_array_equal(values[1][0], values[0][0])
    np.testing.assert_array_equal(values[2][0], values[0][0])
    assert not np.allclose(values[3][0], values[2][0])
    assert all(not np.allclose(values[i + 1][1], values[i][1]) for i in range(3))


def test_gradient_accumulation_matches_full_batch_for_batch_free_model():
    # Without BatchNorm coupling the examples, k microbatches average to the full-batch gradient.
    class Linear(nnx.Module):
        def __init__(self, *, rngs):
            self.w = nnx.Linear(4, 1, rngs=rngs)

        def __call__(self, x):
            return self.w(x)[:, 0]

    results = []
    for accum in (1, 4):
        config = _config(accum=accum)
        model = Linear(rngs=nnx.Rngs(0))
        _, parts = step_lib.split_model(model, ())
        tx, schedule = optim.make_optimizer(config.optim, 10, parts["trainable"])
        graphdef, state = step_lib.init_train_state(model, (), tx)
        train_step = jax.jit(step_lib.make_train_step(graphdef, _loss, tx, schedule, config))
        state, metrics = train_step(state, _batch())
        results.append((np.asarray(state["trainable"]["w"]["kernel"][...]), float(metrics["loss"])))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_loss_skips_update_and_counts(bad):
    train_step, state = _setup(_config())
    good_state, _ = train_step(jax.tree.map(jnp.copy, state), _batch())
    kernel_before = np.asarray(good_state["trainable"]["head"]["kernel"][...])
    stats_before = np.asarray(good_state["rest"]["norm"]["mean"][...])
    batch = _batch()
    batch["y"] = batch["y"].at[0].set(bad)
    new_state, metrics = train_step(good_state, batch)
    np.testing.assert_array_equal(kernel_before, new_state["trainable"]["head"]["kernel"][...])
    np.testing.assert_array_equal(stats_before, new_state["rest"]["norm"]["mean"][...])
    assert int(new_state["skipped"]) == 1 and float(metrics["skipped_updates"]) == 1
    assert int(new_state["step"]) == 2
    # the next finite batch trains again
    after, metrics = train_step(new_state, _batch(seed=1))
    assert int(after["skipped"]) == 1 and np.isfinite(float(metrics["loss"]))
    assert not np.allclose(kernel_before, after["trainable"]["head"]["kernel"][...])


def test_remat_policy_gives_same_gradients():
    plain_step, s1 = _setup(_config())
    config = _config()
    config.train.remat_policy = "nothing_saveable"
    remat_step, s2 = _setup(config)
    b = _batch()
    _, m1 = plain_step(s1, b)
    _, m2 = remat_step(s2, b)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(m2["grad_norm"]), rtol=1e-6)


def test_loss_falls_on_fixed_batch():
    train_step, state = _setup(_config(lr=0.05))
    b = _batch()
    losses = []
    for _ in range(30):
        state, metrics = train_step(state, b)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0]
