"""SAM's mask decoder (segment_anything/modeling/mask_decoder.py), for any spatial rank.

image_embeddings (Bi, *grid, dim), image_pe (1, *grid, dim) (``PromptEncoder.dense_pe``),
sparse prompt embeddings (B, N, dim), dense prompt embeddings (B, *grid, dim), all
channels-last -> low-resolution mask logits (B, *4grid, M) (masks last, channels-last; the
original returns (B, M, *4grid)) and IoU predictions (B, M); M = ``num_multimask_outputs``
with ``multimask_output`` (mask tokens 1..), else 1 (mask token 0).

Steps, as the original's ``predict_masks``: tokens = [iou_token, mask_tokens (M + 1), sparse];
src = image embedding per prompt row + dense embedding (SAM ``repeat_interleave``s one
image's embedding over the B prompts: Bi = 1 here; SegVol passes one embedding per row,
Bi = B); the two-way transformer; the image tokens are upscaled 4x (ConvTranspose 2 s2 ->
LayerNorm2d -> GELU -> ConvTranspose 2 s2 -> GELU, to dim // 8 channels); each mask token
goes through its own 3-layer hypernetwork MLP and its dot product with the upscaled
features is that mask's logits; the IoU token goes through ``iou_prediction_head``.

SegVol (M3D) variants, as config fields: ``upscale_norm='joint'`` is its
``nn.LayerNorm((dim // 4, *2grid))`` (one mean / variance over channels and positions, an
elementwise affine of shape (*2grid, dim // 4) here, eps 1e-5) instead of LayerNorm2d;
``text_dim`` builds ``text_align`` (its ``txt_align_upscaled_embedding``, Linear(text_dim,
dim // 8)), and a text embedding (B, text_dim) adds its dot product with the upscaled
features to every mask.

Parameters: ``iou_token`` (dim,), ``mask_tokens`` (M + 1, dim), ``transformer/...``
(``two_way_transformer``), ``output_upscaling/{conv1,norm,conv2}`` (``nnx.ConvTranspose``
with ``transpose_kernel=True``: kernels (*k, out, in), torch's (in, out, *k) moved axes, no
flip), ``output_hypernetworks_mlps/<i>/layers/<j>``, ``iou_prediction_head/layers/<j>``,
``text_align``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.models.sam.two_way_transformer import TwoWayTransformer, TwoWayTransformerConfig
from radjax.nn.linear import linear, torch_linear_init
from radjax.nn.norms import layer_norm
from radjax.nn.transformer import gelu_exact
from radjax.sharding import shard_act

UPSCALE_NORMS = ("channels", "joint")


@dataclasses.dataclass(frozen=True)
class MaskDecoderConfig:
    """``MaskDecoder(transformer_dim, transformer, num_multimask_outputs, iou_head_depth,
    iou_head_hidden_dim)``; the width is ``transformer.dim``. SAM / MedSAM: 3, 3, 256 with a
    ``TwoWayTransformer(2, 256, 8, 2048)``. SegVol: ``ndim=3``, width 768,
    ``upscale_norm='joint'``, ``image_embedding_size`` = roi / patch, ``text_dim=768``."""

    transformer: TwoWayTransformerConfig = TwoWayTransformerConfig()
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    ndim: int = 2
    upscale_norm: str = "channels"  # 'channels' (LayerNorm2d, SAM) | 'joint' (SegVol)
    image_embedding_size: tuple[int, ...] | None = None  # the grid; 'joint' needs it
    text_dim: int | None = None  # SegVol's text alignment; None = none
    dtype: str = "float32"  # compute dtype outside the transformer; parameters are f32

    def __post_init__(self):
        checks = (
            (self.ndim in (2, 3), f"ndim {self.ndim} not 2 or 3"),
            (self.upscale_norm in UPSCALE_NORMS, f"upscale_norm {self.upscale_norm!r}"),
            (self.dim % 8 == 0, f"width {self.dim} not a multiple of 8"),
            (
                self.upscale_norm != "joint" or len(self.image_embedding_size or ()) == self.ndim,
                f"upscale_norm 'joint' needs the {self.ndim}-D image_embedding_size",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"MaskDecoderConfig: {message}")

    @property
    def dim(self) -> int:
        return self.transformer.dim

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1


class JointLayerNorm(nnx.Module):
    """``nn.LayerNorm(shape)`` over every non-batch axis at once (channels-last: ``shape`` =
    (*spatial, C)), elementwise scale and bias of that shape; statistics in f32."""

    def __init__(self, shape: tuple[int, ...], *, eps: float = 1e-5):
        axes = (None,) * (len(shape) - 1) + ("norm",)
        self.eps = eps
        self.scale = nnx.Param(jnp.ones(shape, jnp.float32), out_sharding=axes)
        self.bias = nnx.Param(jnp.zeros(shape, jnp.float32), out_sharding=axes)

    def __call__(self, x: jax.Array) -> jax.Array:
        axes = tuple(range(1, x.ndim))
        x32 = x.astype(jnp.float32)
        mean = x32.mean(axes, keepdims=True)
        var = jnp.square(x32 - mean).mean(axes, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class OutputUpscaling(nnx.Module):
    """(B, *grid, dim) -> (B, *4grid, dim // 8): ConvTranspose 2 s2 -> norm -> GELU ->
    ConvTranspose 2 s2 -> GELU."""

    def __init__(self, cfg: MaskDecoderConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        two = (2,) * cfg.ndim
        conv = functools.partial(
            nnx.ConvTranspose,
            kernel_size=two,
            strides=two,
            padding="VALID",
            transpose_kernel=True,  # torch's ConvTranspose: kernels (*k, out, in), no flip
            dtype=dtype,
            kernel_init=torch_linear_init,
            kernel_metadata={"out_sharding": (None,) * cfg.ndim + ("conv_out", "conv_in")},
            bias_metadata={"out_sharding": ("conv_out",)},
            rngs=rngs,
        )
        dim = cfg.dim
        self.conv1 = conv(dim, dim // 4)
        if cfg.upscale_norm == "joint":
            up = tuple(2 * s for s in cfg.image_embedding_size)
            self.norm = JointLayerNorm((*up, dim // 4))
        else:
            self.norm = layer_norm(dim // 4, eps=1e-6, dtype=dtype, rngs=rngs)  # LayerNorm2d
        self.conv2 = conv(dim // 4, dim // 8)

    def __call__(self, x: jax.Array) -> jax.Array:
        return gelu_exact(self.conv2(gelu_exact(self.norm(self.conv1(x)))))


class HeadMLP(nnx.Module):
    """MaskFormer's ``MLP``: ``num_layers`` Linear layers, ReLU between them:
    (..., in_dim) -> (..., out_dim)."""

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, *, dtype, rngs: nnx.Rngs
    ):
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nnx.List(
            [
                linear(
                    d_in,
                    d_out,
                    ("embed" if j == 0 else "mlp", "mlp" if j < num_layers - 1 else None),
                    init=torch_linear_init,
                    dtype=dtype,
                    rngs=rngs,
                )
                for j, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:]))
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


class MaskDecoder(nnx.Module):
    """Prompt and image embeddings -> (mask logits (B, *4grid, M), IoU (B, M)); see the
    module docstring."""

    def __init__(self, cfg: MaskDecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dim, dtype = cfg.dim, jnp.dtype(cfg.dtype)
        normal = nnx.initializers.normal(1.0)  # nn.Embedding's N(0, 1)
        self.iou_token = nnx.Param(normal(rngs.params(), (dim,)), out_sharding=("embed",))
        self.mask_tokens = nnx.Param(
            normal(rngs.params(), (cfg.num_mask_tokens, dim)), out_sharding=(None, "embed")
        )
        self.transformer = TwoWayTransformer(cfg.transformer, rngs=rngs)
        self.output_upscaling = OutputUpscaling(cfg, rngs=rngs)
        self.output_hypernetworks_mlps = nnx.List(
            [
                HeadMLP(dim, dim, dim // 8, 3, dtype=dtype, rngs=rngs)
                for _ in range(cfg.num_mask_tokens)
            ]
        )
        self.iou_prediction_head = HeadMLP(
            dim,
            cfg.iou_head_hidden_dim,
            cfg.num_mask_tokens,
            cfg.iou_head_depth,
            dtype=dtype,
            rngs=rngs,
        )
        self.text_align = (
            linear(
                cfg.text_dim,
                dim // 8,
                ("embed", None),
                init=torch_linear_init,
                dtype=dtype,
                rngs=rngs,
            )
            if cfg.text_dim is not None
            else None
        )

    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        *,
        multimask_output: bool,
        text_embedding: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        cfg = self.cfg
        b, _, dim = sparse_prompt_embeddings.shape
        grid = image_embeddings.shape[1:-1]
        if (
            image_embeddings.ndim != cfg.ndim + 2
            or image_embeddings.shape[0] not in (1, b)
            or image_embeddings.shape[-1] != dim
            or dense_prompt_embeddings.shape[1:] != image_embeddings.shape[1:]
        ):
            raise ValueError(
                f"MaskDecoder: image embeddings (1 or B, *grid, C) {image_embeddings.shape}, "
                f"sparse (B, N, C) {sparse_prompt_embeddings.shape} and dense (B, *grid, C) "
                f"{dense_prompt_embeddings.shape} do not fit ({cfg.ndim}-D grid)"
            )
        if text_embedding is not None and self.text_align is None:
            raise ValueError("MaskDecoder: a text embedding needs text_dim in the config")

        output_tokens = jnp.concatenate([self.iou_token[...][None], self.mask_tokens[...]], 0)
        output_tokens = jnp.broadcast_to(output_tokens, (b, *output_tokens.shape))
        tokens = jnp.concatenate([output_tokens, sparse_prompt_embeddings.astype(jnp.float32)], 1)
        src = image_embeddings + dense_prompt_embeddings
        src = jnp.broadcast_to(src, (b, *src.shape[1:]))
        pos_src = jnp.broadcast_to(image_pe, (b, *image_pe.shape[1:]))

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + cfg.num_mask_tokens]

        upscaled = self.output_upscaling(src.reshape(b, *grid, dim))
        upscaled = shard_act(upscaled, ("act_batch", *("act_spatial",) * cfg.ndim, None))
        hyper_in = jnp.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            axis=1,
        )
        masks = jnp.einsum("bmc,b...c->b...m", hyper_in, upscaled)
        if text_embedding is not None:
            text = self.text_align(text_embedding)
            masks = masks + jnp.einsum("bc,b...c->b...", text, upscaled)[..., None]
        iou_pred = self.iou_prediction_head(iou_token_out)

        keep = slice(1, None) if multimask_output else slice(0, 1)
        return masks[..., keep], iou_pred[:, keep]
