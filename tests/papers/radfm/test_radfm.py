"""radjax.papers.radfm.model: the whole released model (converted state dict) against the original's
one-hot embedding + transformers LLaMA, the entity-weighted loss, prompts for generation, and
bad images."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (eager sharding off)
from radjax.convert.torch_io import assign
from radjax.models.llama import DecoderConfig
from radjax.papers.radfm import convert as convert
from radjax.papers.radfm import model as radfm
from radjax.papers.radfm.vision import RadFMVisionConfig
from radjax.train import vlm_steps
from tests.parity import rel_err
from tests.sharded import jit_build

VISION = RadFMVisionConfig.tiny(dropout=0.0, emb_dropout=0.0)
V = 40  # text vocabulary
LLAMA = {
    "vocab_size": V,
    "hidden_size": VISION.llm_dim,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "tie_word_embeddings": False,
}
T = VISION.num_latents  # tokens per image


@pytest.fixture(scope="module")
def pair(torch, transformers):
    """(torch vision embedding, transformers LLaMA, radjax RadFM) with the same weights."""
    from tests.references import radfm_torch as ref_lib

    torch.manual_seed(0)
    vision = ref_lib.VisionEmbedding(VISION).eval()
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).eval()
    sd = {f"embedding_layer.{k}": v for k, v in vision.state_dict().items()}
    sd |= {f"lang_model.{k}": v for k, v in llama.state_dict().items()}
    sd["embedding_layer.weight"] = sd["lang_model.model.embed_tokens.weight"]
    sd = {k: v.detach().numpy() for k, v in sd.items()}
    decoder_cfg = DecoderConfig.from_hf_config(llama.config.to_dict())
    model = radfm.RadFM(VISION, decoder_cfg, rngs=nnx.Rngs(0))
    assign(model, convert.from_radfm_state_dict(sd, decoder_cfg), strict=True)
    model.eval()
    return vision, llama, model


@pytest.fixture(scope="module")
def radjax_model():
    """The same configuration, randomly initialised by radjax (no torch needed)."""
    decoder_cfg = DecoderConfig.from_hf_config(dict(model_type="llama", **LLAMA))
    model = jit_build(lambda: radfm.RadFM(VISION, decoder_cfg, rngs=nnx.Rngs(0)))
    model.eval()
    return model


def _sample(seed=0):
    """ids (2, 16) with an image block in each row (row 1 uses its second image slot),
    right-padded; images (2, 2, D=4, 64, 64, 3)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, V, (2, 16)).astype(np.int32)
    block = lambda n: [V] + [V + 2 + n * T + j for j in range(T)] + [V + 1]  # noqa: E731
    ids[0, 1 : 1 + T + 2] = block(0)
    ids[0, 12:16] = rng.integers(3, V, 4)
    ids[1, 3 : 3 + T + 2] = block(1)
    mask = np.ones_like(ids)
    mask[1, 14:] = 0
    images = rng.random((2, 2, 4, 64, 64, 3)).astype(np.float32)
    return ids, mask, images


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, ids, images, mask):
    return nnx.merge(graphdef, state)(ids, images, mask)


def test_logits_match_the_original_one_hot_embedding_and_llama(torch, pair):
    vision, llama, model = pair
    ids, mask, images = _sample()
    with torch.no_grad():
        visual = vision(torch.from_numpy(images).permute(0, 1, 5, 3, 4, 2))  # (B, S, T, D)
        tables = torch.cat(
            [
                llama.model.embed_tokens.weight[None].expand(2, -1, -1),
                vision.figure_token_weight[None].expand(2, -1, -1),
                visual.flatten(1, 2),
            ],
            dim=1,
        )  # one table per sample
        one_hot = torch.nn.functional.one_hot(torch.from_numpy(ids).long(), tables.shape[1]).float()
        want = llama(
            inputs_embeds=one_hot @ tables, attention_mask=torch.from_numpy(mask).long()
        ).logits.numpy()
    got = np.asarray(_logits(*nnx.split(model), ids, images, mask))
    real = mask.astype(bool)
    err = rel_err(got[real], want[real])
    assert err < 1e-5, err


@pytest.mark.parametrize("entity_weight", [3.0, 1.0])  # paper, released code (plain CE)
def test_loss_is_the_weighted_mean_over_answer_tokens(radjax_model, entity_weight):
    model = radjax_model
    ids, mask, images = _sample(1)
    labels = np.where(np.arange(16) >= 12, ids, -100).astype(np.int32)
    labels[(mask == 0) | (labels >= V)] = -100  # as the original's labels
    entities = np.zeros_like(labels, bool)
    entities[0, 13] = True  # an entity token
    weights = np.where(labels >= 0, np.where(entities, entity_weight, 1.0), 0.0)
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "entity_mask": entities,
        "images": images,
    }
    config = ml_collections.ConfigDict({"model": {}, "loss": {"entity_weight": entity_weight}})
    loss, aux = radfm.loss_fn(model, {k: jnp.asarray(v) for k, v in batch.items()}, config)
    logits = np.asarray(_logits(*nnx.split(model), ids, images, mask), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp[:, :-1], np.maximum(labels[:, 1:], 0)[..., None], -1)[..., 0]
    w = weights[:, 1:]
    np.testing.assert_allclose(float(loss), (nll * w).sum() / w.sum(), rtol=1e-5)
    assert float(aux["answer_tokens"]) == (w > 0).sum()


def test_left_aligned_prompt_moves_each_question_to_the_right_end():
    ids = jnp.asarray([[1, 5, 6, 7, 9, 2], [1, 8, 9, 2, 0, 0]])
    prompt, mask = vlm_steps.left_aligned_prompt(ids, jnp.asarray([3, 2]))
    np.testing.assert_array_equal(np.asarray(prompt), [[0, 0, 0, 1, 5, 6], [0, 0, 0, 0, 1, 8]])
    np.testing.assert_array_equal(np.asarray(mask), [[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]])


def test_predict_fn_is_greedy_from_each_question_with_its_images(radjax_model):
    model = radjax_model
    ids, _, images = _sample(2)
    question_length = np.array([12, 14], np.int32)  # each row's image block + some text
    eos, steps = 5, 4
    config = ml_collections.ConfigDict(
        {"model": {"eos_token_id": eos, "pad_token_id": 0}, "eval": {"max_new_tokens": steps}}
    )
    batch = {"input_ids": ids, "images": images, "question_length": question_length}
    batch |= {"labels": ids, "task": np.zeros(2, np.int32)}
    got = radfm.predict_fn(model, {k: jnp.asarray(v) for k, v in batch.items()}, config)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda row, image: nnx.merge(graphdef, state)(row, image)[0])
    want = np.zeros((2, steps), np.int32)
    for b in range(2):  # whole forward passes over the ids so far, one row at a time
        # right-padded to one length (the LLM is causal: padding leaves earlier logits alone)
        row = np.zeros((1, int(question_length.max()) + steps), np.int32)
        row[0, : question_length[b]] = ids[b, : question_length[b]]
        for t in range(steps):
            last = question_length[b] + t - 1
            token = int(np.argmax(np.asarray(forward(row, images[b : b + 1]))[last]))
            want[b, t] = token
            if token == eos:
                break
            row[0, last + 1] = token
    np.testing.assert_array_equal(np.asarray(got["generated"]), want)


@pytest.mark.parametrize(
    "shape, field", [((1, 1, 4, 64, 64, 1), "channels"), ((1, 1, 6, 64, 64, 3), "depth")]
)
def test_images_the_model_cannot_take_are_named(radjax_model, shape, field):
    model = radjax_model
    with pytest.raises(ValueError, match=field):
        model(jnp.zeros((1, 4), jnp.int32), jnp.zeros(shape))


def test_vision_and_llm_widths_must_agree():
    with pytest.raises(ValueError, match="llm_dim 64 != LLaMA hidden_size 32"):
        radfm.RadFM(
            VISION,
            DecoderConfig(
                vocab_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=8
            ),
            rngs=nnx.Rngs(0),
        )
