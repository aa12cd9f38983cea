"""Configurable Vision Transformer over 2D images and 3D volumes (big_vision ``models/vit.py``
style: position embedding by name via ``get_posemb``, ``pool_type``).

Inputs channels-last: volumes (B, D, H, W, C), images (B, H, W, C) (PyTorch originals take
(B, C, H, W, D) / (B, C, H, W); converters reorder at the boundary). Tokens: see
``radjax.nn.patch_embed`` ((h, w, d) order, depth fastest). A config may build a 3D and a 2D
patch embedding (``patch_embed_3d``, ``patch_embed_2d``); the input's rank picks one.

Forward: patches -> embed -> [CLS] -> + position embedding -> dropout -> [pre-norm] ->
``depth`` pre-norm blocks (``x + Attn(LN(x))``, ``x + MLP(LN(x))``) -> [final norm] -> pool.

Position embeddings (``posemb``):

* ``'axial3'``: RadFM / RP3D-v1: learned row / column / depth tables of width/3 features
  each (uniform[0, 1) init), concatenated and added to the patches (``AxialPosEmb``).
* ``'learned'``: one learned (N, width) table over the patch tokens (MONAI ``ViT``,
  ``pos_embed_type='learnable'``); a CLS token is prepended after it (not embedded).
* ``'clip'``: CLIP and EVA: the CLS token (``class_embedding`` / ``cls_token``) is prepended
  first and the learned table covers 1 + N tokens; requires ``cls_token``.

``qkv_bias``: ``True`` (q, k and v projections biased), ``False`` (none), or ``'qv'`` (EVA /
BEiT: q and v biased, k not; ``attn/key`` then has no ``bias`` parameter).

``select_layer`` returns the hidden states after that many blocks, indexed as
transformers' ``hidden_states`` (0 = embeddings after the pre-norm, -1 = last block,
CLIP-LLaVA's -2 = the one before); the final norm applies only when every block runs.
``pool_type``: ``'none'`` (B, T, width) tokens (CLS first when present), ``'cls'`` (B, width)
the CLS token, ``'gap'`` (B, width) the mean of the patch tokens.

Parameters: ``patch_embed_{3d,2d}/{norm_in,proj,norm_out}``, ``cls_token`` (width,),
``pos_embed/{row,col,dep}_embed`` or ``pos_embed/embedding``, ``pre_norm``,
``encoder/layers/<i>/{norm1,attn/{query,key,value,out},norm2,mlp/{fc1,fc2}}``, ``norm``.
The EVA ViT-g of BLIP-2 / Uni-Med is ``radjax.convert.eva_vit.vit_config()``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.nn.linear import linear, torch_linear_init
from radjax.nn.norms import layer_norm
from radjax.nn.patch_embed import PatchEmbed, grid_size
from radjax.nn.transformer import Encoder, gelu_exact, quick_gelu
from radjax.sharding import shard_act

ACTIVATIONS = {"gelu": gelu_exact, "quick_gelu": quick_gelu}
POSEMBS = ("axial3", "learned", "clip")
POOL_TYPES = ("none", "cls", "gap")
INPUTS = ("3d", "2d")
QKV_BIASES = (True, False, "qv")


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """ViT hyper-parameters. ``image_size`` (H, W) and ``frames`` (D) are what the position
    tables cover; ``inputs`` names the patch embeddings built ('3d', '2d')."""

    image_size: int | tuple[int, int]
    patch_size: int | tuple[int, int]
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    head_dim: int | None = None  # None = width // num_heads
    frames: int = 1  # D covered by the position embedding (3D inputs)
    frame_patch_size: int = 1
    channels: int = 3
    inputs: tuple[str, ...] = ("3d",)
    patch_norm: bool = False  # LayerNorm before and after the patch projection (RadFM)
    patch_bias: bool = True  # CLIP's patch projection has none
    posemb: str = "learned"
    cls_token: bool = False
    pre_norm: bool = False  # LayerNorm after the position embedding (CLIP pre_layrnorm)
    final_norm: bool = True
    activation: str = "gelu"  # exact GELU; 'quick_gelu' for CLIP
    qkv_bias: bool | str = True  # 'qv': q and v biased, k not (EVA)
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0  # attention, MLP and residual dropout
    emb_dropout: float = 0.0  # after the position embedding
    pool_type: str = "none"
    select_layer: int | None = None  # hidden states after this many blocks (None = all)
    dtype: str = "float32"  # compute dtype; parameters are f32
    remat: bool = False  # rematerialise each block in the backward pass

    def __post_init__(self):
        checks = (
            (self.posemb in POSEMBS, f"posemb {self.posemb!r} not in {POSEMBS}"),
            (self.pool_type in POOL_TYPES, f"pool_type {self.pool_type!r} not in {POOL_TYPES}"),
            (self.activation in ACTIVATIONS, f"activation {self.activation!r} not supported"),
            (bool(self.inputs) and set(self.inputs) <= set(INPUTS), f"inputs {self.inputs}"),
            (
                isinstance(self.qkv_bias, bool) or self.qkv_bias == "qv",
                f"qkv_bias {self.qkv_bias!r} not in {QKV_BIASES}",
            ),
            (self.cls_token or self.posemb != "clip", "posemb 'clip' needs cls_token"),
            (self.cls_token or self.pool_type != "cls", "pool_type 'cls' needs cls_token"),
            (self.posemb != "axial3" or self.width % 3 == 0, "axial3 needs width % 3 == 0"),
            (
                self.select_layer is None or -self.depth - 1 <= self.select_layer <= self.depth,
                f"select_layer {self.select_layer} outside [-{self.depth + 1}, {self.depth}]",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"ViTConfig: {message}")

    @property
    def patch(self) -> tuple[int, int, int]:
        """(pd, ph, pw)."""
        return (self.frame_patch_size, *_pair(self.patch_size))

    @property
    def grid(self) -> tuple[int, int, int]:
        """Patches (h, w, d) the position embedding covers."""
        (height, width), (pd, ph, pw) = _pair(self.image_size), self.patch
        return (
            grid_size(height, ph, "image height"),
            grid_size(width, pw, "image width"),
            grid_size(self.frames, pd, "frames"),
        )

    @property
    def run_layers(self) -> int:
        """Blocks run: all, or up to ``select_layer``."""
        return self.depth if self.select_layer is None else self.select_layer % (self.depth + 1)


class AxialPosEmb(nnx.Module):
    """Concatenated learned row / column / depth embeddings of dim/3 features each.

    A grid of n smaller than a table of N takes entries ``(arange(n)+1)*(N//n)-1`` (RadFM's
    strided subsample; floor division, so a grid that does not divide the table ends
    before its last entry); 2D grids use depth entry 0 (RP3D-v1).
    """

    def __init__(self, dim: int, grid: tuple[int, int, int], *, rngs: nnx.Rngs):
        init = nnx.initializers.uniform(1.0)

        def table(n):
            return nnx.Param(init(rngs.params(), (n, dim // 3)), out_sharding=(None, "embed"))

        self.row_embed, self.col_embed, self.dep_embed = (table(n) for n in grid)

    @staticmethod
    def _take(table: jax.Array, n: int) -> jax.Array:
        size = table.shape[0]
        if not 0 < n <= size:
            raise ValueError(f"AxialPosEmb: grid of {n} exceeds table of {size}")
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


class LearnedPosEmb(nnx.Module):
    """One learned (tokens, dim) table, N(0, 0.02) init: grid -> (tokens, dim). The grid
    must hold exactly ``tokens`` (minus ``extra``, e.g. CLIP's CLS) patches."""

    def __init__(self, dim: int, tokens: int, *, extra: int = 0, rngs: nnx.Rngs):
        self.extra = extra
        table = nnx.initializers.normal(0.02)(rngs.params(), (tokens, dim))
        self.embedding = nnx.Param(table, out_sharding=(None, "embed"))

    def __call__(self, grid: tuple[int, ...]) -> jax.Array:
        tokens = self.embedding.shape[0] - self.extra
        if math.prod(grid) != tokens:
            raise ValueError(f"LearnedPosEmb: patch grid {grid} is not the {tokens} of the table")
        return self.embedding[...]


def get_posemb(cfg: ViTConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """The position embedding ``cfg.posemb`` names, covering ``cfg.grid``."""
    if cfg.posemb == "axial3":
        return AxialPosEmb(cfg.width, cfg.grid, rngs=rngs)
    h, w, d = cfg.grid
    patches = h * w * (d if "3d" in cfg.inputs else 1)
    extra = int(cfg.posemb == "clip")
    return LearnedPosEmb(cfg.width, patches + extra, extra=extra, rngs=rngs)


class ViT(nnx.Module):
    """(B, D, H, W, C) volume or (B, H, W, C) image -> (B, T, width) tokens
    (``pool_type='none'``) or (B, width) (``'cls'``, ``'gap'``)."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)

        def patch_embed(patch):
            return PatchEmbed(
                patch,
                cfg.channels,
                cfg.width,
                norm=cfg.patch_norm,
                use_bias=cfg.patch_bias,
                dtype=dtype,
                rngs=rngs,
            )

        self.patch_embed_3d = patch_embed(cfg.patch) if "3d" in cfg.inputs else None
        self.patch_embed_2d = patch_embed(cfg.patch[1:]) if "2d" in cfg.inputs else None
        self.cls_token = (
            nnx.Param(
                jax.random.normal(rngs.params(), (cfg.width,)) * 0.02, out_sharding=("embed",)
            )
            if cfg.cls_token
            else None
        )
        self.pos_embed = get_posemb(cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.emb_dropout, rngs=rngs if cfg.emb_dropout else None)
        norm = functools.partial(layer_norm, eps=cfg.layer_norm_eps, dtype=dtype)
        self.pre_norm = norm(cfg.width, rngs=rngs) if cfg.pre_norm else None
        self.encoder = Encoder(
            cfg.width,
            layers=cfg.depth,
            final_norm=None,
            remat=cfg.remat,
            rngs=rngs,
            heads=cfg.num_heads,
            head_dim=cfg.head_dim,
            mlp_dim=cfg.mlp_dim,
            norm_first=True,
            norm=norm,
            activation=ACTIVATIONS[cfg.activation],
            dropout=cfg.dropout,
            qkv_bias=bool(cfg.qkv_bias),
            kernel_init=torch_linear_init,
            dtype=dtype,
        )
        if cfg.qkv_bias == "qv":  # the shared attention biases q, k and v alike: unbias k
            for layer in self.encoder.layers:
                key = layer.attn.key
                layer.attn.key = linear(
                    key.in_features,
                    key.out_features,
                    ("embed", "heads"),
                    use_bias=False,
                    init=torch_linear_init,
                    dtype=dtype,
                    rngs=rngs,
                )
        self.norm = norm(cfg.width, rngs=rngs) if cfg.final_norm else None

    def _patches(self, x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
        embed = {5: self.patch_embed_3d, 4: self.patch_embed_2d}.get(x.ndim)
        if embed is None:
            kinds = {"3d": "(B, D, H, W, C)", "2d": "(B, H, W, C)"}
            want = " or ".join(kinds[k] for k in self.cfg.inputs)
            raise ValueError(f"ViT: expected {want} input, got shape {x.shape}")
        return embed(x)

    def _with_cls(self, tokens: jax.Array) -> jax.Array:
        cls = jnp.broadcast_to(
            self.cls_token[...].astype(tokens.dtype), (tokens.shape[0], 1, tokens.shape[-1])
        )
        return jnp.concatenate([cls, tokens], axis=1)

    def embed(self, x: jax.Array) -> jax.Array:
        """Input -> (B, T, width) block inputs: patches, CLS, position, dropout, pre-norm."""
        tokens, grid = self._patches(x)
        clip = self.cfg.posemb == "clip"
        if self.cls_token is not None and clip:
            tokens = self._with_cls(tokens)
        tokens = tokens + self.pos_embed(grid).astype(tokens.dtype)
        if self.cls_token is not None and not clip:
            tokens = self._with_cls(tokens)
        tokens = self.dropout(tokens)
        if self.pre_norm is not None:
            tokens = self.pre_norm(tokens)
        return shard_act(tokens, ("act_batch", "act_length", "act_embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        tokens = self.encoder(self.embed(x), depth=cfg.run_layers)[0]
        if self.norm is not None and cfg.run_layers == cfg.depth:
            tokens = self.norm(tokens)
        if cfg.pool_type == "cls":
            return tokens[:, 0]
        if cfg.pool_type == "gap":
            return tokens[:, int(cfg.cls_token) :].mean(axis=1)
        return tokens
