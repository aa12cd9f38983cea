"""The tiny RP3D-Diag config learns the phantoms through the real launchers."""

import os

import pytest

from tests.e2e.launcher import (
    metrics_rows,
    run_launcher,
    train_and_evaluate_untrained,
    train_losses,
)


@pytest.mark.slow
def test_train_then_evaluate_reaches_auc(tmp_path, tiny_data):
    rp3d_data = tiny_data("rp3d_diag")
    workdir, trained, untrained = train_and_evaluate_untrained(
        tmp_path, rp3d_data, "configs/rp3d_diag.py:tiny"
    )
    assert trained["auc"] >= 0.85, trained
    assert 0.3 <= untrained["auc"] <= 0.7, untrained
    assert trained["num_examples"] == untrained["num_examples"] > 0
    assert any("eval/auc" in r for r in metrics_rows(workdir))
    losses = train_losses(workdir)
    assert losses[-1] < losses[0]
    assert os.path.isdir(workdir / "checkpoints")
    # the evaluate launcher on the trained run reads its newest checkpoint
    run_launcher("experiments.evaluate", workdir, f"--config.data.root={rp3d_data}")
    assert metrics_rows(workdir)[-1].get("eval/auc") == pytest.approx(trained["auc"])
