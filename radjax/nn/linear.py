"""The one Linear-layer factory: ``nnx.Linear`` with logical axis names on its parameters.

Kernel (din, dout) carries ``axes`` = (in axis, out axis); the bias (dout,) carries
``axes[1:]`` (names from ``radjax.sharding.LOGICAL_RULES``, None = replicated).
Parameters are f32; ``dtype`` is the compute dtype (None = the input's).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# torch's default nn.Linear weight init (kaiming_uniform with a=sqrt(5)).
torch_linear_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def linear(
    din: int,
    dout: int,
    axes: tuple[str | None, str | None],
    *,
    use_bias: bool = True,
    init: nnx.Initializer | None = None,
    dtype=None,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """Linear(din, dout) with logical axes ``axes`` on the kernel and ``axes[1:]`` on the bias.

    Args:
      init: kernel initializer (default flax's lecun-normal); biases start at zero.
    """
    kernel_init = {} if init is None else {"kernel_init": init}
    return nnx.Linear(
        din,
        dout,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_metadata={"out_sharding": tuple(axes)},
        bias_metadata={"out_sharding": tuple(axes[1:])},
        rngs=rngs,
        **kernel_init,
    )


def stacked_linear(x: jax.Array, layers: Sequence[nnx.Module]) -> tuple[jax.Array, ...]:
    """``tuple(layer(x) for layer in layers)`` for bias-free ``nnx.Linear`` layers of one
    kernel shape (din, dout), computed as a single matmul over their kernels stacked to
    (din, n, dout): one pass over x instead of n, and the stacking axis stays unsharded, so
    each kernel's own sharding carries over. Layers of any other kind (e.g. ``LoRALinear``)
    are called one by one. x (..., din) -> n arrays (..., dout)."""
    plain = all(type(layer) is nnx.Linear and not layer.use_bias for layer in layers)
    if not plain or len({layer.kernel.shape for layer in layers}) != 1:
        return tuple(layer(x) for layer in layers)
    dtype = layers[0].dtype or x.dtype
    kernel = jnp.stack([layer.kernel[...] for layer in layers], axis=1).astype(dtype)
    y = jnp.einsum("...d,dnf->...nf", x.astype(dtype), kernel)
    return tuple(y[..., i, :] for i in range(len(layers)))
