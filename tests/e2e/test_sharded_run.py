"""The tiny run on 8 simulated devices (data x fsdp mesh) matches the single-device run."""
import jax
import numpy as np
import pytest

from configs import rp3d_diag
from radjax import sharding
from tests.e2e.launcher import in_process_losses

STEPS = 20


def _losses(workdir, data_root, mesh):
    config = rp3d_diag.get_config("tiny")
    config.data.root = data_root
    return in_process_losses(config, workdir, mesh, STEPS)


@pytest.mark.slow
def test_eight_device_data_fsdp_run_matches_one_device(tmp_path, rp3d_data):
    assert jax.device_count() == 8
    single = _losses(tmp_path / "one", rp3d_data,
                     sharding.make_mesh({"data": 1}, devices=jax.devices()[:1]))
    sharded = _losses(tmp_path / "eight", rp3d_data, sharding.make_mesh({"data": 2, "fsdp": 4}))
    assert len(single) == len(sharded) == STEPS
    np.testing.assert_allclose(sharded, single, rtol=1e-4)
