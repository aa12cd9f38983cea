"""RP3D-Diag paper module: shapes of every architecture, a jitted train step, the sharded
forward, knowledge enhancement wiring, evaluation, and the 3D ViT's patch order."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (disables eager sharding)
from configs import rp3d_diag as rp3d_config
from radjax.models import vit
from radjax.nn import patch_embed
from radjax.papers.rp3d_diag import model as M
from radjax.train import optim
from radjax.train import step as step_lib
from tests.sharded import assert_sharded_equals_unsharded

CLASSES, TEXT_DIM = 10, 12


def _config(arg="", encoder="resnet"):
    c = rp3d_config.get_config("tiny" + (f",{arg}" if arg else ""))
    c.model.num_classes = CLASSES
    c.model.v1.encoder = encoder
    return c


def _small(config):
    """A one-stage trunk and narrow MLPs: compiling a backward pass is the slow part here."""
    config.model.resnet.layers = (1,)
    config.model.slice_attn.mlp_dim = config.model.scan_fuse.mlp_dim = 64
    return config


def _embeddings(seed=0):
    e = np.random.default_rng(seed).normal(size=(CLASSES, TEXT_DIM)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _batch(config, b=2, seed=0):
    """A batch as the CONTRACT describes it; early fusion's last scan is padding."""
    r = np.random.default_rng(seed)
    n = config.data.n_image if config.model.fusion == "early" else 1
    d, size = config.model.depth, config.data.image_size
    marks = (np.arange(d) < r.integers(1, d + 1, (b, n, 1))).astype(np.float32)
    mods = r.integers(1, 16, (b, n)).astype(np.int32)
    keys = r.integers(0, d, (b, n)).astype(np.int32)
    if n > 1:
        marks[:, -1], mods[:, -1], keys[:, -1] = 0, 0, -1
    images = r.random((b, n, d, size, size, 1), dtype=np.float32) * marks[..., None, None, None]
    labels = (r.random((b, CLASSES)) < 0.3).astype(np.float32)
    return dict(images=images, marks=marks, mods=mods, keys=keys, labels=labels)


def _random_model(config, label_embeddings=None, seed=0):
    """The configured model, built abstractly and filled with random values.

    Compiling the real initialisers (truncated normals of every conv shape) takes far
    longer on shared CI cores than these tests; the initialisers are not under test.
    """
    model = nnx.eval_shape(
        lambda: M.build_model(config, rngs=nnx.Rngs(seed), label_embeddings=label_embeddings)
    )
    r = np.random.default_rng(seed)
    for path, var in nnx.iter_graph(model):
        if not isinstance(var, nnx.Variable):
            continue
        shape, name = var.get_value().shape, path[-1]
        if isinstance(var, M.LabelEmbeddings):
            value = label_embeddings
        elif isinstance(var, nnx.BatchStat):
            value = r.uniform(0.5, 1.5, shape) if name == "var" else r.normal(0, 0.1, shape)
        elif name == "kernel":
            value = r.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        elif name == "scale":
            value = 1 + r.normal(0, 0.1, shape)
        else:
            value = r.normal(0, 0.1 if name == "bias" else 1.0, shape)
        var.set_value(jnp.asarray(value, jnp.float32))
    return model


SHAPE_CASES = [
    ("fusion=late", "resnet"),
    ("fusion=early", "resnet"),
    ("fusion=early,ke", "resnet"),
    ("arch=v1,fusion=late", "resnet"),
    ("arch=v1,fusion=early,ke", "resnet"),
    ("arch=v1,fusion=late,ke", "vit"),
    ("arch=v1,fusion=early", "vit"),
]


@pytest.mark.parametrize("arg,encoder", SHAPE_CASES)
def test_loss_and_predict_shapes(arg, encoder):
    config = _config(arg, encoder)
    emb = _embeddings() if config.model.ke.enabled else None
    batch = _batch(config)

    def run():
        model = M.build_model(config, rngs=nnx.Rngs(0), label_embeddings=emb)
        loss, metrics = M.loss_fn(model, batch, config)
        model.eval()
        return loss, metrics, M.predict_fn(model, batch, config)

    loss, metrics, out = jax.eval_shape(run)
    assert loss.shape == () and all(v.shape == () for v in metrics.values())
    released = config.model.arch == "released"
    assert set(metrics) == ({"bce", "key_slice_kl"} if released else {"bce"})
    assert out["scores"].shape == out["labels"].shape == (2, CLASSES)


def test_late_fusion_refuses_several_scans():
    config = _config("fusion=late")
    batch = _batch(_config("fusion=early"))
    with pytest.raises(ValueError, match="one scan"):
        jax.eval_shape(lambda: M.loss_fn(M.build_model(config, rngs=nnx.Rngs(0)), batch, config))


def test_remat_traces_gradients():
    config = _config("fusion=early")
    config.model.remat = True
    batch = _batch(config)

    def grads():
        graphdef, params, rest = nnx.split(M.build_model(config, rngs=nnx.Rngs(0)), nnx.Param, ...)
        loss = lambda p: M.loss_fn(nnx.merge(graphdef, p, rest, copy=True), batch, config)[0]
        return jax.grad(loss)(params)

    assert jax.tree.leaves(jax.eval_shape(grads))


def test_train_step_lowers_loss_with_frozen_label_embeddings():
    config = _small(_config("fusion=late,ke"))
    # a fixed optimizer, independent of how the tiny config is tuned
    config.optim.update(lr=3e-3, groups=(), warmup_ratio=0.0, schedule="constant")
    emb = _embeddings()
    model = _random_model(config, emb)
    groups = tuple(config.optim.groups)
    _, parts = step_lib.split_model(model, groups)
    assert "label_embeddings" not in parts["trainable"]["head"]
    tx, schedule = optim.make_optimizer(config.optim, 10, parts["trainable"])
    graphdef, state = step_lib.init_train_state(model, groups, tx)
    train_step = jax.jit(step_lib.make_train_step(graphdef, M.loss_fn, tx, schedule, config))
    batch = _batch(config)
    losses = []
    for _ in range(6):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
        # late fusion reports the key-slice loss without adding it
        assert float(metrics["loss"]) == float(metrics["bce"]) and metrics["key_slice_kl"] > 0
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
    assert int(metrics["skipped_updates"]) == 0
    np.testing.assert_array_equal(state["rest"]["head"]["label_embeddings"][...], emb)


def test_sharded_forward_equals_unsharded():
    config = _small(_config("fusion=early"))
    model = _random_model(config)
    model.eval()

    def forward(model, batch):
        loss, metrics = M.loss_fn(model, batch, config)
        return M.predict_fn(model, batch, config)["scores"], loss, metrics

    run = assert_sharded_equals_unsharded(
        model, _batch(config, b=8), fn=forward, mesh_shape={"data": 2, "fsdp": 4}
    )
    _, loss, metrics = run.want
    # early fusion adds the weighted key-slice loss
    np.testing.assert_allclose(loss, metrics["bce"] + 1e-3 * metrics["key_slice_kl"], rtol=1e-6)
    assert any(not s.is_fully_replicated for s in jax.tree.leaves(run.shardings))


def test_knowledge_embeddings_come_from_label_texts_once(tmp_path, monkeypatch):
    config = _config("fusion=late,ke")
    names = [f"disease {i}" for i in range(CLASSES)]
    (tmp_path / config.data.label_dict).write_text(json.dumps({n: i for i, n in enumerate(names)}))
    config.data.root = str(tmp_path)
    calls = []

    def fake_encoder(ke, texts):
        calls.append(list(texts))
        return _embeddings()

    monkeypatch.setattr(M.knowledge, "label_embeddings", fake_encoder)
    M._text_embeddings.cache_clear()
    for _ in range(2):  # the launcher builds abstractly, then again under jit
        model = nnx.eval_shape(lambda: M.build_model(config, rngs=nnx.Rngs(0)))
    M._text_embeddings.cache_clear()
    assert calls == [names]
    assert model.head.label_embeddings.get_value().shape == (CLASSES, TEXT_DIM)


def test_evaluate_reports_rp3d_metrics():
    config = _config()
    r = np.random.default_rng(0)
    labels = (r.random((40, CLASSES)) < 0.4).astype(np.float32)
    scores = np.clip(labels * 0.6 + r.random((40, CLASSES)) * 0.5, 0, 1)
    out = M.evaluate({"labels": labels, "scores": scores}, config)
    assert 0.5 < out["auc"] <= 1.0 and {"head/auc", "medium/ap", "tail/f1"} <= set(out)


def test_vit_patches_follow_the_original_order():
    einops = pytest.importorskip("einops")
    x = np.random.default_rng(0).random((2, 3, 8, 12, 4), np.float32)  # torch (B, C, H, W, D)
    want = einops.rearrange(
        x, "b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)", p1=4, p2=4, pf=2
    )
    got, grid = patch_embed.patchify_3d(
        x.transpose(0, 4, 2, 3, 1), (2, 4, 4)
    )  # numpy in, numpy out
    np.testing.assert_array_equal(got, want)
    assert grid == (2, 3, 2)
    want2d = einops.rearrange(x[..., 0], "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=4, p2=4)
    np.testing.assert_array_equal(
        patch_embed.patchify_2d(x[..., 0].transpose(0, 2, 3, 1), (4, 4))[0], want2d
    )


def test_vit_position_embedding_grids():
    pos = vit.AxialPosEmb(6, (2, 3, 4), rngs=nnx.Rngs(0))
    rows, cols, deps = (np.asarray(t[...]) for t in (pos.row_embed, pos.col_embed, pos.dep_embed))
    full, strided, flat = jax.jit(lambda: (pos((2, 3, 4)), pos((2, 3, 2)), pos((2, 3))))()
    full = np.asarray(full).reshape(2, 3, 4, 6)
    np.testing.assert_array_equal(full[1, 2, 3], np.concatenate([rows[1], cols[2], deps[3]]))
    strided = np.asarray(strided).reshape(2, 3, 2, 6)  # RadFM: every 2nd entry, ending last
    np.testing.assert_array_equal(strided[0, 0, :, 4:], deps[[1, 3]])
    flat = np.asarray(flat).reshape(2, 3, 6)  # 2D images: depth entry 0
    np.testing.assert_array_equal(flat[1, 1], np.concatenate([rows[1], cols[1], deps[0]]))
