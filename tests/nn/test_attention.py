"""The attention core: grouped heads, key/value layouts, additive bias; layer stacks."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from radjax.nn.attention import dot_product_attention
from radjax.nn.linear import linear
from radjax.nn.stack import run_layers, stack_modules, unstack_module


def _qkv(h=4, k=2, lq=3, lk=5, dh=8):
    r = np.random.default_rng(0)
    q = jnp.asarray(r.normal(size=(2, lq, h, dh)), jnp.float32)
    kv = (jnp.asarray(r.normal(size=(2, lk, k, dh)), jnp.float32) for _ in range(2))
    return q, *kv


def test_grouped_heads_equal_repeated_keys_and_both_layouts_agree():
    q, k, v = _qkv()
    mask = jnp.asarray(np.random.default_rng(1).random((2, 1, 3, 5)) > 0.3)
    grouped, probs, _ = dot_product_attention(q, k, v, mask)
    full, full_probs, _ = dot_product_attention(
        q, jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2), mask
    )
    np.testing.assert_allclose(grouped, full, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(probs, full_probs, rtol=1e-6, atol=1e-7)
    heads_first = dot_product_attention(
        q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask, kv_layout="bhld"
    )[0]
    np.testing.assert_allclose(heads_first, grouped, rtol=1e-6, atol=1e-6)


def test_additive_bias_equals_boolean_mask():
    q, k, v = _qkv(k=4)
    mask = jnp.asarray(np.random.default_rng(1).random((2, 1, 1, 5)) > 0.3)
    bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)
    np.testing.assert_allclose(
        dot_product_attention(q, k, v, bias=bias)[0],
        dot_product_attention(q, k, v, mask)[0],
        rtol=1e-6,
        atol=1e-6,
    )


def test_scanned_stack_equals_loop_and_unstacks():
    layers = [linear(6, 6, ("embed", "mlp"), rngs=nnx.Rngs(i)) for i in range(3)]
    x = jnp.ones((2, 6))

    def call(layer, x):
        return jnp.tanh(layer(x))

    want = run_layers(nnx.List(layers), x, call, scanned=False, remat=False)
    stacked = stack_modules(layers)
    assert stacked.kernel.shape == (3, 6, 6)
    assert stacked.kernel.get_metadata()["out_sharding"] == ("layers", "embed", "mlp")
    for remat in (False, True):
        got = run_layers(stacked, x, call, scanned=True, remat=remat)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    again = run_layers(nnx.List(unstack_module(stacked, 3)), x, call, scanned=False, remat=True)
    np.testing.assert_allclose(again, want, rtol=1e-6)
