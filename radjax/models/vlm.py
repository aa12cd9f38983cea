"""A vision-language model: vision tower -> projector -> image features spliced into the token
embeddings of a decoder (RadFM, M3D-LaMed, LLaVA-Med, Uni-Med, RadGenome share this shape).

Parts (attribute names = parameter paths):
  ``vision``      any module mapping images to features (B, S, T, D_vis) (S images, T tokens
                  each) or (B, N, D_vis).
  ``projector``   any module on the last axis, D_vis -> D (``build_projector``: ``linear``,
                  ``mlp2x_gelu``), or None when the tower already ends at the LLM width.
  ``lang_model``  a ``radjax.models.llama.Decoder`` (``embed(ids)``, ``inputs_embeds``,
                  ``hidden_states``, ``head_kernel``).

Which token positions take image features is ``ImageTokens``: one placeholder id repeated at
every image position (LLaVA / M3D style; the i-th placeholder of a row takes the row's i-th
feature, as MaxText's ``multimodal_utils.merge_mm_embeddings``), or indexed ids (RadFM's
``<imageK>`` = ``first_indexed_id + K`` takes feature K, so images may appear in any order).
``splice_features`` is the one function that places the features.

Conditioning: a model whose image features depend on more than the images (Uni-Med's task
id routes its connector) names the batch fields it takes in ``conditioning_fields`` and
overrides ``encode_images(images, **conditioning)``, which returns ``ImageOutputs``: the
features plus an optional auxiliary loss (added to the training loss by
``radjax.train.vlm_steps.lm_loss_fn``), scalar metrics logged with it and per-row values
returned with predictions.

Counts: with concrete (non-traced) inputs ``splice_features`` raises ValueError when a row's
placeholders and its valid features disagree (in-order: the counts differ; indexed: a
placeholder names a missing or invalid feature). Under ``jax.jit`` it cannot raise; there a
placeholder without a feature keeps its token embedding and features without a placeholder
are dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from radjax.models.llama import Decoder
from radjax.sharding import shard_act

EMBED_AXES = ("act_batch", "act_length", "act_embed")


# ----------------------------------------------------------------------------- the splice


def _flat_features(features: jax.Array, feature_mask: jax.Array | None, dim: int):
    """(B, S, T, D) or (B, N, D) features, mask (B, S) / (B, N) / None -> (B, N, D), (B, N)."""
    if features.ndim not in (3, 4) or features.shape[-1] != dim:
        raise ValueError(
            f"splice_features: features must be (B, N, {dim}) or (B, S, T, {dim}), "
            f"got {features.shape}"
        )
    b = features.shape[0]
    flat = features.reshape(b, -1, dim)
    if feature_mask is None:
        return flat, jnp.ones(flat.shape[:2], jnp.bool_)
    per_image = flat.shape[1] // max(feature_mask.shape[1], 1)
    if feature_mask.shape[0] != b or per_image * feature_mask.shape[1] != flat.shape[1]:
        raise ValueError(
            f"splice_features: feature_mask {feature_mask.shape} does not divide "
            f"features {features.shape} into images"
        )
    return flat, jnp.repeat(feature_mask.astype(jnp.bool_), per_image, axis=1)


def _check_counts(placeholders, index, valid, in_order: bool) -> None:
    """Raises ValueError naming the first row whose placeholders and features disagree;
    does nothing on traced values (inside jit)."""
    try:
        placeholders, index, valid = (np.asarray(a) for a in (placeholders, index, valid))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    n = valid.shape[1]
    for row in range(placeholders.shape[0]):
        wanted, have = int(placeholders[row].sum()), int(valid[row].sum())
        if in_order and wanted != have:
            raise ValueError(
                f"splice_features: row {row} has {wanted} image placeholder positions "
                f"but {have} valid image features"
            )
        picked = index[row][placeholders[row]]
        bad = picked[(picked < 0) | (picked >= n)]
        bad = bad if len(bad) else picked[~valid[row][np.clip(picked, 0, n - 1)]]
        if len(bad):
            raise ValueError(
                f"splice_features: row {row} names image feature {int(bad[0])}, "
                f"which is missing (features 0..{n - 1}) or masked out"
            )


def splice_features(
    embeds: jax.Array,
    features: jax.Array,
    placeholders: jax.Array,
    *,
    index: jax.Array | None = None,
    feature_mask: jax.Array | None = None,
) -> jax.Array:
    """Token embeddings with image features at the placeholder positions.

    Args:
      embeds: (B, L, D) token embeddings, compute dtype.
      features: (B, N, D) or (B, S, T, D) image features (flattened image-major to N = S*T),
        cast to ``embeds.dtype``.
      placeholders: (B, L) bool, the positions that take an image feature.
      index: (B, L) int, the feature each placeholder takes (RadFM's indexed ids). None: the
        i-th placeholder of a row takes the row's i-th valid feature (MaxText's
        ``merge_mm_embeddings``).
      feature_mask: (B, N) or (B, S) bool, valid features (an (B, S) mask covers each image's
        T tokens); None = all valid. In order mode invalid features are skipped (valid ones
        packed first, in order, as MaxText's ``token_masks``).
    Returns:
      (B, L, D) in ``embeds.dtype``: ``features`` where a placeholder has its feature,
      ``embeds`` elsewhere.
    Raises:
      ValueError: bad shapes; with concrete inputs, placeholders and valid features that
        disagree (see the module docstring for the masking under jit).
    """
    b, length, d = embeds.shape
    if placeholders.shape != (b, length) or (index is not None and index.shape != (b, length)):
        raise ValueError(
            f"splice_features: placeholders {placeholders.shape} and index "
            f"{None if index is None else index.shape} must be (B, L) = {(b, length)}"
        )
    flat, valid = _flat_features(features, feature_mask, d)
    placeholders = placeholders.astype(jnp.bool_)
    in_order = index is None
    if in_order:
        order = jnp.argsort(~valid, axis=1, stable=True)  # valid features first, in order
        flat = jnp.take_along_axis(flat, order[..., None], axis=1)
        valid = jnp.take_along_axis(valid, order, axis=1)
        index = jnp.cumsum(placeholders, axis=1) - 1
    _check_counts(placeholders, index, valid, in_order)
    n = flat.shape[1]
    safe = jnp.clip(index, 0, n - 1)
    picked = jnp.take_along_axis(flat.astype(embeds.dtype), safe[..., None], axis=1)
    use = placeholders & (index >= 0) & (index < n) & jnp.take_along_axis(valid, safe, axis=1)
    return shard_act(jnp.where(use[..., None], picked, embeds), EMBED_AXES)


# ----------------------------------------------------------------------------- projectors


def linear_projector(in_dim: int, out_dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    """LLaVA's ``linear`` ``mm_projector``: (..., in_dim) -> (..., out_dim)."""
    return nnx.Linear(
        in_dim,
        out_dim,
        dtype=dtype,
        kernel_metadata={"out_sharding": (None, "embed")},
        bias_metadata={"out_sharding": ("embed",)},
        rngs=rngs,
    )


class Mlp2xGelu(nnx.Module):
    """LLaVA's ``mlp2x_gelu`` projector: Linear -> GELU (erf) -> Linear, (..., in) -> (..., out)."""

    def __init__(self, in_dim: int, out_dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(
            in_dim,
            out_dim,
            dtype=dtype,
            kernel_metadata={"out_sharding": (None, "mlp")},
            bias_metadata={"out_sharding": ("mlp",)},
            rngs=rngs,
        )
        self.fc2 = nnx.Linear(
            out_dim,
            out_dim,
            dtype=dtype,
            kernel_metadata={"out_sharding": ("mlp", "embed")},
            bias_metadata={"out_sharding": ("embed",)},
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


PROJECTORS = {"linear": linear_projector, "mlp2x_gelu": Mlp2xGelu}


def build_projector(kind: str, in_dim: int, out_dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    """LLaVA's ``mm_projector_type``: ``linear`` or ``mlp2x_gelu``, (..., in_dim) -> (..., out_dim)."""
    if kind not in PROJECTORS:
        raise ValueError(f"unknown projector {kind!r}; known: {sorted(PROJECTORS)}")
    return PROJECTORS[kind](in_dim, out_dim, dtype=dtype, rngs=rngs)


# ----------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class ImageTokens:
    """Which input ids are image positions: exactly one of

    ``placeholder_id``: every image position holds this id (it may lie outside the
      vocabulary, e.g. LLaVA's -200); features are taken in order.
    ``first_indexed_id``: ids >= it are image positions and ``id - first_indexed_id`` is
      the index of the feature they take (RadFM: V + 2).
    """

    placeholder_id: int | None = None
    first_indexed_id: int | None = None

    def __post_init__(self):
        if (self.placeholder_id is None) == (self.first_indexed_id is None):
            raise ValueError("ImageTokens: set exactly one of placeholder_id and first_indexed_id")

    def placeholders(self, input_ids: jax.Array) -> jax.Array:
        """(B, L) int -> (B, L) bool, the image positions."""
        if self.placeholder_id is not None:
            return input_ids == self.placeholder_id
        return input_ids >= self.first_indexed_id

    def index(self, input_ids: jax.Array) -> jax.Array | None:
        """(B, L) int -> (B, L) feature index per position, or None (in order)."""
        return None if self.first_indexed_id is None else input_ids - self.first_indexed_id


class ImageOutputs(NamedTuple):
    """What the image path gives the splice and the steps.

    ``features``: (B, S, T, D) or (B, N, D) LLM-width features, the decoder's compute dtype.
    ``aux_loss``: () f32 added to the training loss, or None (no auxiliary loss).
    ``metrics``: {name: () f32} logged with the loss.
    ``per_row``: {name: (B, ...)} returned with the predictions (e.g. routing weights).
    """

    features: jax.Array
    aux_loss: jax.Array | None = None
    metrics: Mapping[str, jax.Array] | None = None
    per_row: Mapping[str, jax.Array] | None = None


class VisionLanguageModel(nnx.Module):
    """Images + token ids (B, L) -> next-token logits (B, L, V) f32 (see the module docstring).

    Subclasses with extra learned token rows outside the decoder's vocabulary (RadFM's
    ``<image>``/``</image>``) override ``token_embeddings``; subclasses whose features are
    conditioned on batch fields set ``conditioning_fields`` and override ``encode_images``.
    """

    conditioning_fields: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        vision: nnx.Module,
        projector: nnx.Module | None,
        lang_model: Decoder,
        image_tokens: ImageTokens,
    ):
        self.vision = vision
        self.projector = projector
        self.lang_model = lang_model
        self.image_tokens = image_tokens

    def image_features(self, images: jax.Array) -> jax.Array:
        """Images (whatever ``vision`` takes) -> (B, S, T, D) or (B, N, D) LLM-width features
        in the decoder's compute dtype."""
        features = self.vision(images)
        if self.projector is not None:
            features = self.projector(features)
        return features.astype(self.lang_model.cfg.dtype)

    def encode_images(self, images: jax.Array, **conditioning: jax.Array) -> ImageOutputs:
        """Images and the ``conditioning_fields`` -> ``ImageOutputs`` (default: the
        unconditioned ``image_features``, no auxiliary outputs)."""
        if conditioning:
            raise TypeError(
                f"{type(self).__name__} takes no conditioning, got {sorted(conditioning)}"
            )
        return ImageOutputs(self.image_features(images))

    def conditioning(self, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        """The batch fields of ``conditioning_fields`` that the batch holds."""
        return {name: batch[name] for name in self.conditioning_fields if name in batch}

    def token_embeddings(self, input_ids: jax.Array) -> jax.Array:
        """(B, L) ids -> (B, L, D) decoder embeddings; image positions embed id 0 (replaced
        by the splice)."""
        return self.lang_model.embed(
            jnp.where(self.image_tokens.placeholders(input_ids), 0, input_ids)
        )

    def embed_with_outputs(
        self,
        input_ids: jax.Array,
        images: jax.Array,
        image_mask: jax.Array | None = None,
        **conditioning: jax.Array,
    ) -> tuple[jax.Array, ImageOutputs]:
        """(B, L) ids, images, optional (B, S) / (B, N) valid-feature mask, conditioning ->
        ((B, L, D) embeddings with the image features spliced in (``splice_features``),
        the ``ImageOutputs``)."""
        outputs = self.encode_images(images, **conditioning)
        embeds = splice_features(
            self.token_embeddings(input_ids),
            outputs.features,
            self.image_tokens.placeholders(input_ids),
            index=self.image_tokens.index(input_ids),
            feature_mask=image_mask,
        )
        return embeds, outputs

    def embed(
        self,
        input_ids: jax.Array,
        images: jax.Array,
        image_mask: jax.Array | None = None,
        **conditioning: jax.Array,
    ) -> jax.Array:
        """``embed_with_outputs`` without the outputs: (B, L, D) embeddings."""
        return self.embed_with_outputs(input_ids, images, image_mask, **conditioning)[0]

    def hidden_states(
        self,
        input_ids: jax.Array,
        images: jax.Array,
        attention_mask: jax.Array | None = None,
        image_mask: jax.Array | None = None,
        **conditioning: jax.Array,
    ) -> jax.Array:
        """Final-normed hidden states (B, L, D) for the fused head loss."""
        return self.lang_model.hidden_states(
            inputs_embeds=self.embed(input_ids, images, image_mask, **conditioning),
            attention_mask=attention_mask,
        )

    def __call__(
        self,
        input_ids: jax.Array,
        images: jax.Array,
        attention_mask: jax.Array | None = None,
        image_mask: jax.Array | None = None,
        **conditioning: jax.Array,
    ) -> jax.Array:
        """(B, L) ids, images, (B, L) attention mask, conditioning -> (B, L, V) f32 logits."""
        return self.lang_model(
            inputs_embeds=self.embed(input_ids, images, image_mask, **conditioning),
            attention_mask=attention_mask,
        )
