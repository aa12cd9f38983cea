"""A whole SAM checkpoint -> ``radjax.models.sam.sam.Sam`` parameters.

Reads the original segment-anything / MedSAM state dict (``image_encoder.*``,
``prompt_encoder.*``, ``mask_decoder.*``: ``sam_vit_{b,l,h}_*.pth``, ``medsam_vit_b.pth``)
or transformers' ``SamModel`` (``vision_encoder.*`` and the same two decoder prefixes, a
``.safetensors`` / ``.bin`` file or a model folder). The image encoder's keys go through
``sam_image_encoder`` (which first checks that the checkpoint is the config's SAM size and
names the first key that is not), the prompt encoder's and mask decoder's through
``sam_decoder``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from radjax.convert import sam_decoder, sam_image_encoder
from radjax.convert.torch_io import load_state_dict
from radjax.models.sam.sam import SamConfig


def is_transformers(sd: Mapping[str, np.ndarray]) -> bool:
    return any(k.startswith("vision_encoder.") for k in sd)


def sam_params(sd: Mapping[str, np.ndarray], cfg: SamConfig) -> dict[str, np.ndarray]:
    """State dict -> ``{'/'-joined Sam path: array}`` (every variable of ``Sam(cfg)``)."""
    sam_image_encoder.check_vision_config(sd, cfg.vision)
    encoder = sam_image_encoder.from_sam_image_encoder(sd)
    decoder = (sam_decoder.from_transformers if is_transformers(sd) else sam_decoder.from_original)(
        sd
    )
    return {f"image_encoder/{k}": v for k, v in encoder.items()} | decoder


def load_params(path: str | os.PathLike, cfg: SamConfig) -> dict[str, np.ndarray]:
    """``sam_params`` of the checkpoint at ``path``."""
    return sam_params(load_state_dict(path), cfg)
