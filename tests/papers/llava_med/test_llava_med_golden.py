"""radjax's LLaVA-Med image path against the ORIGINAL code's outputs
(tests/golden/make_llava_med_model_golden.py: v1.0 ``LlavaLlamaForCausalLM.forward`` and
v1.5 ``prepare_inputs_labels_for_multimodal``, a tiny random CLIP tower, the LLaMA layers
replaced by a causal mean), converted with ``radjax.papers.llava_med.convert``."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radjax.convert.clip import vit_config
from radjax.convert.torch_io import assign
from radjax.models.llama import DecoderConfig
from radjax.papers.llava_med import conversation as C
from radjax.papers.llava_med.convert import clip_params, from_llava_state_dict
from radjax.papers.llava_med.model import LlavaMed
from tests.parity import rel_err

GOLDEN = np.load(Path(__file__).parents[2] / "golden" / "data" / "llava_med_model.npz")
META = json.loads(str(GOLDEN["meta/config"]))
TOL = 1e-5


def _part(prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: GOLDEN[k] for k in GOLDEN.files if k.startswith(prefix)}


def _model(version: str) -> tuple[LlavaMed, dict]:
    g = f"v{version.replace('.', '')}/"
    sd = _part(g + "sd/")
    vocab = sd["model.embed_tokens.weight"].shape[0]
    llm = META["llm"]
    decoder = DecoderConfig(
        vocab_size=vocab,
        hidden_size=llm["hidden_size"],
        num_layers=llm["num_hidden_layers"],
        num_heads=llm["num_attention_heads"],
        num_kv_heads=None if version == "1.0" else 1,
        intermediate_size=llm["intermediate_size"],
        model_type="llama" if version == "1.0" else "mistral",
    )
    if version == "1.0":
        ids = dict(patch_id=int(GOLDEN[g + "meta/patch_id"]))
        ids.update(start_id=int(GOLDEN[g + "meta/start_id"]), end_id=int(GOLDEN[g + "meta/end_id"]))
    else:
        ids = dict(patch_id=C.IMAGE_TOKEN_INDEX)
    projector = "linear" if version == "1.0" else "mlp2x_gelu"
    model = nnx.eval_shape(
        lambda: LlavaMed(
            vit_config(META["clip"], select_layer=-2),
            decoder,
            projector=projector,
            rngs=nnx.Rngs(0),
            **ids,
        )
    )
    values = from_llava_state_dict(
        sd, decoder, projector=projector, start_id=ids.get("start_id"), end_id=ids.get("end_id")
    )
    values |= clip_params(_part(g + "clip/"))
    assign(model, values, strict=True)
    return model, values


def causal_mean(x):
    """The golden file's stand-in for the LLaMA layers (make_llava_med_model_golden.py)."""
    steps = jnp.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
    return jnp.cumsum(x, axis=1) / steps


def _nhwc(images):
    return jnp.asarray(np.transpose(images, (0, 2, 3, 1)))


@pytest.fixture(scope="module")
def v10():
    return _model("1.0")


def _v10_inputs():
    ids = jnp.asarray(GOLDEN["v10/in/input_ids"], jnp.int32)
    image_mask = (ids == int(GOLDEN["v10/meta/patch_id"])).any(axis=1, keepdims=True)
    return ids, _nhwc(GOLDEN["v10/in/images"]), image_mask


def _call(model, method: str, *args):
    """``model.<method>(*args)`` compiled (op-by-op eager NNX is slow on CPU)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state, *a: getattr(nnx.merge(graphdef, state), method)(*a))(state, *args)


def _v10_loss(model, ids, images, image_mask, labels):
    logits = causal_mean(model.embed(ids, images, image_mask)) @ model.lang_model.head_kernel()
    targets, valid = labels[:, 1:], labels[:, 1:] >= 0
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * valid) / jnp.sum(valid), logits


@pytest.fixture(scope="module")
def v10_out(v10):
    """The tower's features, the projected features, the spliced embeddings, the loss and
    the logits of the golden batch, in one compiled program."""
    model, _ = v10
    ids, images, image_mask = _v10_inputs()
    labels = jnp.asarray(GOLDEN["v10/in/labels"], jnp.int32)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state):
        m = nnx.merge(graphdef, state)
        loss, logits = _v10_loss(m, ids, images, image_mask, labels)
        return dict(
            features=m.vision(images),
            projected=m.image_features(images),
            embeds=m.embed(ids, images, image_mask),
            loss=loss,
            logits=logits,
        )

    return run(state)


def test_v10_tower_and_projector_features(v10_out):
    assert rel_err(v10_out["features"], GOLDEN["v10/mid/features"]) < TOL
    assert rel_err(v10_out["projected"], GOLDEN["v10/mid/projected"]) < TOL


def test_v10_splice_logits_and_loss(v10_out):
    """The 16 features land after <im_start>, the markers embed start / end, the text-only
    row keeps its token embeddings; lm_head and the mean CE as the original."""
    assert rel_err(v10_out["embeds"], GOLDEN["v10/out/inputs_embeds"]) < TOL
    assert rel_err(v10_out["logits"], GOLDEN["v10/out/logits"]) < TOL
    loss = float(v10_out["loss"])
    assert abs(loss - float(GOLDEN["v10/out/loss"])) < TOL * abs(loss)


def test_v10_stage1_gradients_reach_only_the_projector_and_the_markers(v10):
    """The original's detach trick (orig_embeds_params) gives embed_tokens a gradient on the
    <im_start> / <im_end> rows alone; radjax's image_markers get exactly those rows'."""
    model, _ = v10
    ids, images, image_mask = (x[:2] for x in _v10_inputs())
    labels = jnp.asarray(GOLDEN["v10/in/labels"][:2], jnp.int32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    trainable = {"projector", "image_markers"}
    train = nnx.State({k: v for k, v in params.items() if k in trainable})
    frozen = nnx.State({k: v for k, v in params.items() if k not in trainable})

    def loss(train):
        m = nnx.merge(graphdef, train, frozen, rest)
        return _v10_loss(m, ids, images, image_mask, labels)[0]

    value, grads = jax.jit(jax.value_and_grad(loss))(train)
    assert abs(float(value) - float(GOLDEN["v10/grad/loss"])) < TOL * float(value)
    table = GOLDEN["v10/grad/model.embed_tokens.weight"]
    start, end = int(GOLDEN["v10/meta/start_id"]), int(GOLDEN["v10/meta/end_id"])
    assert np.flatnonzero(np.abs(table).sum(axis=1)).tolist() == [start, end]
    assert rel_err(grads["image_markers"][...], table[[start, end]]) < TOL
    w = GOLDEN["v10/grad/model.mm_projector.weight"]
    assert rel_err(grads["projector"]["kernel"][...], w.T) < TOL
    assert (
        rel_err(grads["projector"]["bias"][...], GOLDEN["v10/grad/model.mm_projector.bias"]) < TOL
    )


def test_v10_markers_are_the_checkpoint_rows(v10):
    _, values = v10
    table = GOLDEN["v10/sd/model.embed_tokens.weight"]
    start, end = int(GOLDEN["v10/meta/start_id"]), int(GOLDEN["v10/meta/end_id"])
    np.testing.assert_array_equal(values["image_markers"], table[[start, end]])


def test_v15_prepare_inputs_labels_for_multimodal():
    """-200 -> the 16 projected features (mlp2x_gelu), labels IGNORE there, truncation to
    tokenizer_model_max_length, a text-only row with no image features."""
    model, _ = _model("1.5")
    ids_in = GOLDEN["v15/in/input_ids"]
    mask_in = GOLDEN["v15/in/attention_mask"]
    labels_in = GOLDEN["v15/in/labels"]
    length = int(GOLDEN["v15/meta/max_length"])
    n = 16
    rows = []
    for ids, mask, labels in zip(ids_in, mask_in, labels_in):
        e_ids, e_labels = C.expand_image(ids[mask], labels[mask], n)
        rows.append((e_ids[:length], e_labels[:length]))
    width = GOLDEN["v15/out/inputs_embeds"].shape[1]
    ids = np.zeros((3, width), np.int32)
    labels = np.full((3, width), -100, np.int32)
    valid = np.zeros((3, width), bool)
    for i, (e_ids, e_labels) in enumerate(rows):
        ids[i, : len(e_ids)], labels[i, : len(e_ids)], valid[i, : len(e_ids)] = e_ids, e_labels, 1
    np.testing.assert_array_equal(labels, GOLDEN["v15/out/labels"])
    np.testing.assert_array_equal(valid, GOLDEN["v15/out/attention_mask"])
    image_mask = (ids == C.IMAGE_TOKEN_INDEX).any(axis=1, keepdims=True)
    embeds = _call(
        model, "embed", jnp.asarray(ids), _nhwc(GOLDEN["v15/in/images"]), jnp.asarray(image_mask)
    )
    want = GOLDEN["v15/out/inputs_embeds"]
    assert rel_err(np.asarray(embeds)[valid], want[valid]) < TOL
    assert np.all(want[~valid] == 0)  # the original pads with zero embeddings (masked)
