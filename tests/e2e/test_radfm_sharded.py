"""The tiny RadFM config on 8 simulated devices (fsdp x tensor) gives the one-device losses.

Trained on the VQA and caption tasks only: both read the 3D studies, so every batch has one
shape and each mesh compiles one train step (mixed 2D/3D batches are the multi-process
test's subject)."""

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
        radfm.get_config,
        radfm_data,
        tmp_path,
        {"fsdp": 2, "tensor": 4},
        STEPS,
        arg="tiny,tasks=vqa+caption",
    )
    assert len(single) == len(sharded) == STEPS
    assert single[-1] < single[0]
    np.testing.assert_allclose(sharded, single, rtol=2e-4)
