"""The LLaVA-Med model on the paper contract: the splice and the markers, the loss, stage 1
training only the projector and the markers, greedy prediction, the VQA evaluation, a
sharded forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.llava_med import get_config
from radjax.data.prompt_answer import IGNORE
from radjax.papers.llava_med import data as D
from radjax.papers.llava_med import model as M
from radjax.train import experiment, optim
from tests.sharded import assert_sharded_equals_unsharded, jit_build


def _config(root, arg="tiny"):
    config = get_config(arg)
    config.data.root = str(root)
    config.data.phantoms.update(num_train=16, num_test=4)
    experiment.prepare_config(config)
    return config


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava_med_model") / "data"
    _config(root)
    return root


def _batch(config, split, n=4):
    source = D.make_source(config.data, split)
    rows = [D.load_example(source[i], config.data, None) for i in range(n)]
    return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


@pytest.fixture(scope="module")
def setup(root):
    """The tiny v1.0 model (v1.5's splice is checked against the original in
    test_llava_med_golden.py, its examples in test_llava_med_data.py)."""
    config = _config(root)
    model = jit_build(lambda: M.build_model(config, rngs=nnx.Rngs(0)))
    return config, model


@pytest.fixture(scope="module")
def outputs(setup):
    """Embeddings, image features, token embeddings, logits and the loss of a training batch,
    in one compiled program."""
    config, model = setup
    batch = _batch(config, "train", 2)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state):
        m = nnx.merge(graphdef, state)
        ids, images, mask = batch["input_ids"], batch["images"], batch["image_mask"]
        return dict(
            embeds=m.embed(ids, images, mask),
            features=m.image_features(images),
            tokens=m.token_embeddings(ids),
            logits=m(ids, images, batch["attention_mask"], mask),
            loss=M.loss_fn(m, batch, config)[0],
        )

    return batch, run(state)


def test_features_fill_the_image_positions_in_order(setup, outputs):
    config, model = setup
    batch, out = outputs
    ids = np.asarray(batch["input_ids"])
    assert out["features"].shape == (2, 16, config.model.llm.hidden_size)
    for row in range(2):
        where = np.flatnonzero(ids[row] == config.model.patch_id)
        np.testing.assert_allclose(out["embeds"][row, where], out["features"][row], rtol=1e-6)
        others = np.setdiff1d(np.arange(ids.shape[1]), where)
        np.testing.assert_array_equal(out["embeds"][row, others], out["tokens"][row, others])
    # start / end embed the markers (mean-initialised), not their embed_tokens rows
    start = np.flatnonzero(ids[0] == config.model.start_id)[0]
    end = np.flatnonzero(ids[0] == config.model.end_id)[0]
    markers = model.image_markers[...]
    np.testing.assert_array_equal(out["tokens"][0, start], markers[0])
    np.testing.assert_array_equal(out["tokens"][0, end], markers[1])
    table = model.lang_model.embed_tokens[...]
    np.testing.assert_allclose(markers[0], table.mean(axis=0), rtol=1e-5, atol=1e-8)


def test_loss_is_the_mean_cross_entropy_over_the_labels(outputs):
    batch, out = outputs
    labels = np.asarray(batch["labels"])[:, 1:]
    logp = jax.nn.log_softmax(np.asarray(out["logits"], np.float64)[:, :-1], axis=-1)
    valid = labels != IGNORE
    nll = -np.take_along_axis(np.asarray(logp), np.maximum(labels, 0)[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(out["loss"]), nll[valid].mean(), rtol=1e-5)


def test_sharded_forward_equals_unsharded(setup):
    config, model = setup
    batch = _batch(config, "train", 2)
    assert_sharded_equals_unsharded(
        model, batch["input_ids"], batch["images"], batch["attention_mask"], batch["image_mask"]
    )


def _trainable_paths(config):
    abstract = nnx.eval_shape(lambda: M.build_model(config, rngs=nnx.Rngs(0)))
    is_trainable = optim.trainable_filter(config.optim.groups)
    return sorted(
        optim.path_str(p)
        for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))
        if is_trainable(p, v)
    )


def test_stage_groups_train_what_the_original_trains(root):
    s1 = _trainable_paths(_config(root, "tiny,stage=1"))
    assert s1 == ["image_markers", "projector/bias", "projector/kernel"]
    s1_v15 = _trainable_paths(_config(root, "tiny,stage=1,version=v1.5"))
    assert {p.split("/")[0] for p in s1_v15} == {"projector"}
    s2 = _trainable_paths(_config(root, "tiny"))
    assert not any(p.startswith("vision/") for p in s2)  # the tower stays frozen
    assert {"image_markers", "lang_model/embed_tokens", "lang_model/lm_head/kernel"} <= set(s2)
    assert "projector/kernel" in s2


def test_stage1_steps_move_only_the_projector_and_the_markers(root):
    config = _config(root, "tiny,stage=1")
    config.optim.warmup_ratio = 0.0
    config.optim.schedule = "constant"
    config.train.batch_size = 2
    exp = experiment.build(config)
    batch = _batch(config, "train", 2)
    with jax.set_mesh(exp.mesh):
        state = exp.init()
        trainable0 = jax.tree.map(np.asarray, state["trainable"])
        frozen0 = jax.tree.map(np.asarray, state["frozen"])
        losses = []
        for _ in range(4):
            state, metrics = exp.train_step(state, batch)
            losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    assert set(state["trainable"]) == {"projector", "image_markers"}
    for got, want in zip(jax.tree.leaves(state["frozen"]), jax.tree.leaves(frozen0)):
        np.testing.assert_array_equal(np.asarray(got), want)
    for got, want in zip(jax.tree.leaves(state["trainable"]), jax.tree.leaves(trainable0)):
        assert not np.array_equal(np.asarray(got), want)


def test_predict_fn_is_greedy_from_each_prompt(setup):
    config, model = setup
    config = config.copy_and_resolve_references()
    config.eval.max_new_tokens = steps = 3
    batch = _batch(config, "test", 2)
    graphdef, state = nnx.split(model)
    out = jax.jit(lambda s, b: M.predict_fn(nnx.merge(graphdef, s), b, config))(state, batch)
    assert out["generated"].shape == (2, steps)
    np.testing.assert_array_equal(out["answer_bytes"], batch["answer_bytes"])
    # the argmax of a full forward over each prompt + the tokens so far (right-padded rows)
    forward = jax.jit(lambda s, ids, mask: nnx.merge(graphdef, s)(ids, batch["images"], mask))
    ids = np.asarray(batch["input_ids"]).copy()
    n = np.asarray(batch["prompt_length"])
    for t in range(steps):
        mask = np.arange(ids.shape[1])[None] < (n + t)[:, None]
        logits = np.asarray(forward(state, jnp.asarray(ids), jnp.asarray(mask)))
        want = logits[np.arange(2), n + t - 1].argmax(-1)
        np.testing.assert_array_equal(np.asarray(out["generated"][:, t]), want)
        ids[np.arange(2), n + t] = want


def test_evaluate_scores_decoded_answers_and_the_baseline(root):
    config = _config(root)
    d = config.data
    tokenizer, _ = D.text_tools(d)
    source = D.make_source(d, "test")
    rows = [D.load_example(r, d, None) for r in source]
    answers = []
    for r in source:  # right for the CLOSED items, wrong for the OPEN ones
        answers.append("Yes." if r["answer"] == "yes" else "No." if r["answer"] == "no" else "zz")
    generated = np.full((len(rows), 12), config.model.pad_token_id, np.int32)
    for i, a in enumerate(answers):
        ids = tokenizer(" " + a + "\n### Human:")["input_ids"][1:][:12]
        generated[i, : len(ids)] = ids
    outputs = dict(
        generated=generated,
        **{k: np.stack([r[k] for r in rows]) for k in ("answer_type", "question_bytes")},
        answer_bytes=np.stack([r["answer_bytes"] for r in rows]),
    )
    out = M.evaluate(outputs, config)
    assert out["closed/accuracy"] == 1.0 and out["closed/accuracy_pr35"] == 1.0
    assert out["open/recall"] == 0.0
    assert out["closed/count"] + out["open/count"] == len(rows)
    assert 0.0 <= out["baseline/closed/accuracy"] <= 1.0 and "baseline/open/recall" in out
    assert out["samples/closed"][0]["prediction"] in ("Yes.", "No.")
    # per question kind (eval.question_kinds): every item of the phantoms has one
    kinds = [n for n, _ in config.eval.question_kinds]
    assert sum(out.get(f"{k}/count", 0) for k in kinds) == len(rows)
    assert out["lesion/accuracy"] == out["is_modality/accuracy"] == 1.0
    assert out["modality/accuracy"] == 0.0 and out["modality/distinct"] <= 1.0
    assert 0.0 <= out["baseline/lesion/accuracy"] <= 1.0
    assert out["closed/distinct"] == 2 / out["closed/count"]  # "Yes." and "No."
    assert {"question", "prediction", "reference", "row"} == set(out["samples/open"][0])
    # a sample's row is its position among the answer type's items: the demo's image hook
    from radjax.papers.llava_med.demo import sample_images

    for group, kind in (("closed", "CLOSED"), ("open", "OPEN")):
        items = [r for r in source if r["answer_type"] == kind]
        samples = out[f"samples/{group}"]
        assert len(samples) == min(len(items), config.eval.samples)
        for sample in samples:
            assert items[sample["row"]]["answer"] == sample["reference"]
            assert items[sample["row"]]["question"].endswith(sample["question"])
        images = sample_images(config, "test", group, [s["row"] for s in samples])
        assert [im.shape for im in images] == [(1, 32, 32)] * len(samples)


def test_build_model_needs_the_data_fields():
    config = get_config("tiny")
    with pytest.raises(ValueError, match="prepare_config"):
        M.build_model(config, rngs=nnx.Rngs(0))
