"""SAM: image encoder + prompt encoder + mask decoder (segment_anything ``modeling/sam.py`` and
``build_sam.py``), channels-last.

``Sam.encode(pixels)`` runs the image encoder once per image (``SamPredictor.set_image``);
``Sam.decode(embeddings, ...)`` runs the prompt encoder and the mask decoder for a batch of
prompts on one image (``SamPredictor.predict_torch``: the embedding broadcast over the
prompts). Pre- and post-processing are in ``radjax.models.sam.processing``.

Configs: ``sam_config('vit_b' | 'vit_l' | 'vit_h')`` as ``build_sam.py`` builds them (MedSAM =
``vit_b``): prompt width 256, a 64 x 64 embedding grid for 1024 px inputs, mask channels 16,
a two-layer two-way transformer of width 256, 8 heads, MLP 2048, three multimask outputs and
an IoU head of depth 3 and width 256. ``sam_config(vision=..., dim=..., ...)`` builds smaller
ones (the tiny SAM of the tiny AuxOL config).
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from radjax.models.sam.image_encoder import SamImageEncoder, SamVisionConfig, vision_config
from radjax.models.sam.mask_decoder import MaskDecoder, MaskDecoderConfig
from radjax.models.sam.prompt_encoder import PromptEncoder, PromptEncoderConfig
from radjax.models.sam.two_way_transformer import TwoWayTransformerConfig


@dataclasses.dataclass(frozen=True)
class SamConfig:
    vision: SamVisionConfig
    prompt: PromptEncoderConfig
    decoder: MaskDecoderConfig

    @property
    def image_size(self) -> int:
        return self.vision.image_size

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's mask logits (4 x the embedding grid: 256 for SAM)."""
        return 4 * self.vision.grid


def sam_config(
    vision: str | SamVisionConfig = "vit_b",
    *,
    dim: int = 256,
    mask_in_chans: int = 16,
    decoder_depth: int = 2,
    decoder_heads: int = 8,
    decoder_mlp_dim: int = 2048,
    iou_head_hidden_dim: int = 256,
    dtype: str = "float32",
) -> SamConfig:
    """A SAM config; the defaults are ``build_sam.py``'s for the named image encoder."""
    if isinstance(vision, str):
        vision = vision_config(vision, out_channels=dim, dtype=dtype)
    if vision.out_channels != dim:
        raise ValueError(
            f"sam_config: the image encoder's out_channels {vision.out_channels} must be the "
            f"prompt width {dim}"
        )
    grid = (vision.grid, vision.grid)
    prompt = PromptEncoderConfig(
        embed_dim=dim,
        image_embedding_size=grid,
        input_image_size=(vision.image_size, vision.image_size),
        mask_in_chans=mask_in_chans,
        dtype=dtype,
    )
    transformer = TwoWayTransformerConfig(
        dim=dim, depth=decoder_depth, num_heads=decoder_heads, mlp_dim=decoder_mlp_dim, dtype=dtype
    )
    decoder = MaskDecoderConfig(
        transformer=transformer, iou_head_hidden_dim=iou_head_hidden_dim, dtype=dtype
    )
    return SamConfig(vision, prompt, decoder)


class Sam(nnx.Module):
    """Parameters: ``image_encoder/...``, ``prompt_encoder/...``, ``mask_decoder/...`` (the
    original's top-level module names)."""

    def __init__(self, cfg: SamConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.image_encoder = SamImageEncoder(cfg.vision, rngs=rngs)
        self.prompt_encoder = PromptEncoder(cfg.prompt, rngs=rngs)
        self.mask_decoder = MaskDecoder(cfg.decoder, rngs=rngs)

    def encode(self, pixels: jax.Array) -> jax.Array:
        """Normalised, padded pixels (B, S, S, 3) -> embeddings (B, g, g, dim)."""
        return self.image_encoder(pixels)

    def decode(
        self,
        embeddings: jax.Array,
        *,
        points: jax.Array | None = None,
        labels: jax.Array | None = None,
        boxes: jax.Array | None = None,
        masks: jax.Array | None = None,
        multimask_output: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """Prompts on the resized image's pixel frame (``processing.scale_coords``) ->
        (low-res mask logits (B, 4g, 4g, M), IoU predictions (B, M)); M = 3 with
        ``multimask_output``, else 1. embeddings: (1 or B, g, g, dim)."""
        sparse, dense = self.prompt_encoder(points=points, labels=labels, boxes=boxes, masks=masks)
        return self.mask_decoder(
            embeddings,
            self.prompt_encoder.dense_pe(),
            sparse,
            dense,
            multimask_output=multimask_output,
        )

    def __call__(self, pixels: jax.Array, boxes: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One box prompt per image: pixels (B, S, S, 3), boxes (B, 4) -> (low-res logits
        (B, 4g, 4g, 1), IoU (B, 1)); what SAM fine-tuning recipes (MedSAM) train."""
        embeddings = self.encode(pixels)
        sparse, dense = self.prompt_encoder(boxes=boxes)
        return self.mask_decoder(
            embeddings, self.prompt_encoder.dense_pe(), sparse, dense, multimask_output=False
        )
