"""radjax: JAX/Flax reimplementations of radiology foundation models.

Parameters carry logical-axis metadata; radjax places them on devices itself
(``jax.jit(init, out_shardings=...)``), so NNX's eager sharding, which needs a
mesh at construction time, is switched off for the whole library.
"""

from flax import nnx as _nnx

_nnx.use_eager_sharding(False)

__version__ = "0.1.0"
