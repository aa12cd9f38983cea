"""radjax.runtime: the unrolled CPU lowering of jax.random's Threefry hash keeps every value."""

import subprocess
import sys

import jax
import numpy as np
import pytest

import radjax  # noqa: F401  (applies the lowering)
from radjax import runtime

# Random123's known-answer vectors for Threefry-2x32-20: (key0, key1, ctr0, ctr1) -> output.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF,) * 4, (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344, 0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]

# Draws of every kind radjax's initialisers and data pipeline make, from one key, jitted.
DRAWS = """
import jax, jax.numpy as jnp, numpy as np
def draws(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return [
        jax.random.normal(k1, (3, 5, 7)),
        jax.random.uniform(jax.random.fold_in(k2, 11), (64,), minval=-0.5, maxval=2.0),
        jax.random.truncated_normal(k3, -2.0, 2.0, (9, 4), jnp.bfloat16),
        jax.random.bits(k1, (17,), jnp.uint32),
        jax.random.permutation(k2, 50),
        jax.random.key_data(jax.random.split(k3, (2, 3))),
    ]
def digest():
    out = jax.jit(draws)(jax.random.key(20261202))
    return [np.asarray(x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x).tolist() for x in out]
"""


@pytest.mark.parametrize("words, want", KNOWN_ANSWERS)
def test_the_hash_gives_random123s_known_answers(words, want):
    k0, k1, x0, x1 = (jax.numpy.asarray(np.uint32(w)) for w in words)
    got = jax.jit(runtime._threefry2x32)(k0, k1, x0, x1)
    assert tuple(int(w) for w in got) == want


def test_draws_equal_jax_own_lowering():
    """The same jitted draws in a process that never imports radjax (JAX's rolled loop)."""
    code = DRAWS + "print(digest())"
    plain = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    scope: dict = {}
    exec(DRAWS, scope)
    assert str(scope["digest"]()) == plain.strip()


def test_the_cpu_program_has_no_loop():
    """With JAX's own lowering each draw compiles to a while loop; radjax's is straight-line."""
    hlo = jax.jit(lambda k: jax.random.normal(k, (8,))).lower(jax.random.key(0)).as_text()
    assert "while" not in hlo


def test_decode_loops_compile_without_ynnpack_dots_and_training_keeps_them():
    """On the CPU, generation's decode loop is compiled with XLA's own dots (the runtime's
    decode options); an ordinary jitted matmul still goes to YNNPACK."""
    from flax import nnx

    from radjax.models.llama import Decoder, DecoderConfig
    from radjax.train import generation

    assert runtime.decode_compiler_options() == {"xla_cpu_experimental_ynn_fusion_type": ""}
    x = np.ones((64, 64), np.float32)
    assert "ynn_fusion" in jax.jit(lambda a: a @ a).lower(x).compile().as_text()
    cfg = DecoderConfig(
        vocab_size=64, hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128
    )
    graphdef, state = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
    ids = np.ones((2, 4), np.int32)
    decode = generation._decode_jit(generation._generate, generation._GENERATE_STATIC)
    text = (
        decode.lower(
            graphdef,
            state,
            ids,
            None,
            np.ones_like(ids),
            {},
            None,
            max_new_tokens=3,
            eos=(0,),
            pad=0,
            sampling=None,
        )  # fmt: skip
        .compile()
        .as_text()
    )
    assert "while" in text and "ynn_fusion" not in text
