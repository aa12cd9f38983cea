"""The tiny RadFM config on 8 simulated devices (fsdp x tensor) gives the one-device losses."""
import json

import jax
import numpy as np
import pytest

from configs import radfm
from radjax import sharding
from radjax.train import loop

STEPS = 12


def _losses(workdir, data_root, mesh):
    config = radfm.get_config("tiny")
    config.data.root = data_root
    config.train.steps = STEPS
    config.train.log_every = 1
    config.train.eval_every = 0
    config.checkpoint.every = STEPS
    loop.train_and_evaluate(config, str(workdir), mesh=mesh)
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return np.array([r["train/loss"] for r in rows if "train/loss" in r])


@pytest.mark.slow
def test_eight_device_fsdp_tensor_run_matches_one_device(tmp_path, radfm_data):
    assert jax.device_count() == 8
    single = _losses(tmp_path / "one", radfm_data,
                     sharding.make_mesh({"data": 1}, devices=jax.devices()[:1]))
    sharded = _losses(tmp_path / "eight", radfm_data, sharding.make_mesh({"fsdp": 2, "tensor": 4}))
    assert len(single) == len(sharded) == STEPS
    assert single[-1] < single[0]
    np.testing.assert_allclose(sharded, single, rtol=2e-4)
