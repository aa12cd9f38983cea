"""The trainer contract for AuxOL's one trained model: SAM, pre-trained briefly on phantoms for
the tiny config (``configs/auxol.py:tiny,stage=sam``), so that the online stream has a weak
but real foundation model to improve on. The released AuxOL trains no SAM: the paper configs
import SAM / MedSAM checkpoints (``pretrained_params``).

The pre-training recipe is MedSAM's fine-tuning (bowang-lab/MedSAM ``train_one_gpu.py``): one
box prompt per object, the mask decoder's single-mask output at low resolution against the
object's mask resized to that grid, loss = Dice (MONAI ``DiceLoss(sigmoid, squared_pred,
reduction='mean')``) + BCE with logits.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from radjax.convert import sam as convert_sam
from radjax.models.sam.image_encoder import SamVisionConfig
from radjax.models.sam.sam import Sam, SamConfig, sam_config

DICE_SMOOTH = 1e-5  # MONAI DiceLoss' smooth_nr = smooth_dr


def sam_config_of(config: ml_collections.ConfigDict) -> SamConfig:
    """``model.sam``: a named SAM (vit_b / vit_l / vit_h / medsam) or the tiny one."""
    s = config.model.sam
    if s.variant != "tiny":
        return sam_config("vit_b" if s.variant == "medsam" else s.variant, dtype=s.dtype)
    vision = SamVisionConfig(
        image_size=s.image_size,
        patch_size=s.patch_size,
        width=s.width,
        depth=s.depth,
        num_heads=s.num_heads,
        out_channels=s.dim,
        window_size=s.window_size,
        global_attn_indexes=tuple(s.global_attn_indexes),
        dtype=s.dtype,
    )
    return sam_config(
        vision,
        dim=s.dim,
        mask_in_chans=s.mask_in_chans,
        decoder_heads=s.decoder_heads,
        decoder_mlp_dim=s.decoder_mlp_dim,
        iou_head_hidden_dim=s.iou_head_hidden_dim,
        dtype=s.dtype,
    )


def build_model(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> Sam:
    return Sam(sam_config_of(config), rngs=rngs)


def squared_dice_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
    """MONAI DiceLoss(sigmoid=True, squared_pred=True): per example and channel
    1 - (2 sum(p g) + s) / (sum(p^2) + sum(g^2) + s), averaged. (B, H, W, 1) -> ()."""
    p = jax.nn.sigmoid(logits.astype(jnp.float32))
    axes = (1, 2)
    inter = jnp.sum(p * target, axes)
    denom = jnp.sum(p * p, axes) + jnp.sum(target * target, axes)
    return jnp.mean(1.0 - (2.0 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH))


def loss_fn(
    model: Sam, batch: dict[str, jax.Array], config: ml_collections.ConfigDict
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Dice + BCE on the low-res logits. Metrics: ``dice_loss``, ``bce``."""
    del config
    logits, _ = model(batch["pixels"], batch["box"])
    dice = squared_dice_loss(logits, batch["target"])
    bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), batch["target"]))
    return dice + bce, {"dice_loss": dice, "bce": bce}


def predict_fn(
    model: Sam, batch: dict[str, jax.Array], config: ml_collections.ConfigDict
) -> dict[str, jax.Array]:
    """{'dice': (B,) hard Dice (logits > 0) of each object at low resolution, smoothing 1
    (AuxOL's calc_dice)}."""
    del config
    logits, _ = model(batch["pixels"], batch["box"])
    pred = (logits > 0).astype(jnp.float32)
    target = batch["target"]
    inter = jnp.sum(pred * target, (1, 2, 3))
    return {"dice": (2 * inter + 1) / (jnp.sum(pred, (1, 2, 3)) + jnp.sum(target, (1, 2, 3)) + 1)}


def evaluate(outputs: dict[str, np.ndarray], config: ml_collections.ConfigDict) -> dict[str, Any]:
    del config
    return {"dice": float(np.mean(outputs["dice"]))}


def pretrained_params(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The original SAM / MedSAM checkpoint (``model.sam.checkpoint``) as radjax parameters;
    none for the tiny SAM, which is trained."""
    if not config.model.sam.checkpoint:
        return {}
    return convert_sam.load_params(config.model.sam.checkpoint, sam_config_of(config))
