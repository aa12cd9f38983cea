"""The tiny run on 8 simulated devices (data x fsdp mesh) matches the single-device run."""

import jax
import numpy as np
import pytest

from configs import rp3d_diag
from tests.e2e.launcher import one_and_many_device_losses

STEPS = 20


@pytest.mark.slow
def test_eight_device_data_fsdp_run_matches_one_device(tmp_path, tiny_data):
    rp3d_data = tiny_data("rp3d_diag")
    assert jax.device_count() == 8
    single, sharded = one_and_many_device_losses(
        rp3d_diag.get_config, rp3d_data, tmp_path, {"data": 2, "fsdp": 4}, STEPS
    )
    assert len(single) == len(sharded) == STEPS
    np.testing.assert_allclose(sharded, single, rtol=1e-4)
