"""SAM's image encoder (segment-anything ``modeling/image_encoder.py`` ``ImageEncoderViT``, a
ViTDet backbone), channels-last.

Input: pixels (B, H, W, 3), already normalised and padded to ``image_size`` (SAM's
``preprocess``; the original takes (B, 3, H, W)). Output: embeddings (B, H/p, W/p,
out_channels) (the original returns (B, out_channels, H/p, W/p)).

Forward, as the original: patch embedding (a p x p conv with stride p) -> + learned absolute
position embedding (1, H/p, W/p, width) -> ``depth`` pre-norm blocks -> neck (1x1 conv, no
bias -> LayerNorm2d -> 3x3 conv, padding 1, no bias -> LayerNorm2d).

A block is ``x + Attn(LN(x))``, ``x + MLP(LN(x))``. Blocks whose index is not in
``global_attn_indexes`` attend within non-overlapping ``window_size`` x ``window_size``
windows: the normalised map is zero-padded at the bottom / right to a multiple of the window
(SAM's 64 x 64 map with window 14 becomes 70 x 70), split into windows, attended and cropped
back. The padded zero tokens are not masked: they are keys and values of the windows they
fall in (as in the original). Global blocks attend over the whole map.

With ``use_rel_pos`` each attention adds decomposed relative positions (MViTv2) to its
scores: ``q·Rh[qh, kh]`` + ``q·Rw[qw, kw]`` from tables ``rel_pos_h``, ``rel_pos_w`` of
(2 size - 1, head_dim) (size = window, or the map for global blocks); the bias uses the
unscaled query. ``get_rel_pos`` follows the original including its interpolation when a
table's length is not ``2 max(q, k) - 1`` and its coordinate scaling when q and k sizes
differ; inside the encoder the tables always fit (its inputs are ``image_size``).

Parameters (named as the original's ``state_dict``): ``patch_embed/proj/{kernel, bias}``
(kernel (p, p, 3, width)), ``pos_embed`` (1, H/p, W/p, width),
``blocks/<i>/{norm1, attn/{qkv, proj, rel_pos_h, rel_pos_w}, norm2, mlp/{lin1, lin2}}``
(``qkv`` one fused Linear(width, 3 width), output ordered (q|k|v, head, head_dim)),
``neck/{conv1, norm1, conv2, norm2}`` (the original's ``neck.0`` .. ``neck.3``). Checkpoints:
``radjax.convert.sam_image_encoder``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from radjax.nn.attention import dot_product_attention
from radjax.nn.conv import conv_general_dilated
from radjax.nn.linear import linear, torch_linear_init
from radjax.nn.norms import layer_norm
from radjax.nn.remat import checkpointed
from radjax.nn.transformer import gelu_exact
from radjax.sharding import shard_act

NECK_EPS = 1e-6  # LayerNorm2d's default; the original's neck never passes another
_MAP_AXES = ("act_batch", "act_spatial", "act_spatial", "act_embed")


@dataclasses.dataclass(frozen=True)
class SamVisionConfig:
    """``ImageEncoderViT`` hyper-parameters (``build_sam.py`` passes the ones of
    ``vision_config``). ``window_size`` 0 = every block global."""

    image_size: int = 1024
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_channels: int = 256
    qkv_bias: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    eps: float = 1e-6  # the blocks' LayerNorms (build_sam's partial(nn.LayerNorm, eps=1e-6))
    dtype: str = "float32"  # compute dtype; parameters are f32
    remat: bool = False  # rematerialise each block in the backward pass

    def __post_init__(self):
        object.__setattr__(self, "global_attn_indexes", tuple(self.global_attn_indexes))
        checks = (
            (self.image_size % self.patch_size == 0, "image_size not a multiple of patch_size"),
            (self.width % self.num_heads == 0, "width not a multiple of num_heads"),
            (self.window_size >= 0, "window_size < 0"),
            (
                all(0 <= i < self.depth for i in self.global_attn_indexes),
                f"global_attn_indexes outside [0, {self.depth})",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SamVisionConfig: {message} ({self})")

    @property
    def grid(self) -> int:
        """Patches along each side of the (square) input."""
        return self.image_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return int(self.width * self.mlp_ratio)  # the original's int(dim * mlp_ratio)

    def block_window(self, i: int) -> int:
        """Window of block ``i``; 0 = global attention."""
        return 0 if i in self.global_attn_indexes else self.window_size


# build_sam.py: image 1024, patch 16, MLP ratio 4, out 256, window 14, rel pos, eps 1e-6.
_SIZES = {
    "vit_b": dict(width=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(width=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(width=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}
VISION_CONFIGS = tuple(_SIZES)


def vision_config(name: str, **overrides) -> SamVisionConfig:
    """The image encoder of ``build_sam_<name>`` (``'vit_b'`` also for MedSAM, ``'vit_l'``,
    ``'vit_h'`` = SAM's default); ``overrides`` set e.g. ``dtype``."""
    if name not in _SIZES:
        raise ValueError(f"vision_config: {name!r} not in {VISION_CONFIGS}")
    return SamVisionConfig(**(_SIZES[name] | overrides))


# ----------------------------------------------------------------------------- functions


def window_partition(x: jax.Array, window: int) -> tuple[jax.Array, tuple[int, int]]:
    """(B, H, W, C) -> ((B * nh * nw, window, window, C) windows, padded (Hp, Wp)); the map is
    zero-padded at the bottom / right to multiples of ``window``; windows row-major."""
    b, h, w, c = x.shape
    hp, wp = -(-h // window) * window, -(-w // window) * window
    x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: jax.Array, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> jax.Array:
    """Inverse of ``window_partition``: windows -> (B, H, W, C), the padding cropped."""
    (hp, wp), (h, w) = padded, size
    nh, nw = hp // window, wp // window
    x = windows.reshape(-1, nh, nw, window, window, windows.shape[-1]).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, hp, wp, windows.shape[-1])[:, :h, :w]


def _linear_resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of ``F.interpolate(mode='linear')`` (align_corners=False:
    source = (i + 0.5) * in / out - 0.5, clamped at 0; the right neighbour clamped at the end)."""
    src = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    left = np.floor(src).astype(np.int64)
    right = np.minimum(left + 1, size_in - 1)
    frac = src - left
    m = np.zeros((size_out, size_in))
    np.add.at(m, (np.arange(size_out), left), 1.0 - frac)
    np.add.at(m, (np.arange(size_out), right), frac)
    return m.astype(np.float32)


def get_rel_pos(q_size: int, k_size: int, rel_pos: jax.Array) -> jax.Array:
    """Relative position embeddings (q_size, k_size, C) for query / key positions along one
    axis, from a table (L, C) indexed by the (scaled) offset q - k + (k_size - 1).

    As the original: a table whose length L is not ``2 max(q, k) - 1`` is first resized to
    it by linear interpolation (torch ``F.interpolate``, align_corners=False); when q and k
    sizes differ, the shorter side's coordinates are scaled by the ratio and the offset
    truncated to an integer (computed in f32, as torch does).
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        resize = jnp.asarray(_linear_resize_matrix(rel_pos.shape[0], max_rel_dist))
        rel_pos = (resize @ rel_pos.astype(jnp.float32)).astype(rel_pos.dtype)
    q_scale, k_scale = np.float32(max(k_size / q_size, 1.0)), np.float32(max(q_size / k_size, 1.0))
    q_coords = np.arange(q_size, dtype=np.float32)[:, None] * q_scale
    k_coords = np.arange(k_size, dtype=np.float32)[None, :] * k_scale
    coords = (q_coords - k_coords) + np.float32(k_size - 1) * k_scale
    return rel_pos[coords.astype(np.int64)]


def decomposed_rel_pos(
    q: jax.Array, rel_pos_h: jax.Array, rel_pos_w: jax.Array, k_size: tuple[int, int]
) -> jax.Array:
    """The decomposed relative-position score bias (B, heads, qh*qw, kh*kw) f32 for
    unscaled queries q (B, qh, qw, heads, Dh): ``q·Rh[qh, kh] + q·Rw[qw, kw]``."""
    b, qh, qw, heads, _ = q.shape
    kh, kw = k_size
    rh = get_rel_pos(qh, kh, rel_pos_h).astype(q.dtype)
    rw = get_rel_pos(qw, kw, rel_pos_w).astype(q.dtype)
    rel_h = jnp.einsum("bhwnc,hkc->bnhwk", q, rh, preferred_element_type=jnp.float32)
    rel_w = jnp.einsum("bhwnc,wkc->bnhwk", q, rw, preferred_element_type=jnp.float32)
    bias = rel_h[..., :, None] + rel_w[..., None, :]
    return bias.reshape(b, heads, qh * qw, kh * kw)


# ----------------------------------------------------------------------------- modules


class PatchEmbed(nnx.Module):
    """(B, H, W, C) -> (B, H/p, W/p, width): a p x p conv with stride p (``proj``)."""

    def __init__(self, patch: int, channels: int, width: int, *, dtype=None, rngs: nnx.Rngs):
        self.proj = nnx.Conv(
            channels,
            width,
            (patch, patch),
            strides=patch,
            padding="VALID",
            dtype=dtype,
            kernel_init=torch_linear_init,
            conv_general_dilated=conv_general_dilated,
            kernel_metadata={"out_sharding": (None, None, "conv_in", "embed")},
            bias_metadata={"out_sharding": ("embed",)},
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


class Attention(nnx.Module):
    """Multi-head self-attention over a (B, h, w, dim) map, optionally with decomposed
    relative positions whose tables cover ``size`` (h, w): -> (B, h, w, dim)."""

    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        qkv_bias: bool,
        use_rel_pos: bool,
        size: tuple[int, int],
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = linear(
            dim,
            3 * dim,
            ("embed", "heads"),
            use_bias=qkv_bias,
            init=torch_linear_init,
            dtype=dtype,
            rngs=rngs,
        )
        self.proj = linear(
            dim, dim, ("heads", "embed"), init=torch_linear_init, dtype=dtype, rngs=rngs
        )
        if use_rel_pos:  # zero-initialised, as the original (rel_pos_zero_init=True)

            def table(n):
                return nnx.Param(jnp.zeros((2 * n - 1, self.head_dim)), out_sharding=(None, "kv"))

            self.rel_pos_h, self.rel_pos_w = table(size[0]), table(size[1])
        else:
            self.rel_pos_h = self.rel_pos_w = None

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, dim = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, self.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, L, heads, Dh)
        bias = None
        if self.rel_pos_h is not None:
            grid_q = q.reshape(b, h, w, self.heads, self.head_dim)
            bias = decomposed_rel_pos(grid_q, self.rel_pos_h[...], self.rel_pos_w[...], (h, w))
        out = dot_product_attention(q, k, v, bias=bias)[0]
        return self.proj(out.reshape(b, h, w, dim))


class MLPBlock(nnx.Module):
    """Linear(dim, mlp_dim) -> exact GELU -> Linear(mlp_dim, dim) (``common.MLPBlock``)."""

    def __init__(self, dim: int, mlp_dim: int, *, dtype=None, rngs: nnx.Rngs):
        self.lin1 = linear(
            dim, mlp_dim, ("embed", "mlp"), init=torch_linear_init, dtype=dtype, rngs=rngs
        )
        self.lin2 = linear(
            mlp_dim, dim, ("mlp", "embed"), init=torch_linear_init, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.lin2(gelu_exact(self.lin1(x)))


class Block(nnx.Module):
    """Pre-norm block over a (B, h, w, dim) map, windowed (``window`` > 0) or global."""

    def __init__(self, cfg: SamVisionConfig, *, window: int, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        self.window = window
        self.norm1 = layer_norm(cfg.width, eps=cfg.eps, dtype=dtype, rngs=rngs)
        self.attn = Attention(
            cfg.width,
            heads=cfg.num_heads,
            qkv_bias=cfg.qkv_bias,
            use_rel_pos=cfg.use_rel_pos,
            size=(window, window) if window else (cfg.grid, cfg.grid),
            dtype=dtype,
            rngs=rngs,
        )
        self.norm2 = layer_norm(cfg.width, eps=cfg.eps, dtype=dtype, rngs=rngs)
        self.mlp = MLPBlock(cfg.width, cfg.mlp_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.norm1(x)
        if self.window:
            size = h.shape[1:3]
            windows, padded = window_partition(h, self.window)
            h = window_unpartition(self.attn(windows), self.window, padded, size)
        else:
            h = self.attn(h)
        x = x + h
        return x + self.mlp(self.norm2(x))


class Neck(nnx.Module):
    """(B, h, w, width) -> (B, h, w, out): 1x1 conv -> LayerNorm2d -> 3x3 conv -> LayerNorm2d
    (convs bias-free; LayerNorm2d normalises the channels, eps 1e-6)."""

    def __init__(self, width: int, out: int, *, dtype=None, rngs: nnx.Rngs):
        def conv(cin, kernel):
            return nnx.Conv(
                cin,
                out,
                (kernel, kernel),
                padding=((kernel // 2, kernel // 2),) * 2,
                use_bias=False,
                dtype=dtype,
                kernel_init=torch_linear_init,
                conv_general_dilated=conv_general_dilated,
                kernel_metadata={"out_sharding": (None, None, "conv_in", "conv_out")},
                rngs=rngs,
            )

        self.conv1 = conv(width, 1)
        self.norm1 = layer_norm(out, eps=NECK_EPS, dtype=dtype, rngs=rngs)
        self.conv2 = conv(out, 3)
        self.norm2 = layer_norm(out, eps=NECK_EPS, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm2(self.conv2(self.norm1(self.conv1(x))))


class SamImageEncoder(nnx.Module):
    """pixels (B, image_size, image_size, 3), normalised and padded -> image embeddings
    (B, grid, grid, out_channels), grid = image_size / patch_size."""

    def __init__(self, cfg: SamVisionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        self.patch_embed = PatchEmbed(cfg.patch_size, 3, cfg.width, dtype=dtype, rngs=rngs)
        self.pos_embed = nnx.Param(
            jnp.zeros((1, cfg.grid, cfg.grid, cfg.width)), out_sharding=(None, None, None, "embed")
        )
        self.blocks = nnx.List(
            [Block(cfg, window=cfg.block_window(i), rngs=rngs) for i in range(cfg.depth)]
        )
        self.neck = Neck(cfg.width, cfg.out_channels, dtype=dtype, rngs=rngs)

    def embed(self, pixels: jax.Array) -> jax.Array:
        """pixels -> (B, grid, grid, width) block input: patch embedding + position."""
        cfg = self.cfg
        want = (cfg.image_size, cfg.image_size, 3)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != want:
            raise ValueError(
                f"SamImageEncoder: expected pixels (B, {', '.join(map(str, want))}) "
                f"(normalised, padded to image_size, channels-last), got {pixels.shape}"
            )
        x = self.patch_embed(pixels.astype(jnp.dtype(cfg.dtype)))
        return shard_act(x + self.pos_embed[...].astype(x.dtype), _MAP_AXES)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        x = self.embed(pixels)
        for block in self.blocks:
            x = checkpointed(block, x) if self.cfg.remat else block(x)
            x = shard_act(x, _MAP_AXES)
        return self.neck(x)
