"""Loss and prediction shared by the vision-language models (``radjax.models.vlm``).

Batch fields: ``input_ids`` / ``attention_mask`` / ``labels`` (B, L) right-padded, labels
``IGNORE`` (-100) on prompt, padding and image positions (``radjax.data.prompt_answer``),
optional ``entity_mask`` (B, L) bool aligned with labels, ``images`` (whatever the model's
vision tower takes), optional ``image_mask`` (B, S) valid images, optional ``valid`` (B,)
bool rows (padding rows of a short batch count nowhere), and the model's
``conditioning_fields`` (e.g. Uni-Med's ``task``), passed to ``encode_images``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from radjax.models.vlm import ImageOutputs, VisionLanguageModel
from radjax.train import generation, lm_loss


def answer_weights(
    labels: jax.Array, entity_mask: jax.Array | None = None, entity_weight: float = 1.0
) -> jax.Array:
    """Per-label loss weights (B, L) f32: 0 where ``labels < 0`` (prompt, padding, image
    ids), ``entity_weight`` on ``entity_mask`` tokens (RadFM's medical entities), 1 on the
    other answer tokens."""
    answer = jnp.ones(labels.shape, jnp.float32)
    if entity_mask is not None:
        answer = jnp.where(entity_mask, jnp.float32(entity_weight), answer)
    return jnp.where(labels >= 0, answer, 0.0)


def lm_loss_fn(
    model: VisionLanguageModel,
    batch: dict[str, jax.Array],
    *,
    entity_weight: float = 1.0,
    num_chunks: int = 1,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``sum(w * CE) / sum(w)`` over next-token targets (``lm_loss.fused_head_cross_entropy``,
    logits never stored), w = ``answer_weights`` of the batch (0 on rows ``valid`` marks
    False), plus the image path's auxiliary loss when the model gives one.

    Returns (loss () f32, {``answer_tokens``: () f32, the number of weighted targets; with an
    auxiliary loss also ``ce`` and ``aux_loss``; the image path's ``metrics``}).
    """
    labels = batch["labels"]
    embeds, image_outputs = model.embed_with_outputs(
        batch["input_ids"], batch["images"], batch.get("image_mask"), **model.conditioning(batch)
    )
    hidden = model.lang_model.hidden_states(
        inputs_embeds=embeds, attention_mask=batch["attention_mask"]
    )
    weights = answer_weights(labels, batch.get("entity_mask"), entity_weight)
    if "valid" in batch:
        weights = jnp.where(batch["valid"][:, None], weights, 0.0)
    targets, weights = lm_loss.next_token_targets(jnp.maximum(labels, 0), weights)
    d = hidden.shape[-1]
    loss = lm_loss.fused_head_cross_entropy(
        hidden.reshape(-1, d),
        model.lang_model.head_kernel(),
        targets.reshape(-1),
        weights.reshape(-1),
        num_chunks=num_chunks,
    )
    metrics = {"answer_tokens": jnp.sum(weights > 0).astype(jnp.float32)}
    metrics.update(image_outputs.metrics or {})
    if image_outputs.aux_loss is not None:
        metrics.update(ce=loss, aux_loss=image_outputs.aux_loss)
        loss = loss + image_outputs.aux_loss
    return loss, metrics


def left_aligned_prompt(
    input_ids: jax.Array, prompt_length: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The first ``prompt_length[b]`` ids of each right-padded row, moved to the right end
    (left padding, as generation wants): (B, L), (B,) -> ids (B, L) (0 on the padding),
    mask (B, L) bool."""
    length = input_ids.shape[1]
    source = jnp.arange(length)[None, :] - (length - prompt_length)[:, None]
    mask = source >= 0
    ids = jnp.take_along_axis(input_ids, jnp.maximum(source, 0), axis=1)
    return jnp.where(mask, ids, 0), mask


def generate_answers(
    model: VisionLanguageModel,
    input_ids: jax.Array,
    images: jax.Array,
    prompt_length: jax.Array,
    *,
    image_mask: jax.Array | None = None,
    conditioning: Mapping[str, jax.Array] | None = None,
    with_image_outputs: bool = False,
    **generate_kwargs: Any,
) -> jax.Array | tuple[jax.Array, ImageOutputs]:
    """Continuations of each row's prompt (its first ``prompt_length`` ids, with its images)
    through ``generation.generate`` on spliced ``inputs_embeds``.

    Args:
      input_ids: (B, L) right-padded sequences (prompt + answer, as in training).
      images: the model's images; ``image_mask`` optional (B, S) valid images.
      prompt_length: (B,) int tokens of each prompt.
      conditioning: the model's ``conditioning_fields`` (``model.conditioning(batch)``).
      with_image_outputs: also return the ``ImageOutputs`` (e.g. per-row routing weights).
      generate_kwargs: ``max_new_tokens``, ``eos_token_id``, ``pad_token_id`` and optionally
        ``num_beams``, ``length_penalty``, ``do_sample`` ... (``generation.generate``).
    Returns:
      (B, max_new_tokens) int32 generated ids (greedy unless ``generate_kwargs`` say
      otherwise), with the ``ImageOutputs`` when ``with_image_outputs``.
    """
    prompt, mask = left_aligned_prompt(input_ids, prompt_length)
    embeds, image_outputs = model.embed_with_outputs(
        prompt, images, image_mask, **(conditioning or {})
    )
    tokens = generation.generate(
        *nnx.split(model.lang_model), inputs_embeds=embeds, attention_mask=mask, **generate_kwargs
    )
    return (tokens, image_outputs) if with_image_outputs else tokens
