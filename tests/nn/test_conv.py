"""The conv dispatcher equals lax.conv_general_dilated, including where it takes the patch path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radjax.nn.conv import conv_general_dilated

_DN = {2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


@pytest.mark.parametrize(
    "spatial, kernel, stride, padding, dilation",
    [
        ((2, 2), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),  # small input: patch path
        ((3, 2), (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # strided, odd sizes
        ((4, 4), (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # 2x2 output: patch path
        ((4, 4), (3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2)),  # dilation makes the window 5x5
        ((8, 8), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),  # large input: lax path
        ((8, 8), (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1)),  # pointwise: matmul
        ((7, 8), (1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1)),  # strided pointwise (downsample)
        ((4, 6, 6), (1, 1, 1), (1, 2, 2), ((0, 0),) * 3, (1, 1, 1)),  # 3D pointwise
        ((2, 3, 3), (3, 3, 3), (1, 1, 1), ((1, 1),) * 3, (1, 1, 1)),  # 3D
    ],
)
def test_matches_lax_forward_and_gradients(spatial, kernel, stride, padding, dilation):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, *spatial, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(*kernel, 5, 7)), jnp.float32)
    dn = _DN[len(spatial)]

    def run(conv):
        def f(x, w):
            return conv(x, w, stride, padding, rhs_dilation=dilation, dimension_numbers=dn)

        out = f(x, w)
        grads = jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1))(x, w)
        return out, grads

    ours, ours_grads = run(conv_general_dilated)
    ref, ref_grads = run(jax.lax.conv_general_dilated)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours_grads, ref_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_rewrites_are_chosen_by_shape():
    x = jnp.ones((1, 2, 2, 3))
    w = jnp.ones((3, 3, 3, 4))
    hlo = (
        jax.jit(
            lambda x, w: conv_general_dilated(
                x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DN[2]
            )
        )
        .lower(x, w)
        .as_text()
    )
    assert "dot_general" in hlo
    hlo_big = (
        jax.jit(
            lambda x, w: conv_general_dilated(
                x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DN[2]
            )
        )
        .lower(jnp.ones((1, 8, 8, 3)), w)
        .as_text()
    )
    assert "dot_general" not in hlo_big and "convolution" in hlo_big
    hlo_1x1 = (
        jax.jit(
            lambda x, w: conv_general_dilated(
                x, w, (1, 1), ((0, 0), (0, 0)), dimension_numbers=_DN[2]
            )
        )
        .lower(jnp.ones((1, 8, 8, 3)), jnp.ones((1, 1, 3, 4)))
        .as_text()
    )
    assert "dot_general" in hlo_1x1 and "convolution" not in hlo_1x1
