"""Two JAX processes (jax.distributed on CPU, one device each) train the tiny RadFM config as
one process with two devices does: every process walks the same plan of global batches, loads
its half of each and agrees with the other on the batch shapes. (Modality mixes 2D and 3D
studies, so the plan holds batches of both shapes; caption adds a generative metric.)"""

import json
import socket

import numpy as np
import pytest

from tests.e2e.launcher import run_launcher, train_losses

CONFIG = "configs/radfm.py:tiny,tasks=modality+caption"
STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_as_one_process_with_two_devices(tmp_path, tiny_data):
    radfm_data = tiny_data("radfm")
    common = [
        f"--config.data.root={radfm_data}",
        f"--config.train.steps={STEPS}",
        "--config.train.log_every=1",
        f"--config.train.eval_every={STEPS}",
        f"--config.checkpoint.every={STEPS}",
        "--config.eval.max_new_tokens=8",  # enough to compare the two evaluations
        "--config.data.max_length=144",  # the longest caption with its image block
    ]
    # one process holds the whole global batch: twice the per-process rows
    run_launcher(
        "experiments.train",
        tmp_path / "one",
        *common,
        "--config.data.batch_size_2d=16",
        "--config.data.batch_size_3d=8",
        devices=2,
        config=CONFIG,
    )
    port = _free_port()
    procs = [
        run_launcher(
            "experiments.train",
            tmp_path / "two",
            *common,
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            devices=1,
            check=False,
            config=CONFIG,
            log=tmp_path / f"process{i}.log",
        )
        for i in (0, 1)
    ]
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=900) == 0, (tmp_path / f"process{i}.log").read_text()[-5000:]
    single, multi = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert len(single) == len(multi) == STEPS
    np.testing.assert_allclose(multi, single, rtol=1e-4)
    evals = [
        json.loads((tmp_path / d / "eval" / f"{STEPS}.json").read_text()) for d in ("one", "two")
    ]
    assert evals[0]["num_examples"] == evals[1]["num_examples"] > 0
    for key in ("modality/accuracy", "caption/bleu4", "caption/bleu1"):
        assert evals[1][key] == pytest.approx(evals[0][key], abs=1e-6), key
