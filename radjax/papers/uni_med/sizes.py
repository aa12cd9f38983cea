"""Uni-Med's module configurations from ``config.model`` (the data format needs the tower's and
the connector's sizes too, so they live apart from ``model``)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from radjax.convert import eva_vit
from radjax.models.llama import DecoderConfig
from radjax.models.vit import ViTConfig
from radjax.papers.uni_med.connector import ConnectorConfig


def vit_config(m: ml_collections.ConfigDict) -> ViTConfig:
    """``model.vision``: the original ``VisionTransformer`` arguments (``create_eva_vit_g``'s
    by default; ``norm_eps``), plus ``dtype`` / ``remat``."""
    args = dict(m.vision.to_dict())
    overrides = {k: args.pop(k) for k in ("dtype", "remat") if k in args}
    return eva_vit.vit_config(args, **overrides)


def connector_config(m: ml_collections.ConfigDict) -> ConnectorConfig:
    """``model.connector`` (ConnectorConfig fields; vision / LLM widths from the tower and the
    LLM)."""
    fields = dict(m.connector.to_dict())
    if "tasks" in fields:
        fields["tasks"] = tuple(fields["tasks"])
    dtype = fields.pop("dtype", None)
    return ConnectorConfig(
        vision_dim=int(m.vision.embed_dim),
        llm_dim=int(m.llm.hidden_size),
        dtype=jnp.dtype(dtype) if dtype else None,
        **fields,
    )


def decoder_config(m: ml_collections.ConfigDict) -> DecoderConfig:
    return DecoderConfig(**m.llm.to_dict())
