"""The conv dispatcher equals lax.conv_general_dilated on every path it takes (pointwise
matmul, patchify, im2col, lax), forward and gradients; the path follows shape and backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radjax.nn.conv import conv_general_dilated

_DN = {2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


@pytest.mark.parametrize(
    "spatial, kernel, stride, padding, dilation",
    [
        ((2, 2), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),  # small input: im2col
        ((3, 2), (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # strided, odd sizes
        ((4, 4), (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # 2x2 output: im2col
        ((4, 4), (3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2)),  # dilation makes the window 5x5
        ((8, 8), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),  # large input: im2col on CPU
        ((9, 7), (7, 7), (2, 2), ((3, 3), (3, 3)), (1, 1)),  # ResNet stem
        ((8, 8), (4, 4), (4, 4), ((0, 0), (0, 0)), (1, 1)),  # kernel = stride: patchify
        ((9, 10), (4, 4), (4, 4), ((0, 0), (0, 0)), (1, 1)),  # patchify, ragged edge cropped
        ((4, 8, 8), (2, 4, 4), (2, 4, 4), ((0, 0),) * 3, (1, 1, 1)),  # 3D patchify
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
    for a, b in zip(ours_grads, ref_grads):  # f32 sums of up to 245 terms, reordered
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def _hlo(x, w, strides, padding):
    return (
        jax.jit(lambda x, w: conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN[2]))
        .lower(x, w)
        .as_text()
    )


def test_rewrites_are_chosen_by_shape_and_backend(monkeypatch):
    w = jnp.ones((3, 3, 3, 4))
    pad = ((1, 1), (1, 1))
    small, big = jnp.ones((1, 2, 2, 3)), jnp.ones((1, 8, 8, 3))
    # CPU: every channels-last conv is a matmul
    for x, w_, strides, padding in (
        (small, w, (1, 1), pad),
        (big, w, (1, 1), pad),
        (big, jnp.ones((1, 1, 3, 4)), (1, 1), ((0, 0), (0, 0))),
        (big, jnp.ones((4, 4, 3, 4)), (4, 4), ((0, 0), (0, 0))),
    ):
        hlo = _hlo(x, w_, strides, padding)
        assert "dot_general" in hlo and "convolution" not in hlo, (x.shape, w_.shape)
    # other backends keep XLA's convolution except for pointwise convs and tiny maps
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert "convolution" in _hlo(big, w, (1, 1), pad)
    patches = jnp.ones((1, 16, 16, 3)), jnp.ones((4, 4, 3, 4))
    assert "convolution" in _hlo(*patches, (4, 4), ((0, 0), (0, 0)))
    assert "convolution" not in _hlo(small, w, (1, 1), pad)
    assert "convolution" not in _hlo(big, jnp.ones((1, 1, 3, 4)), (1, 1), ((0, 0), (0, 0)))


def test_im2col_keeps_only_the_input_for_the_backward():
    """The patches are recomputed in the backward pass: the saved residuals are the conv's
    input and kernel, not the (N, *out, 9 * C_in) patch matrix."""
    x, w = jnp.ones((2, 8, 8, 5)), jnp.ones((3, 3, 5, 7))

    def f(x, w):
        return conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DN[2])

    _, backward = jax.vjp(f, x, w)  # a pytree whose leaves are the saved residuals
    shapes = {tuple(leaf.shape) for leaf in jax.tree.leaves(backward)}
    assert (2, 8, 8, 45) not in shapes and shapes <= {(2, 8, 8, 5), (3, 3, 5, 7), ()}, shapes
