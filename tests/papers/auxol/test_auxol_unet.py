"""AuxOL's auxiliary U-Net and structure loss against the ORIGINAL code.

``tests/golden/data/auxol_{unet,loss}.npz`` come from ``tests/golden/make_auxol_golden.py``
(qianxihaoyue/AuxOL at 3bc80097): the original ``UNet`` at full width with weights redrawn
here from the stored seed, narrow U-Nets of the original parts with stored state dicts, and
``tool.structure_loss`` with its gradient. numpy only for those; the layer checks against
torch use the ``torch`` fixture.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from radjax.convert.torch_io import ConversionError
from radjax.papers.auxol import convert, unet
from radjax.papers.auxol.losses import structure_loss, structure_loss_per_row
from radjax.papers.auxol.unet import UNet, UNetConfig
from tests.parity import assert_close
from tests.sharded import assert_sharded_equals_unsharded

DATA = pathlib.Path(__file__).parents[2] / "golden" / "data"
COMMIT = "3bc80097153d3be5ac54dae8932aef6af16cfb5e"


def draw_weights(shapes, seed):
    """Same as make_auxol_golden.draw_weights: N(0, 1) / sqrt(prod(shape[1:])) in f32."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        out.append((rng.standard_normal(shape) / np.sqrt(fan)).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def golden():
    return np.load(DATA / "auxol_unet.npz")


@pytest.fixture(scope="module")
def loss_golden():
    return np.load(DATA / "auxol_loss.npz")


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def _load(cfg: UNetConfig, sd) -> UNet:
    model = nnx.eval_shape(lambda: UNet(cfg, rngs=nnx.Rngs(0)))
    convert.load_auxol_unet(model, sd)
    return model


_forward = nnx.jit(lambda model, x: model(x))


def test_golden_files(golden, loss_golden):
    for data in (golden, loss_golden):
        assert str(data["meta/commit"]) == COMMIT
    config = json.loads(str(golden["meta/config"]))
    assert config["narrow_base"] == 4 and config["in_channels"] == 4


@pytest.mark.parametrize("bilinear", [True, False])
def test_full_width_matches_original(golden, bilinear):
    tag = f"full_{'bilinear' if bilinear else 'transposed'}"
    keys = [str(k) for k in golden[f"{tag}/keys"]]
    shapes = [tuple(s) for s in json.loads(str(golden[f"{tag}/shapes"]))]
    weights = draw_weights(shapes, json.loads(str(golden["meta/config"]))["full_seed"])
    sums = [np.abs(w).sum(dtype=np.float64) for w in weights]
    np.testing.assert_allclose(sums, golden[f"{tag}/abs_sums"], rtol=1e-12)
    model = _load(UNetConfig(bilinear=bilinear), dict(zip(keys, weights)))
    crop = golden["in/crop_u8"].astype(np.float32) / np.float32(255)
    for name, x in (("small", golden["in/small"]), ("crop", crop)):
        got = _forward(model, jnp.asarray(_nhwc(x)))
        assert_close(got, _nhwc(golden[f"{tag}/out/{name}"]), 1e-5, f"{tag} {name}")


@pytest.mark.parametrize("bilinear", [True, False])
def test_narrow_matches_original_parts(golden, bilinear):
    tag = f"narrow_{'bilinear' if bilinear else 'transposed'}"
    sd = {
        k.removeprefix(f"{tag}/sd/"): golden[k] for k in golden.files if k.startswith(f"{tag}/sd/")
    }
    model = _load(UNetConfig(base=4, bilinear=bilinear), sd)
    for name in ("small", "odd"):  # odd: 37 x 45, the up path pads on both axes
        got = _forward(model, jnp.asarray(_nhwc(golden[f"in/{name}"])))
        assert got.shape == _nhwc(golden[f"{tag}/out/{name}"]).shape
        assert_close(got, _nhwc(golden[f"{tag}/out/{name}"]), 1e-5, f"{tag} {name}")


def test_param_paths_and_default_init():
    model = UNet(UNetConfig(base=4, bilinear=False), rngs=nnx.Rngs(0))
    params = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert "inc/double_conv/0/kernel" in params and "inc/double_conv/1/kernel" in params
    assert "down4/conv/double_conv/1/kernel" in params and "up1/up/kernel" in params
    assert params["outc/conv/kernel"].shape == (1, 1, 4, 1) and "outc/conv/bias" in params
    assert not any(p.endswith("double_conv/0/bias") for p in params)  # convs without bias
    # torch's default init: U(+-1/sqrt(fan_in)); the transposed conv's fan_in is cout * 4
    kernel = np.asarray(params["down1/conv/double_conv/0/kernel"].get_value())
    bound = 1 / np.sqrt(9 * 4)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
    up = np.asarray(params["up1/up/kernel"].get_value())  # (2, 2, 64, 32)
    assert np.abs(up).max() <= 1 / np.sqrt(32 * 4) and np.abs(up).max() > 0.9 / np.sqrt(128)


def test_converter_is_strict(golden):
    tag = "narrow_bilinear"
    sd = {
        k.removeprefix(f"{tag}/sd/"): golden[k] for k in golden.files if k.startswith(f"{tag}/sd/")
    }
    model = nnx.eval_shape(lambda: UNet(UNetConfig(base=4), rngs=nnx.Rngs(0)))
    with pytest.raises(ConversionError, match="no parameter of the AuxOL UNet.*extra"):
        convert.load_auxol_unet(model, sd | {"extra.weight": np.zeros(1)})
    missing = dict(sd)
    del missing["outc.conv.bias"]
    with pytest.raises(ConversionError, match=r"(?s)missing.*outc/conv/bias"):
        convert.load_auxol_unet(model, missing)
    with pytest.raises(ConversionError, match="shape mismatch"):
        convert.load_auxol_unet(
            nnx.eval_shape(lambda: UNet(UNetConfig(base=8), rngs=nnx.Rngs(0))), sd
        )


def test_bad_input():
    model = UNet(UNetConfig(base=4), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(B, H, W, 4\)"):
        model(jnp.zeros((1, 16, 16, 3)))


def test_layers_match_torch(torch):
    """align_corners upsampling, the transposed conv and InstanceNorm vs torch on odd maps."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)
    xt = torch.from_numpy(np.transpose(x, (0, 3, 1, 2)))
    up = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)(xt)
    assert_close(unet.upsample_align_corners(jnp.asarray(x)), _nhwc(up.numpy()), 1e-6, "upsample")
    norm = torch.nn.InstanceNorm2d(3)(xt)
    assert_close(unet.instance_norm(jnp.asarray(x)), _nhwc(norm.numpy()), 1e-6, "instance norm")
    tconv = torch.nn.ConvTranspose2d(3, 4, kernel_size=2, stride=2)
    layer = unet.UpConv(3, 4, dtype=None, rngs=nnx.Rngs(0))
    layer.kernel.set_value(jnp.asarray(np.transpose(tconv.weight.detach().numpy(), (2, 3, 0, 1))))
    layer.bias.set_value(jnp.asarray(tconv.bias.detach().numpy()))
    assert_close(layer(jnp.asarray(x)), _nhwc(tconv(xt).detach().numpy()), 1e-6, "conv transpose")


def test_loss_matches_original(loss_golden):
    for name in ("small", "crop"):
        logits = _nhwc(loss_golden[f"in/{name}/logits"])
        masks = _nhwc(loss_golden[f"in/{name}/masks"])
        loss, grad = jax.value_and_grad(structure_loss)(jnp.asarray(logits), jnp.asarray(masks))
        assert_close(loss, loss_golden[f"out/{name}/loss"], 1e-6, f"{name} loss")
        assert_close(grad, _nhwc(loss_golden[f"out/{name}/grad"]), 1e-5, f"{name} grad")


def _reference_loss(logits, masks, weighted):
    """numpy float64 reference of both variants, with a direct 31x31 zero-padded box mean."""
    x, m = logits[..., 0].astype(np.float64), masks[..., 0].astype(np.float64)
    padded = np.pad(m, ((0, 0), (15, 15), (15, 15)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (31, 31), axis=(1, 2))
    pool = windows.sum(axis=(-2, -1)) / 961
    weit = 1 + 5 * np.abs(pool - m)
    bce = np.maximum(x, 0) - x * m + np.log1p(np.exp(-np.abs(x)))
    p = 1 / (1 + np.exp(-x))
    inter = (p * m * weit).sum(axis=(1, 2))
    union = ((p + m) * weit).sum(axis=(1, 2))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    wbce = (weit * bce).sum(axis=(1, 2)) / weit.sum(axis=(1, 2)) if weighted else bce.mean()
    return float(np.mean(wbce + wiou)), wbce + wiou if weighted else bce.mean(axis=(1, 2)) + wiou


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_variants_and_rows(loss_golden, weighted):
    logits = _nhwc(loss_golden["in/small/logits"])
    masks = _nhwc(loss_golden["in/small/masks"])
    want, rows = _reference_loss(logits, masks, weighted)
    got = structure_loss(jnp.asarray(logits), jnp.asarray(masks), weighted_bce=weighted)
    assert_close(got, want, 1e-6, "loss")
    per_row = structure_loss_per_row(jnp.asarray(logits), jnp.asarray(masks), weighted_bce=weighted)
    assert_close(per_row, rows, 1e-6, "per row")
    for i in range(logits.shape[0]):  # each row's own loss = the loss of that row alone
        alone = structure_loss(logits[i : i + 1], masks[i : i + 1], weighted_bce=weighted)
        assert_close(per_row[i], alone, 1e-6, f"row {i}")
    if not weighted:  # the released mean BCE is not the rows' mean of per-row BCE + wIoU ...
        assert_close(np.mean(per_row), got, 1e-6)  # ... but equal to it for equal-size rows
    weighted_other = structure_loss(
        jnp.asarray(logits), jnp.asarray(masks), weighted_bce=not weighted
    )
    assert abs(float(weighted_other) - float(got)) > 1e-3  # the switch changes the loss


@pytest.mark.parametrize("weighted", [False, True])
def test_padded_batch_equals_unpadded(weighted):
    """Loss and parameter gradients of a padded queue == those of its valid rows alone (in
    f64, so that only the masking, not the f32 summation order, is compared)."""
    rng = np.random.default_rng(1)
    images = rng.random((3, 32, 32, 4))
    masks = (rng.random((3, 32, 32, 1)) > 0.5).astype(np.float64)
    padded_images = np.concatenate([np.zeros_like(images[:2]), images, rng.random((3, 32, 32, 4))])
    padded_masks = np.concatenate([np.ones_like(masks[:2]), masks, np.ones_like(masks)])
    valid = np.array([False, False, True, True, True, False, False, False])
    with jax.enable_x64(True):
        model = UNet(UNetConfig(base=4, dtype="float64"), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model, nnx.Param)
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)

        def loss(params, images, masks, valid):
            logits = nnx.merge(graphdef, params, copy=True)(images).astype(jnp.float64)
            return structure_loss(logits, masks, valid, weighted_bce=weighted)

        grad = jax.jit(jax.value_and_grad(loss))
        want, want_g = grad(params, images, masks, None)
        got, got_g = grad(params, padded_images, padded_masks, valid)
        empty, empty_g = grad(params, padded_images, padded_masks, np.zeros(8, bool))
    assert_close(got, want, 1e-12, "loss")
    for (path, g), w in zip(jax.tree.leaves_with_path(got_g), jax.tree.leaves(want_g)):
        assert_close(g, w, 1e-10, jax.tree_util.keystr(path))
    assert np.isfinite(empty) and all(np.isfinite(g).all() for g in jax.tree.leaves(empty_g))


def test_sharded_forward_equals_unsharded():
    x = np.random.default_rng(0).random((2, 32, 32, 4), dtype=np.float32)
    assert_sharded_equals_unsharded(
        lambda: UNet(UNetConfig(base=4), rngs=nnx.Rngs(0)), x, atol=1e-5, atol_relative=True
    )


def test_train_step_loss_falls():
    cfg = UNetConfig(base=4)
    graphdef, params = nnx.split(UNet(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 32, 32, 1), np.float32)
    masks[:, 8:24, 10:26] = 1
    images = np.concatenate(
        [rng.random((4, 32, 32, 3), dtype=np.float32) * 0.3 + masks * 0.5, masks], -1
    )
    tx = optax.adamw(3e-3, weight_decay=5e-4)

    @jax.jit
    def step(params, opt_state):
        def loss(p):
            return structure_loss(nnx.merge(graphdef, p, copy=True)(images), masks)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    opt_state = tx.init(params)
    losses = []
    for _ in range(30):
        params, opt_state, value = step(params, opt_state)
        losses.append(float(value))
    assert losses[-1] < 0.8 * losses[0], losses
