"""The tiny RadFM config learns the RadFM phantoms through the real launcher: trained on the
modality and caption tasks (500 steps, about a minute on 2 cores) and evaluated on held-out
phantoms, it beats the most-frequent-answer baseline of each task. (The demo trains the
three-stage tiny recipe, whose diagnosis and lesion naming this short run does not reach.)"""

import json

import pytest

from tests.e2e.launcher import run_launcher, train_losses

STEPS = 500


@pytest.mark.slow
def test_radfm_train_then_evaluate(tmp_path, tiny_data):
    workdir = tmp_path / "run"
    run_launcher(
        "experiments.train",
        workdir,
        f"--config.data.root={tiny_data('radfm')}",
        f"--config.train.steps={STEPS}",
        f"--config.train.eval_every={STEPS}",
        "--config.data.max_length=144",  # the longest caption with its image block
        config="configs/radfm.py:tiny,tasks=modality+caption",
    )
    with open(workdir / "eval" / f"{STEPS}.json") as f:
        trained = json.load(f)
    assert trained["num_examples"] == 48  # 24 held-out studies a task
    assert trained["modality/accuracy"] >= 0.9, trained
    assert trained["modality/accuracy"] > trained["baseline/modality/accuracy"] + 0.3
    for metric in ("caption/bleu4", "caption/entity_recall"):
        assert trained[metric] > trained[f"baseline/{metric}"] + 0.05, (metric, trained)
    assert trained["caption/bertscore_f1"] > trained["baseline/caption/bertscore_f1"], trained
    assert not any(k.startswith(("vqa/", "rationale/")) for k in trained)  # tasks= held
    losses = train_losses(workdir)
    assert losses[-1] < 0.5 * losses[0]
