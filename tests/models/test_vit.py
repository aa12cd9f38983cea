"""radjax.models.vit: parity with MONAI's ViT and transformers' CLIPVisionModel on converted
weights, configuration checks, and a sharded forward."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radjax.convert.clip import from_clip_vision, vit_config
from radjax.convert.monai_vit import from_monai_vit
from radjax.convert.torch_io import assign
from radjax.models.vit import ViT, ViTConfig
from tests.parity import assert_close
from tests.sharded import assert_sharded_equals_unsharded

TOL = 1e-5  # relative error in norm (||got - want|| / ||want||), as this file measured it


def torch_state(module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def jit_call(model: nnx.Module, x: jax.Array) -> jax.Array:
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)


def test_monai_vit_parity():
    torch = pytest.importorskip("torch")
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    ref = monai_nets.ViT(
        in_channels=2,
        img_size=(16, 16, 8),  # (H, W, D)
        patch_size=(8, 8, 4),
        hidden_size=24,
        mlp_dim=40,
        num_layers=2,
        num_heads=3,
        proj_type="conv",
        pos_embed_type="learnable",
        classification=False,
        qkv_bias=True,
    ).eval()
    cfg = ViTConfig(
        image_size=16,
        patch_size=8,
        frames=8,
        frame_patch_size=4,
        channels=2,
        width=24,
        depth=2,
        num_heads=3,
        mlp_dim=40,
        posemb="learned",
    )
    model = ViT(cfg, rngs=nnx.Rngs(0))
    assign(model, from_monai_vit(torch_state(ref)))
    x = np.random.default_rng(0).normal(size=(2, 2, 16, 16, 8)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.tensor(x))[0].numpy()
    got = jit_call(model, jnp.asarray(x.transpose(0, 4, 2, 3, 1)))  # -> (B, D, H, W, C)
    assert got.shape == want.shape == (2, 8, 24)
    assert_close(got, want, TOL, norm=True)


@pytest.fixture(scope="module")
def clip():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    ref = transformers.CLIPVisionModel(hf).eval()
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        out = ref(pixel_values=torch.tensor(x), output_hidden_states=True)
    return hf.to_dict(), torch_state(ref), x.transpose(0, 2, 3, 1), out


@pytest.mark.parametrize("select_layer", [None, -2])
def test_clip_vision_parity(clip, select_layer):
    pytest.importorskip("transformers")
    hf, state, x, out = clip
    pool = "cls" if select_layer is None else "none"
    model = ViT(vit_config(hf, pool_type=pool, select_layer=select_layer), rngs=nnx.Rngs(0))
    assign(model, from_clip_vision(state))
    got = jit_call(model, jnp.asarray(x))
    want = out.pooler_output if select_layer is None else out.hidden_states[select_layer]
    assert got.shape == tuple(want.shape)
    assert_close(got, want.numpy(), TOL, norm=True)


RADFM_LIKE = ViTConfig(
    image_size=16,
    patch_size=8,
    frames=8,
    frame_patch_size=4,
    channels=1,
    width=24,
    depth=2,
    num_heads=4,
    mlp_dim=32,
    inputs=("3d", "2d"),
    patch_norm=True,
    posemb="axial3",
    final_norm=False,
    qkv_bias=False,
)


def test_shapes_of_poolings_and_2d_inputs():
    cfg = dataclasses.replace(RADFM_LIKE, cls_token=True, pool_type="gap")
    model = ViT(cfg, rngs=nnx.Rngs(0))
    volume, image = jnp.ones((2, 8, 16, 16, 1)), jnp.ones((2, 16, 16, 1))
    assert jit_call(model, volume).shape == (2, 24)
    assert jit_call(model, image).shape == (2, 24)
    tokens = ViT(dataclasses.replace(cfg, pool_type="none"), rngs=nnx.Rngs(0))
    assert jit_call(tokens, volume).shape == (2, 1 + 2 * 2 * 2, 24)
    with pytest.raises(ValueError, match="expected"):
        model(jnp.ones((2, 16, 1)))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(posemb="clip"), "needs cls_token"),
        (dict(pool_type="cls"), "needs cls_token"),
        (dict(width=25), "width % 3"),
        (dict(select_layer=5), "select_layer"),
        (dict(posemb="sincos"), "posemb"),
    ],
)
def test_bad_configs_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(RADFM_LIKE, **change)


def test_sharded_forward_equals_unsharded():
    cfg = dataclasses.replace(RADFM_LIKE, cls_token=True, posemb="learned", final_norm=True)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 16, 16, 1)), jnp.float32)
    # from a constructor: the state is initialised straight onto the mesh
    run = assert_sharded_equals_unsharded(lambda: ViT(cfg, rngs=nnx.Rngs(0)), x, atol=1e-5)
    fc1 = run.state["encoder"]["layers"][0]["mlp"]["fc1"]["kernel"].get_value()
    assert not fc1.sharding.is_fully_replicated
