"""radjax.papers.radfm.vision: 2D handling, dropout, input checks, logical axes, sharding.
Parity with the original RadFM code is test_radfm_golden.py (golden outputs)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (eager sharding off)
from radjax.papers.radfm.vision import RadFMVision, RadFMVisionConfig, as_volume
from tests.sharded import assert_sharded_equals_unsharded

CFG = RadFMVisionConfig.tiny()


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):
    return nnx.merge(graphdef, state, copy=True)(x)


def _run(module: nnx.Module, x: np.ndarray) -> np.ndarray:
    return np.asarray(_apply(*nnx.split(module), jnp.asarray(x)))


@pytest.fixture(scope="module")
def model():
    """RadFMVision with random weights, eval mode."""
    vision = RadFMVision(CFG, rngs=nnx.Rngs(1))
    vision.eval()
    return vision


def _images(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, np.float32)


def test_each_image_is_resampled_on_its_own(model):
    images = _images((1, 3, 1, 32, 32, 3), seed=3)
    got = _run(model, images)
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


def test_dropout_acts_in_train_mode_only(model):
    vit = model.vision_encoder  # the perceiver and fc have no dropout
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


def test_sharded_forward_equals_unsharded(model):
    images = jnp.asarray(_images((4, 1, 4, 32, 32, 3), seed=5))
    run = assert_sharded_equals_unsharded(
        model, images, mesh_shape={"data": 2, "fsdp": 2, "tensor": 2}
    )
    assert any(not s.is_fully_replicated for s in jax.tree.leaves(run.shardings))
