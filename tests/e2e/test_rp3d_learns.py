"""The tiny RP3D-Diag config learns the phantoms through the real launchers."""
import json
import os

import pytest

from tests.e2e.launcher import run_launcher


@pytest.mark.slow
def test_train_then_evaluate_reaches_auc(tmp_path, rp3d_data):
    workdir = tmp_path / "run"
    run_launcher("experiments.train", workdir, f"--config.data.root={rp3d_data}")
    # the untrained model, evaluated by the same launcher in an empty workdir
    untrained_dir = tmp_path / "untrained"
    run_launcher("experiments.evaluate", untrained_dir, f"--config.data.root={rp3d_data}")
    run_launcher("experiments.evaluate", workdir, f"--config.data.root={rp3d_data}")

    with open(workdir / "config.json") as f:
        steps = json.load(f)["train"]["steps"]
    with open(workdir / "eval" / f"{steps}.json") as f:
        trained = json.load(f)
    with open(untrained_dir / "eval" / "0.json") as f:
        untrained = json.load(f)
    assert trained["auc"] >= 0.85, trained
    assert 0.3 <= untrained["auc"] <= 0.7, untrained
    assert trained["num_examples"] == untrained["num_examples"] > 0
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert any("eval/auc" in r for r in rows)
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < losses[0]
    assert os.path.isdir(workdir / "checkpoints")
