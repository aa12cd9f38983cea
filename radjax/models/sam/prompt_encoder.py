"""SAM's prompt encoder (segment_anything/modeling/prompt_encoder.py), for any spatial rank.

Layouts (channels-last; the original is channel-first):

* spatial sizes (``image_embedding_size``, ``input_image_size``, mask and grid shapes) are in
  tensor axis order: (H, W) in 2D; in 3D the three axes of the volume as the image encoder
  lays them out.
* points (B, N, ndim) are in the original's coordinate order (x, y[, z]): coordinate 0 (x)
  runs along spatial axis 1 (W), coordinate 1 (y) along axis 0 (H), coordinate 2 (z) along
  axis 2 (SegVol's ``forward_with_coords`` divides x by size[1], y by size[0], z by size[2]).
  Coordinates are in input-image pixels (already resized to ``input_image_size``).
* labels (B, N) int: -1 = not a point (padding), 0 = background, 1 = foreground. As in the
  original ``_embed_points``, any other label (e.g. the 2 / 3 that SAM's ONNX wrapper uses
  for box corners given as points) gets the positional encoding only, no learned embedding.
* boxes (B, 2 * ndim): two corners, (x1, y1, x2, y2) in 2D, (x1, y1, z1, x2, y2, z2) in 3D.
* masks (B, *mask_size, 1) with mask_size = 4 * image_embedding_size (low-res mask logits).
* text_embedding (B, embed_dim): SegVol's text prompt, appended as the last sparse token.

Outputs: sparse embeddings (B, N', embed_dim) (points [+ padding point], box corners, text,
in that order) and dense embeddings (B, *image_embedding_size, embed_dim).

Quirks kept from the original: coordinates are shifted by +0.5 (pixel centres) before the
encoding, but the padding point appended when no box is given is (0, 0) unshifted (its
encoding is replaced by ``not_a_point_embed`` anyway); ``PositionEmbeddingRandom`` maps
[0, 1] coordinates to 2c - 1, multiplies by a fixed random Gaussian matrix (``scale * randn``,
a buffer, never trained; transformers makes it a parameter initialised N(0, vision width /
2)), then by 2 pi, and concatenates sin and cos. SegVol builds the mask downscaling with
``Conv2d`` / ``LayerNorm2d`` even in 3D, so its mask path cannot run; here the convolutions
have the rank of the grid, and ``mask_prompt=False`` builds none (SegVol never passes masks).

Parameters: ``pe_layer/gaussian_matrix`` (ndim, embed_dim // 2) (a ``PositionalFrequencies``
variable, not an ``nnx.Param``), ``point_embeddings`` (num_point_embeddings, embed_dim) (rows:
background, foreground, box corner 1, box corner 2), ``not_a_point_embed`` (embed_dim,),
``mask_downscaling/{conv1,norm1,conv2,norm2,conv3}``, ``no_mask_embed`` (embed_dim,).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from radjax.nn.conv import conv_general_dilated
from radjax.nn.linear import torch_linear_init
from radjax.nn.norms import layer_norm
from radjax.nn.transformer import gelu_exact
from radjax.sharding import shard_act

_normal = nnx.initializers.normal(1.0)  # nn.Embedding's N(0, 1)


def coordinate_axes(ndim: int) -> tuple[int, ...]:
    """The spatial axis each point coordinate runs along: (1, 0) for (x, y) on (H, W)
    grids, (1, 0, 2) for SegVol's (x, y, z)."""
    return (1, 0, *range(2, ndim))


@dataclasses.dataclass(frozen=True)
class PromptEncoderConfig:
    """``PromptEncoder(embed_dim, image_embedding_size, input_image_size, mask_in_chans)``.

    SAM / MedSAM: 256, (64, 64), (1024, 1024), 16. SegVol (M3D): ``ndim=3``, 768,
    roi / patch, roi, 16, ``mask_prompt=False``.
    """

    embed_dim: int = 256
    image_embedding_size: tuple[int, ...] = (64, 64)
    input_image_size: tuple[int, ...] = (1024, 1024)
    mask_in_chans: int = 16
    ndim: int = 2
    num_point_embeddings: int = 4  # background / foreground point + 2 box corners
    mask_prompt: bool = True  # build mask_downscaling (SegVol's cannot run in 3D)
    pe_scale: float = 1.0  # PositionEmbeddingRandom(scale=None) -> 1.0
    mask_norm_eps: float = 1e-6  # LayerNorm2d
    dtype: str = "float32"  # compute dtype of the mask path; parameters are f32

    def __post_init__(self):
        sizes = (self.image_embedding_size, self.input_image_size)
        if self.ndim not in (2, 3) or any(len(s) != self.ndim for s in sizes):
            raise ValueError(
                f"PromptEncoderConfig: ndim {self.ndim} (2 or 3) must match "
                f"image_embedding_size {self.image_embedding_size} and "
                f"input_image_size {self.input_image_size}"
            )
        if self.embed_dim % 2 or self.mask_in_chans % 4:
            raise ValueError(
                f"PromptEncoderConfig: embed_dim {self.embed_dim} must be even and "
                f"mask_in_chans {self.mask_in_chans} a multiple of 4"
            )

    @property
    def mask_input_size(self) -> tuple[int, ...]:
        return tuple(4 * s for s in self.image_embedding_size)


class PositionalFrequencies(nnx.Variable):
    """The fixed random Gaussian matrix of ``PositionEmbeddingRandom`` (a buffer in the
    original). Not an ``nnx.Param``: optimizers never see it."""


class PositionEmbeddingRandom(nnx.Module):
    """Random Fourier features of coordinates: (..., ndim) in [0, 1] -> (..., 2 * num_pos_feats)
    ``[sin(2 pi (2c - 1) G), cos(...)]``, G = ``gaussian_matrix`` (ndim, num_pos_feats)."""

    def __init__(self, ndim: int, num_pos_feats: int, *, scale: float = 1.0, rngs: nnx.Rngs):
        self.ndim = ndim
        matrix = scale * _normal(rngs.params(), (ndim, num_pos_feats))
        self.gaussian_matrix = PositionalFrequencies(matrix, out_sharding=(None, None))

    def encode(self, coords: jax.Array) -> jax.Array:
        """Coordinates normalised to [0, 1], (..., ndim) in (x, y[, z]) order -> (..., C) f32."""
        coords = 2 * coords.astype(jnp.float32) - 1
        # full f32 products: sin of the projections is sensitive to reduced-precision matmuls
        coords = jnp.einsum(
            "...i,ij->...j", coords, self.gaussian_matrix[...], precision=jax.lax.Precision.HIGHEST
        )
        coords = (2 * np.pi) * coords
        return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

    def dense(self, size: tuple[int, ...]) -> jax.Array:
        """The encoding of every cell centre of a grid of ``size`` (tensor axis order):
        (*size, C). Cell i along an axis of n cells sits at (i + 0.5) / n."""
        centres = [(jnp.arange(n, dtype=jnp.float32) + 0.5) / n for n in size]
        grids = jnp.meshgrid(*centres, indexing="ij")
        return self.encode(jnp.stack([grids[a] for a in coordinate_axes(len(size))], axis=-1))

    def with_coords(self, coords: jax.Array, image_size: tuple[int, ...]) -> jax.Array:
        """Pixel coordinates (..., ndim) in (x, y[, z]) order on an image of ``image_size``
        (tensor axis order) -> (..., C)."""
        extent = jnp.asarray([image_size[a] for a in coordinate_axes(len(image_size))])
        return self.encode(coords.astype(jnp.float32) / extent)


class MaskDownscaling(nnx.Module):
    """conv 2 s2 -> LayerNorm2d -> GELU -> conv 2 s2 -> LayerNorm2d -> GELU -> conv 1:
    (B, *4grid, 1) -> (B, *grid, embed_dim), channels-last, convs of the grid's rank."""

    def __init__(self, cfg: PromptEncoderConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        hidden = cfg.mask_in_chans
        conv = functools.partial(
            nnx.Conv,
            padding="VALID",
            dtype=dtype,
            kernel_init=torch_linear_init,  # torch Conv default (same fan-in rule)
            kernel_metadata={"out_sharding": (None,) * cfg.ndim + ("conv_in", "conv_out")},
            bias_metadata={"out_sharding": ("conv_out",)},
            conv_general_dilated=conv_general_dilated,
            rngs=rngs,
        )
        two = (2,) * cfg.ndim
        norm = functools.partial(layer_norm, eps=cfg.mask_norm_eps, dtype=dtype, rngs=rngs)
        self.conv1 = conv(1, hidden // 4, two, strides=two)
        self.norm1 = norm(hidden // 4)
        self.conv2 = conv(hidden // 4, hidden, two, strides=two)
        self.norm2 = norm(hidden)
        self.conv3 = conv(hidden, cfg.embed_dim, (1,) * cfg.ndim)

    def __call__(self, masks: jax.Array) -> jax.Array:
        x = gelu_exact(self.norm1(self.conv1(masks)))
        x = gelu_exact(self.norm2(self.conv2(x)))
        return self.conv3(x)


class PromptEncoder(nnx.Module):
    """Points, boxes, masks and text -> (sparse (B, N', C), dense (B, *grid, C)); see the
    module docstring for the layouts. Which prompts are given is decided at trace time."""

    def __init__(self, cfg: PromptEncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dim = cfg.embed_dim

        def table(*shape):
            return nnx.Param(
                _normal(rngs.params(), shape), out_sharding=(None,) * (len(shape) - 1) + ("embed",)
            )

        self.pe_layer = PositionEmbeddingRandom(cfg.ndim, dim // 2, scale=cfg.pe_scale, rngs=rngs)
        self.point_embeddings = table(cfg.num_point_embeddings, dim)
        self.not_a_point_embed = table(dim)
        self.mask_downscaling = MaskDownscaling(cfg, rngs=rngs) if cfg.mask_prompt else None
        self.no_mask_embed = table(dim)

    def dense_pe(self) -> jax.Array:
        """``get_dense_pe``: the point encoding of every image-embedding cell,
        (1, *image_embedding_size, embed_dim) f32."""
        return self.pe_layer.dense(self.cfg.image_embedding_size)[None]

    def _embed_points(self, points: jax.Array, labels: jax.Array, pad: bool) -> jax.Array:
        points = jnp.asarray(points, jnp.float32) + 0.5  # centre of the pixel
        labels = jnp.asarray(labels, jnp.int32)
        if pad:
            b = points.shape[0]
            points = jnp.concatenate([points, jnp.zeros((b, 1, self.cfg.ndim), points.dtype)], 1)
            labels = jnp.concatenate([labels, jnp.full((b, 1), -1, labels.dtype)], 1)
        embedding = self.pe_layer.with_coords(points, self.cfg.input_image_size)
        table = self.point_embeddings[...]
        labels = labels[..., None]
        embedding = jnp.where(labels == -1, self.not_a_point_embed[...], embedding)
        embedding = jnp.where(labels == 0, embedding + table[0], embedding)
        return jnp.where(labels == 1, embedding + table[1], embedding)

    def _embed_boxes(self, boxes: jax.Array) -> jax.Array:
        corners = jnp.asarray(boxes, jnp.float32).reshape(-1, 2, self.cfg.ndim) + 0.5
        embedding = self.pe_layer.with_coords(corners, self.cfg.input_image_size)
        return embedding + self.point_embeddings[2:4]

    def _check(self, name: str, x: jax.Array | None, shape: tuple[int | None, ...]) -> None:
        if x is not None and (
            x.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, x.shape))
        ):
            want = "(" + ", ".join("B" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"PromptEncoder: {name} must be {want}, got shape {x.shape}")

    def __call__(
        self,
        points: jax.Array | None = None,
        labels: jax.Array | None = None,
        boxes: jax.Array | None = None,
        masks: jax.Array | None = None,
        text_embedding: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        cfg = self.cfg
        if (points is None) != (labels is None):
            raise ValueError("PromptEncoder: points and labels go together")
        if masks is not None and self.mask_downscaling is None:
            raise ValueError("PromptEncoder: built with mask_prompt=False, but masks were given")
        self._check("points", points, (None, None, cfg.ndim))
        self._check("labels", labels, (None, None))
        self._check("boxes", boxes, (None, 2 * cfg.ndim))
        self._check("masks", masks, (None, *cfg.mask_input_size, 1))
        self._check("text_embedding", text_embedding, (None, cfg.embed_dim))
        given = [x for x in (points, boxes, masks, text_embedding) if x is not None]
        b = given[0].shape[0] if given else 1
        sparse = [jnp.zeros((b, 0, cfg.embed_dim), jnp.float32)]
        if points is not None:
            sparse.append(self._embed_points(points, labels, pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        if text_embedding is not None:
            sparse.append(text_embedding.astype(jnp.float32)[:, None])
        sparse = jnp.concatenate(sparse, axis=1)
        if masks is not None:
            dense = self.mask_downscaling(masks.astype(jnp.float32))
        else:
            dense = jnp.broadcast_to(
                self.no_mask_embed[...], (b, *cfg.image_embedding_size, cfg.embed_dim)
            )
        spatial = ("act_spatial",) * cfg.ndim
        return sparse, shard_act(dense, ("act_batch", *spatial, "act_embed"))
