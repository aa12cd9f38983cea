"""3D ViT of RP3D-Diag arXiv-v1 (``src/Model/vit.py``) and RadFM (``vit_3d.py``).

Inputs are channels-last: volumes (B, D, H, W, C), images (B, H, W, C). (The PyTorch
originals take (B, C, H, W, D), depth last; converters reorder at the boundary.)

* Patches: a volume is cut into (frame_patch, patch, patch) blocks. Tokens are ordered
  (h, w, d) with depth fastest and each patch is flattened in (ph, pw, pd, C) order,
  the originals' ``b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)``; images use
  ``(h w)`` tokens of (ph, pw, C). Each patch goes through LayerNorm(patch_dim) ->
  Linear(patch_dim, dim) -> LayerNorm(dim); 2D and 3D inputs have separate embeddings.
* Position: learned row / column / depth tables of dim/3 features each (uniform[0, 1)
  init), concatenated and added. A grid of n smaller than a table of N takes entries
  ``(arange(n)+1)*(N//n)-1`` (RadFM's strided subsample; floor division, so a grid that
  does not divide the table, e.g. 3 of 128, ends before the last entry); 2D
  images use depth entry 0 (RP3D-v1).
* Blocks: pre-norm, LayerNorm eps 1e-5, attention with bias-free q/k/v of
  heads*dim_head and a biased output projection, GELU MLP; no final norm, no CLS.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.nn.norms import layer_norm
from radjax.nn.transformer import Encoder, gelu_exact, torch_linear_init
from radjax.sharding import shard_act


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def _grid(size: int, patch: int, what: str) -> int:
    if size % patch:
        raise ValueError(f"ViT3D: {what} {size} is not a multiple of its patch size {patch}")
    return size // patch


def patchify_3d(x: jax.Array, patch: tuple[int, int, int]) -> tuple[jax.Array, tuple[int, ...]]:
    """(B, D, H, W, C) -> ((B, h*w*d, ph*pw*pd*C), (h, w, d)); patch = (pd, ph, pw)."""
    b, depth, height, width, c = x.shape
    pd, ph, pw = patch
    d, h, w = (_grid(depth, pd, "depth"), _grid(height, ph, "height"), _grid(width, pw, "width"))
    x = x.reshape(b, d, pd, h, ph, w, pw, c).transpose(0, 3, 5, 1, 4, 6, 2, 7)
    return x.reshape(b, h * w * d, ph * pw * pd * c), (h, w, d)


def patchify_2d(x: jax.Array, patch: tuple[int, int]) -> tuple[jax.Array, tuple[int, ...]]:
    """(B, H, W, C) -> ((B, h*w, ph*pw*C), (h, w)); patch = (ph, pw)."""
    b, height, width, c = x.shape
    ph, pw = patch
    h, w = _grid(height, ph, "height"), _grid(width, pw, "width")
    x = x.reshape(b, h, ph, w, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * w, ph * pw * c), (h, w)


class PatchEmbed(nnx.Module):
    """(B, N, patch_dim) -> LayerNorm -> Linear(patch_dim, dim) -> LayerNorm -> (B, N, dim)."""

    def __init__(self, patch_dim: int, dim: int, *, dtype=None, rngs: nnx.Rngs):
        self.norm_in = layer_norm(patch_dim, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(
            patch_dim,
            dim,
            dtype=dtype,
            kernel_init=torch_linear_init,
            kernel_metadata={"out_sharding": (None, "embed")},
            bias_metadata={"out_sharding": ("embed",)},
            rngs=rngs,
        )
        self.norm_out = layer_norm(dim, dtype=dtype, rngs=rngs)

    def __call__(self, patches: jax.Array) -> jax.Array:
        return self.norm_out(self.proj(self.norm_in(patches)))


class AxialPositionEmbedding(nnx.Module):
    """Concatenated learned row / column / depth embeddings of dim/3 features each."""

    def __init__(self, dim: int, grid: tuple[int, int, int], *, rngs: nnx.Rngs):
        if dim % 3:
            raise ValueError(f"AxialPositionEmbedding: dim {dim} is not a multiple of 3")
        init = nnx.initializers.uniform(1.0)

        def table(n):
            return nnx.Param(init(rngs.params(), (n, dim // 3)), out_sharding=(None, "embed"))

        self.row_embed, self.col_embed, self.dep_embed = (table(n) for n in grid)

    @staticmethod
    def _take(table: jax.Array, n: int) -> jax.Array:
        size = table.shape[0]
        if not 0 < n <= size:
            raise ValueError(f"AxialPositionEmbedding: grid of {n} exceeds table of {size}")
        return table[(jnp.arange(n) + 1) * (size // n) - 1]

    def __call__(self, grid: tuple[int, ...]) -> jax.Array:
        """(h, w, d) -> (h*w*d, dim) in (h, w, d) order; (h, w) -> (h*w, dim) at depth 0."""
        h, w = grid[:2]
        rows, cols = self._take(self.row_embed[...], h), self._take(self.col_embed[...], w)
        depth = self.dep_embed[...]
        deps = self._take(depth, grid[2]) if len(grid) == 3 else depth[:1]
        d = deps.shape[0]
        axes = (rows[:, None, None], cols[None, :, None], deps[None, None, :])
        pos = jnp.concatenate([jnp.broadcast_to(t, (h, w, d, t.shape[-1])) for t in axes], axis=-1)
        return pos.reshape(h * w * d, -1)


class ViT3D(nnx.Module):
    """(B, D, H, W, C) volume or (B, H, W, C) image -> (B, tokens, dim).

    Args:
      image_size: H (= W) or (H, W) that the position tables cover.
      frames: D that the depth table covers.
      patch_size, frame_patch_size: patch extent in H/W and in D.
      dim, depth, heads, dim_head, mlp_dim: transformer sizes.
      channels: input channels C.
      dropout: attention / MLP / residual dropout; emb_dropout: after the position add.
      patch_embed_2d: build the separate 2D patch embedding (RP3D-v1); RadFM has none.
      remat: rematerialise each block in the backward pass.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        frames: int,
        patch_size: int,
        frame_patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        dim_head: int = 64,
        channels: int = 3,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        patch_embed_2d: bool = True,
        dtype=None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        height, width = _pair(image_size)
        self.patch = (frame_patch_size, patch_size, patch_size)
        self.patch_embed_3d = PatchEmbed(
            channels * patch_size**2 * frame_patch_size, dim, dtype=dtype, rngs=rngs
        )
        self.patch_embed_2d = (
            PatchEmbed(channels * patch_size**2, dim, dtype=dtype, rngs=rngs)
            if patch_embed_2d
            else None
        )
        grid = (
            _grid(height, patch_size, "image height"),
            _grid(width, patch_size, "image width"),
            _grid(frames, frame_patch_size, "frames"),
        )
        self.pos_embed = AxialPositionEmbedding(dim, grid, rngs=rngs)
        self.dropout = nnx.Dropout(emb_dropout, rngs=rngs if emb_dropout else None)
        self.encoder = Encoder(
            dim,
            layers=depth,
            final_norm=None,
            remat=remat,
            rngs=rngs,
            heads=heads,
            head_dim=dim_head,
            mlp_dim=mlp_dim,
            norm_first=True,
            norm=functools.partial(layer_norm, eps=1e-5, dtype=dtype),
            activation=gelu_exact,
            dropout=dropout,
            qkv_bias=False,
            kernel_init=torch_linear_init,
            dtype=dtype,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim == 5:
            patches, grid = patchify_3d(x, self.patch)
            tokens = self.patch_embed_3d(patches)
        elif x.ndim == 4 and self.patch_embed_2d is not None:
            patches, grid = patchify_2d(x, self.patch[1:])
            tokens = self.patch_embed_2d(patches)
        else:
            kinds = "(B, D, H, W, C)" + (" or (B, H, W, C)" if self.patch_embed_2d else "")
            raise ValueError(f"ViT3D: expected {kinds} input, got shape {x.shape}")
        tokens = self.dropout(tokens + self.pos_embed(grid).astype(tokens.dtype))
        tokens = shard_act(tokens, ("act_batch", "act_length", "act_embed"))
        return self.encoder(tokens)[0]
