"""radjax: JAX/Flax reimplementations of radiology foundation models.

Parameters carry logical-axis metadata; radjax places them on devices itself
(``jax.jit(init, out_shardings=...)``), so NNX's eager sharding, which needs a
mesh at construction time, is switched off for the whole library. On CPU, ``jax.random``'s
Threefry hash is lowered unrolled (``radjax.runtime``: same values, init compiles faster).
"""

from flax import nnx as _nnx

from radjax import runtime as _runtime

_nnx.use_eager_sharding(False)
_runtime.unroll_threefry_on_cpu()

__version__ = "0.1.0"
