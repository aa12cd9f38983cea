"""The tiny RadFM config on 8 simulated devices (fsdp x tensor) gives the one-device losses."""

import jax
import numpy as np
import pytest

from configs import radfm
from tests.e2e.launcher import one_and_many_device_losses

STEPS = 12


@pytest.mark.slow
def test_eight_device_fsdp_tensor_run_matches_one_device(tmp_path, tiny_data):
    radfm_data = tiny_data("radfm")
    assert jax.device_count() == 8
    single, sharded = one_and_many_device_losses(
        radfm.get_config, radfm_data, tmp_path, {"fsdp": 2, "tensor": 4}, STEPS
    )
    assert len(single) == len(sharded) == STEPS
    assert single[-1] < single[0]
    np.testing.assert_allclose(sharded, single, rtol=2e-4)
