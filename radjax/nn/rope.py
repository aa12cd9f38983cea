"""Rotary position embeddings (RoPE), as transformers' LLaMA / Mistral / Phi-3.

Per-head tensors are (B, L, H, Dh); the first ``rotary_dim`` channels rotate in the
half-split layout (channel i pairs with i + rotary_dim / 2), the rest pass through
(partial rotary, Phi-3). Frequency scalings: ``default``, ``linear`` (frequencies divided
by ``factor``) and ``llama3`` (Llama 3.1: long wavelengths divided by ``factor``, short
ones kept, the band between interpolated).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class Rope:
    """RoPE settings; ``low_freq_factor`` .. ``original_max_positions`` are llama3's."""

    rotary_dim: int
    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"Rope: rope_type {self.rope_type!r} not one of {ROPE_TYPES}")

    def inv_freq(self) -> np.ndarray:
        """Inverse rotary frequencies (rotary_dim // 2,) f32, after the scaling."""
        dim = self.rotary_dim
        inv = (1.0 / self.theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim)).astype(
            np.float32
        )
        if self.rope_type == "linear":
            return (inv / self.factor).astype(np.float32)
        if self.rope_type == "llama3":
            return self._llama3(inv)
        return inv

    def _llama3(self, inv: np.ndarray) -> np.ndarray:
        old_len, low, high = (
            self.original_max_positions,
            self.low_freq_factor,
            self.high_freq_factor,
        )
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old_len / low, inv / self.factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)

    def cos_sin(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """positions (B, L) int -> cos, sin (B, L, 1, rotary_dim) f32 (halves repeated)."""
        freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(self.inv_freq())
        emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
        return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates the first rotary_dim = cos.shape[-1] channels of x (B, L, H, Dh) by
    ``cos``, ``sin`` (B, L, 1, rotary_dim); the rest pass through."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    first, second = x_rot[..., : rot // 2], x_rot[..., rot // 2 :]
    rotated = jnp.concatenate([-second, first], axis=-1)
    out = x_rot * cos.astype(x.dtype) + rotated * sin.astype(x.dtype)
    return jnp.concatenate([out, x_pass], axis=-1)
