"""Patch embeddings: cut an image or volume into non-overlapping patches, embed each linearly.

Channels-last inputs: volumes (B, D, H, W, C), images (B, H, W, C). Volume tokens are
ordered (h, w, d), depth fastest, each patch flattened in (ph, pw, pd, C) order: the
PyTorch originals' ``b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)`` on their
(B, C, H, W, D) tensors (RadFM, RP3D-v1; also the token order of a strided ``Conv3d`` on
them, MONAI). Image tokens are ordered (h, w), patches flattened (ph, pw, C) (a strided
``Conv2d``, CLIP). A patch embedding is ``Linear(patch_dim, dim)``, optionally between
LayerNorms (RadFM's ``to_patch_embedding``).
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from radjax.nn.linear import linear, torch_linear_init
from radjax.nn.norms import layer_norm


def grid_size(size: int, patch: int, what: str) -> int:
    """Patches along one axis; raises ValueError when ``size`` is not a multiple of ``patch``."""
    if size % patch:
        raise ValueError(f"patch embedding: {what} {size} is not a multiple of its patch {patch}")
    return size // patch


def patchify_3d(x: jax.Array, patch: tuple[int, int, int]) -> tuple[jax.Array, tuple[int, ...]]:
    """(B, D, H, W, C) -> ((B, h*w*d, ph*pw*pd*C), (h, w, d)); patch = (pd, ph, pw).
    Works on numpy arrays too."""
    b, depth, height, width, c = x.shape
    pd, ph, pw = patch
    d, h, w = (
        grid_size(depth, pd, "depth"),
        grid_size(height, ph, "height"),
        grid_size(width, pw, "width"),
    )
    x = x.reshape(b, d, pd, h, ph, w, pw, c).transpose(0, 3, 5, 1, 4, 6, 2, 7)
    return x.reshape(b, h * w * d, ph * pw * pd * c), (h, w, d)


def patchify_2d(x: jax.Array, patch: tuple[int, int]) -> tuple[jax.Array, tuple[int, ...]]:
    """(B, H, W, C) -> ((B, h*w, ph*pw*C), (h, w)); patch = (ph, pw). Works on numpy too."""
    b, height, width, c = x.shape
    ph, pw = patch
    h, w = grid_size(height, ph, "height"), grid_size(width, pw, "width")
    x = x.reshape(b, h, ph, w, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * w, ph * pw * c), (h, w)


class PatchEmbed(nnx.Module):
    """(B, D, H, W, C) volume (3-D ``patch`` (pd, ph, pw)) or (B, H, W, C) image (2-D ``patch``
    (ph, pw)) -> ((B, N, dim) tokens, patch grid (h, w, d) / (h, w)).

    Each patch goes through [LayerNorm(patch_dim) ->] Linear(patch_dim, dim) [-> LayerNorm]
    (``norm=True``: RadFM); parameters ``norm_in``, ``proj``, ``norm_out``. The kernel uses
    torch's default Linear init.
    """

    def __init__(
        self,
        patch: tuple[int, ...],
        channels: int,
        dim: int,
        *,
        norm: bool = False,
        use_bias: bool = True,
        eps: float = 1e-5,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if len(patch) not in (2, 3):
            raise ValueError(f"PatchEmbed: patch {patch} must be (ph, pw) or (pd, ph, pw)")
        self.patch = tuple(patch)
        patch_dim = channels * math.prod(patch)
        self.norm_in = layer_norm(patch_dim, eps=eps, dtype=dtype, rngs=rngs) if norm else None
        self.proj = linear(
            patch_dim,
            dim,
            (None, "embed"),
            use_bias=use_bias,
            init=torch_linear_init,
            dtype=dtype,
            rngs=rngs,
        )
        self.norm_out = layer_norm(dim, eps=eps, dtype=dtype, rngs=rngs) if norm else None

    def __call__(self, x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
        if x.ndim != len(self.patch) + 2:
            kind = "(B, D, H, W, C)" if len(self.patch) == 3 else "(B, H, W, C)"
            raise ValueError(f"PatchEmbed: expected {kind} input, got shape {x.shape}")
        patchify = patchify_3d if len(self.patch) == 3 else patchify_2d
        tokens, grid = patchify(x, self.patch)
        if self.norm_in is not None:
            tokens = self.norm_in(tokens)
        tokens = self.proj(tokens)
        if self.norm_out is not None:
            tokens = self.norm_out(tokens)
        return tokens, grid
