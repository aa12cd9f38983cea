"""One image of AuxOL's stream, as ``main.py:predict_with_prompt`` processes it.

For an image and its ground-truth mask:

1. the objects to prompt (``prompts.objects``: 8-connected components, 16 px minimum);
2. per object, SAM's full-image logits from a box prompt (the component's box, optionally
   shifted) or a point prompt (its centroid, label 1), and the crop: the box, or for a point
   the grown box of the convex hull of SAM's prediction;
3. SAM alone: the sum of SAM's probabilities over the objects, > 0.5 (a point prompt's map is
   added TWICE, as the code does: once in the point branch, once after it);
4. feedback: every ``interval``-th image of a part, and with ``dice_gate < 1`` only when SAM
   alone's Dice is at most ``dice_gate`` (the clinician corrects poor outputs only); the
   rectified crop mask is the ground truth's crop, optionally dilated / eroded;
5. per crop, the online step (``learner``); then per crop the best alpha against the rectified
   mask is appended to the history and the fused output is formed (``fusion``);
6. the image's prediction: the union of the binarised fused crops.

The optional pseudo-label fallback (not in the code): an image without feedback puts SAM's
binarised crop into the queue as its label instead of replaying the queue.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol

import numpy as np

from radjax.metrics.segmentation import dice, hausdorff
from radjax.papers.auxol import crops, fusion, prompts

PROMPTS = ("box", "point")


class Segmenter(Protocol):
    """A promptable segmenter over one image at a time (SAM's ``SamPredictor``)."""

    def set_image(self, image: np.ndarray) -> None:
        """image: uint8 (H, W, 3) RGB."""

    def predict(
        self,
        *,
        box: tuple[int, int, int, int] | None = None,
        point: tuple[float, float] | None = None,
    ) -> np.ndarray:
        """One prompt (box x1, y1, x2, y2 or foreground point x, y) -> f32 (H, W) logits."""


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """How objects are prompted and corrected (defaults: run.sh)."""

    prompt: str = "box"
    interval: int = 1  # feedback on every interval-th image of a part
    dice_gate: float = 1.0  # < 1: feedback only when SAM alone's Dice <= dice_gate
    noise: float = 0.0  # rectified-mask noise: kernel = int(noise * min(h, w))
    noise_type: str = "both"
    prompt_noise: float = 0.0  # box shift as a fraction of the box's size
    alpha_max: float = 1.0
    alpha_step: float = 0.05
    alpha_num: int = 5
    four_channel: bool = True
    pseudo_label: bool = False
    point_counted_twice: bool = True  # the code's double sum of a point prompt's map

    def __post_init__(self):
        if self.prompt not in PROMPTS:
            raise ValueError(
                f"prompt {self.prompt!r} (config field online.prompt): one of {PROMPTS}"
            )
        if self.interval < 1:
            raise ValueError(f"online.interval must be >= 1, got {self.interval}")


@dataclasses.dataclass
class History:
    """The adaptive fusion's memory: every crop's best alpha and the alpha it was fused with
    (1 = SAM alone, the first ``alpha_num`` crops)."""

    best: list[float] = dataclasses.field(default_factory=list)
    used: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Crop:
    box: tuple[int, int, int, int]
    image: np.ndarray  # uint8 (h, w, 3)
    target: np.ndarray  # uint8 (h, w) {0, 1}: the rectified mask
    sam_logits: np.ndarray  # f32 (h, w)
    sam_binary: np.ndarray  # uint8 (h, w): SAM's probability > 0.5 (the U-Net's 4th channel)


def _crops(
    segmenter: Segmenter,
    image: np.ndarray,
    mask: np.ndarray,
    cfg: StreamConfig,
    rng: np.random.Generator,
) -> tuple[list[Crop], np.ndarray]:
    """Steps 1-3 -> (crops, SAM alone's summed probabilities (H, W))."""
    h, w = mask.shape
    segmenter.set_image(image)
    sam_sum = np.zeros((h, w), np.float32)
    found = []
    for obj in prompts.objects(mask):
        if cfg.prompt == "box":
            box = obj.box
            if cfg.prompt_noise > 0:
                box = prompts.shift_box(box, cfg.prompt_noise, (h, w), rng)
            logits = segmenter.predict(box=box)
            probs = fusion.sigmoid(logits)
        else:
            logits = segmenter.predict(point=obj.centroid)
            probs = fusion.sigmoid(logits)
            box = prompts.point_crop(probs)
            if cfg.point_counted_twice:
                sam_sum += probs
        sam_sum += probs
        x1, y1, x2, y2 = box
        target = mask[y1:y2, x1:x2]
        if cfg.noise > 0:
            target = prompts.noisy_mask(target, cfg.noise, cfg.noise_type, rng)
        crop = (slice(y1, y2), slice(x1, x2))
        sam_binary = (probs[crop] > 0.5).astype(np.uint8)
        found.append(Crop(box, image[crop], target, logits[crop], sam_binary))
    return found, sam_sum


def process_image(
    segmenter: Segmenter,
    learner_step,
    state,
    history: History,
    image: np.ndarray,
    mask: np.ndarray,
    index_in_part: int,
    cfg: StreamConfig,
    crop_size: int,
    rng: np.random.Generator,
) -> tuple[object, dict, np.ndarray, np.ndarray]:
    """One image through steps 1-6.

    Args:
      learner_step: ``learner.make_step(...)``; state: its ``LearnerState``.
      image: uint8 (H, W, 3); mask: uint8 (H, W) {0, 1} the ground truth.
      index_in_part: the image's position in its part (feedback every ``interval``-th).

    Returns:
      (state, row, sam_prediction, auxol_prediction): row holds the image's DSC / HD of SAM
      alone and with AuxOL, its object count, whether it had feedback, the per-object alphas,
      losses and update latencies (seconds); both predictions uint8 (H, W) {0, 1}.
    """
    found, sam_sum = _crops(segmenter, image, mask, cfg, rng)
    sam_alone = (sam_sum > 0.5).astype(np.uint8)
    feedback = index_in_part % cfg.interval == 0
    if cfg.dice_gate < 1:
        feedback = feedback and dice(sam_alone, mask) <= cfg.dice_gate
    aux_logits, losses, seconds = [], [], []
    for crop in found:
        x = crops.unet_input(crop.image, crop.sam_binary, crop_size, four_channel=cfg.four_channel)
        labelled = feedback or cfg.pseudo_label
        y = crops.unet_target(crop.target if feedback else crop.sam_binary, crop_size)
        start = time.perf_counter()
        state, logits, loss = learner_step(state, x, y[:, :, None], np.bool_(labelled))
        logits = np.asarray(logits)
        seconds.append(time.perf_counter() - start)
        losses.append(float(loss))
        aux_logits.append(crops.resize_logits(logits, crop.target.shape))
    grid = fusion.alpha_grid(cfg.alpha_max, cfg.alpha_step)
    fused_crops = []
    for crop, aux in zip(found, aux_logits, strict=True):
        best, _ = fusion.best_alpha(crop.sam_logits, aux, crop.target, grid)
        history.best.append(best)
        probs, used = fusion.fused(crop.sam_logits, aux, history.best, cfg.alpha_num)
        history.used.append(used)
        fused_crops.append(probs)
    auxol = fusion.merge_crops(mask.shape, [c.box for c in found], fused_crops)
    row = dict(
        objects=len(found),
        feedback=bool(feedback),
        dice_sam=float(dice(sam_alone, mask)),
        hd_sam=float(hausdorff(sam_alone, mask)),
        dice_auxol=float(dice(auxol, mask)),
        hd_auxol=float(hausdorff(auxol, mask)),
        alphas=history.used[len(history.used) - len(found) :],
        losses=losses,
        update_seconds=seconds,
    )
    return state, row, sam_alone, auxol
