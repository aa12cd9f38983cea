"""radjax.models.{radfm_vision,perceiver}: parity with a PyTorch stand-in of RadFM's
ViT / Perceiver resampler / fc (tests/papers/radfm/radfm_torch_reference.py), input checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (eager sharding off)
from radjax import sharding
from radjax.convert.torch_io import assign
from radjax.papers.radfm.convert import vision_from_radfm
from radjax.papers.radfm.vision import RadFMVision, RadFMVisionConfig, as_volume

torch = pytest.importorskip("torch")
ref_lib = pytest.importorskip("tests.papers.radfm.radfm_torch_reference")

CFG = RadFMVisionConfig.tiny()


def _rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def _to_torch_layout(images: np.ndarray) -> torch.Tensor:
    """radjax (B, S, D, H, W, C) -> the original's (B, S, C, H, W, D)."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 1, 5, 3, 4, 2)))


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):
    return nnx.merge(graphdef, state, copy=True)(x)


def _run(module: nnx.Module, x: np.ndarray) -> np.ndarray:
    return np.asarray(_apply(*nnx.split(module), jnp.asarray(x)))


@pytest.fixture(scope="module")
def pair():
    """(radjax RadFMVision, torch reference) with the same random weights, eval mode."""
    torch.manual_seed(0)
    reference = ref_lib.VisionEmbedding(CFG).eval()
    sd = {f"embedding_layer.{k}": v.detach().numpy() for k, v in reference.state_dict().items()}
    model = RadFMVision(CFG, rngs=nnx.Rngs(1))
    assign(model, vision_from_radfm(sd), strict=True)
    model.eval()
    return model, reference


def _images(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, np.float32)


def test_vit_matches_reference_on_volume(pair):
    model, reference = pair
    # depth 12 -> 3 frame patches of a 4-entry depth table: the floor-strided indices 0, 1, 2
    volume = _images((2, 12, 32, 48, 3))
    with torch.no_grad():
        want = reference.vision_encoder(_to_torch_layout(volume[:, None])[:, 0]).numpy()
    got = _run(model.vision_encoder, volume)
    assert got.shape == want.shape == (2, 2 * 3 * 3, CFG.dim)
    assert _rel_err(got, want) < 1e-5


def test_perceiver_matches_reference(pair):
    model, reference = pair
    tokens = np.random.default_rng(1).normal(size=(3, 20, CFG.dim)).astype(np.float32)
    with torch.no_grad():
        want = reference.perceiver(torch.from_numpy(tokens)).numpy()
    got = _run(model.perceiver, tokens)
    assert got.shape == want.shape == (3, CFG.num_latents, CFG.dim)
    assert _rel_err(got, want) < 1e-5


def test_vision_path_matches_reference_on_volumes(pair):
    model, reference = pair
    images = _images((2, 2, 8, 64, 32, 3), seed=2)
    with torch.no_grad():
        want = reference(_to_torch_layout(images)).numpy()
    got = _run(model, images)
    assert got.shape == want.shape == (2, 2, CFG.num_latents, CFG.llm_dim)
    assert _rel_err(got, want) < 1e-5


def test_2d_image_is_the_nearest_resized_volume_of_the_original(pair):
    model, reference = pair
    images = _images((1, 3, 1, 32, 32, 3), seed=3)
    torch_images = _to_torch_layout(images).flatten(0, 1)  # (S, C, H, W, 1)
    volume = torch.nn.functional.interpolate(torch_images, size=(32, 32, CFG.frame_patch_size))
    with torch.no_grad():
        want = reference(volume[None]).numpy()
    got = _run(model, images)
    assert _rel_err(got, want) < 1e-5
    # each image is resampled on its own: a different second image leaves the first alone
    other = images.copy()
    other[:, 1] = 0.5
    np.testing.assert_allclose(_run(model, other)[:, 0], got[:, 0], rtol=1e-5, atol=1e-6)


def test_as_volume_repeats_the_slice():
    image = _images((2, 1, 8, 8, 3))
    volume = np.asarray(as_volume(jnp.asarray(image), 4))
    assert volume.shape == (2, 4, 8, 8, 3)
    np.testing.assert_array_equal(volume, np.repeat(image, 4, axis=1))
    with pytest.raises(ValueError, match="depth 1"):
        as_volume(jnp.asarray(volume), 4)


def test_dropout_acts_in_train_mode_only(pair):
    vit = pair[0].vision_encoder  # the perceiver and fc have no dropout
    volume = _images((2, 12, 32, 48, 3))
    evaluated = _run(vit, volume)
    vit.train()
    try:
        trained = _run(vit, volume)
    finally:
        vit.eval()
    assert not np.allclose(trained, evaluated, rtol=1e-3)
    np.testing.assert_array_equal(_run(vit, volume), evaluated)


@pytest.mark.parametrize(
    "shape, field",
    [
        ((1, 1, 4, 32, 32, 1), "channels"),
        ((1, 1, 4, 40, 32, 3), "height 40"),
        ((1, 1, 4, 32, 128, 3), "width 128"),
        ((1, 1, 6, 32, 32, 3), "frame_patch_size"),
        ((1, 1, 20, 32, 32, 3), "frames 16"),
        ((1, 4, 32, 32, 3), r"\(B, S, D, H, W, C\)"),
    ],
)
def test_bad_images_name_the_field(shape, field):
    model = nnx.eval_shape(lambda: RadFMVision(CFG, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=field):
        model.check_images(shape)


def test_parameters_carry_logical_axes():
    model = nnx.eval_shape(lambda: RadFMVision(CFG, rngs=nnx.Rngs(0)))
    params = [(path, var) for path, var in nnx.iter_graph(model) if isinstance(var, nnx.Param)]
    assert params
    for path, var in params:
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == var.get_value().ndim, path


def test_sharded_forward_equals_unsharded(pair):
    model, _ = pair
    graphdef, state = nnx.split(model)
    images = jnp.asarray(_images((4, 1, 4, 32, 32, 3), seed=5))
    want = _apply(graphdef, state, images)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    state_sh = sharding.state_shardings(state, mesh)
    assert any(not s.is_fully_replicated for s in jax.tree.leaves(state_sh))
    images_sh = sharding.batch_sharding(mesh, images.ndim)
    with jax.set_mesh(mesh):
        got = jax.jit(
            lambda s, x: nnx.merge(graphdef, s, copy=True)(x), in_shardings=(state_sh, images_sh)
        )(jax.device_put(state, state_sh), jax.device_put(images, images_sh))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
