"""JAX runtime settings radjax applies, in one place.

- ``unroll_threefry_on_cpu`` (applied when radjax is imported): JAX lowers its Threefry-2x32
  hash, the core of every ``jax.random`` draw, on CPU as a 5-step ``while`` loop. XLA compiles
  each loop as its own kernels, one set per draw, so a model's random init compiles slowly
  (tiny AuxOL U-Net, 77 draws: 11.4 s) and a large draw runs slowly (a 4096^2 normal: 0.53 s
  rolled, 0.12 s unrolled). The unrolled hash fuses into the draw's one kernel. The bits are
  the same function of key and counter, so every random value is unchanged.
- ``decode_compiler_options`` (used by ``radjax.train.generation``'s compiled decode loops):
  XLA's CPU backend hands dots to YNNPACK by default, which serves training's large matmuls
  well but reads the weights of a decode step's (batch, d) x (d, n) products at ~13 GB/s
  inside the loop; XLA's own dots read them faster. Greedy generation of the benchmark decoder
  (Intel Xeon, 2 threads): 1280 -> 1005 ms, the same tokens; the train steps keep YNNPACK
  (without it RP3D's step took 2.3x as long). It is a per-program compile option, not a
  process-wide ``XLA_FLAGS``.
- ``enable_compilation_cache`` (the launchers' ``--compilation_cache``).
"""

from __future__ import annotations

import functools

import jax
import jax.extend.random
import numpy as np
from jax.interpreters import mlir

# Threefry-2x32, 20 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
# SC 2011): the rotation distance of each round in a group of four, for even and odd groups.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)  # the key schedule's third word is k0 ^ k1 ^ _PARITY


def _rotl(x: jax.Array, bits: int) -> jax.Array:
    return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def _threefry2x32(k0, k1, x0, x1):
    """The Threefry-2x32-20 block cipher on uint32 arrays of one shape (keys broadcast):
    20 rounds of (x0 += x1; x1 = rotl(x1, r) ^ x0), the key injected before the first round
    and after every fourth; returns the two output words."""
    keys = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0, x1 = x0 + keys[0], x1 + keys[1]
    for group in range(5):
        for bits in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, bits) ^ x0
        x0 = x0 + keys[(group + 1) % 3]
        x1 = x1 + keys[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


def unroll_threefry_on_cpu() -> None:
    """Lowers ``jax.random``'s Threefry-2x32 primitive on CPU as straight-line code (see the
    module docstring); other platforms keep JAX's own lowerings."""
    mlir.register_lowering(
        jax.extend.random.threefry2x32_p,
        mlir.lower_fun(_threefry2x32, multiple_results=True),
        platform="cpu",
    )


# XLA CPU debug options for decode loops (``decode_compiler_options``): no YNNPACK fusions.
_CPU_DECODE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def decode_compiler_options() -> dict[str, str]:
    """``jax.jit(..., compiler_options=)`` for token-by-token decoding programs: on the CPU,
    XLA's own dots instead of YNNPACK's (module docstring); ``{}`` on other backends and where
    this XLA does not know the option (it is experimental)."""
    if jax.default_backend() != "cpu":
        return {}
    probe = jax.jit(lambda x: x @ x, compiler_options=_CPU_DECODE_OPTIONS)
    try:
        probe.lower(np.ones((2, 2), np.float32)).compile()
    except jax.errors.JaxRuntimeError:  # "No such compile option"
        return {}
    return dict(_CPU_DECODE_OPTIONS)


def enable_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache in ``directory``: programs that took over a second
    to compile are stored there and loaded, not compiled, when the same program (same shapes,
    shardings and JAX version) is compiled again, in this process or a later one."""
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
