"""RadFM's vision path: 3D ViT -> Perceiver resampler -> Linear to the LLM width.

The original (``my_embedding_layer.MyEmbedding``) takes images as (B, S, C, H, W, D):
S images per sample, channels first and depth last. radjax takes them channels-last,
depth first: **(B, S, D, H, W, C)**. Every image goes through the ViT and is resampled
on its own to ``num_latents`` tokens, then ``fc`` maps them to the LLM width:
(B, S, D, H, W, C) -> (B, S, num_latents, llm_dim).

2D images are volumes of depth 1 here; they are repeated to depth ``frame_patch_size``
(``as_volume``), which is what the original's nearest interpolation of a
(3, H, W, 1) image to depth 4 does.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.models.perceiver import PerceiverResampler
from radjax.models.vit import ViT, ViTConfig
from radjax.nn.linear import linear, torch_linear_init


@dataclasses.dataclass(frozen=True)
class RadFMVisionConfig:
    """Sizes of RadFM's vision path; defaults are the released model's."""

    image_size: int = 512  # H = W covered by the ViT's row/column tables
    frames: int = 512  # D covered by its depth table
    patch_size: int = 32
    frame_patch_size: int = 4
    channels: int = 3
    dim: int = 768
    depth: int = 12
    heads: int = 8
    dim_head: int = 64
    mlp_dim: int = 2048
    dropout: float = 0.1  # ViT attention, MLP and residual dropout
    emb_dropout: float = 0.1  # ViT dropout after the position embedding
    num_latents: int = 32
    perceiver_depth: int = 6
    perceiver_heads: int = 8
    perceiver_dim_head: int = 64
    perceiver_ff_mult: int = 4
    llm_dim: int = 5120
    dtype: str = "float32"  # compute dtype; parameters are f32
    remat: bool = False  # rematerialise each ViT block in the backward pass

    @classmethod
    def tiny(cls, **overrides) -> RadFMVisionConfig:
        """A ~240k-parameter version for tests and CPU demos."""
        tiny = cls(
            image_size=64,
            frames=16,
            patch_size=16,
            frame_patch_size=4,
            dim=48,
            depth=2,
            heads=2,
            dim_head=16,
            mlp_dim=96,
            num_latents=8,
            perceiver_depth=2,
            perceiver_heads=2,
            perceiver_dim_head=16,
            llm_dim=64,
        )
        return dataclasses.replace(tiny, **overrides)


def vit_config(cfg: RadFMVisionConfig) -> ViTConfig:
    """RadFM's ViT (``vit_3d.py``) as a ``radjax.models.vit`` configuration: 3D patches
    between LayerNorms, axial position tables, bias-free q/k/v, exact GELU, no CLS, no
    final norm, all tokens out."""
    return ViTConfig(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        frames=cfg.frames,
        frame_patch_size=cfg.frame_patch_size,
        channels=cfg.channels,
        width=cfg.dim,
        depth=cfg.depth,
        num_heads=cfg.heads,
        head_dim=cfg.dim_head,
        mlp_dim=cfg.mlp_dim,
        inputs=("3d",),
        patch_norm=True,
        posemb="axial3",
        final_norm=False,
        qkv_bias=False,
        dropout=cfg.dropout,
        emb_dropout=cfg.emb_dropout,
        dtype=cfg.dtype,
        remat=cfg.remat,
    )


def as_volume(images: jax.Array, depth: int) -> jax.Array:
    """(..., 1, H, W, C) 2D images -> (..., depth, H, W, C) by repeating the slice."""
    if images.shape[-4] != 1:
        raise ValueError(
            f"as_volume: expected depth 1 (a 2D image), got images of shape {images.shape}"
        )
    return jnp.repeat(images, depth, axis=-4)


class RadFMVision(nnx.Module):
    """(B, S, D, H, W, C) images -> (B, S, num_latents, llm_dim) LLM input tokens."""

    def __init__(self, cfg: RadFMVisionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        self.vision_encoder = ViT(vit_config(cfg), rngs=rngs)
        self.perceiver = PerceiverResampler(
            cfg.dim,
            depth=cfg.perceiver_depth,
            num_latents=cfg.num_latents,
            heads=cfg.perceiver_heads,
            dim_head=cfg.perceiver_dim_head,
            ff_mult=cfg.perceiver_ff_mult,
            dtype=dtype,
            rngs=rngs,
        )
        self.fc = linear(
            cfg.dim, cfg.llm_dim, (None, "embed"), init=torch_linear_init, dtype=dtype, rngs=rngs
        )

    def check_images(self, shape: tuple[int, ...]) -> None:
        """Raises ValueError naming the axis and config field an images shape violates."""
        c = self.cfg
        if len(shape) != 6:
            raise ValueError(f"RadFMVision: images must be (B, S, D, H, W, C), got shape {shape}")
        depth, height, width, channels = shape[2:]
        if channels != c.channels:
            raise ValueError(
                f"RadFMVision: images have {channels} channels (last axis), "
                f"config channels is {c.channels}"
            )
        for name, size in (("height", height), ("width", width)):
            if size % c.patch_size or not 0 < size <= c.image_size:
                raise ValueError(
                    f"RadFMVision: image {name} {size} must be a multiple of "
                    f"patch_size {c.patch_size} and at most image_size "
                    f"{c.image_size}"
                )
        if depth != 1 and (depth % c.frame_patch_size or depth > c.frames):
            raise ValueError(
                f"RadFMVision: image depth {depth} (axis 2) must be 1 (2D) or a "
                f"multiple of frame_patch_size {c.frame_patch_size} and at most "
                f"frames {c.frames}"
            )

    def __call__(self, images: jax.Array) -> jax.Array:
        self.check_images(images.shape)
        if images.shape[2] == 1:
            images = as_volume(images, self.cfg.frame_patch_size)
        b, s = images.shape[:2]
        tokens = self.vision_encoder(images.reshape(b * s, *images.shape[2:]))
        latents = self.perceiver(tokens)
        return self.fc(latents).reshape(b, s, *latents.shape[1:-1], self.cfg.llm_dim)
