"""Two training stages on the tiny RP3D-Diag config through ``loop.train_and_evaluate``: stage 2
starts from stage 1's final parameters (``config.init_from``), adds LoRA adapters with the base
frozen (``config.model.lora``) and runs two named evaluations (``config.evals``)."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from radjax import sharding
from radjax.train import experiment, loop
from radjax.train.optim import path_str
from tests.e2e.launcher import metrics_rows


def _config(data_root, steps):
    from configs import rp3d_diag

    config = rp3d_diag.get_config("tiny")
    config.data.root = data_root
    config.train.steps = steps
    config.train.log_every = 1
    config.train.eval_every = 0
    config.checkpoint.every = steps
    return config


def _params(state) -> dict[str, np.ndarray]:
    return {
        path_str(p): np.asarray(v[...])
        for part in ("trainable", "frozen")
        for p, v in nnx.to_flat_state(state[part])
    }


def _stats(state) -> dict[str, np.ndarray]:
    return {
        path_str(p): np.asarray(v[...])
        for p, v in nnx.to_flat_state(state["rest"])
        if isinstance(v, nnx.BatchStat)
    }


@pytest.mark.slow
def test_two_stages_init_from_lora_and_named_evals(tmp_path, tiny_data):
    root = tiny_data("rp3d_diag")
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    # A second task file for one named evaluation: the first 32 test cases.
    with open(os.path.join(root, "test.json")) as f:
        cases = json.load(f)
    small = dict(list(cases.items())[:32])
    with open(os.path.join(root, "stages_test_small.json"), "w") as f:
        json.dump(small, f)

    stage1_dir = str(tmp_path / "stage1")
    stage1 = loop.train_and_evaluate(_config(root, 3), stage1_dir, mesh=mesh)
    stage1_params, stage1_stats = _params(stage1), _stats(stage1)

    config = _config(root, 2)
    config.init_from.workdir = stage1_dir
    config.model.lora.rank = 4
    config.model.lora.targets = r"slice_attn/.*/(query|value)"
    config.optim.groups = ()  # the LoRA stage: adapters only
    config.evals = ml_collections.ConfigDict(
        {
            "full": {"split": "test", "every": 1},
            "small": {"split": "test", "every": 0, "data": {"test_file": "stages_test_small.json"}},
        }
    )
    # The fresh stage-2 state is stage 1's final parameters and BatchNorm statistics.
    experiment.prepare_config(config)  # model.num_classes from the data
    start = experiment.build(config, mesh).init()
    start_params = _params(start)
    for path, value in stage1_params.items():
        np.testing.assert_array_equal(start_params[path], value, err_msg=path)
    for path, value in _stats(start).items():
        np.testing.assert_array_equal(value, stage1_stats[path], err_msg=path)
    lora = sorted(set(start_params) - set(stage1_params))
    assert lora and all(p.rsplit("/", 1)[1] in ("lora_a", "lora_b") for p in lora), lora
    assert len(lora) == 4  # query and value of the one slice-attention layer

    stage2_dir = str(tmp_path / "stage2")
    stage2 = loop.train_and_evaluate(config, stage2_dir, mesh=mesh)
    end = _params(stage2)
    # The base stays stage 1's (frozen); only the adapters moved.
    for path, value in stage1_params.items():
        np.testing.assert_array_equal(end[path], value, err_msg=path)
    assert all(not np.array_equal(end[p], start_params[p]) for p in lora if "lora_b" in p)

    rows = metrics_rows(stage2_dir)
    full = {r["step"]: r for r in rows if "full/auc" in r}
    small = {r["step"]: r for r in rows if "small/auc" in r}
    assert sorted(full) == [1, 2] and sorted(small) == [2]
    assert small[2]["small/num_examples"] == 32
    assert full[2]["full/num_examples"] == len(cases)
    assert not any(k.startswith("eval/") for r in rows for k in r)
    with open(os.path.join(stage2_dir, "eval", "2.json")) as f:
        saved = json.load(f)
    assert saved["small/split"] == saved["full/split"] == "test"
    assert saved["full/auc"] == pytest.approx(full[2]["full/auc"])
    assert saved["small/auc"] == pytest.approx(small[2]["small/auc"])

    # A resumed stage 2 ignores init_from (its own checkpoint wins): the source may be gone.
    config.init_from.workdir = str(tmp_path / "gone")
    config.train.steps = 3
    resumed = loop.train_and_evaluate(config, stage2_dir, mesh=mesh)
    assert int(resumed["step"]) == 3
    for path, value in stage1_params.items():
        np.testing.assert_array_equal(_params(resumed)[path], value, err_msg=path)

    # evaluate_checkpoint without a split runs every named evaluation on the newest step.
    evaluated = loop.evaluate_checkpoint(config, stage2_dir, mesh=mesh)
    assert evaluated["small/num_examples"] == 32
    assert evaluated["full/num_examples"] == len(cases)
    with open(os.path.join(stage2_dir, "eval", "3.json")) as f:
        assert json.load(f)["small/auc"] == pytest.approx(evaluated["small/auc"])
