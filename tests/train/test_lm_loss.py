"""radjax.train.lm_loss: weighted token cross-entropy against torch's CrossEntropyLoss, and
the fused head loss equal in value and gradients to cross-entropy on materialised logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (eager sharding off)
from radjax.models.llama import Decoder, DecoderConfig
from radjax.train import lm_loss

N, D, V = 37, 16, 50


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(N, D)).astype(np.float32)
    kernel = (0.3 * rng.normal(size=(D, V))).astype(np.float32)
    targets = rng.integers(0, V, N).astype(np.int32)
    weights = rng.choice([0.0, 1.0, 3.0], N).astype(np.float32)
    return hidden, kernel, targets, weights


def test_token_cross_entropy_matches_torch_ignore_index_and_weighted_mean():
    torch = pytest.importorskip("torch")
    hidden, kernel, targets, weights = _inputs()
    logits = hidden @ kernel
    binary = (weights > 0).astype(np.float32)
    ignored = np.where(binary > 0, targets, -100)
    want = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(ignored).long(), ignore_index=-100
    ).item()
    got = lm_loss.token_cross_entropy(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(binary)
    )
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    # RadFM's sum(w * CE) / sum(w) with entity weight 3
    per_token = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(targets).long(), reduction="none"
    ).numpy()
    got = lm_loss.token_cross_entropy(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights)
    )
    np.testing.assert_allclose(float(got), (per_token * weights).sum() / weights.sum(), rtol=1e-6)


@pytest.mark.parametrize("num_chunks", [1, 3])
def test_fused_head_loss_equals_logits_loss_in_value_and_gradients(num_chunks):
    hidden, kernel, targets, weights = map(jnp.asarray, _inputs(1))

    def plain(h, k):
        return 2.5 * lm_loss.token_cross_entropy(h @ k, targets, weights)

    def fused(h, k):
        return 2.5 * lm_loss.fused_head_cross_entropy(h, k, targets, weights, num_chunks=num_chunks)

    np.testing.assert_allclose(
        float(jax.jit(fused)(hidden, kernel)), float(plain(hidden, kernel)), rtol=1e-6
    )
    got = jax.jit(jax.grad(fused, argnums=(0, 1)))(hidden, kernel)
    want = jax.grad(plain, argnums=(0, 1))(hidden, kernel)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-7)


def test_fused_head_loss_zero_weights_and_bad_shapes():
    hidden, kernel, targets, _ = map(jnp.asarray, _inputs(2))
    zero = jnp.zeros((N,))
    loss, grads = jax.value_and_grad(lm_loss.fused_head_cross_entropy)(
        hidden, kernel, targets, zero
    )
    assert float(loss) == 0.0 and not np.any(np.asarray(grads))
    with pytest.raises(ValueError, match=r"targets \(36,\)"):
        lm_loss.fused_head_cross_entropy(hidden, kernel, targets[1:], zero)
    with pytest.raises(ValueError, match="must be \\(N, D\\) and \\(D, V\\)"):
        lm_loss.fused_head_cross_entropy(hidden, kernel.T, targets, zero)


def test_next_token_targets_shift_ids_and_weights():
    ids = jnp.asarray([[5, 6, 7, 8]])
    targets, weights = lm_loss.next_token_targets(ids, jnp.asarray([[0, 1, 1, 3]]))
    np.testing.assert_array_equal(np.asarray(targets), [[6, 7, 8, 0]])
    np.testing.assert_array_equal(np.asarray(weights), [[1, 1, 3, 0]])


@pytest.mark.parametrize("tie", [False, True])
def test_decoder_hidden_states_and_head_kernel_give_the_logits(tie):
    cfg = DecoderConfig(
        vocab_size=64,
        hidden_size=32,
        num_layers=1,
        num_heads=4,
        intermediate_size=48,
        tie_word_embeddings=tie,
        init_std=0.1,
    )
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 7)))
    hidden = model.hidden_states(ids)
    np.testing.assert_allclose(
        np.asarray(hidden @ model.head_kernel()), np.asarray(model(ids)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(model(ids, last_only=True)), np.asarray(model(ids)[:, -1:]), rtol=1e-6, atol=1e-6
    )
