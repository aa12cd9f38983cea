"""RP3D-Diag released RadNet against golden outputs of the original code.

``tests/golden/data/rp3d_{late,early}.npz`` come from ``tests/golden/make_golden.py``: the
original ``modelRadNet.RadNet`` (Attention1D, vitFuse, fc head) at a pinned commit, with its
per-slice ResNet replaced by a parameter-free stand-in (features = the first channel of each
slice, flattened). Here the state dict is converted with
``convert.from_released_without_trunk``, radjax's trunk gets the same stand-in, and logits,
losses, every encoder layer's output, attention probabilities and raw scores must match.
Fails on a pre-norm attention (``x + Attn(norm1(x))``). Needs numpy and jax only.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (disables eager sharding)
from configs import rp3d_diag as rp3d_config
from radjax.convert.torch_io import assign
from radjax.nn.attention import MASK_FILL, key_padding_mask
from radjax.papers.rp3d_diag import convert
from radjax.papers.rp3d_diag import model as rp3d_diag
from tests.parity import rel_err

GOLDEN = pathlib.Path(__file__).parents[2] / "golden" / "data"
TOL = 1e-5


def assert_scores_match(got, want, name: str) -> None:
    """Raw scores: masked entries are MASK_FILL in both, the rest within TOL."""
    got, want = np.asarray(got), np.asarray(want)
    masked = want == MASK_FILL
    np.testing.assert_array_equal(got[masked], MASK_FILL, err_msg=name)
    assert rel_err(got[~masked], want[~masked]) < TOL, name


class FirstChannel(nnx.Module):
    """The golden's trunk stand-in: (N, H, W, 3) slices -> (N, H*W), channel 0 row-major."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x[..., 0].reshape(x.shape[0], -1)


def load(fusion: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"rp3d_{fusion}.npz") as z:
        return {k: z[k] for k in z.files}


def state_dict(golden: dict) -> dict[str, np.ndarray]:
    return {k[len("sd/") :]: v for k, v in golden.items() if k.startswith("sd/")}


def golden_config(golden: dict, fusion: str):
    """The tiny config at the golden's sizes (2-wide basic ResNet: 16 features, unused)."""
    cfg = json.loads(str(golden["meta/config"]))
    c = rp3d_config.get_config(f"tiny,fusion={fusion}")
    m = c.model
    m.num_classes, m.depth = cfg["num_cls"], cfg["depth"]
    m.resnet.block, m.resnet.layers, m.resnet.width = "basic", (1, 1, 1, 1), cfg["hid_dim"] // 8
    m.slice_attn.mlp_dim = m.scan_fuse.mlp_dim = cfg["hid_dim"]  # d_ff = hid_dim
    return c


def batch(golden: dict, fusion: str) -> dict[str, np.ndarray]:
    """The original's inputs in radjax layout: images (B, N, D, H, W, 1), the rest (B, N)."""
    images = golden["in/image_x"]
    if fusion == "late":  # (B, 1, H, W, D) -> (B, 1, D, H, W, 1)
        images = images.transpose(0, 4, 2, 3, 1)[:, None]
        marks = golden["in/marks"][:, None]
    else:  # (B, N, 1, H, W, D)
        images = images.transpose(0, 1, 5, 3, 4, 2)
        marks = golden["in/marks"]
    return dict(
        images=images,
        marks=marks,
        mods=golden["in/mods"].astype(np.int32),
        keys=golden["in/keys"].astype(np.int32),
        labels=golden["in/labels"],
    )


def jit_call(module: nnx.Module, fn, *args):
    """fn(module, *args) compiled as one program."""
    graphdef, state = nnx.split(module)
    return jax.jit(lambda s, *a: fn(nnx.merge(graphdef, s), *a))(state, *args)


@pytest.fixture(scope="module", params=["late", "early"])
def case(request):
    """(fusion, golden arrays, config, radjax RadNet holding the golden state dict)."""
    fusion = request.param
    golden = load(fusion)
    config = golden_config(golden, fusion)
    model = rp3d_diag.build_model(config, rngs=nnx.Rngs(0))
    model.trunk = FirstChannel()
    assign(model, convert.from_released_without_trunk(state_dict(golden), config))
    model.eval()
    return fusion, golden, config, model


def test_golden_files_record_the_original_commit():
    for fusion in ("late", "early"):
        golden = load(fusion)
        assert str(golden["meta/repo"]) == "qiaoyu-zheng/RP3D-Diag"
        assert str(golden["meta/commit"]) == "7bdbbbb4a0fa07416e3751017190568b76588723"


def test_logits_and_key_slice_scores(case):
    fusion, golden, _, model = case
    b = batch(golden, fusion)
    logits, scores = jit_call(model, lambda m, *a: m(*a), b["images"], b["marks"], b["mods"])
    assert rel_err(logits, golden["out/logits"]) < TOL
    # the original's Attention1D score: CLS row of the last layer, head mean; RadNet drops col 0
    want = golden["mid/attention1D/score"][:, 1:]
    assert_scores_match(np.asarray(scores).reshape(want.shape), want, "key-slice scores")


def test_losses(case):
    fusion, golden, config, model = case
    b = {k: jnp.asarray(v) for k, v in batch(golden, fusion).items()}
    loss, metrics = jit_call(model, lambda m, bt: rp3d_diag.loss_fn(m, bt, config), b)
    assert rel_err(metrics["bce"], golden["out/loss_cls"]) < TOL
    if fusion == "early":  # late: the original reports loss_cls as loss_attn
        weight = config.model.key_slice_loss_weight
        assert rel_err(weight * metrics["key_slice_kl"], golden["out/loss_attn"]) < TOL
    assert rel_err(loss, golden["out/loss"]) < TOL


def _encoders(fusion: str, model) -> list[tuple[str, nnx.Module]]:
    parts = [("attention1D", model.slice_attn.encoder)]
    if fusion == "early":
        parts.append(("vitFuse", model.scan_fuse.encoder))
    return parts


def _layer_by_layer(encoder, x, mask):
    """[(out, probs, scores) per layer], final-norm output."""
    per_layer = []
    for layer in encoder.layers:
        x, probs, scores = layer(x, mask)
        per_layer.append((x, probs, scores))
    return per_layer, encoder.norm(x)


def test_every_encoder_layer(case):
    fusion, golden, _, model = case
    for name, encoder in _encoders(fusion, model):
        pre = f"mid/{name}/encoder"
        mask = key_padding_mask(jnp.asarray(golden[f"{pre}/mask"]))
        per_layer, out = jit_call(encoder, _layer_by_layer, golden[f"{pre}/x"], mask)
        for i, (x, probs, scores) in enumerate(per_layer):
            assert rel_err(x, golden[f"{pre}/layers/{i}/out"]) < TOL, (name, i)
            assert rel_err(probs, golden[f"{pre}/layers/{i}/attn"]) < TOL, (name, i)
            assert_scores_match(scores, golden[f"{pre}/layers/{i}/scores"], f"{name} {i}")
        assert rel_err(out, golden[f"{pre}/out"]) < TOL, name


def test_slice_attention_and_scan_fusion_modules(case):
    fusion, golden, _, model = case
    x, marks = golden["mid/attention1D/x"], golden["mid/attention1D/marks"]
    feat, scores = jit_call(model.slice_attn, lambda m, *a: m(*a), x, marks)
    assert rel_err(feat, golden["mid/attention1D/out"]) < TOL
    assert_scores_match(scores, golden["mid/attention1D/score"][:, 1:], "Attention1D score")
    # Attention1D's attn: the CLS row of the last layer's probabilities, head mean
    pre = "mid/attention1D/encoder"
    _, probs, _ = jit_call(
        model.slice_attn.encoder,
        lambda m, *a: m(*a),
        golden[f"{pre}/x"],
        key_padding_mask(jnp.asarray(golden[f"{pre}/mask"])),
    )
    assert rel_err(probs[-1].mean(axis=1)[:, 0], golden["mid/attention1D/attn"]) < TOL
    if fusion == "early":
        mods = golden["mid/vitFuse/mods"].astype(np.int32)
        case_feat = jit_call(model.scan_fuse, lambda m, *a: m(*a), golden["mid/vitFuse/x"], mods)
        assert rel_err(case_feat, golden["mid/vitFuse/out"]) < TOL
