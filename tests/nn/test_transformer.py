"""Transformer layers against PyTorch references.

``TorchAnnotatedEncoder`` below restates RP3D-Diag's ``transformer_encoder`` package
(Annotated-Transformer style; attribute names as in the original, so its state dict has
the original's keys) for parity here and for the checkpoint-import test.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (disables eager sharding)
from radjax.convert.torch_io import assign
from radjax.nn import attention, transformer
from radjax.papers.rp3d_diag import encoder
from radjax.papers.rp3d_diag.convert import from_annotated_encoder

torch = pytest.importorskip("torch")
nn = torch.nn


class TorchStdLayerNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.a, self.b, self.eps = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d)), eps

    def forward(self, x):
        centred = x - x.mean(-1, keepdim=True)
        return self.a * centred / (x.std(-1, keepdim=True) + self.eps) + self.b


class TorchMHA(nn.Module):
    def __init__(self, heads, d):
        super().__init__()
        self.h, self.d_k = heads, d // heads
        self.linears = nn.ModuleList([nn.Linear(d, d) for _ in range(4)])

    def forward(self, x, mask):
        b = x.shape[0]
        q, k, v = [lin(x).view(b, -1, self.h, self.d_k).transpose(1, 2) for lin in self.linears[:3]]
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)
        scores = scores.masked_fill(mask[:, None, None, :] == 0, -1e9)
        p = scores.softmax(-1)
        out = (p @ v).transpose(1, 2).reshape(b, -1, self.h * self.d_k)
        return self.linears[3](out), p, scores


class TorchFeedForward(nn.Module):
    def __init__(self, d, d_ff):
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)

    def forward(self, x):
        return self.w_2(self.w_1(x).relu())


class TorchSublayer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = TorchStdLayerNorm(d)


class TorchEncoderLayer(nn.Module):
    def __init__(self, d, d_ff, heads):
        super().__init__()
        self.self_attn, self.feed_forward = TorchMHA(heads, d), TorchFeedForward(d, d_ff)
        self.sublayer = nn.ModuleList([TorchSublayer(d), TorchSublayer(d)])

    def forward(self, x, mask):
        h, p, s = self.self_attn(self.sublayer[0].norm(x), mask)
        x = x + h
        return x + self.feed_forward(self.sublayer[1].norm(x)), p, s


class TorchEncoder(nn.Module):
    def __init__(self, d, d_ff, heads, n):
        super().__init__()
        self.layers = nn.ModuleList([TorchEncoderLayer(d, d_ff, heads) for _ in range(n)])
        self.norm = TorchStdLayerNorm(d)

    def forward(self, x, mask):
        for layer in self.layers:
            x, p, s = layer(x, mask)
        return self.norm(x), p, s


class TorchAnnotatedEncoder(nn.Module):
    """The original ``TransformerEncoder``, including its unused template modules."""

    def __init__(self, d, d_ff, heads, n):
        super().__init__()
        self.multi_headed_attention = TorchMHA(heads, d)
        self.feed_forward = TorchFeedForward(d, d_ff)
        self.encoder_layer = TorchEncoderLayer(d, d_ff, heads)
        self.encoder_layer.self_attn = self.multi_headed_attention
        self.encoder_layer.feed_forward = self.feed_forward
        self.encoder = TorchEncoder(d, d_ff, heads, n)
        for p in self.parameters():
            nn.init.normal_(p, std=0.3) if p.dim() == 1 else nn.init.xavier_uniform_(p)

    def forward(self, x, mask):
        return self.encoder(x, mask)


def torch_state(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def jit_call(module, *args):
    """module(*args) compiled as one program (eager dispatch compiles every op)."""
    graphdef, state = nnx.split(module)
    return jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *args)


def test_std_layer_norm_matches_unbiased_torch_norm():
    x = np.random.default_rng(0).normal(size=(2, 3, 16)).astype(np.float32) * 3 + 1
    ln = encoder.StdLayerNorm(16)
    want = TorchStdLayerNorm(16)(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(ln(jnp.asarray(x)), want, rtol=1e-5, atol=1e-6)
    # not nnx.LayerNorm: biased variance with eps inside the root differs measurably
    flax_ln = nnx.LayerNorm(16, rngs=nnx.Rngs(0))(jnp.asarray(x))
    assert np.abs(np.asarray(flax_ln) - want).max() > 1e-3


def test_fully_masked_row_is_uniform_not_nan():
    q = jnp.ones((1, 2, 1, 4))
    mask = jnp.zeros((1, 1, 1, 2), bool)
    out, probs, scores = attention.dot_product_attention(q, q, q, mask)
    np.testing.assert_allclose(probs, 0.5)
    assert np.all(scores == attention.MASK_FILL) and np.all(np.isfinite(out))


@pytest.mark.parametrize("heads", [1, 4])
def test_annotated_encoder_matches_original(heads):
    d, d_ff, n, b, length = 16, 24, 2, 2, 5
    torch.manual_seed(0)
    ref = TorchAnnotatedEncoder(d, d_ff, heads, n).eval()
    enc = encoder.annotated_encoder(d, heads=heads, mlp_dim=d_ff, layers=n, rngs=nnx.Rngs(0))
    assign(enc, from_annotated_encoder(torch_state(ref).__getitem__, "", n))
    r = np.random.default_rng(0)
    x = r.normal(size=(b, length, d)).astype(np.float32)
    valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
    with torch.no_grad():
        want = ref(torch.tensor(x), torch.tensor(valid).bool())
    y, probs, scores = jit_call(enc, x, attention.key_padding_mask(jnp.asarray(valid)))
    assert len(probs) == len(scores) == n
    for got, w in zip((y, probs[-1], scores[-1]), want):
        np.testing.assert_allclose(got, w.numpy(), rtol=1e-5, atol=2e-5)


def test_torch_encoder_matches_nn_transformer_encoder():
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
