"""Transformer layers: RP3D-Diag's encoder and LayerNorm, ``torch_encoder`` against
``torch.nn.TransformerEncoder``. The RP3D encoder's parity with the original code is
tests/papers/rp3d_diag/test_rp3d_golden.py (golden outputs of the original modules)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (disables eager sharding)
from radjax.convert.torch_io import assign
from radjax.nn import attention, transformer
from radjax.papers.rp3d_diag import encoder


def torch_state(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def jit_call(module, *args):
    """module(*args) compiled as one program (eager dispatch compiles every op)."""
    graphdef, state = nnx.split(module)
    return jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *args)


def test_std_layer_norm_is_the_unbiased_std_formula():
    x = np.random.default_rng(0).normal(size=(2, 3, 16)).astype(np.float32) * 3 + 1
    ln = encoder.StdLayerNorm(16)
    centred = x - x.mean(-1, keepdims=True)
    want = centred / (x.std(-1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(ln(jnp.asarray(x)), want, rtol=1e-5, atol=1e-6)
    # not nnx.LayerNorm: biased variance with eps inside the root differs measurably
    flax_ln = nnx.LayerNorm(16, rngs=nnx.Rngs(0))(jnp.asarray(x))
    assert np.abs(np.asarray(flax_ln) - want).max() > 1e-3


def test_rp3d_encoder_attends_on_the_unnormalised_input():
    """norm1 (the original's sublayer.0.norm) is kept but never applied: no gradient."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 8)), jnp.float32)
    enc = encoder.annotated_encoder(8, heads=2, mlp_dim=16, layers=2, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(enc)
    grads = jax.jit(jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(x)[0] ** 2)))(state)
    for i in range(2):
        layer = grads["layers"][i]
        assert not np.any(layer["norm1"]["scale"][...]) and not np.any(layer["norm1"]["bias"][...])
        assert np.any(layer["norm2"]["scale"][...])


def test_fully_masked_row_is_uniform_not_nan():
    q = jnp.ones((1, 2, 1, 4))
    mask = jnp.zeros((1, 1, 1, 2), bool)
    out, probs, scores = attention.dot_product_attention(q, q, q, mask)
    np.testing.assert_allclose(probs, 0.5)
    assert np.all(scores == attention.MASK_FILL) and np.all(np.isfinite(out))


def test_torch_encoder_matches_nn_transformer_encoder():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    d, heads, d_ff, n = 16, 4, 32, 2
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d, heads, d_ff, dropout=0.1, batch_first=True)
    ref = nn.TransformerEncoder(layer, n, enable_nested_tensor=False).eval()
    for p in ref.parameters():  # break the identical copies and zero biases
        nn.init.normal_(p, std=0.2)
    sd = torch_state(ref)
    values = {}
    for i in range(n):
        src, dst = f"layers.{i}.", f"layers/{i}/"
        wq, wk, wv = np.split(sd[src + "self_attn.in_proj_weight"], 3)
        bq, bk, bv = np.split(sd[src + "self_attn.in_proj_bias"], 3)
        for name, w, bias in (
            ("query", wq, bq),
            ("key", wk, bk),
            ("value", wv, bv),
            ("out", sd[src + "self_attn.out_proj.weight"], sd[src + "self_attn.out_proj.bias"]),
        ):
            values |= {f"{dst}attn/{name}/kernel": w.T, f"{dst}attn/{name}/bias": bias}
        for dst_name, src_name in (("mlp/fc1", "linear1"), ("mlp/fc2", "linear2")):
            values |= {
                f"{dst}{dst_name}/kernel": sd[f"{src}{src_name}.weight"].T,
                f"{dst}{dst_name}/bias": sd[f"{src}{src_name}.bias"],
            }
        for k in (1, 2):
            values |= {
                f"{dst}norm{k}/scale": sd[f"{src}norm{k}.weight"],
                f"{dst}norm{k}/bias": sd[f"{src}norm{k}.bias"],
            }
    enc = transformer.torch_encoder(d, heads=heads, mlp_dim=d_ff, layers=n, rngs=nnx.Rngs(0))
    assign(enc, values)
    enc.eval()
    x = np.random.default_rng(0).normal(size=(2, 4, d)).astype(np.float32)
    pad = np.array([[False, False, True, True], [False, False, False, False]])
    with torch.no_grad():
        want = ref(torch.tensor(x), src_key_padding_mask=torch.tensor(pad)).numpy()
    got = np.asarray(jit_call(enc, x, attention.key_padding_mask(jnp.asarray(~pad)))[0])
    np.testing.assert_allclose(got[~pad], want[~pad], rtol=1e-5, atol=2e-5)


def test_remat_encoder_has_same_gradients():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 8)), jnp.float32)

    def grads(remat):
        enc = encoder.annotated_encoder(
            8, heads=2, mlp_dim=16, layers=2, remat=remat, rngs=nnx.Rngs(0)
        )
        graphdef, state = nnx.split(enc)
        return jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(x)[0] ** 2))(state)

    plain, remat = jax.jit(lambda: (grads(False), grads(True)))()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), plain, remat)
