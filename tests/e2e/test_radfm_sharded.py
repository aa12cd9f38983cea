"""The tiny RadFM config on 8 simulated devices (fsdp x tensor) gives the one-device losses."""
import jax
import numpy as np
import pytest

from configs import radfm
from radjax import sharding
from tests.e2e.launcher import in_process_losses

STEPS = 12


def _losses(workdir, data_root, mesh):
    config = radfm.get_config("tiny")
    config.data.root = data_root
    return in_process_losses(config, workdir, mesh, STEPS)


@pytest.mark.slow
def test_eight_device_fsdp_tensor_run_matches_one_device(tmp_path, radfm_data):
    assert jax.device_count() == 8
    single = _losses(tmp_path / "one", radfm_data,
                     sharding.make_mesh({"data": 1}, devices=jax.devices()[:1]))
    sharded = _losses(tmp_path / "eight", radfm_data, sharding.make_mesh({"fsdp": 2, "tensor": 4}))
    assert len(single) == len(sharded) == STEPS
    assert single[-1] < single[0]
    np.testing.assert_allclose(sharded, single, rtol=2e-4)
