"""Uni-Med's Connector-MoE against golden outputs of the original ``UniMed.encode_img``, and
its routing, dispatch, auxiliary loss, input checks, converter and expert sharding.

``tests/golden/data/uni_med_connector.npz`` comes from ``tests/golden/make_uni_med_golden.py``
(MSIIP/Uni-Med 5c902a5, tower and LLM replaced by stand-ins: see that file). Each case's
state dict is converted with ``convert.from_uni_med_connector`` and ``ConnectorMoE`` must give
the original's ``inputs_llm``, routing weights and router outputs at relative error < 1e-5,
for all four routers on two tasks, the three router inputs, the pooled resamplings and
``moe_linear`` experts.
"""

import dataclasses
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import radjax  # noqa: F401  (disables eager sharding)
from radjax.convert.torch_io import ConversionError, assign
from radjax.papers.uni_med import connector as cn
from radjax.papers.uni_med.convert import from_uni_med_connector, split_checkpoint
from tests.parity import rel_err
from tests.sharded import assert_sharded_equals_unsharded

GOLDEN = pathlib.Path(__file__).parents[2] / "golden" / "data" / "uni_med_connector.npz"
TOL = 1e-5
ROUTER_INPUT = {v: k for k, v in cn.ROUTER_INPUTS.items()}
EXPERT_TYPE = {v: k for k, v in cn.EXPERT_TYPES.items()}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


def golden_config(golden) -> dict:
    return json.loads(str(golden["meta/config"]))


def case_config(golden, case: str, router: str, **kw) -> cn.ConnectorConfig:
    meta = golden_config(golden)
    args = meta["cases"][case]["kwargs"]
    fields = dict(
        vision_dim=meta["vision_dim"],
        llm_dim=meta["llm_dim"],
        resample=args["resample_method"],
        resample_rate=meta["resample_rate"],
        tasks=tuple(meta["original_tasks"]),
        task_token_dim=meta["task_token_c"],
        num_experts=meta["num_experts"],
        expert_type=EXPERT_TYPE[args.get("projector_type", "moe_mlp")],
        router_type=router,
        router_input=ROUTER_INPUT[args["router_method"]],
        sparse_topk=meta["sparse_topk"],
    )
    return cn.ConnectorConfig(**(fields | kw))


def state_dict(golden, case: str) -> dict[str, np.ndarray]:
    prefix = f"{case}/sd/"
    return {k[len(prefix) :]: v for k, v in golden.items() if k.startswith(prefix)}


def converted(golden, case: str, router: str, **kw) -> cn.ConnectorMoE:
    cfg = case_config(golden, case, router, **kw)
    model = nnx.eval_shape(lambda: cn.ConnectorMoE(cfg, rngs=nnx.Rngs(0)))
    connector, rest = split_checkpoint(state_dict(golden, case))
    assert sorted(rest) == ["ln_vision.bias", "ln_vision.weight"]
    assign(model, from_uni_med_connector(connector, cfg), strict=True)
    return model


def jit_call(module: nnx.Module, fn, *args):
    """fn(module, *args) compiled as one program."""
    graphdef, state = nnx.split(module)
    return jax.jit(lambda s, *a: fn(nnx.merge(graphdef, s, copy=True), *a))(state, *args)


def _forward(m, x, ids):
    """-> tokens, routing weights, router output (None without a router)."""
    out = m(x, ids)
    if not m.cfg.uses_router:
        return out.tokens, out.routing_weights, None
    logits = m.router_logits(cn.resample(x, m.cfg.resample, m.cfg.resample_rate), ids)
    return out.tokens, out.routing_weights, logits


RUNS = {
    "task_token": ("soft", "hard", "constant", "sparse"),
    "token": ("soft", "sparse"),
    "task": ("soft", "sparse"),
    "avgpool": ("soft", "sparse"),
    "maxpool": ("soft", "sparse"),
    "moe_linear": ("soft",),
}


def test_golden_file(golden):
    assert str(golden["meta/repo"]) == "MSIIP/Uni-Med"
    assert str(golden["meta/commit"]) == "5c902a5fecbd1688cdabeb84e11fcf57eaddfa38"
    cases = golden_config(golden)["cases"]
    assert {case: tuple(spec["routers"]) for case, spec in cases.items()} == RUNS
    assert GOLDEN.stat().st_size < 1 << 20
    # the task changes the learned routing, so a wrong task token would show
    for case in ("task_token", "task"):
        a, b = (golden[f"{case}/out/soft/{t}/routing_weights"] for t in ("vqa", "caption"))
        assert np.abs(a - b).max() > 1e-2, case


def test_patch_tokens_are_the_fresh_ln_vision_without_cls(golden):
    """The connector's input: ln_vision (weight 1, bias 0: never loaded) on the tower output,
    CLS row dropped; what the tower in front of ConnectorMoE must hand over."""
    sd = state_dict(golden, "task_token")
    np.testing.assert_array_equal(sd["ln_vision.weight"], 1.0)
    np.testing.assert_array_equal(sd["ln_vision.bias"], 0.0)
    x = golden["in/vision_out"].astype(np.float64)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    want = ((x - mean) / np.sqrt(var + 1e-5))[:, 1:]
    assert rel_err(golden["mid/patch_tokens"], want) < TOL


@pytest.mark.parametrize("case", sorted(RUNS))
def test_matches_original(golden, case):
    """Every router of the case on both tasks (one batch: the samples carry their task), and
    the dispatch variant of sparse / hard routing, on the original's converted weights."""
    tasks = golden_config(golden)["tasks"]
    x = golden["mid/patch_tokens"]
    both = np.concatenate([x] * len(tasks))
    ids = cn.task_ids([task for task in tasks for _ in range(x.shape[0])])
    dispatched = 0
    for router in RUNS[case]:
        model = converted(golden, case, router)
        variants = [model]
        if model.cfg.top_k is not None:
            variants.append(converted(golden, case, router, dispatch=True))
            dispatched += 1
        for m in variants:
            tokens, weights, logits = (
                np.split(np.asarray(a), len(tasks)) if a is not None else [None] * len(tasks)
                for a in _forward(m, both, ids)
            )
            for i, task in enumerate(tasks):
                want = f"{case}/out/{router}/{task}"
                what = (router, m.cfg.dispatch, task)
                assert rel_err(tokens[i], golden[f"{want}/inputs_llm"]) < TOL, what
                np.testing.assert_allclose(weights[i], golden[f"{want}/routing_weights"], atol=1e-6)
                if logits[i] is not None:
                    mid = golden[f"{case}/mid/{router}/{task}/router_out"]
                    assert rel_err(logits[i], mid) < TOL, what
    assert dispatched == sum(r in ("sparse", "hard") for r in RUNS[case])


def test_projection_is_raster_row_concatenation():
    """Token j = patches 4j..4j+3 side by side in the features: a 1 x 4 strip of the grid."""
    grid = 16
    x = np.arange(grid * grid, dtype=np.float32)[None, :, None] * np.ones((1, 1, 3), np.float32)
    tokens = np.asarray(cn.resample(x, "projection", 4))  # (1, 64, 12)
    assert tokens.shape == (1, 64, 12)
    for j in (0, 5, 63):
        patches_of_j = tokens[0, j].reshape(4, 3)[:, 0]
        row, col = divmod(4 * j, grid)
        np.testing.assert_array_equal(patches_of_j, [grid * row + col + i for i in range(4)])
    np.testing.assert_array_equal(tokens[0, 5].reshape(4, 3)[:, 0], [20, 21, 22, 23])
    # pools: token j = the 2 x 2 square at (2 (j // 8), 2 (j % 8))
    avg = np.asarray(cn.resample(x, "avgpool"))[0, :, 0]
    mx = np.asarray(cn.resample(x, "maxpool"))[0, :, 0]
    assert avg.shape == (64,)
    for j in (0, 9, 63):
        r, c = 2 * (j // 8), 2 * (j % 8)
        square = [grid * r + c, grid * r + c + 1, grid * (r + 1) + c, grid * (r + 1) + c + 1]
        assert avg[j] == np.mean(square) and mx[j] == max(square)


def tiny(**kw) -> cn.ConnectorConfig:
    """The golden file's sizes (tests run eagerly; equal shapes share compiled ops)."""
    return cn.ConnectorConfig(**{"vision_dim": 8, "llm_dim": 16, "task_token_dim": 24} | kw)


def patches(batch=4, n=256, c=8, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, n, c)).astype(np.float32)


def build(cfg: cn.ConnectorConfig, seed=0) -> cn.ConnectorMoE:
    """The connector with numpy N(0, 1 / fan_in) kernels, N(0, 0.1) biases and N(0, 1) task
    tokens: no jax.random init program to compile (seconds each on CPU), and weights large
    enough that the tokens and the task matter."""
    graphdef, state = nnx.split(_abstract(cfg))
    rng = np.random.default_rng(seed)

    def draw(path, v):
        std = (
            1.0
            if path[0] == "task_tokens"
            else 0.1
            if v.ndim == 1 or path[-1] == "bias"
            else v.shape[-2] ** -0.5
        )
        return (std * rng.standard_normal(v.shape)).astype(np.float32)

    pure = nnx.to_pure_dict(state)
    values = jax.tree_util.tree_map_with_path(lambda p, v: draw(tuple(k.key for k in p), v), pure)
    nnx.replace_by_pure_dict(state, values)
    return nnx.merge(graphdef, state)


IDS = np.array([0, 3, 3, 1], np.int32)


def _abstract(cfg: cn.ConnectorConfig) -> cn.ConnectorMoE:
    return nnx.eval_shape(lambda: cn.ConnectorMoE(cfg, rngs=nnx.Rngs(0)))


def test_dispatch_equals_dense():
    """Outputs and gradients (parameters and input) of the sorted grouped-matmul path equal
    the dense evaluation of every expert (forward parity of both on the original's weights
    is in test_matches_original)."""
    cfg = tiny(router_type="sparse", sparse_topk=2)
    graphdef, params = nnx.split(build(cfg))
    fast = nnx.graphdef(_abstract(dataclasses.replace(cfg, dispatch=True)))

    def loss(g, p, x):
        tokens = nnx.merge(g, p, copy=True)(x, IDS).tokens
        return jnp.sum(jnp.sin(tokens)), tokens

    grad = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)
    run = jax.jit(lambda p, x: [grad(g, p, x) for g in (graphdef, fast)])
    ((lw, want), gw), ((lg, got), gg) = run(params, patches())
    assert rel_err(got, want) < 1e-6
    np.testing.assert_allclose(lg, lw, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(gg), jax.tree.leaves(gw)):
        assert float(np.abs(b).max()) > 0, path
        assert rel_err(a, b) < 1e-5, path


def test_hard_routing_picks_the_task_expert():
    model = build(tiny(router_type="hard"))
    assert not hasattr(model, "router") and not hasattr(model, "task_tokens")
    p = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model.llm_proj)))
    gelu = np.vectorize(lambda h: 0.5 * h * (1 + math.erf(h / math.sqrt(2))))
    x = patches()
    for tags in (["vqa", "refer", "identify", "caption"], ["cls", "cls", "refer", "vqa"]):
        ids = cn.task_ids(tags)
        out = model(x, ids)
        np.testing.assert_array_equal(out.routing_weights, np.eye(5)[ids][:, None].repeat(64, 1))
        # sample i's tokens are its task's expert alone
        tokens = np.asarray(cn.resample(x), np.float64)
        for i, e in enumerate(ids):
            h = gelu(tokens[i] @ p["fc1"]["kernel"][e] + p["fc1"]["bias"][e])
            want = h @ p["fc2"]["kernel"][e] + p["fc2"]["bias"][e]
            assert rel_err(out.tokens[i], want) < TOL, (tags, i)


def _weights_and_logits(cfg, x, ids):
    model = build(cfg)
    out = model(x, ids)
    logits = model.router_logits(cn.resample(x), ids) if cfg.uses_router else None
    return np.asarray(out.routing_weights), None if logits is None else np.asarray(logits)


def test_soft_sparse_constant_and_task_only_weights():
    x = patches()
    x[1] = x[0]  # samples 0 and 1: one image, tasks 1 and 4; sample 2: the image again, task 1
    x[2] = x[0]
    ids = np.array([1, 4, 1, 2], np.int32)
    # soft: a normalised sigmoid, not a softmax; the task changes the weights
    w, logits = _weights_and_logits(tiny(), x, ids)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    s = 1 / (1 + np.exp(-logits.astype(np.float64)))
    np.testing.assert_allclose(w, s / s.sum(-1, keepdims=True), rtol=1e-5)
    assert np.abs(w - jax.nn.softmax(logits, -1)).max() > 1e-3
    np.testing.assert_array_equal(w[0], w[2])
    assert np.abs(w[0] - w[1]).max() > 1e-3
    # sparse: exactly k non-zero, the softmax of the top-k logits
    w, logits = _weights_and_logits(tiny(router_type="sparse"), x, ids)
    assert ((w > 0).sum(-1) == 2).all()
    top = np.argsort(-logits, -1)[..., :2]
    kept = np.take_along_axis(logits, top, -1)
    np.testing.assert_allclose(np.take_along_axis(w, top, -1), jax.nn.softmax(kept, -1), rtol=1e-5)
    # task-only router input: one weight vector per sample, different between tasks
    w, _ = _weights_and_logits(tiny(router_input="task"), x, ids)
    np.testing.assert_array_equal(w, np.broadcast_to(w[:, :1], w.shape))
    assert np.abs(w[0, 0] - w[1, 0]).max() > 1e-3
    # constant: 1 / E
    w, _ = _weights_and_logits(tiny(router_type="constant"), x, ids)
    np.testing.assert_array_equal(w, np.full((4, 64, 5), 0.2, np.float32))


def _router_bias(model: cn.ConnectorMoE, bias) -> cn.ConnectorMoE:
    """A copy whose router logits are ``bias`` for every token (fc2 kernel zero)."""
    graphdef, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)
    pure["router"]["fc2"]["kernel"] = np.zeros_like(pure["router"]["fc2"]["kernel"])
    pure["router"]["fc2"]["bias"] = np.asarray(bias, np.float32)
    state = nnx.state(_abstract(model.cfg))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


@pytest.mark.parametrize("router", ["soft", "sparse"])
def test_load_balancing_loss(router):
    x, ids = patches(), IDS
    assert float(build(tiny(router_type=router))(x, ids).aux_loss) == 0.0  # off by default
    model = build(tiny(router_type=router, aux_loss_weight=0.5))
    uniform = _router_bias(model, np.zeros(5))  # uniform probabilities: the balanced value 1
    np.testing.assert_allclose(uniform(x, ids).aux_loss, 0.5 * 1.0, rtol=1e-5)
    collapsed = _router_bias(model, [30.0, -30, -30, -30, -30])  # all on expert 0: E / k
    k = 2 if router == "sparse" else 1
    np.testing.assert_allclose(collapsed(x, ids).aux_loss, 0.5 * 5 / k, rtol=1e-5)
    # the learned router gets a gradient from it
    graphdef, params = nnx.split(model)
    grad = jax.jit(jax.grad(lambda p: nnx.merge(graphdef, p, copy=True)(x, ids).aux_loss))
    assert float(np.abs(grad(params)["router"]["fc1"]["kernel"][...]).max()) > 0
    # invalid rows do not count
    _, sel, probs = model.route(cn.resample(x), ids)
    _, sel1, probs1 = model.route(cn.resample(x[:1]), ids[:1])
    masked = cn.load_balancing_loss(probs, sel, np.array([True, False, False, False]))
    np.testing.assert_allclose(masked, cn.load_balancing_loss(probs1, sel1), rtol=1e-6)
    assert abs(float(masked) - float(cn.load_balancing_loss(probs, sel))) > 1e-6


def test_routing_by_task():
    w = jnp.stack([jnp.full((4, 5), v) for v in (0.1, 0.3, 0.2)])  # (3, 4, 5)
    sums, counts = cn.routing_by_task(w, jnp.array([2, 0, 2]), 5)
    np.testing.assert_allclose(counts, [1, 0, 2, 0, 0])
    np.testing.assert_allclose(sums[2] / counts[2], np.full(5, 0.15), rtol=1e-6)
    np.testing.assert_allclose(sums[0], np.full(5, 0.3), rtol=1e-6)
    sums, counts = cn.routing_by_task(w, jnp.array([2, 0, 2]), 5, valid=jnp.array([1, 1, 0]))
    np.testing.assert_allclose(counts, [1, 0, 1, 0, 0])
    np.testing.assert_allclose(sums[2], np.full(5, 0.1), rtol=1e-6)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(router_type="hard", num_experts=3), "num_experts .3. must be >= the number"),
        (dict(dispatch=True), "dispatch needs sparse or hard"),
        (dict(router_type="sparse", sparse_topk=6), "sparse_topk must be in"),
        (dict(num_task_tokens=2), "num_task_tokens must be 0 or 1"),
        (dict(num_task_tokens=0), "reads the task token"),
        (dict(router_type="hard", aux_loss_weight=0.1), "needs a learned router"),
        (dict(router_type="top2"), "router_type 'top2' not in"),
        (dict(router_input="image"), "router_input 'image' not in"),
        (dict(resample="bilinear"), "resample 'bilinear' not in"),
        (dict(resample="avgpool", resample_rate=2), "supports only resample_rate 4, got 2"),
        (dict(resample="maxpool", resample_rate=16), "supports only resample_rate 4, got 16"),
        (dict(tasks=("vqa", "vqa")), "duplicates"),
    ],
)
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        cn.ConnectorMoE(tiny(**kw), rngs=nnx.Rngs(0))


def test_bad_inputs():
    model = build(tiny())
    ids = IDS
    with pytest.raises(ValueError, match=r"\(B, N, vision_dim=8\)"):
        model(patches(c=5), ids)
    with pytest.raises(ValueError, match=r"\(B, N, vision_dim=8\)"):
        model(patches()[0], ids)
    with pytest.raises(ValueError, match=r"task_id must be \(B,\)"):
        model(patches(), ids[:2])
    with pytest.raises(ValueError, match="must be integers"):
        model(patches(), ids.astype(np.float32))
    with pytest.raises(ValueError, match=r"out of range \[0, 5\)"):
        model(patches(), np.array([0, 5, 1, 0]))
    with pytest.raises(ValueError, match="do not split into tokens of 4"):
        model(patches(n=62), ids)
    with pytest.raises(ValueError, match="square patch grid of even side"):
        _abstract(tiny(resample="avgpool"))(patches(n=48), ids)
    with pytest.raises(ValueError, match="text-only"):
        cn.task_ids(["vqa", "qa"])
    with pytest.raises(ValueError, match="task tag 1: 'report'"):
        cn.task_ids(["vqa", "report"])
    # traced ids out of range cannot raise: that sample's tokens are NaN, the others finite
    out = np.asarray(
        jit_call(model, lambda m, x, i: m(x, i).tokens, patches(), np.array([0, 7, 1, 2]))
    )
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2, 3]]).all()


def test_converter_errors(golden):
    cfg = case_config(golden, "task_token", "soft")
    sd = split_checkpoint(state_dict(golden, "task_token"))[0]
    with pytest.raises(ConversionError, match="none of the connector's"):
        from_uni_med_connector({**sd, "ln_vision.weight": np.ones(8)}, cfg)
    bad = dict(sd)
    bad["moe_layers.1.2.bias"] = bad["moe_layers.1.2.bias"] + 1
    with pytest.raises(ConversionError, match="llm_proj.1.2.bias differs from moe_layers"):
        from_uni_med_connector(bad, cfg)
    # the moe_layers twin alone is enough; an expert missing from both is not
    alone = {k: v for k, v in sd.items() if not k.startswith("llm_proj.")}
    paths = from_uni_med_connector(alone, cfg)
    np.testing.assert_array_equal(paths["llm_proj/fc2/kernel"][3], sd["llm_proj.3.2.weight"].T)
    partial = {k: v for k, v in alone.items() if not k.startswith("moe_layers.4.")}
    with pytest.raises(ConversionError, match=r"found for experts \[0, 1, 2, 3\]"):
        from_uni_med_connector(partial, cfg)
    linear = case_config(golden, "task_token", "soft", expert_type="linear")
    with pytest.raises(ConversionError, match="no Linear of a moe_linear expert"):
        from_uni_med_connector(sd, linear)
    with pytest.raises(ConversionError, match="task tokens"):
        from_uni_med_connector({k: v for k, v in sd.items() if k != "task_tokens.cls"}, cfg)
    # hard routing builds no router and no task tokens: their keys are dropped
    hard = from_uni_med_connector(sd, case_config(golden, "task_token", "hard"))
    assert sorted(hard) == sorted(
        f"llm_proj/{layer}/{leaf}" for layer in ("fc1", "fc2") for leaf in ("kernel", "bias")
    )


@pytest.mark.parametrize("kw", [dict(), dict(router_type="sparse", dispatch=True)])
def test_expert_sharded_equals_unsharded(kw):
    """4 experts over the mesh's expert axis (x 2 data): the same outputs, weights and loss."""
    cfg = tiny(num_experts=4, tasks=("vqa", "refer", "caption"), aux_loss_weight=0.1, **kw)
    run = assert_sharded_equals_unsharded(
        build(cfg),
        patches(batch=4),
        np.array([0, 2, 1, 2], np.int32),
        fn=lambda m, x, i: m(x, i),
        mesh_shape={"data": 2, "expert": 4},
    )
    for layer in ("fc1", "fc2"):
        for leaf in ("kernel", "bias"):
            spec = run.shardings["llm_proj"][layer][leaf].get_value().spec
            assert spec[0] == "expert", (layer, leaf, spec)
    assert run.got.routing_weights.shape == (4, 64, 4)
