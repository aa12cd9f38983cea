"""Uni-Med model: ln_vision(ViT) without CLS -> Connector-MoE -> LLaMA; the token-mean answer
loss, LoRA + freezing through the trainer, hard routing, pretrained weights under the original
key names, a sharded forward, prediction and evaluation."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

import radjax  # noqa: F401  (eager sharding off)
from configs.uni_med import get_config
from radjax.data.prompt_answer import IGNORE
from radjax.papers.uni_med import data as D
from radjax.papers.uni_med import model as M
from radjax.papers.uni_med.connector import TASKS
from radjax.train import experiment, optim, stages
from radjax.train import step as step_lib
from tests.sharded import assert_sharded_equals_unsharded, jit_build

B, L, T = 4, 24, 4  # 32 px, patch 8: 16 patches -> 4 tokens
VOCAB, WIDTH, HIDDEN = 64, 32, 32


def small_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    c = get_config(arg)
    c.model.vision.update(dict(img_size=32, patch_size=8, embed_dim=WIDTH, depth=1, num_heads=2))
    c.model.llm.update(
        dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=1, num_heads=2, intermediate_size=48)
    )
    c.model.connector.router_hidden = 64
    c.model.update(dict(bos_token_id=1, eos_token_id=2, pad_token_id=0))
    c.data.update(dict(image_size=32, num_image_tokens=T))
    c.eval.max_new_tokens = 3
    return c


def batch(seed: int = 0) -> dict[str, np.ndarray]:
    """Rows ``[bos, 5, 6, image x T, 7, 8, answer..., eos, pad...]`` with task ids 0..3."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((B, L), np.int32)
    labels = np.full((B, L), IGNORE, np.int32)
    prompt = [1, 5, 6, *[D.IMAGE_PLACEHOLDER] * T, 7, 8]
    for b in range(B):
        answer = [10 + b, 20 + b, 2]
        row = prompt + answer
        ids[b, : len(row)] = row
        labels[b, len(prompt) : len(row)] = answer
    return dict(
        images=rng.standard_normal((B, 32, 32, 3)).astype(np.float32),
        input_ids=ids,
        attention_mask=(np.arange(L)[None] < len(prompt) + 3).repeat(B, 0).astype(np.int32),
        labels=labels,
        prompt_length=np.full(B, len(prompt), np.int32),
        task=np.arange(B, dtype=np.int32),
        closed=np.zeros(B, bool),
        box=np.zeros((B, 4), np.float32),
        image_wh=np.full((B, 2), 32, np.float32),
        index=np.arange(B, dtype=np.int32),
    )


@pytest.fixture(scope="module")
def model():
    return jit_build(lambda: M.build_model(small_config(), rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def run(model):
    """One jitted pass over ``batch()`` (last row invalid): the pieces the tests compare."""
    graphdef, state = nnx.split(model)
    config = small_config()

    @jax.jit
    def forward(state, b):
        m = nnx.merge(graphdef, state)
        x = b["images"]
        loss, metrics = M.loss_fn(m, b, config)
        return dict(
            tokens=m.vision(x),
            full=m.vision.vit(x),
            encoded=m.encode_img(x, b["task"]),
            logits=m(b["input_ids"], x, b["attention_mask"], task=b["task"]),
            loss=loss,
            metrics=metrics,
        )

    b = {k: jnp.asarray(v) for k, v in batch().items()}
    b["valid"] = jnp.asarray([True, True, True, False])
    return b, jax.device_get(forward(state, b))


def test_vision_is_ln_vision_of_the_tower_without_cls(run):
    _, out = run
    assert out["tokens"].shape == (B, 16, WIDTH) and out["full"].shape == (B, 17, WIDTH)
    full = out["full"]
    mean, var = full.mean(-1, keepdims=True), full.var(-1, keepdims=True)
    want = ((full - mean) / np.sqrt(var + 1e-5))[:, 1:]  # fresh ln_vision: eps 1e-5, no affine
    np.testing.assert_allclose(out["tokens"], want, rtol=1e-4, atol=1e-5)
    encoded = out["encoded"]
    assert encoded.tokens.shape == (B, T, HIDDEN) and encoded.routing_weights.shape == (B, T, 5)


def test_loss_is_the_token_mean_over_answers(run):
    b, out = run
    logp = jax.nn.log_softmax(out["logits"], -1)
    labels = np.asarray(b["labels"])
    nll = [
        -float(logp[r, t, labels[r, t + 1]])
        for r in range(3)  # the invalid row does not count
        for t in range(L - 1)
        if labels[r, t + 1] >= 0
    ]
    np.testing.assert_allclose(float(out["loss"]), np.mean(nll), rtol=1e-5)
    metrics = out["metrics"]
    assert float(metrics["answer_tokens"]) == 9  # 3 rows x (2 answer tokens + eos)
    routing = np.asarray(out["encoded"].routing_weights)[:3].mean((0, 1))
    got = [float(metrics[f"routing_e{k}"]) for k in range(5)]
    np.testing.assert_allclose(got, routing, rtol=1e-5)


def test_hard_routing_is_one_hot_per_task():
    c = small_config("tiny,router=hard")
    hard = jit_build(lambda: M.build_model(c, rngs=nnx.Rngs(0)))
    b = {k: jnp.asarray(v) for k, v in batch().items()}
    graphdef, state = nnx.split(hard)
    out = jax.jit(lambda s, b: M.predict_fn(nnx.merge(graphdef, s), b, c))(state, b)
    np.testing.assert_array_equal(np.asarray(out["routing"]), np.eye(5)[:B])
    assert out["generated"].shape == (B, 3)
    assert not hasattr(hard.connector, "router")  # hard routing builds no router


def test_sharded_forward_equals_unsharded():
    c = small_config()
    c.model.connector.num_experts = 4
    b = batch()
    assert_sharded_equals_unsharded(
        lambda: M.build_model(c, rngs=nnx.Rngs(0)),
        b["input_ids"],
        b["images"],
        b["task"],
        b["attention_mask"],
        fn=lambda m, ids, x, task, mask: m(ids, x, mask, task=task),
        mesh_shape={"fsdp": 2, "tensor": 2, "expert": 2},
        atol=1e-5,
        atol_relative=True,
    )


# ----------------------------------------------------------------------------- weights


def _eva_sd(rng, c) -> dict[str, np.ndarray]:
    """An EVA VisionTransformer state dict (original keys) of the small config, plus one
    block more than the config has (dropped by depth) and the ln_vision of a live model."""
    v = c.model.vision
    d, p, n = v.embed_dim, v.patch_size, (v.img_size // v.patch_size) ** 2
    h = int(d * v.mlp_ratio)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    sd = {
        "cls_token": r(1, 1, d),
        "pos_embed": r(1, 1 + n, d),
        "patch_embed.proj.weight": r(d, 3, p, p),
        "patch_embed.proj.bias": r(d),
        "ln_vision.weight": r(d),
        "ln_vision.bias": r(d),
    }
    for i in range(v.depth + 1):
        k = f"blocks.{i}."
        sd |= {
            k + "norm1.weight": r(d),
            k + "norm1.bias": r(d),
            k + "attn.qkv.weight": r(3 * d, d),
            k + "attn.q_bias": r(d),
            k + "attn.v_bias": r(d),
            k + "attn.proj.weight": r(d, d),
            k + "attn.proj.bias": r(d),
            k + "norm2.weight": r(d),
            k + "norm2.bias": r(d),
            k + "mlp.fc1.weight": r(h, d),
            k + "mlp.fc1.bias": r(h),
            k + "mlp.fc2.weight": r(d, h),
            k + "mlp.fc2.bias": r(d),
        }
    return sd


def _llama_sd(rng, c) -> dict[str, np.ndarray]:
    m = c.model.llm
    d, f, v = m.hidden_size, m.intermediate_size, m.vocab_size
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    sd = {
        "model.embed_tokens.weight": r(v, d),
        "model.norm.weight": r(d),
        "lm_head.weight": r(v, d),
    }
    for i in range(m.num_layers):
        k = f"model.layers.{i}."
        sd |= {k + f"self_attn.{p}_proj.weight": r(d, d) for p in "qkvo"}
        sd |= {k + "mlp.gate_proj.weight": r(f, d), k + "mlp.up_proj.weight": r(f, d)}
        sd |= {k + "mlp.down_proj.weight": r(d, f)}
        sd |= {k + "input_layernorm.weight": r(d), k + "post_attention_layernorm.weight": r(d)}
    return sd


def _uni_med_sd(rng, c) -> dict[str, np.ndarray]:
    """The trainable tensors of a Uni-Med checkpoint: task tokens, router, the experts under
    both names (llm_proj and its moe_layers twin), peft LoRA of every projection."""
    m = c.model
    cc = M.connector_config(m)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    sd = {f"task_tokens.{t}": r(1, 1, cc.task_dim) for t in TASKS}
    sd |= {"router.fc1.weight": r(64, cc.router_in_dim), "router.fc1.bias": r(64)}
    sd |= {"router.fc2.weight": r(5, 64), "router.fc2.bias": r(5)}
    for e in range(5):
        expert = {
            f"{e}.0.weight": r(HIDDEN, cc.token_dim),
            f"{e}.0.bias": r(HIDDEN),
            f"{e}.2.weight": r(HIDDEN, HIDDEN),
            f"{e}.2.bias": r(HIDDEN),
        }
        sd |= {f"llm_proj.{k}": v for k, v in expert.items()}
        sd |= {f"moe_layers.{k}": v for k, v in expert.items()}
    rank, f = m.lora.rank, m.llm.intermediate_size
    shapes = dict(q=(HIDDEN, HIDDEN), k=(HIDDEN, HIDDEN), v=(HIDDEN, HIDDEN), o=(HIDDEN, HIDDEN))
    shapes |= dict(gate=(HIDDEN, f), up=(HIDDEN, f), down=(f, HIDDEN))  # (in, out)
    for name, (din, dout) in shapes.items():
        block = "mlp" if name in ("gate", "up", "down") else "self_attn"
        k = f"llm_model.base_model.model.model.layers.0.{block}.{name}_proj.lora_"
        sd[k + "A.default.weight"] = r(rank, din)
        sd[k + "B.default.weight"] = r(dout, rank)
    return sd


@pytest.mark.parametrize("scan", [False, True])
def test_pretrained_params_fill_the_model_under_original_keys(tmp_path, scan):
    """Every parameter but ln_vision comes from the three files, unscanned or with the LLM's
    layers (base weights and LoRA adapters) stacked for ``scan_layers``."""
    rng = np.random.default_rng(0)
    c = small_config()
    c.model.llm.scan_layers = scan
    eva, llama, ckpt = _eva_sd(rng, c), _llama_sd(rng, c), _uni_med_sd(rng, c)
    save_file(eva, str(tmp_path / "eva_vit_g.safetensors"))
    (tmp_path / "llm").mkdir()
    save_file(llama, str(tmp_path / "llm" / "model.safetensors"))
    save_file(ckpt, str(tmp_path / "checkpoint_0.safetensors"))
    c.model.update(
        dict(
            eva_checkpoint=str(tmp_path / "eva_vit_g.safetensors"),
            llm_dir=str(tmp_path / "llm"),
            checkpoint=str(tmp_path / "checkpoint_0.safetensors"),
        )
    )
    values = M.pretrained_params(c)
    abstract = nnx.eval_shape(lambda: stages.apply_lora(M.build_model(c, rngs=nnx.Rngs(0)), c))
    params = {
        "/".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    }
    assert set(params) - set(values) == {"vision/ln_vision/scale", "vision/ln_vision/bias"}
    assert not set(values) - set(params)
    for k, v in values.items():
        assert v.shape == params[k], k
    np.testing.assert_array_equal(
        values["vision/vit/encoder/layers/0/attn/query/bias"], eva["blocks.0.attn.q_bias"]
    )
    assert "vision/vit/encoder/layers/0/attn/key/bias" not in values  # EVA: k unbiased
    np.testing.assert_array_equal(
        values["connector/llm_proj/fc2/kernel"][3], ckpt["llm_proj.3.2.weight"].T
    )
    down_b = (
        "lang_model/layers/mlp/down_proj/lora_b"
        if scan
        else "lang_model/layers/0/mlp/down_proj/lora_b"
    )
    np.testing.assert_array_equal(
        values[down_b][0] if scan else values[down_b],
        ckpt["llm_model.base_model.model.model.layers.0.mlp.down_proj.lora_B.default.weight"].T,
    )


def test_the_original_freezing():
    """The trainer's groups (``stages.optim_groups``) of the paper recipe: LoRA on every LLM
    projection with the base frozen, the tower and ln_vision frozen, the connector trained."""
    c = small_config()
    c.model.lora.freeze_base = True
    model = nnx.eval_shape(lambda: stages.apply_lora(M.build_model(c, rngs=nnx.Rngs(0)), c))
    parts = step_lib.split_model(model, stages.optim_groups(c))[1]
    trainable = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(parts["trainable"])}
    frozen = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(parts["frozen"])}
    assert any(k.startswith("connector/router") for k in trainable)
    assert "connector/task_tokens" in trainable and "connector/llm_proj/fc1/kernel" in trainable
    assert {k.split("/")[0] for k in trainable} == {"connector", "lang_model"}
    assert all(k.endswith(("lora_a", "lora_b")) for k in trainable if k.startswith("lang_model"))
    assert len([k for k in trainable if k.startswith("lang_model")]) == 14  # 7 projections
    assert "vision/ln_vision/scale" in frozen and "lang_model/embed_tokens" in frozen
    assert "lang_model/layers/0/self_attn/q_proj/kernel" in frozen


def test_train_step_loss_falls():
    """The trainer's jitted step on the tiny recipe (LoRA adapters and base LLM trained, the
    tower frozen) lowers the loss on a fixed batch."""
    c = small_config()
    c.optim.update(dict(lr=1e-2, warmup_ratio=0.0))
    groups = stages.optim_groups(c)
    model = jit_build(lambda: stages.apply_lora(M.build_model(c, rngs=nnx.Rngs(0)), c))
    trainable = step_lib.split_model(model, groups)[1]["trainable"]
    tx, schedule = optim.make_optimizer(c.optim, 20, trainable)
    graphdef, state = step_lib.init_train_state(model, groups, tx)
    step = jax.jit(step_lib.make_train_step(graphdef, M.loss_fn, tx, schedule, c))
    b = {k: jnp.asarray(v) for k, v in batch().items()}
    losses = []
    for _ in range(15):
        state, metrics = step(state, b)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses


def test_evaluate_reports_tasks_baselines_and_routing(tmp_path):
    c = get_config("tiny")
    c.data.root = str(tmp_path / "data")
    c.data.phantoms.update(dict(num_train=8, num_test=2))
    experiment.prepare_config(c)
    tok = D.tokenizer(c.data)
    n = 5
    labels = np.full((n, 24), IGNORE, np.int32)
    answers = ["yes", "{<10><10><60><60>}", "cyst", "no lesion", "chest"]
    generated = np.full((n, 28), c.model.pad_token_id, np.int32)
    for i, a in enumerate(answers):
        ids = tok(a, add_special_tokens=False)["input_ids"] + [c.model.eos_token_id]
        labels[i, : len(ids)] = ids
        generated[i, : len(ids)] = ids
    outputs = dict(
        generated=generated,
        labels=labels,
        task=np.arange(n, dtype=np.int32),
        closed=np.array([True, False, False, False, False]),
        box=np.array([[0, 0, 0, 0], [3.2, 3.2, 19.2, 19.2], *[[0, 0, 0, 0]] * 3], np.float32),
        image_wh=np.full((n, 2), 32, np.float32),
        routing=np.eye(5)[:n],
        index=np.arange(n, dtype=np.int32),
    )
    out = M.evaluate(outputs, c)
    assert out["vqa/closed_acc"] == 1.0 and out["identify/acc"] == 1.0 and out["cls/accuracy"] == 1
    assert out["refer/miou"] == pytest.approx(1.0) and out["refer/acc"] == 1.0
    assert out["caption/f1"] == pytest.approx(1.0)
    assert out["refer/routing_e1"] == 1.0 and out["refer/routing_e0"] == 0.0
    assert "baseline/refer/acc" in out and "baseline/vqa/closed_acc" in out
