"""radjax.models.vlm and radjax.train.vlm_steps: the splice against a hand gather, count
checks, the model against the decoder on hand-spliced embeddings, greedy generation against
an argmax loop, the prompt-masked loss, and a sharded forward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (eager sharding off)
from radjax.models.llama import Decoder, DecoderConfig
from radjax.models.vlm import (
    ImageOutputs,
    ImageTokens,
    VisionLanguageModel,
    build_projector,
    splice_features,
)
from radjax.train import vlm_steps
from tests.sharded import assert_sharded_equals_unsharded

V, D, D_VIS, F = 32, 16, 12, 6  # vocab, LLM width, vision width, per-token image features
S, T = 2, 3  # images per row, tokens per image
IMAGE = V - 1  # the placeholder id
EOS = 2


def _model(projector="linear", seed=0) -> VisionLanguageModel:
    """Vision tower = a Linear on (B, S, T, F) "images"; a 2-layer LLaMA."""
    rngs = nnx.Rngs(seed)
    cfg = DecoderConfig(
        vocab_size=V,
        hidden_size=D,
        num_layers=2,
        num_heads=4,
        intermediate_size=32,
        init_std=0.5,
        tie_word_embeddings=False,
    )
    return VisionLanguageModel(
        vision=nnx.Linear(F, D_VIS, rngs=rngs),
        projector=build_projector(projector, D_VIS, D, rngs=rngs),
        lang_model=Decoder(cfg, rngs=rngs),
        image_tokens=ImageTokens(placeholder_id=IMAGE),
    )


def _batch(seed=0):
    """ids (2, 12): row 0 holds both images (6 placeholders) after a BOS, row 1 its first
    image only, right-padded from 10; images (2, S, T, F); prompt lengths (8, 6)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, V - 1, (2, 12)).astype(np.int32)
    ids[:, 0] = 1
    ids[0, 1:7] = IMAGE
    ids[1, 2:5] = IMAGE
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    images = rng.normal(size=(2, S, T, F)).astype(np.float32)
    image_mask = np.array([[True, True], [True, False]])
    return ids, mask, images, image_mask, np.array([8, 6], np.int32)


def _hand_splice(embeds, features, placeholders, index):
    out = np.array(embeds)
    for b, ell in zip(*np.nonzero(placeholders)):
        out[b, ell] = features[b, index[b, ell]]
    return out


def test_splice_in_order_equals_a_hand_gather():
    rng = np.random.default_rng(1)
    embeds = rng.normal(size=(2, 9, 4)).astype(np.float32)
    features = rng.normal(size=(2, 2, 2, 4)).astype(np.float32)  # (B, S, T, D)
    placeholders = np.zeros((2, 9), bool)
    placeholders[0, [1, 2, 5, 6]] = True  # both images
    placeholders[1, [3, 4]] = True  # image 1 only: image 0 is masked out
    feature_mask = np.array([[True, True], [False, True]])
    got = splice_features(
        jnp.asarray(embeds),
        jnp.asarray(features),
        jnp.asarray(placeholders),
        feature_mask=jnp.asarray(feature_mask),
    )
    flat = features.reshape(2, 4, 4)
    index = np.zeros((2, 9), int)
    index[0, [1, 2, 5, 6]] = [0, 1, 2, 3]
    index[1, [3, 4]] = [2, 3]  # the first valid features of row 1
    np.testing.assert_array_equal(np.asarray(got), _hand_splice(embeds, flat, placeholders, index))


def test_splice_indexed_takes_the_named_features_in_any_order():
    rng = np.random.default_rng(2)
    embeds = rng.normal(size=(1, 6, 4)).astype(np.float32)
    features = rng.normal(size=(1, 4, 4)).astype(np.float32)
    index = np.array([[0, 3, 2, 0, 1, 0]])
    placeholders = np.array([[False, True, True, False, True, False]])
    got = splice_features(
        jnp.asarray(embeds),
        jnp.asarray(features),
        jnp.asarray(placeholders),
        index=jnp.asarray(index),
    )
    np.testing.assert_array_equal(
        np.asarray(got), _hand_splice(embeds, features, placeholders, index)
    )


def test_splice_counts_must_agree_and_jit_masks_instead():
    embeds = jnp.ones((1, 5, 4))
    features = jnp.full((1, 1, 2, 4), 7.0)
    too_many = jnp.asarray([[False, True, True, True, False]])
    with pytest.raises(ValueError, match="row 0 has 3 image placeholder positions but 2 valid"):
        splice_features(embeds, features, too_many)
    with pytest.raises(ValueError, match="names image feature 5, which is missing"):
        splice_features(embeds, features, too_many, index=jnp.asarray([[0, 0, 1, 5, 0]]))
    with pytest.raises(ValueError, match="masked out"):
        splice_features(
            embeds, features, too_many, index=jnp.zeros((1, 5), int), feature_mask=jnp.zeros((1, 1))
        )
    got = jax.jit(splice_features)(embeds, features, too_many)  # the third keeps its embedding
    np.testing.assert_array_equal(np.asarray(got)[0, :, 0], [1, 7, 7, 1, 1])


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, ids, images, mask, image_mask):
    return nnx.merge(graphdef, state)(ids, images, mask, image_mask)


@pytest.mark.parametrize("projector", ["linear", "mlp2x_gelu"])
def test_model_equals_the_decoder_on_hand_spliced_embeddings(projector):
    model = _model(projector)
    ids, mask, images, image_mask, _ = _batch()
    features = np.asarray(model.projector(model.vision(jnp.asarray(images)))).reshape(2, S * T, D)
    placeholders = ids == IMAGE
    order = np.cumsum(placeholders, axis=1) - 1
    text = np.asarray(model.lang_model.embed(jnp.asarray(np.where(placeholders, 0, ids))))
    embeds = _hand_splice(text, features, placeholders, order)
    want = model.lang_model(inputs_embeds=jnp.asarray(embeds), attention_mask=jnp.asarray(mask))
    got = model(jnp.asarray(ids), jnp.asarray(images), jnp.asarray(mask), jnp.asarray(image_mask))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def _argmax_loop(model, ids, images, image_mask, prompt_length, steps):
    """Row by row: whole forward passes of one jitted fixed-length program over the prompt
    and the tokens so far (right-padded; the decoder is causal, so the padding does not
    change the logits read at the last real position), appending the argmax token."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def logits(row, images, image_mask):
        m = nnx.merge(graphdef, state)
        return m.lang_model(inputs_embeds=m.embed(row, images, image_mask))[0]

    out = np.full((len(ids), steps), 0, np.int32)
    for b in range(len(ids)):
        row = np.zeros((1, int(prompt_length.max()) + steps), np.int32)
        row[0, : prompt_length[b]] = ids[b, : prompt_length[b]]
        for t in range(steps):
            last = prompt_length[b] + t - 1
            step_logits = logits(row, images[b : b + 1], image_mask[b : b + 1])
            token = int(np.argmax(np.asarray(step_logits)[last]))
            out[b, t] = token
            if token == EOS:
                break
            row[0, last + 1] = token
    return out


def test_greedy_generation_from_a_left_aligned_prompt_equals_an_argmax_loop():
    model = _model()
    ids, _, images, image_mask, prompt_length = _batch()
    got = vlm_steps.generate_answers(
        model,
        jnp.asarray(ids),
        jnp.asarray(images),
        jnp.asarray(prompt_length),
        max_new_tokens=6,
        eos_token_id=EOS,
        pad_token_id=0,
        image_mask=jnp.asarray(image_mask),
    )
    np.testing.assert_array_equal(
        np.asarray(got), _argmax_loop(model, ids, images, image_mask, prompt_length, 6)
    )


def test_loss_is_the_mean_over_answer_tokens_and_ignores_the_prompt():
    model = _model()
    ids, mask, images, image_mask, prompt_length = _batch()
    answer = (np.arange(12)[None] >= prompt_length[:, None]) & (mask == 1)
    labels = np.where(answer, ids, -100).astype(np.int32)
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "images": images,
        "image_mask": image_mask,
    }
    loss, aux = vlm_steps.lm_loss_fn(model, {k: jnp.asarray(v) for k, v in batch.items()})
    logits = np.asarray(_logits(*nnx.split(model), ids, images, mask, image_mask), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp[:, :-1], np.maximum(labels[:, 1:], 0)[..., None], -1)[..., 0]
    w = answer[:, 1:]
    np.testing.assert_allclose(float(loss), (nll * w).sum() / w.sum(), rtol=1e-5)
    assert float(aux["answer_tokens"]) == w.sum()
    # other prompt tokens (the images stay) leave the loss unchanged
    changed = ids.copy()
    changed[0, 7], changed[1, 5] = 3, 4
    batch = batch | {"input_ids": changed, "labels": np.where(answer, changed, -100)}
    other, _ = vlm_steps.lm_loss_fn(model, {k: jnp.asarray(v) for k, v in batch.items()})
    assert float(other) != float(loss)  # the prompt is read ...
    batch = batch | {"input_ids": ids, "labels": np.where(answer, ids, -7)}
    same, _ = vlm_steps.lm_loss_fn(model, {k: jnp.asarray(v) for k, v in batch.items()})
    assert float(same) == float(loss)  # ... but never a target


class _Scaled(VisionLanguageModel):
    """Features scaled by a per-row conditioning field; an auxiliary loss and metrics."""

    conditioning_fields = ("scale",)

    def encode_images(self, images, scale):
        features = self.image_features(images) * scale[:, None, None, None]
        return ImageOutputs(
            features,
            aux_loss=jnp.sum(scale) * 0.5,
            metrics={"mean_scale": jnp.mean(scale)},
            per_row={"scale": scale},
        )


def test_conditioning_reaches_the_features_and_the_aux_loss_joins_the_loss():
    base = _model()
    model = _Scaled(
        vision=base.vision,
        projector=base.projector,
        lang_model=base.lang_model,
        image_tokens=base.image_tokens,
    )
    ids, mask, images, image_mask, prompt_length = _batch()
    answer = (np.arange(12)[None] >= prompt_length[:, None]) & (mask == 1)
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": np.where(answer, ids, -100).astype(np.int32),
        "images": images,
        "image_mask": image_mask,
        "scale": np.array([1.0, 1.0], np.float32),
    }
    as_jnp = lambda b: {k: jnp.asarray(v) for k, v in b.items()}  # noqa: E731
    plain, plain_metrics = vlm_steps.lm_loss_fn(base, as_jnp(batch))
    loss, metrics = vlm_steps.lm_loss_fn(model, as_jnp(batch))
    np.testing.assert_allclose(float(metrics["ce"]), float(plain), rtol=1e-6)
    np.testing.assert_allclose(float(loss), float(plain) + 1.0, rtol=1e-6)  # aux = 0.5 * 2
    assert float(metrics["aux_loss"]) == 1.0 and float(metrics["mean_scale"]) == 1.0
    assert "ce" not in plain_metrics  # no auxiliary loss: the metrics stay as they were
    scaled, _ = vlm_steps.lm_loss_fn(model, as_jnp(batch | {"scale": np.array([2.0, 1.0])}))
    assert float(scaled) != float(loss) + 0.5  # the features moved, not just the aux loss
    # a padding row (valid False) counts nowhere: the loss is row 0's alone
    row0, _ = vlm_steps.lm_loss_fn(base, as_jnp({k: v[:1] for k, v in batch.items()}))
    masked, _ = vlm_steps.lm_loss_fn(base, as_jnp(batch | {"valid": np.array([True, False])}))
    np.testing.assert_allclose(float(masked), float(row0), rtol=1e-5)
    # generation passes the conditioning and returns the per-row outputs
    tokens, outputs = vlm_steps.generate_answers(
        model,
        jnp.asarray(ids),
        jnp.asarray(images),
        jnp.asarray(prompt_length),
        image_mask=jnp.asarray(image_mask),
        conditioning={"scale": jnp.asarray([1.0, 1.0])},
        with_image_outputs=True,
        max_new_tokens=3,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    plain_tokens = vlm_steps.generate_answers(
        base,
        jnp.asarray(ids),
        jnp.asarray(images),
        jnp.asarray(prompt_length),
        image_mask=jnp.asarray(image_mask),
        max_new_tokens=3,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    np.testing.assert_array_equal(tokens, plain_tokens)
    np.testing.assert_array_equal(outputs.per_row["scale"], [1.0, 1.0])
    with pytest.raises(TypeError, match="takes no conditioning"):
        base.embed(jnp.asarray(ids), jnp.asarray(images), scale=jnp.ones(2))


def test_answer_weights():
    labels = jnp.asarray([[-100, 5, 6, -100]])
    entity = jnp.asarray([[True, True, False, True]])
    np.testing.assert_array_equal(vlm_steps.answer_weights(labels, entity, 3.0), [[0, 3, 1, 0]])


def test_sharded_forward_equals_unsharded():
    ids, mask, images, image_mask, _ = _batch()
    run = assert_sharded_equals_unsharded(
        _model("mlp2x_gelu"), ids, images, mask, image_mask, atol=1e-5, atol_relative=True
    )
    assert not run.got.sharding.is_fully_replicated


def test_image_tokens_need_exactly_one_rule():
    with pytest.raises(ValueError, match="exactly one"):
        ImageTokens()
