"""The tiny RadFM config learns the RadFM phantoms through the real launchers: evaluated on
held-out phantoms it beats the untrained model and the most-frequent-answer baseline."""
import json

import pytest

from tests.e2e.launcher import run_launcher

CONFIG = "configs/radfm.py:tiny"


@pytest.mark.slow
def test_radfm_train_then_evaluate(tmp_path, radfm_data):
    workdir = tmp_path / "run"
    run_launcher("experiments.train", workdir, f"--config.data.root={radfm_data}", config=CONFIG)
    untrained_dir = tmp_path / "untrained"
    run_launcher("experiments.evaluate", untrained_dir, f"--config.data.root={radfm_data}",
                 config=CONFIG)
    with open(workdir / "config.json") as f:
        steps = json.load(f)["train"]["steps"]
    with open(workdir / "eval" / f"{steps}.json") as f:
        trained = json.load(f)
    with open(untrained_dir / "eval" / "0.json") as f:
        untrained = json.load(f)

    assert trained["num_examples"] == untrained["num_examples"] > 0
    assert trained["modality/accuracy"] >= 0.9, trained
    assert trained["modality/accuracy"] > trained["baseline/modality/accuracy"] + 0.2
    assert trained["caption/bertscore_f1"] > untrained["caption/bertscore_f1"] + 0.1
    for metric in ("caption/bleu4", "caption/entity_recall"):
        assert trained[metric] > untrained[metric] + 0.1, (metric, trained, untrained)
        assert trained[metric] > trained[f"baseline/{metric}"] + 0.05, (metric, trained)
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < 0.5 * losses[0]
