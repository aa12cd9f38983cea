"""Training stages as config (radjax.train.stages) through experiment.build on a tiny LLaMA:
LoRA on scanned layers, init_from an earlier stage's checkpoint, named evaluations."""

import logging
import re
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

import radjax  # noqa: F401  (eager sharding off)
from radjax import sharding
from radjax.checkpoint import Checkpointer
from radjax.models.llama import Decoder, DecoderConfig
from radjax.nn.lora import LLAMA_ALL_LINEAR, LLAMA_QV, LoRALinear, apply_lora, merge_lora
from radjax.train import experiment, stages
from radjax.train.optim import path_str
from radjax.train.step import merge_model

IDS = (jnp.arange(2 * 8).reshape(2, 8) * 7) % 64


def _decoder_cfg(scan: bool, intermediate: int = 48) -> DecoderConfig:
    return DecoderConfig(
        vocab_size=64,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=intermediate,
        scan_layers=scan,
    )


def _loss_fn(model, batch, config):
    logits = model(batch["ids"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], batch["ids"][:, 1:])
    return loss.mean(), {}


def _predict_fn(model, batch, config):
    return {"logits": model(batch["ids"])}


# A paper module as experiment.build sees one (found by name in real runs).
FAKE_PAPER = types.SimpleNamespace(
    build_model=lambda config, *, rngs: Decoder(
        _decoder_cfg(config.model.scan, config.model.intermediate), rngs=rngs
    ),
    loss_fn=_loss_fn,
    predict_fn=_predict_fn,
)


@pytest.fixture(autouse=True)
def fake_paper(monkeypatch):
    monkeypatch.setattr(experiment, "paper_module", lambda config: FAKE_PAPER)


def make_config(
    *, scan=False, intermediate=48, lora_rank=0, targets=LLAMA_ALL_LINEAR, groups=(), **init_from
):
    return ml_collections.ConfigDict(
        {
            "paper": "fake",
            "seed": 0,
            "model": {
                "scan": scan,
                "intermediate": intermediate,
                "lora": {"rank": lora_rank, "alpha": 8.0, "dropout": 0.0, "targets": targets},
            },
            "train": {"steps": 4, "grad_accum": 1, "remat_policy": ""},
            "optim": {
                "name": "adamw",
                "lr": 1e-2,
                "schedule": "constant",
                "warmup_ratio": 0.0,
                "weight_decay": 0.0,
                "groups": groups,
            },
            "mesh": {"data": 1},
            "init_from": {
                "workdir": "",
                "checkpoint": "",
                "include": ".*",
                "renames": (),
                "strict": True,
                **init_from,
            },
        }
    )


MESH = {}


def build(config):
    if "mesh" not in MESH:
        MESH["mesh"] = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    return experiment.build(config, MESH["mesh"])


def flat(state_part) -> dict[str, np.ndarray]:
    return {path_str(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(state_part)}


def params_of(state) -> dict[str, np.ndarray]:
    return {**flat(state["trainable"]), **flat(state["frozen"])}


@jax.jit(static_argnums=0)
def _forward(graphdef, state, ids):
    return nnx.merge(graphdef, state, copy=True)(ids)


def forward(model):
    return np.asarray(_forward(*nnx.split(model), IDS))


def randomize_lora_b(state: dict, seed=3) -> dict:
    """Nonzero lora_b everywhere (B starts at 0, the adapters would be a no-op)."""
    key = jax.random.key(seed)

    def fill(path, x):
        nonlocal key
        if path_str(path).endswith("lora_b"):
            key, sub = jax.random.split(key)
            return 0.1 * jax.random.normal(sub, x.shape, x.dtype)
        return x

    state = dict(state)
    state["trainable"] = nnx.State(
        nnx.from_flat_state(
            [(p, v.replace(fill(p, v[...]))) for p, v in nnx.to_flat_state(state["trainable"])]
        )
    )
    return state


def test_lora_through_config_on_scanned_llama_equals_merged_and_unscanned():
    config = make_config(scan=True, lora_rank=4)
    exp = build(config)
    state = exp.init()
    trainable = flat(state["trainable"])
    # Only the adapters train (freeze_base default), stacked per layer on the scan axis.
    assert trainable and all(re.search(r"/lora_[ab]$", p) for p in trainable)
    assert trainable["layers/self_attn/q_proj/lora_a"].shape == (2, 32, 4)
    assert trainable["layers/mlp/down_proj/lora_b"].shape == (2, 4, 32)
    assert "layers/self_attn/q_proj/kernel" in flat(state["frozen"])
    assert len(trainable) == 2 * 7
    # Per-layer A differs (independent adapters, not one broadcast).
    a = trainable["layers/self_attn/q_proj/lora_a"]
    assert not np.allclose(a[0], a[1])
    # Logical axes: 'layers' first, as the stacked kernel.
    q = exp.abstract_state["trainable"]["layers"]["self_attn"]["q_proj"]
    assert q["lora_a"].get_metadata()["out_sharding"] == ("layers", "embed", None)
    assert q["lora_b"].get_metadata()["out_sharding"] == ("layers", None, "heads")

    state = randomize_lora_b(state)
    model = merge_model(exp.graphdef, state)
    model.eval()
    lora_out = forward(model)
    base = Decoder(_decoder_cfg(True), rngs=nnx.Rngs(0))  # the same seed: the same base
    base_out = forward(base)
    assert np.abs(lora_out - base_out).max() > 1e-3  # the adapters act

    # The unscanned model with the same base weights and the same adapters, layer by layer.
    unscanned = Decoder(_decoder_cfg(False), rngs=nnx.Rngs(1))
    apply_lora(unscanned, rank=4, alpha=8.0, targets=LLAMA_ALL_LINEAR, rngs=nnx.Rngs(5))
    scanned_values = params_of(state)
    for path, var in nnx.to_flat_state(nnx.state(unscanned, nnx.Param)):
        key = path_str(path)
        if key.startswith("layers/"):
            _, layer, rest = key.split("/", 2)
            var[...] = scanned_values[f"layers/{rest}"][int(layer)]
        else:
            var[...] = scanned_values[key]
    unscanned_out = forward(unscanned)
    scale = np.abs(lora_out).max()
    err_unscanned = np.abs(unscanned_out - lora_out).max() / scale
    assert err_unscanned < 1e-5, err_unscanned

    merged = merge_lora(model)
    assert not any(isinstance(n, LoRALinear) for _, n in nnx.iter_graph(merged))
    merged_params = flat(nnx.state(merged, nnx.Param))
    assert merged_params["layers/self_attn/q_proj/kernel"].shape == (2, 32, 32)
    assert not any("lora" in p for p in merged_params)
    err_merged = np.abs(forward(merged) - lora_out).max() / scale
    assert err_merged < 1e-5, err_merged
    print(f"scanned LoRA vs merged {err_merged:.2e}, vs unscanned LoRA {err_unscanned:.2e}")


def test_scanned_lora_train_steps_move_only_adapters():
    exp = build(make_config(scan=True, lora_rank=4, targets=LLAMA_QV))
    state = exp.init()
    before = params_of(state)
    losses = []
    with jax.set_mesh(exp.mesh):
        for _ in range(3):
            state, metrics = exp.train_step(state, {"ids": IDS})
            losses.append(float(metrics["loss"]))
    after = params_of(state)
    assert losses[-1] < losses[0]
    for path, value in before.items():
        if "lora_" in path:
            if path.endswith("lora_b"):
                assert np.abs(after[path]).max() > 0, path
        else:
            np.testing.assert_array_equal(after[path], value, err_msg=path)


def test_scanned_lora_dropout_streams_advance_per_step():
    """LoRA dropout on scanned layers (Uni-Med's paper setting): every adapter's per-layer
    stream counts one draw per train step, so each step draws new masks."""
    config = make_config(scan=True, lora_rank=4)
    config.model.lora.dropout = 0.1
    exp = build(config)
    state = exp.init()
    with jax.set_mesh(exp.mesh):
        for _ in range(3):
            state, metrics = exp.train_step(state, {"ids": IDS})
    counts = {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
        if "lora_dropout" in jax.tree_util.keystr(path) and "count" in jax.tree_util.keystr(path)
    }
    assert counts and all(c.shape == (2,) for c in counts.values()), counts
    for path, count in counts.items():
        np.testing.assert_array_equal(count, [3, 3], err_msg=path)
    assert np.isfinite(float(metrics["loss"]))


def test_optim_groups_with_lora():
    off = make_config(groups=(("embed_tokens", 0.1),))
    assert stages.optim_groups(off) == (("embed_tokens", 0.1),)
    on = make_config(lora_rank=4, groups=(("embed_tokens", 0.1),))
    groups = stages.optim_groups(on)
    assert groups[0] == ("embed_tokens", 0.1) and groups[-1] == (".*", None)

    def first(p):
        return next(m for rx, m in groups if re.fullmatch(rx, p))

    assert first("embed_tokens") == 0.1  # optim.groups says otherwise: it trains
    assert first("layers/0/self_attn/q_proj/lora_a") == 1.0
    assert first("layers/0/self_attn/q_proj/kernel") is None
    on.model.lora.freeze_base = False
    assert stages.optim_groups(on) == (("embed_tokens", 0.1),)
    with pytest.raises(ValueError, match="targets"):
        stages.lora_config(make_config(lora_rank=4, targets=""))


def _stage1(tmp_path) -> tuple[str, dict]:
    """A 'trained' stage-1 state (unscanned, no LoRA, params moved by 2 steps) saved in its
    workdir's checkpoints/2."""
    exp = build(make_config())
    state = exp.init()
    with jax.set_mesh(exp.mesh):
        for _ in range(2):
            state, _ = exp.train_step(state, {"ids": IDS})
    workdir = str(tmp_path / "stage1")
    ckpt = Checkpointer(f"{workdir}/checkpoints")
    ckpt.save(2, state, meta={})
    ckpt.close()
    return workdir, params_of(state)


def test_init_from_workdir_starts_from_stage1(tmp_path, caplog):
    workdir, stage1 = _stage1(tmp_path)
    fresh = params_of(build(make_config()).init())
    assert not np.array_equal(fresh["embed_tokens"], stage1["embed_tokens"])

    # Stage 2: LoRA on top of stage 1, base frozen; adapters are new (strict exempts them).
    exp = build(make_config(lora_rank=4, targets=LLAMA_QV, workdir=workdir))
    with caplog.at_level(logging.WARNING):
        state = exp.init()
    # a healthy source gives no warning (orbax's "Metadata file does not exist" included)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    got = params_of(state)
    for path, value in stage1.items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)
    assert int(state["step"]) == 0  # the optimizer starts fresh
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(state["opt"]) if x.ndim)

    # checkpoint= one step directory; include: only the embedding comes from stage 1.
    exp = build(
        make_config(checkpoint=f"{workdir}/checkpoints/2", include="embed_tokens", strict=True)
    )
    got = params_of(exp.init())
    np.testing.assert_array_equal(got["embed_tokens"], stage1["embed_tokens"])
    np.testing.assert_array_equal(got["lm_head/kernel"], fresh["lm_head/kernel"])


def test_init_from_renames_strict_and_errors(tmp_path):
    workdir, stage1 = _stage1(tmp_path)
    # Stage 2 is scanned: per-layer source paths do not exist -> strict names them.
    with pytest.raises(ValueError, match=r"(?s)lacks .*\n  layers/self_attn/q_proj/kernel"):
        build(make_config(scan=True, workdir=workdir)).init()
    # A shape that differs: the error names the path and both shapes.
    with pytest.raises(
        ValueError, match=r"(?s)init_from .*\n  layers/0/mlp/up_proj/kernel: pretrained \(32, 48\)"
    ):
        build(make_config(intermediate=40, workdir=workdir)).init()
    # Two source paths renamed onto one.
    with pytest.raises(ValueError, match="both become 'layers/0/self_attn/k_proj/kernel'"):
        build(
            make_config(
                workdir=workdir,
                renames=(
                    (r"layers/0/self_attn/q_proj/kernel", "layers/0/self_attn/k_proj/kernel"),
                ),
            )
        ).init()
    # A rename that fits: the source embedding also fills nothing else; strict=False keeps
    # missing parameters at their init.
    exp = build(
        make_config(
            workdir=workdir,
            renames=((r"layers/(\d)/mlp/(.*)", r"layers/\1/mlp_renamed/\2"),),
            strict=False,
        )
    )
    got = params_of(exp.init())
    fresh = params_of(build(make_config()).init())
    np.testing.assert_array_equal(got["embed_tokens"], stage1["embed_tokens"])
    np.testing.assert_array_equal(
        got["layers/0/mlp/up_proj/kernel"], fresh["layers/0/mlp/up_proj/kernel"]
    )
    with pytest.raises(ValueError, match=r"(?s)lacks .*\n  layers/0/mlp/down_proj/kernel"):
        build(
            make_config(
                workdir=workdir, renames=((r"layers/(\d)/mlp/(.*)", r"layers/\1/mlp_x/\2"),)
            )
        ).init()
    # No checkpoint: the error names the path.
    empty = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match=re.escape(f"no checkpoint under {empty}")):
        build(make_config(workdir=str(empty))).init()
    with pytest.raises(FileNotFoundError, match="no checkpoint step directory"):
        build(make_config(checkpoint=str(empty))).init()


def test_eval_specs():
    config = make_config()
    config.train.eval_every = 5
    config.train.eval_split = "val"
    config.data = ml_collections.ConfigDict({"test_file": "test.json", "root": "r"})
    config.eval = ml_collections.ConfigDict({"batch_size": 8})
    (spec,) = stages.eval_specs(config)
    assert (spec.name, spec.split, spec.every) == ("eval", "val", 5) and spec.config is config
    assert [stages.due(spec, s, 12) for s in (4, 5, 10, 11, 12)] == [0, 1, 1, 0, 1]
    config.evals = ml_collections.ConfigDict(
        {
            "report": {"split": "test"},
            "vqa": {
                "split": "test",
                "every": 0,
                "data": {"test_file": "vqa.json"},
                "batch_size": 2,
            },
        }
    )
    report, vqa = stages.eval_specs(config)
    assert (report.name, report.every, report.config.data.test_file) == ("report", 5, "test.json")
    assert (vqa.name, vqa.every, vqa.config.data.test_file) == ("vqa", 0, "vqa.json")
    assert vqa.config.eval.batch_size == 2 and config.eval.batch_size == 8
    assert config.data.test_file == "test.json"  # overrides never leak into the run's config
    assert [stages.due(vqa, s, 12) for s in (5, 12)] == [False, True]
    config.train.eval_every = 0
    del config["evals"]
    assert stages.eval_specs(config) == []
