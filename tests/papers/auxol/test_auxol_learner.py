"""AuxOL's online learner (radjax.papers.auxol.learner): one compiled step for a whole stream,
and a padded queue that trains exactly as the original's list of the valid crops does."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from radjax.papers.auxol import learner
from radjax.papers.auxol.losses import structure_loss
from radjax.papers.auxol.unet import UNet, UNetConfig

CROP, QUEUE = 32, 3
UNET = UNetConfig(in_channels=4, base=4, bilinear=True)


def _crops(n, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, CROP, CROP, 4)).astype(np.float32)
    masks = (rng.random((n, CROP, CROP, 1)) > 0.6).astype(np.float32)
    return images, masks


def _reference(feedback, images, masks):
    """main.py's loop on plain lists (no padding): push and step with feedback, else step on
    the queue (when not empty) and predict with the updated net."""
    graphdef, params = nnx.split(UNet(UNET, rngs=nnx.Rngs(7)), nnx.Param)
    tx = learner.optimizer(learner.LearnerConfig())
    opt = tx.init(params)
    queue_x, queue_y, outs = [], [], []

    def loss(p, x, y):
        logits = nnx.merge(graphdef, p)(x)
        return structure_loss(logits, y, jnp.ones(x.shape[0], bool)), logits

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True))  # one program per queue length
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))

    for f, x, y in zip(feedback, images, masks, strict=True):
        if f:
            queue_x, queue_y = (queue_x + [x])[-QUEUE:], (queue_y + [y])[-QUEUE:]
            (_, logits), g = grad(params, np.stack(queue_x), np.stack(queue_y))
            outs.append(np.asarray(logits[-1, :, :, 0]))
            updates, opt = tx.update(g, opt, params)
            params = optax.apply_updates(params, updates)
        else:
            if queue_x:
                _, g = grad(params, np.stack(queue_x), np.stack(queue_y))
                updates, opt = tx.update(g, opt, params)
                params = optax.apply_updates(params, updates)
            outs.append(np.asarray(forward(params, x[None])[0, :, :, 0]))
    return params, outs


def test_padded_fifo_queue_trains_as_the_original_list_and_compiles_once():
    feedback = [False, True, True, False, True, True, True, False]  # evicts after 3
    images, masks = _crops(len(feedback))
    cfg = learner.LearnerConfig(queue_size=QUEUE, crop_size=CROP)
    graphdef, state = learner.init_learner(UNET, cfg, seed=7)
    step = learner.make_step(graphdef, cfg)
    outs = []
    for f, x, y in zip(feedback, images, masks, strict=True):
        state, logits, _ = step(state, x, y, np.bool_(f))
        outs.append(np.asarray(logits))
    assert step._cache_size() == 1  # one program for feedback and no feedback
    want_params, want_outs = _reference(feedback, images, masks)
    # 7 AdamW steps apart; the padded queue's batch sums in another order
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(want_params), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)
    for got, want in zip(outs, want_outs, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    assert int(state.steps) == 7  # no step while the queue was empty
    # the queue holds the last three feedback crops, oldest first
    np.testing.assert_array_equal(np.asarray(state.queue.images), images[[4, 5, 6]])
    assert np.asarray(state.queue.valid).all()


def test_no_feedback_on_an_empty_queue_changes_nothing():
    cfg = learner.LearnerConfig(queue_size=QUEUE, crop_size=CROP)
    graphdef, state = learner.init_learner(UNET, cfg, seed=0)
    step = learner.make_step(graphdef, cfg)
    (x,), (y,) = _crops(1)
    new, logits, loss = step(state, x, y, np.bool_(False))
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert float(loss) == 0.0
    want = nnx.merge(graphdef, state.params)(x[None])[0, :, :, 0]
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)


def test_loss_policy_replaces_the_best_fitted_entry_when_full():
    queue = learner.empty_queue(3, 4, 1)
    for i in range(3):
        queue, slot = learner.push(
            queue, jnp.full((4, 4, 1), i, jnp.float32), jnp.zeros((4, 4, 1)), "loss"
        )
        assert int(slot) == i  # empty slots fill first
    queue = queue._replace(losses=jnp.array([0.5, 0.1, 0.9]))
    queue, slot = learner.push(queue, jnp.full((4, 4, 1), 9.0), jnp.zeros((4, 4, 1)), "loss")
    assert int(slot) == 1
    assert np.asarray(queue.images)[:, 0, 0, 0].tolist() == [0.0, 9.0, 2.0]
    queue, slot = learner.push(queue, jnp.full((4, 4, 1), 7.0), jnp.zeros((4, 4, 1)), "fifo")
    assert int(slot) == 2 and np.asarray(queue.images)[:, 0, 0, 0].tolist() == [9.0, 2.0, 7.0]
    with pytest.raises(ValueError, match="online.queue_policy"):
        learner.LearnerConfig(queue_policy="lifo")
