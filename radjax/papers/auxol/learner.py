"""AuxOL's online learner: the auxiliary U-Net, its AdamW state and the online batch, updated
once per object by ONE compiled program for the whole stream (``main.py:predict_with_prompt``).

The online batch is a fixed-shape padded buffer of ``queue_size`` crops with a validity mask,
so the update never changes shape. Per object (``step``):

* with feedback (a clinician's rectified mask): the crop and its mask enter the queue, the
  U-Net runs on the whole queue, the current crop's prediction is taken from THAT forward pass
  (before the update), and one AdamW step is taken on the queue's loss;
* without feedback: one AdamW step on the queue as it is (none while it is empty), then the
  UPDATED U-Net predicts the current crop.

Queue policies: ``'fifo'`` (the code: when full the oldest leaves, the newest is last) and
``'loss'`` (the paper's adaptive online batch as radjax reads it: when full, the entry the
U-Net fits best, i.e. with the lowest loss at its last forward pass, is replaced).
Both cases are one program without a conditional (the queue trained on is selected, the
step is skipped by selection when it is empty, and the updated net's forward of the current
crop is always computed, one image): the stream compiles ``step`` once. (A ``lax.cond`` over
the two cases took 6.7 s per object on XLA's CPU backend for the tiny U-Net, computing both
cases and selecting 0.45 s, this program 0.27 s; measured 2026-12-02.)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from radjax.papers.auxol.losses import structure_loss_per_row, valid_mean
from radjax.papers.auxol.unet import UNet, UNetConfig

QUEUE_POLICIES = ("fifo", "loss")


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """The online update's hyper-parameters (defaults: the released ``main.py`` / run.sh)."""

    queue_size: int = 32  # --nums
    crop_size: int = 128  # --crop_image_size
    lr: float = 5e-4
    weight_decay: float = 5e-4
    weighted_bce: bool = False  # True: the intended weighted BCE, not the code's mean BCE
    queue_policy: str = "fifo"

    def __post_init__(self):
        if self.queue_policy not in QUEUE_POLICIES:
            raise ValueError(
                f"queue_policy {self.queue_policy!r} (config field online.queue_policy): "
                f"one of {QUEUE_POLICIES}"
            )


class Queue(NamedTuple):
    """The online batch: ``images`` (Q, S, S, C) f32 in [0, 1], ``masks`` (Q, S, S, 1) f32 in
    {0, 1}, ``valid`` (Q,) bool, ``losses`` (Q,) f32 (each entry's loss at its last forward
    pass; +inf for empty slots so they fill first)."""

    images: jax.Array
    masks: jax.Array
    valid: jax.Array
    losses: jax.Array


class LearnerState(NamedTuple):
    params: nnx.State
    opt_state: optax.OptState
    queue: Queue
    steps: jax.Array  # () int32: AdamW steps taken


def empty_queue(size: int, crop: int, channels: int) -> Queue:
    return Queue(
        jnp.zeros((size, crop, crop, channels), jnp.float32),
        jnp.zeros((size, crop, crop, 1), jnp.float32),
        jnp.zeros((size,), bool),
        jnp.full((size,), jnp.inf, jnp.float32),
    )


def push(queue: Queue, image: jax.Array, mask: jax.Array, policy: str) -> tuple[Queue, jax.Array]:
    """Puts one crop (S, S, C) and mask (S, S, 1) into the queue -> (queue, its slot)."""
    if policy == "fifo":
        rolled = Queue(*(jnp.roll(a, -1, axis=0) for a in queue))
        slot = jnp.asarray(queue.valid.shape[0] - 1)
    else:  # 'loss': an empty slot first (+inf loss), else the entry with the lowest loss
        rolled = queue
        empty = ~queue.valid
        slot = jnp.where(empty.any(), jnp.argmax(empty), jnp.argmin(queue.losses))
    return (
        Queue(
            rolled.images.at[slot].set(image),
            rolled.masks.at[slot].set(mask),
            rolled.valid.at[slot].set(True),
            rolled.losses.at[slot].set(jnp.inf),
        ),
        slot,
    )


def optimizer(cfg: LearnerConfig) -> optax.GradientTransformation:
    """torch.optim.AdamW(lr, weight_decay) with torch's defaults (betas 0.9 / 0.999, eps 1e-8),
    decay on every parameter."""
    return optax.adamw(cfg.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=cfg.weight_decay)


def init_learner(
    unet_cfg: UNetConfig, cfg: LearnerConfig, seed: int
) -> tuple[nnx.GraphDef, LearnerState]:
    """A randomly initialised U-Net (the original starts from scratch), fresh AdamW moments,
    an empty queue."""
    graphdef, params = nnx.split(UNet(unet_cfg, rngs=nnx.Rngs(seed)), nnx.Param)
    return graphdef, LearnerState(
        params,
        optimizer(cfg).init(params),
        empty_queue(cfg.queue_size, cfg.crop_size, unet_cfg.in_channels),
        jnp.zeros((), jnp.int32),
    )


def make_step(graphdef: nnx.GraphDef, cfg: LearnerConfig):
    """-> jitted ``step(state, image, mask, feedback) -> (state, logits, loss)``.

    image: (S, S, C) f32 the resized crop; mask: (S, S, 1) f32 its rectified mask (read only
    with feedback); feedback: () bool. logits: (S, S) the U-Net's prediction of this crop
    (before the update with feedback, after it without); loss: () the queue's loss of the
    step taken (0 when none was).
    """
    tx = optimizer(cfg)

    def forward(params, images):
        return nnx.merge(graphdef, params, copy=True)(images)

    def loss_and_rows(params, queue):
        logits = forward(params, queue.images)
        rows = structure_loss_per_row(logits, queue.masks, weighted_bce=cfg.weighted_bce)
        return valid_mean(rows, queue.valid), (logits, rows)

    def update(state: LearnerState, queue: Queue):
        (loss, (logits, rows)), grads = jax.value_and_grad(loss_and_rows, has_aux=True)(
            state.params, queue
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        losses = jnp.where(queue.valid, rows, jnp.inf)
        return (
            LearnerState(params, opt_state, queue._replace(losses=losses), state.steps + 1),
            logits,
            loss,
        )

    @jax.jit
    def step(state: LearnerState, image, mask, feedback):
        pushed, slot = push(state.queue, image, mask, cfg.queue_policy)
        queue = jax.tree.map(lambda a, b: jnp.where(feedback, a, b), pushed, state.queue)
        trained, logits, loss = update(state, queue)
        has_queue = queue.valid.any()  # without feedback an empty queue takes no step
        state = jax.tree.map(lambda new, old: jnp.where(has_queue, new, old), trained, state)
        after = forward(state.params, image[None])[0, :, :, 0]
        return (
            state,
            jnp.where(feedback, logits[slot, :, :, 0], after),
            jnp.where(has_queue, loss, 0.0),
        )

    return step
